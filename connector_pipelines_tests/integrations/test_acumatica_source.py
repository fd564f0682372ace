"""AcumaticaSource against the Acumatica sandbox (in process): keys and links, windowed reads, push
notifications as signals only, and resolutions that act only after re-reading the document's Status."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.http import ApiError, RetrySettings
from connector_pipelines.core.vault import Vault
from connector_pipelines.integrations.definition import IntegrationDefinition
from connector_pipelines.integrations.sources.acumatica import AcumaticaSource
from connector_pipelines.systems.acumatica import AcumaticaClient, AcumaticaTokenProvider
from sandboxes.acumatica import AcumaticaSandbox
from sandboxes.common import sync_transport

DEFS = Path(__file__).resolve().parents[2] / "connector_pipelines" / "defs" / "acumatica_jira" / "defs.yaml"
INSTANCE = "http://acumatica.test"
TENANT = "Company"


@pytest.fixture
def integration() -> IntegrationDefinition:
    return IntegrationDefinition.model_validate(yaml.safe_load(DEFS.read_text())["attributes"])


@pytest.fixture
def sb() -> AcumaticaSandbox:
    sandbox = AcumaticaSandbox(tenant=TENANT, endpoint_versions=("24.200.001",))
    sandbox.add_user("connector", "pw-123")
    sandbox.action_polls = 1
    sandbox.add_vendor(VendorID="V-FAB", VendorName="Fabrikam")
    return sandbox


@pytest.fixture
def source(sb, tmp_path) -> AcumaticaSource:
    vault = Vault(get_engine(f"sqlite:///{tmp_path}/vault.sqlite"), [Vault.generate_key()])
    transport = sync_transport(sb.app)
    client_id = sb.register_connected_app(str(uuid.uuid4()), "app-secret")
    tokens = AcumaticaTokenProvider(vault, "acumatica:test", INSTANCE, client_id, "app-secret", username="connector",
                                    password="pw-123", transport=transport)
    client = AcumaticaClient.connect(INSTANCE, tenant=TENANT, auth=tokens, transport=transport,
                                     retry=RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.02))
    yield AcumaticaSource(client, TENANT)
    client.close()
    tokens.close()


def keys(doc: dict) -> tuple[str, str]:
    return doc["Type"], doc.get("ReferenceNbr") or doc["OrderNbr"]


# -- keys, links, reads -------------------------------------------------------------------------------
def test_record_ids_are_the_key_path_and_external_ids_round_trip(source, sb, integration):
    bills = integration.entity("bills_needing_attention")
    bill = sb.add_bill(vendor="V-FAB", amount=100.0)
    [record] = source.fetch_by_ids(bills, [f"Bill/{bill['ReferenceNbr']}"])
    assert record.record_id == f"Bill/{bill['ReferenceNbr']}" and record.number == bill["ReferenceNbr"]
    assert record.external_id == f"acu:Bill:Bill/{bill['ReferenceNbr']}"
    assert source.parse_external_id(record.external_id) == ("Bill", record.record_id)
    assert "ScreenId=AP301000" in record.url and f"RefNbr={bill['ReferenceNbr']}" in record.url
    with pytest.raises(ValueError):
        source.parse_external_id("bc:vendors:1")


def test_a_window_reads_only_the_fields_the_definition_names(source, sb, integration):
    bills = integration.entity("bills_needing_attention")
    bill = sb.add_bill(vendor="V-FAB", amount=100.0)
    now = sb.clock.now()
    [record] = source.fetch_changed(bills, now - timedelta(minutes=5), now + timedelta(minutes=5))
    assert record.data["Status"] == "On Hold" and record.data["Amount"] == 100.0
    assert "Details" not in record.data and "Terms" not in record.data        # $select: what the templates name
    assert record.record_id == f"Bill/{bill['ReferenceNbr']}"
    assert source.fetch_changed(bills, now + timedelta(minutes=5), now + timedelta(minutes=10)) == []


def test_current_exceptions_are_filtered_at_acumatica(source, sb, integration):
    bills = integration.entity("bills_needing_attention")
    held = sb.add_bill(vendor="V-FAB", amount=10.0)
    sb.add_bill(vendor="V-FAB", amount=20.0, hold=False)       # Balanced: not an exception
    assert [r.record_id for r in source.fetch_current_exceptions(bills)] == [f"Bill/{held['ReferenceNbr']}"]


# -- push notifications: keys only, every document re-read ----------------------------------------------
def notification(query: str, inserted=(), deleted=(), company: str = TENANT, ident: str = "n-1") -> dict:
    return {"Query": query, "CompanyId": company, "Id": ident, "TimeStamp": 1, "Inserted": list(inserted),
            "Deleted": list(deleted), "AdditionalInfo": {}}


def test_notifications_name_records_by_their_keys(source, integration):
    row = {"Type": "Bill", "ReferenceNbr": "000007", "Status": "Balanced"}
    old = dict(row, Status="On Hold")
    changes = source.changes_from_notifications(integration.entities, [
        notification("ConnectorBills", [row], [old]),                                        # an update
        notification("ConnectorPurchaseOrders", [], [{"Type": "Normal", "OrderNbr": "PO9"}]),  # left the query
        notification("ConnectorChecks", [{"Type": "Payment"}]),                             # no ReferenceNbr
        notification("SomeOtherInquiry", [row]),
        notification("ConnectorBills", [row], company="OtherTenant"),
    ])
    assert changes.ids == {"bills_needing_attention": {"Bill/000007"},
                           "purchase_orders_needing_attention": {"Normal/PO9"}}
    assert changes.ignored == 3
    assert any("SomeOtherInquiry" in r for r in changes.ignored_reasons)
    assert any("OtherTenant" in r for r in changes.ignored_reasons)


def test_a_notification_is_a_signal_the_read_decides(source, sb, integration):
    """The row says Balanced; Acumatica says On Hold: the record is what the API returns."""
    bills = integration.entity("bills_needing_attention")
    bill = sb.add_bill(vendor="V-FAB", amount=10.0)
    rid = f"Bill/{bill['ReferenceNbr']}"
    changes = source.changes_from_notifications(integration.entities, [
        notification("ConnectorBills", [{"Type": "Bill", "ReferenceNbr": bill["ReferenceNbr"], "Status": "Balanced"}])])
    [record] = source.fetch_by_ids(bills, sorted(changes.ids["bills_needing_attention"]))
    assert record.record_id == rid and record.data["Status"] == "On Hold"


# -- resolutions --------------------------------------------------------------------------------------
def test_release_only_from_balanced_and_never_twice(source, sb, integration):
    bills = integration.entity("bills_needing_attention")
    bill = sb.add_bill(vendor="V-FAB", amount=10.0)
    rid = f"Bill/{bill['ReferenceNbr']}"

    held = source.resolve(bills, rid)
    assert held.status == "not_applicable" and "Status is 'On Hold'" in held.message
    assert sb.action_calls("Bill", "ReleaseBill") == 0

    sb.update_document("Bill", keys(bill), Hold=False)
    acted = source.resolve(bills, rid)
    assert acted.status == "acted" and "(Status was Balanced, now Open)" in acted.message
    again = source.resolve(bills, rid)
    assert again.status == "already" and "already Open" in again.message
    assert sb.action_calls("Bill", "ReleaseBill") == 1


def test_an_action_acumatica_refuses_is_reported_not_retried(source, sb, integration, monkeypatch):
    """The bill changed between our read and the action (someone put it back on hold): Acumatica's refusal
    becomes the issue's comment."""
    bills = integration.entity("bills_needing_attention")
    bill = sb.add_bill(vendor="V-FAB", amount=10.0, hold=False)
    real_get = source.client.get

    def read_then_hold(entity, key, **kw):
        row = real_get(entity, key, **kw)
        sb.update_document("Bill", keys(bill), Hold=True)
        return row

    monkeypatch.setattr(source.client, "get", read_then_hold)
    outcome = source.resolve(bills, f"Bill/{bill['ReferenceNbr']}")
    assert outcome.status == "not_applicable" and "Acumatica refused ReleaseBill" in outcome.message
    assert sb.get_document("Bill", keys(bill))["Status"] == "On Hold"


def test_taking_an_unbalanced_order_off_hold_is_refused_with_acumatica_s_field_error(source, sb, integration):
    orders = integration.entity("purchase_orders_needing_attention")
    order = sb.add_purchase_order(vendor="V-FAB", lines=[100.0], control_total=250.0)   # control total differs
    outcome = source.resolve(orders, f"Normal/{order['OrderNbr']}")
    assert outcome.status == "not_applicable" and "refused the update of Hold = no" in outcome.message
    assert sb.get_document("PurchaseOrder", keys(order))["Hold"] is True

    balanced = sb.add_purchase_order(vendor="V-FAB", lines=[100.0])
    acted = source.resolve(orders, f"Normal/{balanced['OrderNbr']}")
    assert acted.status == "acted" and sb.get_document("PurchaseOrder", keys(balanced))["Status"] == "Open"


def test_a_document_deleted_since_is_not_applicable(source, integration):
    outcome = source.resolve(integration.entity("vendor_payments_needing_attention"), "Payment/999999")
    assert outcome.status == "not_applicable" and "no longer exists" in outcome.message


def test_a_transient_failure_of_the_action_is_raised_for_a_retry(source, sb, integration):
    bills = integration.entity("bills_needing_attention")
    bill = sb.add_bill(vendor="V-FAB", amount=10.0, hold=False)
    sb.faults.retry_after = "0"
    sb.faults.applies_to = lambda path: path.endswith("/ReleaseBill")
    sb.faults.server_error_next = 50                      # 503s until the retries run out
    with pytest.raises(ApiError):
        source.resolve(bills, f"Bill/{bill['ReferenceNbr']}")
    sb.faults.server_error_next = 0
    assert source.resolve(bills, f"Bill/{bill['ReferenceNbr']}").status == "acted"
