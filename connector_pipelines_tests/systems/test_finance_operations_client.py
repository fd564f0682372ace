"""The F&O client and business-event model: exact URLs and literals, batching reads of many documents
under F&O's rules, and (against the F&O sandbox, in process) paging, companies, retries and actions."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from connector_pipelines.core.http import ApiError, RetrySettings
from connector_pipelines.systems.finance_operations import (
    BusinessEvent,
    FinanceOperationsClient,
    ODataMetadata,
)
from sandboxes.common import sync_transport
from sandboxes.finance_operations import FinanceOperationsSandbox

FAST = RetrySettings(initial_backoff_s=0.0, max_backoff_s=0.0, max_total_wait_s=5)


class StaticToken:
    def get_token(self) -> str:
        return "t"

    def invalidate(self, token: str) -> None:
        pass


def recording_client(handler) -> tuple[FinanceOperationsClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    client = FinanceOperationsClient.connect("https://contoso.operations.dynamics.com", StaticToken(),
                                             transport=httpx.MockTransport(record), retry=FAST)
    return client, seen


def filters(requests: list[httpx.Request]) -> list[str]:
    return [parse_qs(urlsplit(str(r.url)).query)["$filter"][0] for r in requests]


# -- literals, paths, scope ----------------------------------------------------------------------------------
def test_scope_is_the_environment_host_with_default_never_data():
    assert FinanceOperationsClient.scope_for("https://contoso.operations.dynamics.com/") == \
        "https://contoso.operations.dynamics.com/.default"
    assert FinanceOperationsClient.scope_for("x-uat.sandbox.operations.dynamics.com") == \
        "https://x-uat.sandbox.operations.dynamics.com/.default"


def test_literals_and_key_paths():
    lit = FinanceOperationsClient.literal
    assert lit("O'Brien") == "'O''Brien'" and lit(12.5) == "12.5" and lit(True) == "true" and lit(None) == "null"
    assert lit("Rejected", "Microsoft.Dynamics.DataEntities.VersioningDocumentState") == \
        "Microsoft.Dynamics.DataEntities.VersioningDocumentState'Rejected'"
    assert lit("Yes", "NoYes") == "Microsoft.Dynamics.DataEntities.NoYes'Yes'"
    path = FinanceOperationsClient.key_path("PurchaseOrderHeadersV2", {"dataAreaId": "usmf",
                                                                      "PurchaseOrderNumber": "PO 1/2"})
    assert path == "PurchaseOrderHeadersV2(dataAreaId='usmf',PurchaseOrderNumber='PO%201%2F2')"
    with pytest.raises(ValueError):
        FinanceOperationsClient.key_path("X", {})


def test_get_many_is_an_or_of_key_groups_per_company_chunked_under_the_limit_across_companies():
    client, seen = recording_client(lambda r: httpx.Response(200, json={"value": []}))
    keys = [{"dataAreaId": "usmf", "PurchaseOrderNumber": f"PO-{i:04d}"} for i in range(60)]
    keys += [{"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-0001"}]            # a duplicate is asked once
    keys += [{"dataAreaId": "demf", "PurchaseOrderNumber": "PO-D"}]
    client.get_many("PurchaseOrderHeadersV2", keys, expand=["PurchaseOrderLinesV2"], max_filter_chars=400)
    flts = filters(seen)
    assert all(len(f) <= 400 for f in flts) and len(flts) >= 7
    assert all(" in " not in f for f in flts)
    assert flts[0].startswith("dataAreaId eq 'usmf' and (PurchaseOrderNumber eq 'PO-0000' or ")
    assert flts[-1] == "dataAreaId eq 'demf' and (PurchaseOrderNumber eq 'PO-D')"
    asked = [p for f in flts for p in f.split(" or ")]
    assert len(asked) == 61   # 60 + the other company, the duplicate once
    for r in seen:
        q = parse_qs(urlsplit(str(r.url)).query)
        assert q["cross-company"] == ["true"] and q["$expand"] == ["PurchaseOrderLinesV2"]
        assert r.headers["Authorization"] == "Bearer t"


def test_get_many_with_composite_keys_groups_each_key():
    client, seen = recording_client(lambda r: httpx.Response(200, json={"value": []}))
    client.get_many("VendorInvoiceHeaders", [{"dataAreaId": "usmf", "VendorAccount": "US-1", "InvoiceNumber": "A"},
                                             {"dataAreaId": "usmf", "VendorAccount": "US-2", "InvoiceNumber": "B"}])
    assert filters(seen) == [("dataAreaId eq 'usmf' and ((VendorAccount eq 'US-1' and InvoiceNumber eq 'A') or "
                             "(VendorAccount eq 'US-2' and InvoiceNumber eq 'B'))")]


def test_patch_sends_if_match_and_actions_post_to_the_bound_name():
    client, seen = recording_client(lambda r: httpx.Response(204))
    keys = {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-1"}
    client.patch("PurchaseOrderHeadersV2", keys, {"ReasonComment": "x"}, 'W/"abc"')
    assert client.invoke_action("PurchaseOrderHeadersV2", keys, "SubmitToWorkflow", {"Comment": "c"}) is None
    patch, action = seen
    assert patch.method == "PATCH" and patch.headers["If-Match"] == 'W/"abc"'
    assert action.method == "POST" and unquote(action.url.path).endswith(
        "/data/PurchaseOrderHeadersV2(dataAreaId='usmf',PurchaseOrderNumber='PO-1')/"
        "Microsoft.Dynamics.DataEntities.SubmitToWorkflow")
    assert action.read() == b'{"Comment":"c"}'


def test_odata_errors_are_readable_in_api_error():
    body = {"error": {"code": "", "message": "Update is applicable only before posting the vendor invoice.",
                      "innererror": {"message": "…", "type": "X", "stacktrace": ""}}}
    client, _ = recording_client(lambda r: httpx.Response(400, json=body))
    with pytest.raises(ApiError) as caught:
        client.patch("VendorInvoiceHeaders", {"dataAreaId": "usmf", "HeaderReference": "H"}, {"Comment": "x"})
    assert caught.value.status == 400 and "only before posting" in str(caught.value)


# -- the business-event model -----------------------------------------------------------------------------------
def test_business_event_envelopes_of_both_generations_parse():
    new = BusinessEvent.parse({"BusinessEventId": "PurchaseOrderConfirmedBusinessEvent",
                               "BusinessEventLegalEntity": "USMF", "ControlNumber": 5637611083,
                               "EventId": "E1", "EventTime": "/Date(1672408275000)/",
                               "EventTimeIso8601": "2022-12-30T13:51:15.2942742Z", "MajorVersion": 0,
                               "MinorVersion": 0, "PurchaseOrderNumber": "PO-1", "VendorAccount": "US-101"})
    assert new.control_number == 5637611083 and new.data_area_id == "usmf"
    assert new.event_time.isoformat() == "2022-12-30T13:51:15.294274+00:00"
    assert new.fields == {"PurchaseOrderNumber": "PO-1", "VendorAccount": "US-101"}
    old = BusinessEvent.parse({"BusinessEventId": "X", "LegalEntity": "DEMF", "ControlNumber": "42",
                               "EventTime": "/Date(1672408275000)/"})
    assert old.control_number == 42 and old.data_area_id == "demf"
    assert old.event_time.isoformat() == "2022-12-30T13:51:15+00:00"


@pytest.mark.parametrize("payload", [{}, {"BusinessEventId": "X"}, {"BusinessEventId": "X", "ControlNumber": "n/a"},
                                     {"BusinessEventId": "X", "ControlNumber": True}, {"ControlNumber": 1}, []])
def test_business_events_without_id_or_control_number_are_refused(payload):
    with pytest.raises(ValueError):
        BusinessEvent.parse(payload)


# -- against the F&O sandbox ------------------------------------------------------------------------------------
@pytest.fixture
def fo() -> FinanceOperationsSandbox:
    sandbox = FinanceOperationsSandbox(max_page_size=7)
    sandbox.add_token("t")
    for area in ("usmf", "demf"):
        sandbox.add_legal_entity(area)
    for i in range(30):
        sandbox.add_purchase_order("usmf", PurchaseOrderNumber=f"PO-{i:03d}", DocumentApprovalStatus="Rejected"
                                   if i % 3 == 0 else "Approved", lines=[{"LineAmount": float(i)}])
    sandbox.add_purchase_order("demf", PurchaseOrderNumber="PO-000")
    sandbox.add_vendor(area, VendorAccountNumber="O'BRIEN", VendorOrganizationName="O'Brien & Sons")
    return sandbox


@pytest.fixture
def client(fo) -> FinanceOperationsClient:
    return FinanceOperationsClient.connect("http://fo.test", StaticToken(), transport=sync_transport(fo.app),
                                           retry=FAST)


def test_against_the_sandbox_many_documents_across_companies_in_few_calls(fo, client):
    keys = [{"dataAreaId": "usmf", "PurchaseOrderNumber": f"PO-{i:03d}"} for i in range(30)]
    keys.append({"dataAreaId": "demf", "PurchaseOrderNumber": "PO-000"})
    before = fo.calls_total
    rows = client.get_many("PurchaseOrderHeadersV2", keys, expand=["PurchaseOrderLinesV2"])
    assert len(rows) == 31 and {r["dataAreaId"] for r in rows} == {"usmf", "demf"}
    # 30 keys fit one filter; the sandbox pages at 7 rows, so nextLinks are followed (5 pages) + 1 for demf
    assert fo.calls_total - before == 6
    assert all(len(r["PurchaseOrderLinesV2"]) == 1 for r in rows if r["dataAreaId"] == "usmf")


def test_against_the_sandbox_metadata_typed_enum_filter_and_quotes(client):
    md = client.metadata()
    enum = md.enum_type("PurchaseOrderHeadersV2", "DocumentApprovalStatus")
    assert enum == "Microsoft.Dynamics.DataEntities.VersioningDocumentState"
    assert md.enums[enum][:3] == ["Draft", "InReview", "Rejected"]
    rows = list(client.list("PurchaseOrderHeadersV2", filter=f"DocumentApprovalStatus eq {client.literal('Rejected', enum)}"))
    assert len(rows) == 10
    assert client.get("VendorsV2", {"dataAreaId": "demf", "VendorAccountNumber": "O'BRIEN"})["VendorOrganizationName"] \
        == "O'Brien & Sons"
    assert client.get("VendorsV2", {"dataAreaId": "demf", "VendorAccountNumber": "NOBODY"}) is None


def test_against_the_sandbox_a_429_storm_is_ridden_out(fo, client):
    fo.faults.rate_limit_next = 3
    fo.faults.retry_after = "0"
    assert len(list(client.list("PurchaseOrderHeadersV2", top=5))) == 5
    assert fo.faults.served_429 == 3 and client.http.retries >= 3


def test_metadata_parse_tolerates_what_it_does_not_use():
    md = ODataMetadata.parse(b'<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">'
                             b'<edmx:DataServices><Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" '
                             b'Namespace="N"><EntityType Name="T"><Key><PropertyRef Name="k"/></Key>'
                             b'<Property Name="k" Type="Edm.String"/></EntityType><Function Name="f"/>'
                             b'<EntityContainer Name="C"><EntitySet Name="Ts" EntityType="N.T"/></EntityContainer>'
                             b'</Schema></edmx:DataServices></edmx:Edmx>')
    assert md.entity_sets["Ts"].keys == ["k"] and md.enum_type("Ts", "k") is None
