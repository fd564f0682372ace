"""MondayBackend (Monday.com as a flow target) through the generic RecordWriter, against the Monday sandbox in
process: one item per record found by the external-id column, typed columns, updates without creates, state
comments as item updates, duplicates archived, the board check `ping` uses; and write-back through the generic
path with monday's trigger (a column change, re-read, compared with what the connector wrote)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.failures import WriteSettings
from connector_pipelines.core.http import RetrySettings
from connector_pipelines.core.leases import Leases, new_owner
from connector_pipelines.core.ledger import DONE, Ledger
from connector_pipelines.integrations.definition import IntegrationDefinition
from connector_pipelines.integrations.monday_target import MondayBackend, MondayTrigger, column_value
from connector_pipelines.integrations.sources.base import ResolutionOutcome, SourceRecord
from connector_pipelines.integrations.sync import reconcile, repair
from connector_pipelines.integrations.target import RecordWriter
from connector_pipelines.integrations.write_back import WriteBackProcessor
from connector_pipelines.systems.monday import MondayClient, RateGovernor
from connector_pipelines.systems.monday.errors import MondayConfigError
from sandboxes.common import sync_transport
from sandboxes.harness.stack import MONDAY_BOARDS, MONDAY_COMMON_COLUMNS
from sandboxes.monday import MondaySandbox

DEFS = Path(__file__).resolve().parents[2] / "connector_pipelines" / "defs" / "d365_monday" / "defs.yaml"
TOKEN = "monday-test-token"
INVOICES = "4815162342"


@pytest.fixture
def integration() -> IntegrationDefinition:
    return IntegrationDefinition.model_validate(yaml.safe_load(DEFS.read_text())["attributes"])


def boards(sb: MondaySandbox, *, drop: str | None = None) -> None:
    for board_id, (name, own) in MONDAY_BOARDS.items():
        sb.add_board(name, [{"id": cid, "title": cid, "type": kind, "settings": settings}
                            for cid, kind, settings in [*MONDAY_COMMON_COLUMNS, *own] if cid != drop],
                     board_id=board_id)


@pytest.fixture
def sb() -> MondaySandbox:
    sandbox = MondaySandbox(api_versions=("2026-10",))
    sandbox.add_token(TOKEN)
    boards(sandbox)
    return sandbox


def client_for(sb: MondaySandbox) -> MondayClient:
    return MondayClient.connect("http://monday.test/v2", token=TOKEN, governor=RateGovernor(),
                                transport=sync_transport(sb.app), retry=RetrySettings(initial_backoff_s=0.01))


@pytest.fixture
def writer(sb, integration, tmp_path) -> RecordWriter:
    ledger = Ledger(get_engine(f"sqlite:///{tmp_path}/ledger-{uuid.uuid4().hex[:6]}.sqlite"))
    return RecordWriter(MondayBackend(client_for(sb), integration), ledger, integration, "run-1",
                        leases=Leases(ledger.engine, new_owner("test")),
                        settings=WriteSettings(search_lag_bound_s=0.0, claim_wait_s=5.0, lease_ttl_s=30.0))


def invoice(n: int, *, amount: float = 100.0, name: str = "Fabrikam") -> SourceRecord:
    data = {"InvoiceNumber": f"INV-{n:04d}", "VendorAccount": "US-101", "VendorName": name, "LinesTotal": amount,
            "Currency": "USD", "InvoiceDate": "2026-12-01"}
    return SourceRecord("vendor_invoice_items", f"fo:vendor_invoice_items:usmf:US-101:INV-{n:04d}",
                        f"usmf:US-101:INV-{n:04d}", data, f"https://fo.example/?mi=VendorInvoiceJournal&n={n}",
                        number=f"INV-{n:04d}")


def items(sb: MondaySandbox) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in sb.items(INVOICES):
        out.setdefault(item["column_values"]["external_id"]["text"], []).append(item)
    return out


def test_column_values_follow_the_declared_kind():
    assert column_value("numbers", "1,234.50") == 1234.5 and column_value("text", "") is None
    assert column_value("dropdown", "a, b") == ["a", "b"] and column_value("date", "2026-12-01") == "2026-12-01"


def test_records_become_one_typed_item_each_and_re_runs_change_nothing(sb, writer, integration):
    entity = integration.entity("vendor_invoice_items")
    report = writer.upsert(entity, [invoice(n) for n in range(30)])
    assert report.created == 30 and report.failed == 0
    found = items(sb)
    assert len(found) == 30 and all(len(v) == 1 for v in found.values())
    cols = found[invoice(3).external_id][0]["column_values"]
    assert cols["vendor"]["text"] == "US-101 Fabrikam" and cols["amount"]["text"] in ("100", "100.0")
    assert cols["invoice_date"]["value"]["date"] == "2026-12-01" and "n=3" in cols["erp_link"]["value"]["url"]
    creates = sb.mutation_calls("create_item")
    assert creates == 30

    calls = sb.calls
    again = writer.upsert(entity, [invoice(n) for n in range(30)])
    assert again.skipped == 30 and sb.calls == calls            # unchanged records cost no Monday call


def test_a_changed_record_updates_its_item_and_a_lost_ledger_still_finds_it(sb, writer, integration, tmp_path):
    entity = integration.entity("vendor_invoice_items")
    writer.upsert(entity, [invoice(1)])
    assert writer.upsert(entity, [invoice(1, amount=250.0, name="Fabrikam Ltd")]).updated == 1
    [item] = items(sb)[invoice(1).external_id]
    assert item["name"] == "INV-0001 Fabrikam Ltd" and item["column_values"]["amount"]["text"] in ("250", "250.0")

    # another deployment with an empty ledger: the external-id column finds the item, nothing is created
    fresh = Ledger(get_engine(f"sqlite:///{tmp_path}/fresh.sqlite"))
    other = RecordWriter(MondayBackend(client_for(sb), integration), fresh, integration, "run-2",
                         leases=Leases(fresh.engine, new_owner("other")),
                         settings=WriteSettings(search_lag_bound_s=0.0, claim_wait_s=5.0, lease_ttl_s=30.0))
    assert other.upsert(entity, [invoice(1, amount=300.0)]).updated == 1
    assert len(items(sb)[invoice(1).external_id]) == 1 and sb.mutation_calls("create_item") == 1
    assert fresh.get("d365_monday", invoice(1).external_id).state == DONE


def test_a_state_change_is_one_item_update(sb, writer, integration):
    entity = integration.entity("vendor_invoice_items").model_copy(update={"state": "{VendorName}"})
    writer.upsert(entity, [invoice(1)])
    assert writer.upsert(entity, [invoice(1, name="Renamed")]).state_comments == 1
    [item] = items(sb)[invoice(1).external_id]
    assert item["updates"] == [
        "Vendor invoice INV-0001 changed in Dynamics 365 Finance & Operations: Fabrikam → Renamed"]


def test_reconcile_and_repair_archive_a_newer_duplicate(sb, writer, integration):
    entity = integration.entity("vendor_invoice_items")
    writer.upsert(entity, [invoice(1)])
    sb.create_item_as_user(INVOICES, "made by a person", {"external_id": invoice(1).external_id})

    class OneInvoice:
        def external_id(self, entity, record_id):
            return f"fo:vendor_invoice_items:{record_id}"

        def fetch_current_exceptions(self, entity):
            return [invoice(1)]

        def fetch_all(self, entity):
            return [invoice(1)]

    rec = reconcile(integration, OneInvoice(), writer.backend,
                    entity.model_copy(update={"catch_up": None, "exception": []}))
    assert rec.duplicates and len(rec.duplicates[invoice(1).external_id]) == 2
    result = repair(integration, OneInvoice(), writer, entity, rec)
    assert len(result.closed_duplicates) == 1
    assert len([i for i in sb.items(INVOICES) if i["column_values"]["external_id"]["text"] == invoice(1).external_id]) == 1


def test_the_board_check_names_a_missing_column(integration):
    sandbox = MondaySandbox(api_versions=("2026-10",))
    sandbox.add_token(TOKEN)
    boards(sandbox, drop="amount")
    with pytest.raises(MondayConfigError, match="amount"):
        MondayBackend(client_for(sandbox), integration).check()


class SlowFieldWriter:
    """The source side of a write-back: counts the PATCHes it is asked for, each taking a while (the window in
    which a second run would act on what it read before the first finished)."""

    def __init__(self) -> None:
        self.writes: list[dict] = []
        self.lock = threading.Lock()

    def parse_external_id(self, source_key: str) -> tuple[str, str]:
        return source_key.split(":")[1], source_key.split(":", 3)[3]

    def write_fields(self, entity, record_id: str, values: dict) -> ResolutionOutcome:
        time.sleep(0.3)
        with self.lock:
            self.writes.append(values)
        return ResolutionOutcome("acted", f"{sorted(values)} written to {record_id}")


def test_two_runs_acting_on_one_column_change_write_it_once(sb, writer, integration):
    """Two runs take the same change event at once (a re-delivery launched twice): the second waits for the
    record's lease, then reads what the first remembered as written — an echo — and writes nothing. Reading the
    ledger row before taking the lease (or not taking it) writes the change twice."""
    writer.upsert(integration.entity("vendor_invoice_items"), [invoice(1)])
    [item] = items(sb)["fo:vendor_invoice_items:usmf:US-101:INV-0001"]
    sb.change_column_as_user(item["id"], "note", "Freight agreed")
    event = {"type": "update_column_value", "boardId": int(INVOICES), "pulseId": int(item["id"]), "columnId": "note"}
    source = SlowFieldWriter()
    reports = []

    def run(n: int) -> None:
        processor = WriteBackProcessor(integration, source, MondayTrigger(MondayBackend(client_for(sb), integration),
                                                                          integration),
                                       writer.ledger, f"run-{n}", leases=Leases(writer.ledger.engine, new_owner(f"r{n}")),
                                       settings=WriteSettings(search_lag_bound_s=0.0, claim_wait_s=10.0,
                                                              lease_ttl_s=30.0))
        reports.append(processor.process([event]))

    threads = [threading.Thread(target=run, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert source.writes == [{"InvoiceDescription": "Freight agreed"}]
    assert sorted((r.acted, r.echoes) for r in reports) == [(0, 1), (1, 0)]
    row = writer.ledger.get(integration.name, "fo:vendor_invoice_items:usmf:US-101:INV-0001")
    assert row.context["written"]["note"] == "Freight agreed" and row.state == DONE
    outcome = writer.ledger.get(integration.name, "fo:vendor_invoice_items:usmf:US-101:INV-0001#write_back")
    assert outcome.state == DONE and outcome.context["outcome"] == "acted"


def test_an_event_for_an_item_the_connector_did_not_create_or_another_column_is_ignored(sb, writer, integration):
    writer.upsert(integration.entity("vendor_invoice_items"), [invoice(1)])
    [item] = items(sb)["fo:vendor_invoice_items:usmf:US-101:INV-0001"]
    source = SlowFieldWriter()
    processor = WriteBackProcessor(integration, source, MondayTrigger(MondayBackend(client_for(sb), integration),
                                                                      integration),
                                   writer.ledger, "run-x", leases=Leases(writer.ledger.engine, new_owner("x")))
    base = {"type": "update_column_value", "boardId": int(INVOICES), "pulseId": int(item["id"]), "columnId": "note"}
    report = processor.process([{**base, "pulseId": 999999}, {**base, "columnId": "amount"},
                                {**base, "type": "create_item"}, base])
    assert report.ignored == 3 and report.echoes == 1 and source.writes == []
