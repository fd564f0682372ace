"""FinanceOperationsSource against a scripted F&O client: events -> change sets, reads, write-backs.

The client is a stand-in that records what the adapter asks; the real client and sandbox are covered
by systems/ and sandbox/ tests and end to end by e2e/test_fo_jira_e2e.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector_pipelines.core.http import ApiError
from connector_pipelines.integrations.definition import IntegrationDefinition
from connector_pipelines.integrations.sources.finance_operations import FinanceOperationsSource

DEFS = Path(__file__).resolve().parents[2] / "connector_pipelines" / "defs" / "d365_jira" / "defs.yaml"


@dataclass
class SetInfo:
    keys: list[str]


@dataclass
class Metadata:
    entity_sets: dict[str, SetInfo]
    enums: dict[tuple[str, str], str] = field(default_factory=dict)

    def enum_type(self, entity_set: str, prop: str) -> str | None:
        return self.enums.get((entity_set, prop))


class Http:
    calls = 0


class ScriptedClient:
    """Rows per entity set; records get_many / list / patch / action calls."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.asked: list[tuple[str, list[dict[str, Any]], Any]] = []
        self.listed: list[tuple[str, str | None]] = []
        self.patched: list[tuple[str, dict, dict, str | None]] = []
        self.actions: list[tuple[str, dict, str, dict]] = []
        self.action_error: ApiError | None = None
        self.http = Http()
        self._metadata = Metadata(
            {"PurchaseOrderHeadersV2": SetInfo(["dataAreaId", "PurchaseOrderNumber"]),
             "VendorInvoiceHeaders": SetInfo(["dataAreaId", "HeaderReference"])},
            {("PurchaseOrderHeadersV2", "DocumentApprovalStatus"):
             "Microsoft.Dynamics.DataEntities.VersioningDocumentState"})

    @staticmethod
    def literal(value: Any, enum_type: str | None = None) -> str:
        from connector_pipelines.systems.finance_operations.client import FinanceOperationsClient

        return FinanceOperationsClient.literal(value, enum_type)

    def metadata(self) -> Metadata:
        return self._metadata

    def get_many(self, entity_set, keys, *, select=None, expand=None, **_):
        self.asked.append((entity_set, keys, expand))
        return [r for r in self.rows.get(entity_set, [])
                if any(all(str(r.get(k, "")).lower() == str(v).lower() for k, v in key.items()) for key in keys)]

    def list(self, entity_set, *, filter=None, expand=None, cross_company=False, **_):
        self.listed.append((entity_set, filter))
        return iter(self.rows.get(entity_set, []))

    def patch(self, entity_set, keys, changes, etag=None):
        self.patched.append((entity_set, keys, changes, etag))

    def invoke_action(self, entity_set, keys, action, parameters=None):
        if self.action_error:
            raise self.action_error
        self.actions.append((entity_set, keys, action, parameters or {}))


@pytest.fixture
def integration() -> IntegrationDefinition:
    return IntegrationDefinition.model_validate(yaml.safe_load(DEFS.read_text())["attributes"])


@pytest.fixture
def client() -> ScriptedClient:
    return ScriptedClient()


@pytest.fixture
def source(client) -> FinanceOperationsSource:
    return FinanceOperationsSource(client, "USMF", "https://contoso.operations.dynamics.com")


def envelope(event_id: str, control: int, area: str = "USMF", **fields: Any) -> dict[str, Any]:
    return {"BusinessEventId": event_id, "BusinessEventLegalEntity": area, "ContextRecordSubject": "",
            "ControlNumber": control, "EventId": "9C2D1C6A-4B7E-4F35-9E55-0B4E1B0F6A11",
            "EventTime": "/Date(1763870400000)/", "EventTimeIso8601": "2025-11-23T04:00:00Z",
            "InitiatingUserAADObjectId": "{00000000-0000-0000-0000-000000000000}", "MajorVersion": 0,
            "MinorVersion": 0, "ParentContextRecordSubjects": [], **fields}


def test_events_become_record_ids_per_entity_with_what_announced_them(source, integration):
    changes = source.changes_from_notifications(integration.entities, [
        envelope("PurchaseOrderConfirmedBusinessEvent", 5637144580, PurchaseOrderNumber="PO-1"),
        envelope("PurchaseOrderWorkflowRejectedBusinessEvent", 5637144583, PurchaseOrderNumber="PO-1"),
        envelope("VendorInvoicePostedBusinessEvent", 5637144590, VendorAccount="US-101", InvoiceNumber="INV/7"),
        envelope("PurchaseOrderConfirmedBusinessEvent", 5637144599, area="DEMF", PurchaseOrderNumber="PO-9"),
        envelope("CustomerInvoicePostedBusinessEvent", 5637144601, InvoiceId="X"),
        envelope("PurchaseOrderConfirmedBusinessEvent", 5637144605),
        {"no": "envelope"},
    ])
    # the same PO in two event types = two entities (two issues), keyed by entity name
    assert changes.ids == {"purchase_orders_confirmed": {"usmf:PO-1"},
                           "purchase_orders_rejected_in_workflow": {"usmf:PO-1"},
                           "vendor_invoices_posted": {"usmf:US-101:INV%2F7"}}
    assert changes.announced_by["usmf:PO-1"] == ["PurchaseOrderConfirmedBusinessEvent ControlNumber 5637144580",
                                                 "PurchaseOrderWorkflowRejectedBusinessEvent ControlNumber 5637144583"]
    assert changes.ignored == 4
    text = " | ".join(changes.ignored_reasons)
    assert "'demf', this integration watches 'usmf'" in text
    assert "CustomerInvoicePostedBusinessEvent (ControlNumber 5637144601) is not mapped" in text
    assert "lacks PurchaseOrderNumber" in text
    assert "not a business event" in text


def test_fetch_by_ids_reads_all_in_one_call_and_sums_the_lines(source, client, integration):
    entity = integration.entity("vendor_invoices_posted")
    client.rows["VendorInvoiceHeaders"] = [
        {"dataAreaId": "usmf", "HeaderReference": "H1", "VendorAccount": "US-101", "InvoiceNumber": "INV/7",
         "VendorInvoiceLines": [{"Amount": 1200}, {"Amount": 34.5}]},
        {"dataAreaId": "usmf", "HeaderReference": "H2", "VendorAccount": "US-102", "InvoiceNumber": "INV-8",
         "VendorInvoiceLines": []}]

    records = source.fetch_by_ids(entity, ["usmf:US-101:INV%2F7", "usmf:US-102:INV-8", "usmf:US-103:GONE"])

    assert len(client.asked) == 1
    set_, keys, expand = client.asked[0]
    assert set_ == "VendorInvoiceHeaders" and expand == ["VendorInvoiceLines"]
    assert keys[0] == {"dataAreaId": "usmf", "VendorAccount": "US-101", "InvoiceNumber": "INV/7"}
    by_id = {r.record_id: r for r in records}
    assert set(by_id) == {"usmf:US-101:INV%2F7", "usmf:US-102:INV-8"}
    first = by_id["usmf:US-101:INV%2F7"]
    assert first.external_id == "fo:vendor_invoices_posted:usmf:US-101:INV%2F7"
    assert first.data["LinesTotal"] == 1234.5 and first.data["LineCount"] == 2
    assert "VendorInvoiceLines" not in first.data  # lines are summarised, not carried to Jira
    assert first.url == "https://contoso.operations.dynamics.com/?cmp=usmf&mi=VendorInvoiceJournal"
    assert "US-103" in source.describe_missing(entity, "usmf:US-103:GONE")
    assert source.parse_external_id(first.external_id) == ("vendor_invoices_posted", "usmf:US-101:INV%2F7")


def test_current_exceptions_filter_server_side_with_the_typed_enum_literal(source, client, integration):
    entity = integration.entity("purchase_orders_rejected_in_workflow")
    client.rows["PurchaseOrderHeadersV2"] = [
        {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-1", "DocumentApprovalStatus": "Rejected"},
        {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-2", "DocumentApprovalStatus": "Approved"}]
    records = source.fetch_current_exceptions(entity)
    [(_, flt)] = client.listed
    assert flt == ("dataAreaId eq 'usmf' and DocumentApprovalStatus eq "
                   "Microsoft.Dynamics.DataEntities.VersioningDocumentState'Rejected'")
    assert [r.record_id for r in records] == ["usmf:PO-1"]
    # posted invoices: no catch-up read is possible (reconciliation says it cannot verify), and no call
    assert source.fetch_current_exceptions(integration.entity("vendor_invoices_posted")) == []
    assert len(client.listed) == 1


def test_an_event_only_entity_is_caught_up_by_state_and_a_recent_date_window(source, client, integration):
    """What a lost "PO confirmed" event would leave unnoticed: every order confirmed with a recent
    accounting date is read, so reconciliation can ask Jira for each one's issue."""
    from datetime import UTC, datetime, timedelta

    entity = integration.entity("purchase_orders_confirmed")
    today = datetime.now(UTC).date()
    client.rows["PurchaseOrderHeadersV2"] = [
        {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-NEW", "DocumentApprovalStatus": "Confirmed",
         "AccountingDate": today.isoformat()},
        {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-OLD", "DocumentApprovalStatus": "Confirmed",
         "AccountingDate": (today - timedelta(days=40)).isoformat()},
        {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-DRAFT", "DocumentApprovalStatus": "Draft",
         "AccountingDate": today.isoformat()}]
    records = source.fetch_current_exceptions(entity)
    [(entity_set, flt)] = client.listed
    since = (today - timedelta(days=14)).isoformat()
    assert entity_set == "PurchaseOrderHeadersV2"
    assert flt == (f"dataAreaId eq 'usmf' and AccountingDate ge {since}T00:00:00Z and DocumentApprovalStatus eq "
                   "Microsoft.Dynamics.DataEntities.VersioningDocumentState'Confirmed'")
    # the scripted client does not evaluate filters: the catch-up rule is applied client-side as well
    assert [r.record_id for r in records] == ["usmf:PO-NEW"]


def rejected_po(client, status: str) -> None:
    client.rows["PurchaseOrderHeadersV2"] = [{"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-1",
                                              "DocumentApprovalStatus": status, "@odata.etag": 'W/"1"'}]


def test_workflow_action_is_called_only_while_the_step_is_due(source, client, integration):
    entity = integration.entity("purchase_orders_rejected_in_workflow")
    rejected_po(client, "Rejected")
    outcome = source.resolve(entity, "usmf:PO-1", "AP-7: supplier confirmed new price")
    assert outcome.status == "acted" and "SubmitToWorkflow called" in outcome.message
    assert client.actions == [("PurchaseOrderHeadersV2", {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-1"},
                               "SubmitToWorkflow", {"Comment": "AP-7: supplier confirmed new price"})]
    rejected_po(client, "InReview")
    assert source.resolve(entity, "usmf:PO-1").status == "already"
    rejected_po(client, "Draft")
    outcome = source.resolve(entity, "usmf:PO-1")
    assert outcome.status == "not_applicable" and "'Draft'" in outcome.message
    client.rows["PurchaseOrderHeadersV2"] = []
    assert source.resolve(entity, "usmf:PO-1").status == "not_applicable"
    assert len(client.actions) == 1


def test_an_undeployed_workflow_action_needs_a_person_not_a_retry(source, client, integration):
    entity = integration.entity("purchase_orders_rejected_in_workflow")
    rejected_po(client, "Rejected")
    client.action_error = ApiError("finance_operations", "POST", "https://fo/data/x", 404,
                                   {"error": {"code": "", "message": "No HTTP resource was found"}})
    outcome = source.resolve(entity, "usmf:PO-1")
    assert outcome.status == "not_applicable" and "not deployed" in outcome.message
    client.action_error = ApiError("finance_operations", "POST", "https://fo/data/x", 503, "busy")
    with pytest.raises(ApiError):  # transient: the resolution fails and is retried
        source.resolve(entity, "usmf:PO-1")


def test_record_outcome_patches_the_configured_field_with_the_etag_or_keeps_it_in_the_ledger(source, client,
                                                                                              integration):
    confirmed = integration.entity("purchase_orders_confirmed")
    rejected_po(client, "Confirmed")
    outcome = source.resolve(confirmed, "usmf:PO-1", "AP-9: delivery moved to Friday")
    assert outcome.status == "acted" and "ReasonComment" in outcome.message
    assert client.patched == [("PurchaseOrderHeadersV2", {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-1"},
                               {"ReasonComment": "AP-9: delivery moved to Friday"}, 'W/"1"')]
    posted = integration.entity("vendor_invoices_posted")
    client.rows["VendorInvoiceHeaders"] = [{"dataAreaId": "usmf", "HeaderReference": "H1", "VendorAccount": "US-101",
                                            "InvoiceNumber": "INV-1"}]
    outcome = source.resolve(posted, "usmf:US-101:INV-1", "AP-10: checked")
    assert outcome.status == "already" and "ledger" in outcome.message
    assert len(client.patched) == 1
