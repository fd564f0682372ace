"""sync_window / sync_notified, reconcile's classification, and ensure_jira_webhook's lifecycle."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from connector_pipelines.integrations.sync import reconcile, sync_notified, sync_window
from connector_pipelines.integrations.webhooks import (
    JIRA_EVENTS,
    ensure_jira_webhook,
    jira_webhook_filter,
    registrations,
)
from connector_pipelines_tests.integrations.test_jira_writer import CLOUD, Harness, make_harness

WEBHOOK_URL = "https://receiver.example/webhooks/jira"
REGISTER = ("POST", "/ex/jira/{cloudId}/rest/api/3/webhook")
REFRESH = ("PUT", "/ex/jira/{cloudId}/rest/api/3/webhook/refresh")


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def window() -> tuple[datetime, datetime]:
    return datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 20, 0, 15, tzinfo=UTC)


# -- sync -----------------------------------------------------------------------------------------------
def test_sync_window_opens_issues_for_exceptions_only(h: Harness):
    entity = h.entity()
    h.vendor("1")
    h.vendor("2", blocked="Payment")
    h.vendor("3", blocked=" ")  # not blocked: not an exception
    writer = h.writer()

    report = sync_window(h.source, writer, entity, *window())

    assert report.counts()["records_read"] == 3 and report.not_exceptions == 1
    assert report.write.created == 2
    assert sorted(i["fields"][h.fields["ERP External ID"]] for i in h.issues()) == [
        "fake:vendors:1", "fake:vendors:2"]
    h.reset_calls()
    again = sync_window(h.source, writer, entity, *window())
    assert again.write.skipped == 2 and h.sandbox.calls_total == 0


def test_sync_notified_fetches_only_the_announced_records_per_entity(h: Harness):
    h.vendor("1")
    h.vendor("2")
    h.source.put("purchaseInvoices", "inv-1", number="PI-1", vendorNumber="V1", vendorName="Fabrikam",
                 totalAmountIncludingTax=10.0, currencyCode="EUR", status="Draft")
    h.source.put("purchaseInvoices", "inv-2", number="PI-2", status="Open")  # posted: not an exception
    lean = h.integration.model_copy(update={"entities": [e.model_copy(update={"context": []})
                                                         for e in h.integration.entities]})
    writer = h.writer(lean)

    reports = sync_notified(lean, h.source, writer, [
        {"entity_set": "vendors", "id": "2"}, {"entity_set": "purchaseInvoices", "id": "inv-1"},
        {"entity_set": "purchaseInvoices", "id": "inv-2"}, {"entity_set": "purchaseInvoices", "id": "gone"}])

    assert set(reports) == {"blocked_vendors", "purchase_invoices_awaiting_review"}
    assert reports["blocked_vendors"].read == 1 and reports["blocked_vendors"].write.created == 1
    invoices = reports["purchase_invoices_awaiting_review"]
    assert invoices.read == 2 and invoices.not_exceptions == 1 and invoices.write.created == 1
    ext = h.fields["ERP External ID"]
    assert sorted(i["fields"][ext] for i in h.issues()) == ["fake:purchaseInvoices:inv-1", "fake:vendors:2"]


# -- reconcile --------------------------------------------------------------------------------------------
def test_reconcile_classifies_missing_duplicate_stale_and_orphaned(h: Harness):
    entity = h.entity()
    for rid in ("1", "2", "3", "4"):
        h.vendor(rid)
    writer = h.writer()
    writer.upsert(entity, h.source.all(entity))
    key = {rid: h.ledger.get("bc_jira", f"fake:vendors:{rid}").target_key for rid in ("1", "2", "3", "4")}
    h.vendor("5")                                           # missing: an exception nobody opened
    dup = h.create_as_user("fake:vendors:2", "a second one")  # duplicate: two open issues
    h.sandbox.transition_as_user(CLOUD, key["3"], "Done")    # stale: closed in Jira, still blocked
    h.vendor("4", blocked=" ")                               # orphaned: unblocked, issue still open
    h.vendor("6", blocked=" ")                               # neither
    # not ours: another source's key in the project, an issue in another project, a done duplicate
    h.create_as_user("bc:vendors:1", "another source")
    h.sandbox.create_issue_as_user(CLOUD, {"project": {"key": "OTHER"}, "issuetype": {"name": "Task"},
                                           "summary": "x", h.fields["ERP External ID"]: "fake:vendors:77"})
    closed_copy = h.create_as_user("fake:vendors:1", "closed copy")
    h.sandbox.transition_as_user(CLOUD, closed_copy["key"], "Done")

    result = reconcile(h.integration, h.source, writer.backend, entity)

    assert result.exceptions == 4  # 1, 2, 3, 5
    assert result.missing == ["fake:vendors:5"]
    assert result.duplicates == {"fake:vendors:2": sorted([key["2"], dup["key"]])}
    assert result.stale == {"fake:vendors:3": key["3"]}
    assert result.orphaned == {"fake:vendors:4": key["4"]}
    assert result.open_issues == 4  # 1, 2 twice, 4
    assert result.passed is False


@pytest.mark.parametrize("problem", ["missing", "duplicate", "stale"])
def test_reconcile_fails_on_each_problem_alone(h: Harness, problem: str):
    entity = h.entity()
    h.vendor("1")
    h.vendor("2")
    writer = h.writer()
    writer.upsert(entity, h.source.all(entity))
    if problem == "missing":
        h.vendor("3")
    elif problem == "duplicate":
        h.create_as_user("fake:vendors:1")
    else:
        h.sandbox.transition_as_user(CLOUD, h.ledger.get("bc_jira", "fake:vendors:1").target_key, "Done")
    result = reconcile(h.integration, h.source, writer.backend, entity)
    assert result.passed is False
    assert (bool(result.missing), bool(result.duplicates), bool(result.stale)) == (
        problem == "missing", problem == "duplicate", problem == "stale")


def test_reconcile_passes_when_every_exception_has_one_open_issue_even_with_orphans(h: Harness):
    entity = h.entity()
    for rid in ("1", "2", "3"):
        h.vendor(rid)
    writer = h.writer()
    writer.upsert(entity, h.source.all(entity))
    clean = reconcile(h.integration, h.source, writer.backend, entity)
    assert clean.passed and clean.exceptions == 3 and clean.open_issues == 3
    assert (clean.missing, clean.duplicates, clean.stale, clean.orphaned) == ([], {}, {}, {})

    h.vendor("3", blocked=" ")
    with_orphan = reconcile(h.integration, h.source, writer.backend, entity)
    assert with_orphan.passed and with_orphan.orphaned == {"fake:vendors:3": h.ledger.get(
        "bc_jira", "fake:vendors:3").target_key}


def test_reconcile_searches_by_cf_clause_not_the_display_name(h: Harness):
    """Jira does not promise that clauseNames lists cf[n] first; the display name (with spaces, maybe
    shared) must never end up in JQL."""
    entity = h.entity()
    h.vendor("1")
    writer = h.writer()
    writer.upsert(entity, h.source.all(entity))
    field = writer.external_id_field
    reordered = field.model_copy(update={"clause_names": list(reversed(field.clause_names))})
    assert reordered.clause_names[0] == "ERP External ID"
    writer.backend.external_id_field = reordered

    result = reconcile(h.integration, h.source, writer.backend, entity)

    assert result.passed and result.open_issues == 1


# -- ensure_jira_webhook --------------------------------------------------------------------------------------
class JiraResourceStandIn:
    def __init__(self, h: Harness) -> None:
        self.h = h
        self.webhook_url = WEBHOOK_URL
        self.vaults: list[object] = []

    def client(self, vault):
        self.vaults.append(vault)
        return self.h.jira


def test_ensure_jira_webhook_registers_once_keeps_refreshes_and_never_registers_twice(h: Harness):
    resource = JiraResourceStandIn(h)
    vault = SimpleNamespace(name="vault")
    engine = h.ledger.engine
    clock = h.sandbox.clock

    first = ensure_jira_webhook(h.integration, resource, vault, engine, now=clock.now())
    assert first["action"] == "registered" and first["jql"] == "project = FIN" == jira_webhook_filter(h.integration)
    assert resource.vaults == [vault]
    [hook] = h.sandbox.dynamic_webhooks(CLOUD)
    assert hook.id == first["webhook_id"] and hook.url == WEBHOOK_URL and hook.events == JIRA_EVENTS
    assert datetime.fromisoformat(first["expires"]) == hook.expires.replace(microsecond=hook.expires.microsecond
                                                                            // 1000 * 1000)
    [row] = [r for r in registrations(engine) if r["system"] == "jira"]
    assert row["registration_id"] == str(hook.id) and row["resource"] == "project = FIN"

    second = ensure_jira_webhook(h.integration, resource, vault, engine, now=clock.now())
    assert second["action"] == "kept" and second["webhook_id"] == first["webhook_id"]
    assert h.calls(REGISTER) == 1 and h.calls(REFRESH) == 0

    clock.advance(days=25)
    third = ensure_jira_webhook(h.integration, resource, vault, engine, now=clock.now())
    assert third["action"] == "refreshed" and third["webhook_id"] == first["webhook_id"]
    assert h.calls(REFRESH) == 1
    new_expiry = datetime.fromisoformat(third["expires"])
    assert new_expiry - clock.now() > timedelta(days=29)
    [hook] = h.sandbox.dynamic_webhooks(CLOUD)
    assert abs((hook.expires - new_expiry).total_seconds()) < 1

    fourth = ensure_jira_webhook(h.integration, resource, vault, engine, now=clock.now())
    assert fourth["action"] == "kept"
    assert h.calls(REGISTER) == 1 and h.calls(REFRESH) == 1
    assert len(h.sandbox.dynamic_webhooks(CLOUD, include_expired=True)) == 1
    rows = [r for r in registrations(engine) if r["system"] == "jira"]
    assert len(rows) == 1 and rows[0]["expires_at"].replace(tzinfo=UTC) - new_expiry < timedelta(seconds=1)


def test_ensure_jira_webhook_needs_a_url(h: Harness):
    resource = JiraResourceStandIn(h)
    resource.webhook_url = ""
    with pytest.raises(ValueError, match="webhook_url"):
        ensure_jira_webhook(h.integration, resource, None, h.ledger.engine)
    assert h.calls(REGISTER) == 0


def test_an_announced_record_the_source_cannot_return_is_quarantined_and_the_rest_proceeds(h: Harness):
    from connector_pipelines.core.ledger import QUARANTINED

    h.vendor("1")
    writer = h.writer()
    reports = sync_notified(h.integration, h.source, writer, [
        {"entity_set": "vendors", "id": "1"}, {"entity_set": "vendors", "id": "ghost"}])

    report = reports["blocked_vendors"]
    assert report.write.created == 1
    assert report.quarantined == {"fake:vendors:ghost": "fake ERP has no vendors ghost; announced by fake "
                                                        "notification ghost"}
    assert report.counts()["quarantined"] == 1
    row = h.ledger.get("bc_jira", "fake:vendors:ghost")
    assert row.state == QUARANTINED and "fake ERP has no vendors ghost" in row.last_error and row.run_id == "run-1"
    # the record appears later (fixed at the source): the next announcement opens its issue as usual
    h.vendor("ghost")
    again = sync_notified(h.integration, h.source, writer, [{"entity_set": "vendors", "id": "ghost"}])
    assert again["blocked_vendors"].write.created == 1 and not again["blocked_vendors"].quarantined
    assert h.ledger.get("bc_jira", "fake:vendors:ghost").state == "done"
