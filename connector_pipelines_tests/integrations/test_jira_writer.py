"""JiraIssueWriter against the Jira sandbox on a loopback port and a tmp SQLite ledger.

This module also holds the small harness the resolution and reconcile tests import: a Jira sandbox
with the shipped bc_jira definition's project and custom fields, a static token, and ``FakeSource``
(a SourceAdapter over dicts).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector_pipelines.core import adf
from connector_pipelines.core.db import get_engine
from connector_pipelines.core.failures import WriteSettings
from connector_pipelines.core.http import ApiError, RetrySettings
from connector_pipelines.core.leases import Leases, new_owner
from connector_pipelines.core.ledger import DONE, FAILED, INTENT, Ledger
from connector_pipelines.integrations.definition import EntitySync, IntegrationDefinition
from connector_pipelines.integrations.jira_target import JiraIssueWriter
from connector_pipelines.integrations.sources.base import ChangeSet, ResolutionOutcome, SourceRecord
from connector_pipelines.systems.jira.client import JiraClient
from connector_pipelines.systems.jira.errors import JiraConfigError
from sandboxes.common import SandboxServer
from sandboxes.jira import JiraSandbox
from sandboxes.jira.adf import adf_text

DEFS_YAML = Path(__file__).resolve().parents[2] / "connector_pipelines" / "defs" / "bc_jira" / "defs.yaml"
CLOUD = "33333333-aaaa-bbbb-cccc-000000000003"
SITE_URL = "https://finops.atlassian.net"
TOKEN = "static-test-token"
FAST = RetrySettings(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, max_total_wait_s=2)
SEARCH = ("POST", "/ex/jira/{cloudId}/rest/api/3/search/jql")
BULK = ("POST", "/ex/jira/{cloudId}/rest/api/3/issue/bulk")
EDIT = ("PUT", "/ex/jira/{cloudId}/rest/api/3/issue/{issueIdOrKey}")
COMMENT = ("POST", "/ex/jira/{cloudId}/rest/api/3/issue/{issueIdOrKey}/comment")
CUSTOM_FIELDS = {"ERP External ID": "textfield", "ERP Document Number": "textfield", "ERP Vendor": "textfield",
                 "ERP Status": "textfield", "ERP Amount": "float"}


def shipped_attrs() -> dict[str, Any]:
    return yaml.safe_load(DEFS_YAML.read_text())["attributes"]


def shipped_definition() -> IntegrationDefinition:
    return IntegrationDefinition.model_validate(shipped_attrs())


# -- a SourceAdapter over dicts ----------------------------------------------------------------------
class FakeSource:
    """Records per entity set, keyed by id. ``outcomes[id]`` is what resolve answers (a ResolutionOutcome
    or an exception to raise); ``resolved`` lists every resolve call."""

    system = "fake"

    def __init__(self) -> None:
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        self.outcomes: dict[str, ResolutionOutcome | Exception] = {}
        self.resolved: list[tuple[str, str]] = []
        self.notes: list[str | None] = []
        self.calls = 0

    def put(self, entity_set: str, record_id: str, **data: Any) -> dict[str, Any]:
        row = {"id": record_id, **data}
        self.records.setdefault(entity_set, {})[record_id] = row
        return row

    def external_id(self, entity: EntitySync, record_id: str) -> str:
        return f"fake:{entity.entity_set}:{record_id}"

    def parse_external_id(self, external_id: str) -> tuple[str, str]:
        system, entity_set, record_id = external_id.split(":", 2)
        assert system == "fake"
        return entity_set, record_id

    def record(self, entity: EntitySync, record_id: str) -> SourceRecord:
        return SourceRecord(entity.name, self.external_id(entity, record_id), record_id,
                            dict(self.records[entity.entity_set][record_id]),
                            f"https://erp.example/{entity.entity_set}/{record_id}")

    def all(self, entity: EntitySync) -> list[SourceRecord]:
        return [self.record(entity, i) for i in self.records.get(entity.entity_set, {})]

    def fetch_changed(self, entity: EntitySync, start: datetime, end: datetime) -> list[SourceRecord]:
        self.calls += 1
        return self.all(entity)

    def fetch_by_ids(self, entity: EntitySync, ids: list[str]) -> list[SourceRecord]:
        self.calls += 1
        return [self.record(entity, i) for i in ids if i in self.records.get(entity.entity_set, {})]

    def fetch_current_exceptions(self, entity: EntitySync) -> list[SourceRecord]:
        self.calls += 1
        return [r for r in self.all(entity) if entity.is_exception(r.data)]

    def changes_from_notifications(self, entities: list[EntitySync], payloads: list[dict[str, Any]]) -> ChangeSet:
        changes = ChangeSet()
        for p in payloads:
            for e in entities:
                if e.entity_set == p["entity_set"]:
                    changes.add(e.name, p["id"], f"fake notification {p['id']}")
        return changes

    def describe_missing(self, entity: EntitySync, record_id: str) -> str:
        return f"fake ERP has no {entity.entity_set} {record_id}"

    def resolve(self, entity: EntitySync, record_id: str, note: str | None = None) -> ResolutionOutcome:
        self.resolved.append((entity.name, record_id))
        self.notes.append(note)
        outcome = self.outcomes.get(record_id, ResolutionOutcome("acted", f"{record_id} fixed at the source"))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def api_calls(self) -> int:
        return self.calls


# -- the harness ----------------------------------------------------------------------------------------
@dataclass
class Harness:
    sandbox: JiraSandbox
    server: SandboxServer
    jira: JiraClient
    ledger: Ledger
    integration: IntegrationDefinition
    source: FakeSource
    fields: dict[str, str]  # custom field name -> id on the sandbox site

    def writer(self, integration: IntegrationDefinition | None = None, *, run_id: str = "run-1",
               **settings: Any) -> JiraIssueWriter:
        """A writer with its own lease owner; ``settings`` override WriteSettings (no search lag by default)."""
        values = {"search_lag_bound_s": 0.0, "claim_wait_s": 5.0, "lease_ttl_s": 30.0} | settings
        return JiraIssueWriter(self.jira, self.ledger, integration or self.integration, run_id,
                               leases=Leases(self.ledger.engine, new_owner("test"), ttl_s=values["lease_ttl_s"]),
                               settings=WriteSettings(**values))

    def entity(self, name: str = "blocked_vendors", *, lean: bool = True) -> EntitySync:
        """The shipped entity; ``lean`` drops the description's context table, which the sandbox's ADF
        schema validation takes ~0.1 s per row to check (the content test uses the full entity)."""
        entity = self.integration.entity(name)
        return entity.model_copy(update={"context": []}) if lean else entity

    def issues(self) -> list[dict[str, Any]]:
        return self.sandbox.issues(CLOUD)

    def issues_with(self, external_id: str) -> list[dict[str, Any]]:
        ext = self.fields["ERP External ID"]
        return [i for i in self.issues() if i["fields"].get(ext) == external_id]

    def stored(self, key: str) -> dict[str, Any]:
        """What the sandbox stored for an issue (only the fields that were set)."""
        return dict(self.sandbox.sites[CLOUD].issue(key).fields)

    def calls(self, op: tuple[str, str]) -> int:
        return self.sandbox.calls[op]

    def reset_calls(self) -> None:
        self.sandbox.calls.clear()
        self.sandbox.calls_total = 0

    def vendor(self, rid: str, *, blocked: str = "All", name: str | None = None, **extra: Any) -> None:
        self.source.put("vendors", rid, number=f"V{rid}", displayName=name or f"Vendor {rid}", blocked=blocked,
                        currencyCode="EUR", lastModifiedDateTime="2026-11-20T10:00:00Z", **extra)

    def create_as_user(self, external_id: str, summary: str = "made by a person") -> dict[str, Any]:
        return self.sandbox.create_issue_as_user(CLOUD, {
            "project": {"key": self.integration.target.project_key}, "issuetype": {"name": "Task"},
            "summary": summary, self.fields["ERP External ID"]: external_id})


def make_harness(tmp_path: Path) -> Iterator[Harness]:
    integration = shipped_definition()
    sandbox = JiraSandbox(validate_responses=True)
    sandbox.add_site(CLOUD, "finops", SITE_URL)
    sandbox.add_user(CLOUD, "acc-int", "Integration User")
    sandbox.add_user(CLOUD, "acc-person", "A Person")
    sandbox.add_project(CLOUD, integration.target.project_key, "Finance ops")
    sandbox.add_project(CLOUD, "OTHER", "Another team")
    fields = {name: sandbox.add_custom_field(CLOUD, name, kind) for name, kind in CUSTOM_FIELDS.items()}
    sandbox.add_token(TOKEN, client_id="connector-app", account_id="acc-int")
    sandbox.register_app("connector-app", "app-secret")
    db_url = f"sqlite:///{tmp_path}/ledger-{uuid.uuid4().hex[:8]}.sqlite"
    with SandboxServer(sandbox.app) as server:
        jira = JiraClient.connect(server.base_url, CLOUD, SITE_URL, StaticToken(TOKEN), retry=FAST)
        try:
            yield Harness(sandbox, server, jira, Ledger(get_engine(db_url)), integration, FakeSource(), fields)
        finally:
            jira.close()
            sandbox.close()
    assert sandbox.response_errors == []


class StaticToken:
    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self) -> str:
        return self.token

    def invalidate(self, token: str) -> None:
        pass


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def core_counts(report) -> dict[str, int]:
    """The counts every upsert reports; the others (retries, deferrals, claims) are asserted where they matter."""
    wanted = ("created", "updated", "skipped", "failed", "duplicates_found")
    counts = report.counts()
    assert counts["deferred_search_lag"] == 0 and counts["left_to_other_run"] == 0, counts
    return {k: counts[k] for k in wanted}


def spy_batch_sizes(h: Harness) -> dict[str, list[int]]:
    """Record how many keys each JQL lookup names and how many issues each bulk create carries."""
    sizes: dict[str, list[int]] = {"search": [], "bulk": []}
    real_post = h.jira.http.post

    def post(url, **kw):
        body = kw.get("json") or {}
        if url.endswith("/issue/bulk"):
            sizes["bulk"].append(len(body["issueUpdates"]))
        elif url.endswith("/search/jql") and "nextPageToken" not in body:
            sizes["search"].append(body["jql"].count(" ~ "))
        return real_post(url, **kw)

    h.jira.http.post = post
    return sizes


# =====================================================================================================
# Tests
# =====================================================================================================
def test_first_upsert_bulk_creates_one_issue_per_record_with_one_search_and_one_bulk_per_50(h: Harness):
    entity = h.entity()
    for n in range(120):
        h.vendor(f"{n:04d}")
    writer = h.writer()
    h.reset_calls()
    sizes = spy_batch_sizes(h)

    report = writer.upsert(entity, h.source.all(entity))

    assert sizes == {"search": [50, 50, 20], "bulk": [50, 50, 20]}
    assert core_counts(report) == {"created": 120, "updated": 0, "skipped": 0, "failed": 0, "duplicates_found": 0}
    assert h.calls(SEARCH) == 3
    assert h.calls(BULK) == 3
    assert h.calls(EDIT) == 0
    assert h.sandbox.calls_total == 6
    issues = h.issues()
    assert len(issues) == 120
    ext = h.fields["ERP External ID"]
    assert sorted(i["fields"][ext] for i in issues) == sorted(f"fake:vendors:{n:04d}" for n in range(120))
    done = h.ledger.in_state("bc_jira", DONE, entity.name)
    assert len(done) == 120
    by_key = {i["fields"][ext]: i["key"] for i in issues}
    assert all(e.target_key == by_key[e.source_key] for e in done)
    assert all(e.target_url == f"{SITE_URL}/browse/{e.target_key}" and e.run_id == "run-1" for e in done)
    assert report.links["fake:vendors:0000"] == f"{SITE_URL}/browse/{by_key['fake:vendors:0000']}"


def test_second_upsert_of_unchanged_records_makes_no_jira_call(h: Harness):
    entity = h.entity()
    for n in range(7):
        h.vendor(str(n))
    writer = h.writer()
    writer.upsert(entity, h.source.all(entity))
    h.reset_calls()

    report = writer.upsert(entity, h.source.all(entity))

    assert core_counts(report) == {"created": 0, "updated": 0, "skipped": 7, "failed": 0, "duplicates_found": 0}
    assert h.sandbox.calls_total == 0
    assert len(h.issues()) == 7
    assert len(report.links) == 7


def test_the_same_record_twice_in_one_batch_is_one_issue(h: Harness):
    entity = h.entity()
    h.vendor("1")
    records = h.source.all(entity)
    report = h.writer().upsert(entity, records + records)
    assert report.created == 1
    assert len(h.issues()) == 1


def test_a_changed_record_edits_the_same_issue(h: Harness):
    entity = h.entity()
    h.vendor("1")
    h.vendor("2")
    writer = h.writer()
    writer.upsert(entity, h.source.all(entity))
    key = h.ledger.get("bc_jira", "fake:vendors:1").target_key
    h.vendor("1", blocked="Payment", name="Renamed Vendor")
    h.reset_calls()

    report = writer.upsert(entity, h.source.all(entity))

    assert core_counts(report) == {"created": 0, "updated": 1, "skipped": 1, "failed": 0, "duplicates_found": 0}
    assert h.calls(BULK) == 0 and h.calls(SEARCH) == 0 and h.calls(EDIT) == 1
    assert len(h.issues()) == 2
    stored = h.stored(key)
    assert stored["summary"] == "Blocked vendor V1 Renamed Vendor (blocked: Payment)"
    assert stored[h.fields["ERP Status"]] == "Blocked: Payment"
    assert stored[h.fields["ERP Vendor"]] == "V1 Renamed Vendor"
    entry = h.ledger.get("bc_jira", "fake:vendors:1")
    assert entry.state == DONE and entry.target_key == key
    # and the new fingerprint is remembered: a third run skips
    h.reset_calls()
    assert writer.upsert(entity, h.source.all(entity)).skipped == 2
    assert h.sandbox.calls_total == 0


def test_an_issue_someone_else_created_is_updated_not_duplicated(h: Harness):
    entity = h.entity()
    h.vendor("1")
    theirs = h.create_as_user("fake:vendors:1")
    # a token look-alike that must not be taken for it (JQL ~ over-matches)
    h.create_as_user("fake:vendors:1-A", "look-alike")
    writer = h.writer()
    h.reset_calls()

    report = writer.upsert(entity, h.source.all(entity))

    assert core_counts(report) == {"created": 0, "updated": 1, "skipped": 0, "failed": 0, "duplicates_found": 0}
    assert h.calls(BULK) == 0 and h.calls(SEARCH) == 1 and h.calls(EDIT) == 1
    assert len(h.issues_with("fake:vendors:1")) == 1
    assert h.stored(theirs["key"])["summary"] == "Blocked vendor V1 Vendor 1 (blocked: All)"
    assert h.ledger.get("bc_jira", "fake:vendors:1").target_key == theirs["key"]


def test_duplicates_in_jira_are_counted_and_the_oldest_is_updated(h: Harness):
    entity = h.entity()
    h.vendor("1")
    oldest = h.create_as_user("fake:vendors:1", "first copy")
    second = h.create_as_user("fake:vendors:1", "second copy")
    third = h.create_as_user("fake:vendors:1", "third copy")

    report = h.writer().upsert(entity, h.source.all(entity))

    assert report.duplicates == 2
    assert report.updated == 1 and report.created == 0
    assert len(h.issues()) == 3
    assert h.stored(oldest["key"])["summary"] == "Blocked vendor V1 Vendor 1 (blocked: All)"
    assert h.stored(second["key"])["summary"] == "second copy"
    assert h.stored(third["key"])["summary"] == "third copy"
    assert h.ledger.get("bc_jira", "fake:vendors:1").target_key == oldest["key"]


def test_a_bulk_element_failure_fails_only_that_record_and_a_later_upsert_retries_exactly_it(h: Harness):
    entity = h.entity()
    for n in range(5):
        h.vendor(str(n))
    h.vendor("2", name="Broken\nName")  # Jira refuses a summary with a newline
    writer = h.writer()

    report = writer.upsert(entity, h.source.all(entity))

    assert report.created == 4 and report.failed == 1
    assert "newline" in report.failures["fake:vendors:2"]
    assert len(h.issues()) == 4
    failed = h.ledger.get("bc_jira", "fake:vendors:2")
    assert failed.state == FAILED and "newline" in failed.last_error and failed.target_key is None
    assert [e.source_key for e in h.ledger.in_state("bc_jira", FAILED)] == ["fake:vendors:2"]

    h.vendor("2", name="Fixed Name")
    h.reset_calls()
    again = writer.upsert(entity, h.source.all(entity))

    assert core_counts(again) == {"created": 1, "updated": 0, "skipped": 4, "failed": 0, "duplicates_found": 0}
    assert h.calls(SEARCH) == 1 and h.calls(BULK) == 1 and h.calls(EDIT) == 0
    assert len(h.issues()) == 5
    assert len(h.issues_with("fake:vendors:2")) == 1
    assert h.ledger.get("bc_jira", "fake:vendors:2").state == DONE
    assert h.ledger.in_state("bc_jira", FAILED) == []


def test_a_create_whose_answer_was_lost_is_deferred_until_the_search_lag_bound_then_found(h: Harness, monkeypatch):
    """Intent rows: bulk create succeeded, the ledger commit did not. Jira's search index lags 1 s. An
    immediate retry must neither re-create (search cannot see the issues yet) nor sleep: it defers the
    records to the lag bound; a retry after the bound finds and adopts them — never a second issue."""
    entity = h.entity()
    for n in range(3):
        h.vendor(str(n))
    h.sandbox.search_lag_s = 1
    writer = h.writer(search_lag_bound_s=1.5)
    real = Ledger.mark_done
    crashes = []

    def crash_once(self, integration, results, run_id):
        if results and not crashes:
            crashes.append(len(results))
            raise RuntimeError("process killed between Jira's answer and the ledger commit")
        return real(self, integration, results, run_id)

    monkeypatch.setattr(Ledger, "mark_done", crash_once)
    with pytest.raises(RuntimeError):
        writer.upsert(entity, h.source.all(entity))
    assert crashes == [3]
    assert len(h.issues()) == 3
    assert {e.source_key for e in h.ledger.in_state("bc_jira", INTENT)} == {f"fake:vendors:{n}" for n in range(3)}

    h.reset_calls()
    started = time.monotonic()
    deferred = writer.upsert(entity, h.source.all(entity))
    assert time.monotonic() - started < 1.0            # deferred, not slept on
    assert deferred.created == 0 and deferred.updated == 0 and len(deferred.deferred) == 3
    assert h.calls(BULK) == 0 and len(h.issues()) == 3
    rows = h.ledger.in_state("bc_jira", INTENT)
    assert len(rows) == 3 and all(r.retry_after and r.verify_after and r.retry_after == r.verify_after for r in rows)

    time.sleep(1.6)
    report = writer.upsert(entity, h.source.all(entity))

    assert report.created == 0 and report.updated == 3
    assert h.calls(BULK) == 0
    for n in range(3):
        assert len(h.issues_with(f"fake:vendors:{n}")) == 1
    assert len(h.ledger.in_state("bc_jira", DONE)) == 3


def test_a_missing_custom_field_fails_loudly_naming_it(h: Harness):
    attrs = shipped_attrs()
    attrs["entities"][0]["fields"].append({"name": "ERP Cost Centre", "template": "{number}"})
    integration = IntegrationDefinition.model_validate(attrs)
    with pytest.raises(JiraConfigError) as err:
        h.writer(integration)
    assert "ERP Cost Centre" in str(err.value)
    assert err.value.missing == ["ERP Cost Centre"]

    attrs = shipped_attrs()
    attrs["target"]["external_id_field"] = "External Key"
    with pytest.raises(JiraConfigError, match="External Key"):
        h.writer(IntegrationDefinition.model_validate(attrs))


def test_issue_fields_carry_only_the_mapped_identifiers_and_context(h: Harness, monkeypatch):
    entity = h.entity("purchase_invoices_awaiting_review", lean=False)
    h.source.put("purchaseInvoices", "inv-1", number="PI-1001", vendorNumber="V10", vendorName="Fabrikam",
                 vendorInvoiceNumber="F-77", invoiceDate="2026-11-02", dueDate="2026-12-02",
                 totalAmountIncludingTax=1234.5, currencyCode="EUR", status="Draft",
                 # ERP data that must never leave: not mapped, not in the context list
                 bankAccountIban="DE89370400440532013000", glAccount="6300-SECRET", purchaserNotes="private")
    writer = h.writer()
    sent: list[list[dict[str, Any]]] = []
    real_bulk = writer.jira.bulk_create
    monkeypatch.setattr(writer.jira, "bulk_create", lambda issues: sent.append(issues) or real_bulk(issues))

    report = writer.upsert(entity, h.source.all(entity))

    assert report.created == 1
    [[fields]] = sent
    mapped = {h.fields[n] for n in ("ERP External ID", "ERP Document Number", "ERP Vendor", "ERP Amount",
                                    "ERP Status")}
    assert set(fields) == {"project", "issuetype", "summary", "description"} | mapped
    payload = json.dumps(fields)
    for secret in ("DE89370400440532013000", "6300-SECRET", "private"):
        assert secret not in payload
    [issue] = h.issues()
    f = issue["fields"]
    assert f[h.fields["ERP External ID"]] == "fake:purchaseInvoices:inv-1"
    assert f[h.fields["ERP Document Number"]] == "PI-1001"
    assert f[h.fields["ERP Vendor"]] == "V10 Fabrikam"
    assert f[h.fields["ERP Amount"]] == 1234.5
    assert f[h.fields["ERP Status"]] == "Draft"
    assert f["summary"] == "Review purchase invoice PI-1001 from Fabrikam: 1,234.50 EUR"
    # description is ADF (the sandbox validates it against Atlassian's schema) and shows the context
    description = f["description"]
    assert description["type"] == "doc" and description["version"] == 1
    assert h.sandbox._is_adf(description)
    text = adf.plain_text(description)
    for value in ("PI-1001", "F-77", "2026-12-02", "1,234.50", "fake:purchaseInvoices:inv-1",
                  "Open the record in the ERP"):
        assert value in text
    assert any(m.get("attrs", {}).get("href") == "https://erp.example/purchaseInvoices/inv-1"
               for m in _marks(description))


def _marks(node: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(node, dict):
        out += node.get("marks") or []
        for child in node.get("content") or []:
            out += _marks(child)
    return out


def refuse_first_bulk_create(writer: JiraIssueWriter, monkeypatch, status: int, message: str) -> list[int]:
    """The first bulk create call fails with ``status`` (after the HTTP client's own retries); returns the
    sizes of every bulk create call."""
    real_bulk = writer.jira.bulk_create
    calls: list[int] = []

    def refuse_once(issues):
        calls.append(len(issues))
        if len(calls) == 1:
            raise ApiError("jira", "POST", "/rest/api/3/issue/bulk", status, {"errorMessages": [message]})
        return real_bulk(issues)

    monkeypatch.setattr(writer.jira, "bulk_create", refuse_once)
    return calls


def test_a_failed_bulk_call_keeps_uncertain_intents_due_for_a_verified_retry(h: Harness, monkeypatch):
    entity = h.entity()
    for n in range(3):
        h.vendor(str(n))
    writer = h.writer(search_lag_bound_s=0.5)
    calls = refuse_first_bulk_create(writer, monkeypatch, 503, "down")
    report = writer.upsert(entity, h.source.all(entity))
    assert report.failed == 3 and report.created == 0 and set(report.retry_at) == set(report.failures)
    # A 503 may come after Jira created the issues: the rows stay intent (uncertain), with the error and
    # a verify time; the ledger retry picks them up then.
    pending = h.ledger.in_state("bc_jira", INTENT)
    assert len(pending) == 3 and all("503" in (e.last_error or "") for e in pending)
    assert all(e.verify_after and e.retry_after == e.verify_after for e in pending)
    assert writer.upsert(entity, h.source.all(entity)).deferred      # before the bound: not re-created

    time.sleep(0.6)
    again = writer.upsert(entity, h.source.all(entity))
    assert again.created == 3 and calls == [3, 3]
    assert len(h.issues()) == 3
    assert h.ledger.counts("bc_jira")["done"] == 3


def test_a_refused_bulk_call_is_definite_and_a_permanent_failure(h: Harness, monkeypatch):
    """A 400 refusing the whole request created nothing: no uncertainty, no automatic retry (a person
    must look), and an explicit retry creates at once."""
    entity = h.entity()
    h.vendor("1")
    writer = h.writer(search_lag_bound_s=60)
    calls = refuse_first_bulk_create(writer, monkeypatch, 400, "bad request")
    report = writer.upsert(entity, h.source.all(entity))
    assert report.failed == 1 and report.needs_a_person and not report.retry_at
    row = h.ledger.get("bc_jira", "fake:vendors:1")
    assert row.state == FAILED and row.retry_after is None and row.verify_after is None
    assert writer.upsert(entity, h.source.all(entity)).created == 1
    assert calls == [1, 1]


def test_a_transient_element_failure_is_retried_automatically_with_backoff(h: Harness, monkeypatch):
    from connector_pipelines.systems.jira.models import BulkCreateResult

    entity = h.entity()
    h.vendor("1")
    writer = h.writer()
    monkeypatch.setattr(writer.jira, "bulk_create", lambda issues: BulkCreateResult(
        created=[None] * len(issues), errors={0: "rate limited"}, error_status={0: 429}))
    report = writer.upsert(entity, h.source.all(entity))
    row = h.ledger.get("bc_jira", "fake:vendors:1")
    assert report.failed == 1 and not report.needs_a_person
    assert row.state == FAILED and row.retry_after is not None and row.attempts == 1
    assert h.ledger.due_for_retry("bc_jira", now=row.retry_after) == [row]


def test_a_retry_of_records_no_longer_exceptions_verifies_uncertain_creates_then_settles_them(h: Harness):
    """The ledger retry for records whose exception ended meanwhile: an uncertain create is first looked for
    in Jira (after the lag bound), adopted when found, closed as done without an issue when not."""
    from connector_pipelines.integrations.sync import retry_records

    entity = h.entity()
    h.vendor("made")         # its create reached Jira, the answer was lost
    h.vendor("never")        # its create never reached Jira
    made = h.writer().upsert(entity, [h.source.record(entity, "made")])
    issue_key = h.ledger.get("bc_jira", "fake:vendors:made").target_key
    rows = [{"source_key": f"fake:vendors:{rid}", "entity": entity.name, "action": "issue", "context": {}}
            for rid in ("made", "never")]
    h.ledger.record_intents("bc_jira", rows, "run-dead")              # as a killed writer leaves them
    for rid in ("made", "never"):
        h.vendor(rid, blocked=" ")                                    # unblocked in the ERP since
    writer = h.writer(search_lag_bound_s=0.5)
    h.sandbox.search_lag_s = 10                                       # search cannot see "made" yet

    first = retry_records(h.integration, h.source, writer, h.ledger.by_ids(
        e.id for e in h.ledger.get_many("bc_jira", [r["source_key"] for r in rows]).values()))
    assert len(first[entity.name].write.deferred) == 2 and made.created == 1
    assert {e.state for e in h.ledger.get_many("bc_jira", [r["source_key"] for r in rows]).values()} == {INTENT}

    time.sleep(0.6)
    h.sandbox.search_lag_s = 0                                        # the index caught up
    due = h.ledger.due_for_retry("bc_jira")
    assert {e.source_key for e in due} == {"fake:vendors:made", "fake:vendors:never"}
    retry_records(h.integration, h.source, writer, due)
    settled = h.ledger.get_many("bc_jira", [r["source_key"] for r in rows])
    assert settled["fake:vendors:made"].state == DONE and settled["fake:vendors:made"].target_key == issue_key
    assert settled["fake:vendors:never"].state == DONE and settled["fake:vendors:never"].target_key is None
    assert settled["fake:vendors:never"].context["settled"] == "no longer an exception"
    assert len(h.issues()) == 1 and h.ledger.due_for_retry("bc_jira") == []


# -- a document's state: one comment per change, none on re-reads ------------------------------------------
def stateful(h: Harness) -> EntitySync:
    """blocked_vendors with a declared state: the value of ``blocked``."""
    return h.entity().model_copy(update={"state": "Blocked: {blocked}"})


def comments(h: Harness, key: str) -> list[str]:
    return [adf_text(c.body).strip() for c in h.sandbox.sites[CLOUD].issue(key).comments]


def test_a_change_of_state_is_one_update_and_one_comment_and_re_reads_comment_nothing(h: Harness):
    entity = stateful(h)
    h.vendor("1", blocked="All")
    writer = h.writer()
    writer.upsert(entity, h.source.all(entity))
    key = h.ledger.get("bc_jira", "fake:vendors:1").target_key
    assert comments(h, key) == []            # a new issue is not a change of state

    h.vendor("1", blocked="Payment")
    h.reset_calls()
    report = writer.upsert(entity, h.source.all(entity))
    assert (report.updated, report.state_comments) == (1, 1)
    assert h.calls(EDIT) == 1 and h.calls(COMMENT) == 1
    assert comments(h, key) == ["Vendor V1 changed in Business Central: Blocked: All → Blocked: Payment"]

    h.reset_calls()
    for _ in range(3):                        # the same state read again: no write, no comment
        assert writer.upsert(entity, h.source.all(entity)).skipped == 1
    assert h.sandbox.calls_total == 0 and len(comments(h, key)) == 1


def test_a_field_change_without_a_change_of_state_updates_without_a_comment(h: Harness):
    entity = stateful(h)
    h.vendor("1", blocked="All")
    writer = h.writer()
    writer.upsert(entity, h.source.all(entity))
    h.vendor("1", blocked="All", name="Renamed")
    report = writer.upsert(entity, h.source.all(entity))
    assert (report.updated, report.state_comments) == (1, 0)
    assert h.calls(COMMENT) == 0


def test_a_document_that_stops_being_an_exception_keeps_its_issue_current_once(h: Harness):
    from connector_pipelines.integrations.sync import sync_window

    entity = stateful(h)
    h.vendor("1", blocked="All")
    h.vendor("2", blocked=" ")                # never an exception: no issue, no Jira call for it
    writer = h.writer()
    sync_window(h.source, writer, entity, datetime.now(), datetime.now())
    key = h.ledger.get("bc_jira", "fake:vendors:1").target_key

    h.vendor("1", blocked=" ")                # unblocked in the ERP
    h.reset_calls()
    report = sync_window(h.source, writer, entity, datetime.now(), datetime.now())
    assert report.not_exceptions == 2 and report.write.updated == 1 and report.write.state_comments == 1
    assert h.calls(EDIT) == 1 and h.calls(COMMENT) == 1 and h.calls(SEARCH) == 0
    assert comments(h, key) == [("Vendor V1 changed in Business Central: Blocked: All → Blocked: "
                                 "(no longer an exception)")]
    h.reset_calls()
    sync_window(h.source, writer, entity, datetime.now(), datetime.now())
    assert h.sandbox.calls_total == 0 and len(comments(h, key)) == 1


def test_a_failed_state_update_keeps_the_old_state_so_its_retry_still_comments(h: Harness, monkeypatch):
    entity = stateful(h)
    h.vendor("1", blocked="All")
    writer = h.writer()
    writer.upsert(entity, h.source.all(entity))
    key = h.ledger.get("bc_jira", "fake:vendors:1").target_key
    h.vendor("1", blocked="Payment")
    real = h.jira.add_comment
    monkeypatch.setattr(h.jira, "add_comment", lambda *a, **k: (_ for _ in ()).throw(
        ApiError("jira", "POST", "/comment", 503, {})))
    assert writer.upsert(entity, h.source.all(entity)).failed == 1
    assert h.ledger.get("bc_jira", "fake:vendors:1").context["state"] == "Blocked: All"
    monkeypatch.setattr(h.jira, "add_comment", real)
    report = writer.upsert(entity, h.source.all(entity))
    assert report.state_comments == 1 and comments(h, key) == [
        "Vendor V1 changed in Business Central: Blocked: All → Blocked: Payment"]
