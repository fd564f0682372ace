"""Dynamics 365 F&O sandbox: OData conventions and limits (API-FACTS §1.1-1.3), bound actions, $batch, and
business events (§1.4). A sandbox that accepts what F&O would reject is a bug, so most tests are refusals."""

from __future__ import annotations

import hashlib
import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandboxes.common import SandboxServer, sync_transport
from sandboxes.finance_operations import MAX_BATCH_OPERATIONS, FinanceOperationsSandbox
from sandboxes.tls import make_tls

BASE = "http://fo.test/data"
PO = "PurchaseOrderHeadersV2"
JOURNAL = "GeneralJournalAccountEntries"
REJECTED = "Microsoft.Dynamics.DataEntities.VersioningDocumentState'Rejected'"


class StubEntra:
    def __init__(self) -> None:
        self.audiences: list[str] = []

    def validate(self, token: str, audience: str) -> dict | None:
        self.audiences.append(audience)
        return {"aud": audience, "tid": "fo-tenant"} if token == "good" else None


@pytest.fixture
def fo() -> FinanceOperationsSandbox:
    sandbox = FinanceOperationsSandbox(StubEntra(), environment_host="contoso-uat.sandbox.operations.dynamics.com",
                                       max_page_size=4, tenant="fo-tenant")
    for area in ("usmf", "demf"):
        sandbox.add_legal_entity(area)
    for i in range(6):
        sandbox.add_purchase_order("usmf", PurchaseOrderNumber=f"PO-{i}", OrderVendorAccountNumber="US-101",
                                   PurchaseOrderName=f"Order {i}", DocumentApprovalStatus="Rejected" if i % 2 else "Draft",
                                   lines=[{"LineAmount": 10.0 * (i + 1)}, {"LineAmount": 1.5}])
    sandbox.add_purchase_order("demf", PurchaseOrderNumber="PO-D1", OrderVendorAccountNumber="DE-1")
    sandbox.add_vendor_invoice("usmf", HeaderReference="H1", VendorAccount="US-101", InvoiceNumber="INV-1",
                               lines=[{"Amount": 5.0}])
    return sandbox


@pytest.fixture
def http(fo) -> httpx.Client:
    return httpx.Client(transport=sync_transport(fo.app), base_url=BASE, headers={"Authorization": "Bearer good"})


def numbers(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [row["PurchaseOrderNumber"] for row in r.json()["value"]]


def error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"code", "message", "innererror"}
    return body["message"]


# -- auth -------------------------------------------------------------------------------------------------
def test_tokens_are_checked_for_the_environment_audience(fo, http):
    assert http.get(PO).status_code == 200
    assert fo.entra.audiences[-1] == "https://contoso-uat.sandbox.operations.dynamics.com"
    assert http.get(PO, headers={"Authorization": "Bearer bad"}).status_code == 401
    assert http.get(PO, headers={"Authorization": ""}).status_code == 401


def test_a_token_of_another_tenant_is_refused(fo, http):
    fo.tenant = "someone-else"
    assert http.get(PO).status_code == 401


# -- entity sets, keys, company scope -------------------------------------------------------------------------
def test_entity_set_names_are_case_sensitive(http):
    assert http.get("purchaseorderheadersv2").status_code == 404
    error(http.get("PurchaseOrderHeadersv2"), 404)


def test_a_key_path_needs_every_key_field(http):
    assert http.get(f"{PO}(dataAreaId='usmf',PurchaseOrderNumber='PO-1')").json()["PurchaseOrderNumber"] == "PO-1"
    assert "missing ['dataAreaId']" in error(http.get(f"{PO}(PurchaseOrderNumber='PO-1')"), 400)
    error(http.get(f"{PO}(dataAreaId='usmf',PurchaseOrderNumber='PO-1',Other='x')"), 400)
    error(http.get(f"{PO}(dataAreaId='usmf',PurchaseOrderNumber='PO-404')"), 404)


def test_the_default_company_unless_cross_company(http):
    assert "PO-D1" not in numbers(http.get(PO, params={"$top": 100}))
    # a filter naming another company does not leave the default one
    assert numbers(http.get(PO, params={"$filter": "dataAreaId eq 'demf'"})) == []
    assert numbers(http.get(PO, params={"$filter": "dataAreaId eq 'demf'", "cross-company": "true"})) == ["PO-D1"]
    key = f"{PO}(dataAreaId='demf',PurchaseOrderNumber='PO-D1')"
    assert http.get(key).status_code == 404
    assert http.get(key, params={"cross-company": "true"}).status_code == 200


# -- query options ----------------------------------------------------------------------------------------------
def test_filters_compare_enums_only_with_their_typed_literal_and_only_eq_ne(http):
    assert numbers(http.get(PO, params={"$filter": f"DocumentApprovalStatus eq {REJECTED}"})) == ["PO-1", "PO-3",
                                                                                                  "PO-5"]
    assert len(numbers(http.get(PO, params={"$filter": f"DocumentApprovalStatus ne {REJECTED}"}))) == 3
    assert "incompatible types" in error(http.get(PO, params={"$filter": "DocumentApprovalStatus eq 'Rejected'"}), 400)
    error(http.get(PO, params={"$filter": f"DocumentApprovalStatus gt {REJECTED}"}), 400)
    error(http.get(PO, params={"$filter": "DocumentApprovalStatus eq Microsoft.Dynamics.DataEntities.NoYes'Yes'"}), 400)


@pytest.mark.parametrize("flt", ["PurchaseOrderNumber in ('PO-1','PO-2')",
                                 "DocumentApprovalStatus has Microsoft.Dynamics.DataEntities.VersioningDocumentState'Draft'"])
def test_in_and_has_are_refused_as_f_and_o_refuses_them(http, flt):
    assert "is not supported" in error(http.get(PO, params={"$filter": flt}), 400)


def test_contains_is_a_wildcard_eq_and_strings_compare_case_insensitively(http):
    assert numbers(http.get(PO, params={"$filter": "PurchaseOrderName eq '*der 4*'"})) == ["PO-4"]
    assert numbers(http.get(PO, params={"$filter": "PurchaseOrderNumber eq 'po-2' or PurchaseOrderNumber eq 'PO-3'"})) \
        == ["PO-2", "PO-3"]
    assert numbers(http.get(PO, params={"$filter": "not (PurchaseOrderNumber ne 'PO-0')"})) == ["PO-0"]
    # "in" inside a string literal is text, not the refused operator
    assert numbers(http.get(PO, params={"$filter": "PurchaseOrderName eq 'made in usa'"})) == []


def test_unknown_properties_and_query_options_are_400(http):
    error(http.get(PO, params={"$filter": "Nope eq 'x'"}), 400)
    error(http.get(PO, params={"$select": "Nope"}), 400)
    error(http.get(PO, params={"$orderby": "Nope"}), 400)
    error(http.get(PO, params={"$apply": "groupby((X))"}), 400)


def test_select_top_skip_orderby_count(http):
    r = http.get(PO, params={"$select": "PurchaseOrderNumber", "$orderby": "PurchaseOrderNumber desc", "$top": 2,
                             "$skip": 1, "$count": "true"})
    body = r.json()
    assert body["@odata.count"] == 6
    assert [set(row) for row in body["value"]] == [{"@odata.etag", "PurchaseOrderNumber"}] * 2
    assert [row["PurchaseOrderNumber"] for row in body["value"]] == ["PO-4", "PO-3"]


def test_server_paging_follows_next_links_without_losing_or_repeating_rows(http):
    first = http.get(PO).json()
    assert len(first["value"]) == 4 and "@odata.nextLink" in first
    second = httpx.Client(transport=http._transport, headers={"Authorization": "Bearer good"}).get(
        first["@odata.nextLink"]).json()
    assert "@odata.nextLink" not in second
    assert [r["PurchaseOrderNumber"] for r in first["value"] + second["value"]] == [f"PO-{i}" for i in range(6)]


def test_maxpagesize_is_not_honoured_unless_configured(fo, http):
    assert len(http.get(PO, headers={"Prefer": "odata.maxpagesize=2"}).json()["value"]) == 4
    fo.honour_maxpagesize = True
    r = http.get(PO, headers={"Prefer": "odata.maxpagesize=2"})
    assert len(r.json()["value"]) == 2 and r.headers["Preference-Applied"] == "odata.maxpagesize=2"


def test_expand_is_one_level_only(http):
    row = http.get(f"{PO}(dataAreaId='usmf',PurchaseOrderNumber='PO-2')",
                   params={"$expand": "PurchaseOrderLinesV2"}).json()
    assert [line["LineAmount"] for line in row["PurchaseOrderLinesV2"]] == [30.0, 1.5]
    assert "one level" in error(http.get(PO, params={"$expand": "PurchaseOrderLinesV2($expand=Item)"}), 400)
    error(http.get(PO, params={"$expand": "PurchaseOrderLinesV2/Item"}), 400)
    error(http.get(PO, params={"$expand": "Vendor"}), 400)


def test_metadata_lists_the_six_sets_with_their_keys_enums_and_deployed_actions(fo, http):
    fo.deploy_workflow_resubmit()
    root = ET.fromstring(http.get("$metadata").content)
    ns = {"e": "http://docs.oasis-open.org/odata/ns/edm"}
    sets = {s.get("Name"): s.get("EntityType") for s in root.iterfind(".//e:EntitySet", ns)}
    assert sets == {"VendorsV2": "Microsoft.Dynamics.DataEntities.VendorV2",
                    PO: "Microsoft.Dynamics.DataEntities.PurchaseOrderHeaderV2",
                    "PurchaseOrderLinesV2": "Microsoft.Dynamics.DataEntities.PurchaseOrderLineV2",
                    "VendorInvoiceHeaders": "Microsoft.Dynamics.DataEntities.VendorInvoiceHeader",
                    "VendorInvoiceLines": "Microsoft.Dynamics.DataEntities.VendorInvoiceLine",
                    JOURNAL: "Microsoft.Dynamics.DataEntities.GeneralJournalAccountEntry"}
    keys = {t.get("Name"): [k.get("Name") for k in t.iterfind("e:Key/e:PropertyRef", ns)]
            for t in root.iterfind(".//e:EntityType", ns)}
    assert keys["VendorInvoiceLine"] == ["dataAreaId", "HeaderReference", "InvoiceLineNumber"]
    assert keys["VendorV2"] == ["dataAreaId", "VendorAccountNumber"]
    assert keys["GeneralJournalAccountEntry"] == ["dataAreaId", "GeneralJournalAccountEntryRecId"]
    props = {p.get("Name"): p.get("Type") for p in root.iterfind(".//e:EntityType[@Name='PurchaseOrderHeaderV2']/e:Property", ns)}
    assert props["DocumentApprovalStatus"] == "Microsoft.Dynamics.DataEntities.VersioningDocumentState"
    assert props["ReasonComment"] == "Edm.String" and len(props) > 100   # from the CDM attribute list
    assert [a.get("Name") for a in root.iterfind(".//e:Action", ns)] == ["SubmitToWorkflow"]


# -- writes ----------------------------------------------------------------------------------------------------
def test_patch_with_a_stale_etag_is_412_and_unknown_or_key_fields_are_400(http):
    url = f"{PO}(dataAreaId='usmf',PurchaseOrderNumber='PO-0')"
    etag = http.get(url).json()["@odata.etag"]
    assert http.patch(url, json={"ReasonComment": "ok"}, headers={"If-Match": etag}).status_code == 204
    error(http.patch(url, json={"ReasonComment": "again"}, headers={"If-Match": etag}), 412)
    error(http.patch(url, json={"NotAField": 1}), 400)
    error(http.patch(url, json={"PurchaseOrderNumber": "PO-X"}), 400)
    error(http.patch(url, json={"DocumentApprovalStatus": "Whatever"}), 400)
    assert http.get(url).json()["ReasonComment"] == "ok"


def test_a_posted_vendor_invoice_stays_readable_but_cannot_be_updated(fo, http):
    fo.post_vendor_invoice("usmf", "H1")
    url = "VendorInvoiceHeaders(dataAreaId='usmf',HeaderReference='H1')"
    assert http.get(url).status_code == 200
    assert "only before posting" in error(http.patch(url, json={"Comment": "x"}), 400)


def test_actions_exist_only_when_deployed_and_check_the_state(fo, http):
    url = f"{PO}(dataAreaId='usmf',PurchaseOrderNumber='PO-1')/Microsoft.Dynamics.DataEntities.SubmitToWorkflow"
    error(http.post(url, json={"Comment": "x"}), 404)   # the standard product has no workflow action
    fo.deploy_workflow_resubmit()
    assert http.post(url, json={"Comment": "AP-1: fixed"}).status_code == 204
    assert fo.get_record(PO, {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-1"})["DocumentApprovalStatus"] == "InReview"
    assert fo.workflow_comments == [("PO-1", "AP-1: fixed")]
    error(http.post(url, json={"Comment": "again"}), 400)   # no longer Rejected
    assert fo.action_calls("SubmitToWorkflow") == 1


def batch_body(boundary: str, parts: list[str]) -> bytes:
    return ("".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n").encode()


def http_part(method: str, url: str, body: dict | None = None) -> str:
    head = f"Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n{method} {url} HTTP/1.1\r\n"
    if body is None:
        return head + "\r\n"
    return head + f"Content-Type: application/json\r\n\r\n{json.dumps(body)}"


def test_batch_reads_and_an_atomic_changeset_that_rolls_back(http, fo):
    ok = f"{BASE}/{PO}(dataAreaId='usmf',PurchaseOrderNumber='PO-0')"
    bad = f"{BASE}/{PO}(dataAreaId='usmf',PurchaseOrderNumber='PO-1')"
    changeset = batch_body("cs1", [http_part("PATCH", ok, {"ReasonComment": "from batch"}),
                                   http_part("PATCH", bad, {"NotAField": 1})]).decode()
    body = batch_body("b1", [http_part("GET", f"{BASE}/{PO}?$top=1"),
                             f"Content-Type: multipart/mixed; boundary=cs1\r\n\r\n{changeset}"])
    r = http.post("$batch", content=body, headers={"Content-Type": "multipart/mixed; boundary=b1"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/mixed")
    assert "HTTP/1.1 200 OK" in r.text and "HTTP/1.1 400 Bad Request" in r.text
    # the first PATCH of the failed changeset was rolled back
    assert fo.get_record(PO, {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-0"})["ReasonComment"] == ""
    good = batch_body("cs2", [http_part("PATCH", ok, {"ReasonComment": "both"}),
                              http_part("PATCH", bad, {"ReasonComment": "both"})]).decode()
    body = batch_body("b2", [f"Content-Type: multipart/mixed; boundary=cs2\r\n\r\n{good}"])
    r = http.post("$batch", content=body, headers={"Content-Type": "multipart/mixed; boundary=b2"})
    assert r.text.count("HTTP/1.1 204") == 2
    assert fo.get_record(PO, {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-1"})["ReasonComment"] == "both"


def test_batch_refuses_more_than_the_operation_limit_and_non_multipart(http):
    parts = [http_part("GET", f"{BASE}/{PO}?$top=1")] * (MAX_BATCH_OPERATIONS + 1)
    r = http.post("$batch", content=batch_body("b", parts), headers={"Content-Type": "multipart/mixed; boundary=b"})
    assert "at most 5000" in error(r, 400)
    error(http.post("$batch", json={"requests": []}), 400)


# -- throttling -------------------------------------------------------------------------------------------------
def test_a_429_storm_carries_retry_after(fo, http):
    fo.faults.rate_limit_next = 2
    fo.faults.retry_after = "7"
    first = http.get(PO)
    assert first.status_code == 429 and first.headers["Retry-After"] == "7"
    assert "exeeded the limit" in first.json()["error"]["message"]
    assert http.get(PO).status_code == 429 and http.get(PO).status_code == 200


def test_service_protection_limits_requests_in_a_sliding_window(fo, http):
    fo.service_protection = (3, 300.0)
    assert [http.get(PO).status_code for _ in range(4)] == [200, 200, 200, 429]
    r = http.get(PO)
    assert int(r.headers["Retry-After"]) > 0 and "limit of 3 over the time window of 300 seconds" in r.text


# -- business events --------------------------------------------------------------------------------------------
class Endpoint:
    """An HTTPS endpoint that records envelopes and answers a scripted status sequence."""

    def __init__(self, tls) -> None:
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.script: list[int] = []

        async def hook(request: Request) -> Response:
            self.bodies.append(json.loads(await request.body()))
            self.headers.append(dict(request.headers))
            return Response(status_code=self.script.pop(0) if self.script else 202)

        self.server = SandboxServer(Starlette(routes=[Route("/events", hook, methods=["POST"])]),
                                    ssl_certfile=str(tls.server_cert), ssl_keyfile=str(tls.server_key))

    @property
    def url(self) -> str:
        return f"{self.server.base_url}/events"

    @property
    def controls(self) -> list[int]:
        return [b["ControlNumber"] for b in self.bodies]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("fo-tls"))


@pytest.fixture
def endpoint(tls):
    e = Endpoint(tls)
    e.server.start()
    yield e
    e.server.stop()


@pytest.fixture
def events(fo, endpoint, tls) -> FinanceOperationsSandbox:
    fo.retry_delay_s = 0
    fo.add_endpoint("ap", endpoint.url, headers={"X-Connector-Secret": "s3cret"}, verify=str(tls.ca_bundle))
    for event in ("PurchaseOrderConfirmedBusinessEvent", "PurchaseOrderWorkflowRejectedBusinessEvent",
                  "VendorInvoicePostedBusinessEvent"):
        fo.activate(event, "ap", legal_entity="usmf")
    return fo


def test_only_https_endpoints(fo):
    with pytest.raises(ValueError, match="HTTPS"):
        fo.add_endpoint("plain", "http://127.0.0.1:9/events")


def test_envelopes_are_stubs_with_control_numbers_increasing_with_gaps(events, endpoint):
    events.confirm_purchase_order("usmf", "PO-0")
    events.reject_purchase_order_workflow("usmf", "PO-2")
    events.post_vendor_invoice("usmf", "H1")
    assert events.deliver_events() == {"delivered": 3, "failed": 0}
    first = endpoint.bodies[0]
    assert first["BusinessEventId"] == "PurchaseOrderConfirmedBusinessEvent"
    assert first["BusinessEventLegalEntity"] == "USMF" and first["PurchaseOrderNumber"] == "PO-0"
    assert first["EventTime"].startswith("/Date(") and first["EventTimeIso8601"].endswith("Z")
    assert first["EventId"] == first["EventId"].upper() and first["InitiatingUserAADObjectId"].startswith("{")
    assert {"MajorVersion", "MinorVersion", "ContextRecordSubject", "ParentContextRecordSubjects"} <= set(first)
    # a stub: the document's keys, never the record (no lines, amounts or vendor master data)
    assert "PurchaseOrderLinesV2" not in first and "LineAmount" not in json.dumps(endpoint.bodies)
    c = endpoint.controls
    assert c == sorted(c) and len(set(c)) == 3 and all(b - a >= 1 for a, b in itertools.pairwise(c))
    assert endpoint.headers[0]["x-connector-secret"] == "s3cret"
    assert [b["BusinessEventId"] for b in endpoint.bodies][1:] == ["PurchaseOrderWorkflowRejectedBusinessEvent",
                                                                  "VendorInvoicePostedBusinessEvent"]


def test_control_numbers_have_gaps_over_many_events(events, endpoint):
    for _ in range(30):
        events.confirm_purchase_order("usmf", "PO-0")
    events.deliver_events()
    steps = {b - a for a, b in zip(endpoint.controls, endpoint.controls[1:], strict=False)}
    assert min(steps) >= 1 and len(steps) > 1   # increasing, not sequential


def test_events_fire_only_for_activated_legal_entities(events, endpoint):
    assert events.confirm_purchase_order("demf", "PO-D1") is None   # not activated for demf
    events.activate("PurchaseOrderConfirmedBusinessEvent", "ap")     # blank legal entity = all
    assert events.confirm_purchase_order("demf", "PO-D1") is not None
    events.deliver_events()
    assert [b["BusinessEventLegalEntity"] for b in endpoint.bodies] == ["DEMF"]


def test_a_failed_send_is_retried_three_times_then_kept_in_errors_for_resend(events, endpoint):
    endpoint.script = [500, 503, 500, 500]
    fired = events.confirm_purchase_order("usmf", "PO-0")
    assert events.deliver_events() == {"delivered": 0, "failed": 1}
    assert len(endpoint.bodies) == 4   # the first try and 3 retries
    assert [e[1]["ControlNumber"] for e in events.errors] == [fired["ControlNumber"]]
    assert events.resend(fired["ControlNumber"]) is True
    assert events.errors == [] and endpoint.controls[-1] == fired["ControlNumber"]


def test_a_send_that_succeeds_on_a_retry_is_delivered_once(events, endpoint):
    endpoint.script = [503]
    events.confirm_purchase_order("usmf", "PO-0")
    assert events.deliver_events() == {"delivered": 1, "failed": 0}
    assert len(endpoint.bodies) == 2 and events.errors == []


def test_redelivery_repeats_the_same_envelopes_and_delivery_can_be_reordered(events, endpoint):
    a = events.confirm_purchase_order("usmf", "PO-0")
    b = events.confirm_purchase_order("usmf", "PO-2")
    events.deliver_events(order="reverse")
    assert endpoint.controls == [b["ControlNumber"], a["ControlNumber"]]
    events.redeliver()
    events.redeliver(last=1)
    assert endpoint.controls.count(a["ControlNumber"]) == 3 and endpoint.controls.count(b["ControlNumber"]) == 2
    assert endpoint.bodies[2] == endpoint.bodies[1] or endpoint.bodies[2] == endpoint.bodies[0]


def test_the_older_envelope_form_is_a_setting(events, endpoint):
    events.send_legacy_legal_entity = True
    events.confirm_purchase_order("usmf", "PO-0")
    events.deliver_events()
    [body] = endpoint.bodies
    assert body["LegalEntity"] == "USMF" and "BusinessEventLegalEntity" not in body and "EventTimeIso8601" not in body


# -- typed $filter operands (the OData library's type rules) ------------------------------------------------
INCOMPATIBLE = "A binary operator with incompatible types was detected. Found operand types '{}' and '{}' for operator kind '{}'."
NS = "Microsoft.Dynamics.DataEntities"


@pytest.mark.parametrize("op,kind", [("eq", "Equal"), ("ne", "NotEqual"), ("gt", "GreaterThan"),
                                     ("ge", "GreaterThanOrEqual"), ("lt", "LessThan"), ("le", "LessThanOrEqual")])
def test_a_quoted_date_time_is_a_string_and_f_and_o_refuses_the_comparison(http, op, kind):
    message = error(http.get(PO, params={"$filter": f"AccountingDate {op} '2019-08-18T20:05:51Z'"}), 400)
    assert message == INCOMPATIBLE.format("Edm.DateTimeOffset", "Edm.String", kind)
    assert http.get(PO, params={"$filter": f"AccountingDate {op} 2019-08-18T20:05:51Z"}).status_code == 200


@pytest.mark.parametrize("flt,left,right,kind", [
    ("'2019-08-18T20:05:51Z' lt AccountingDate", "Edm.String", "Edm.DateTimeOffset", "LessThan"),
    ("AccountingDate ge 2019-08-18", "Edm.DateTimeOffset", "Edm.Date", "GreaterThanOrEqual"),
    ("PurchaseOrderNumber eq 5", "Edm.String", "Edm.Int32", "Equal"),
    ("CashDiscountPercentage gt '5'", "Edm.Decimal", "Edm.String", "GreaterThan"),
    ("DocumentApprovalStatus ne 'Rejected'", f"{NS}.VersioningDocumentState", "Edm.String", "NotEqual"),
    (f"DocumentApprovalStatus eq {NS}.NoYes'Yes'", f"{NS}.VersioningDocumentState", f"{NS}.NoYes", "Equal"),
    (f"PurchaseOrderName eq {NS}.NoYes'Yes'", "Edm.String", f"{NS}.NoYes", "Equal"),
])
def test_every_comparison_is_typed_against_the_metadata(http, flt, left, right, kind):
    assert error(http.get(PO, params={"$filter": flt}), 400) == INCOMPATIBLE.format(left, right, kind)


@pytest.mark.parametrize("flt,message", [
    ("PurchaseOrderNumber eq", "Expression expected at position 22 in 'PurchaseOrderNumber eq'."),
    ("(PurchaseOrderNumber eq 'PO-1'", "')' or operator expected at position 30 in '(PurchaseOrderNumber eq 'PO-1''."),
    ("PurchaseOrderNumber eq 'PO-1' x", "Syntax error at position 31 in 'PurchaseOrderNumber eq 'PO-1' x'."),
    ("PurchaseOrderNumber eq 'PO-1",
     "There is an unterminated string literal at position 23 in 'PurchaseOrderNumber eq 'PO-1'."),
    (f"DocumentApprovalStatus eq {NS}.VersioningDocumentState'Sideways'",
     "The string 'Sideways' is not a valid enumeration type constant."),
])
def test_filter_errors_use_the_odata_library_messages(http, flt, message):
    assert error(http.get(PO, params={"$filter": flt}), 400) == message


# -- OData response headers -----------------------------------------------------------------------------------
def test_answers_carry_odata_version_and_the_odata_json_content_type(fo, http):
    key = f"{PO}(dataAreaId='usmf',PurchaseOrderNumber='PO-1')"
    answers = [http.get(""), http.get(PO), http.get(key), http.get(key, params={"$select": "PurchaseOrderNumber"}),
               http.post(PO, json={"PurchaseOrderNumber": "PO-H"}),
               http.get(PO, params={"$filter": "Nope eq 1"}), http.get("NoSuchSet"),
               http.get(PO, headers={"Authorization": "Bearer bad"})]
    for r in answers:
        assert r.headers["content-type"] == "application/json; odata.metadata=minimal", r.request.url
        assert r.headers["odata-version"] == "4.0", r.request.url
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 201, 400, 404, 401]
    fo.faults.rate_limit_next = 1
    assert http.get(PO).headers["odata-version"] == "4.0"
    assert http.get("$metadata").headers["content-type"].startswith("application/xml")
    assert http.patch(key, json={"ReasonComment": "x"}).status_code == 204
    fo.odata_headers_on_errors = False
    plain = http.get(PO, params={"$filter": "Nope eq 1"})
    assert plain.headers["content-type"] == "application/json" and "odata-version" not in plain.headers


# -- every property, with F&O's empty values ---------------------------------------------------------------------
def test_a_record_created_with_three_properties_reads_back_with_every_property(http):
    created = http.post(PO, json={"dataAreaId": "usmf", "PurchaseOrderNumber": "Po-new", "PurchaseOrderName": "Three"})
    assert created.status_code == 201, created.text
    row = http.get(f"{PO}(dataAreaId='usmf',PurchaseOrderNumber='Po-new')").json()
    root = ET.fromstring(http.get("$metadata").content)
    ns = {"e": "http://docs.oasis-open.org/odata/ns/edm"}
    props = {p.get("Name"): p.get("Type")
             for p in root.iterfind(".//e:EntityType[@Name='PurchaseOrderHeaderV2']/e:Property", ns)}
    assert set(row) == set(props) | {"@odata.context", "@odata.etag"}
    assert set(created.json()) == set(row)
    assert row["PurchaseOrderNumber"] == "Po-new" and row["dataAreaId"] == "usmf"   # keys as given
    assert row["PurchaseOrderName"] == "Three" and row["ReasonComment"] == "" and row["CashDiscountPercentage"] == 0
    assert row["PurchaseOrderStatus"] == "Backorder" and row["DocumentApprovalStatus"] == "Draft"
    assert props["IsDeliveredDirectly"] == f"{NS}.NoYes" and row["IsDeliveredDirectly"] == "No"
    assert props["AccountingDate"] == "Edm.DateTimeOffset" and row["AccountingDate"] == "1900-01-01T12:00:00Z"
    assert row["DeliveryValidFrom"] == "1900-01-01T00:00:00Z"
    assert not [p for p in props if p.startswith(("BackingTable_", "Relationship_"))]   # CDM references, no properties
    selected = http.get(f"{PO}(dataAreaId='usmf',PurchaseOrderNumber='Po-new')",
                        params={"$select": "PurchaseOrderName"}).json()
    assert set(selected) == {"@odata.context", "@odata.etag", "PurchaseOrderName"}
    line = http.post("PurchaseOrderLinesV2", json={"PurchaseOrderNumber": "Po-new", "LineNumber": 1}).json()
    assert line["LineAmount"] == 0 and line["ItemNumber"] == "" and line["LineNumber"] == 1


def test_filters_orderby_and_flows_work_with_the_empty_values(fo, http):
    fo.add_purchase_order("usmf", PurchaseOrderNumber="PO-dated", AccountingDate="2026-01-05T12:00:00Z",
                          IsDeliveredDirectly="Yes")
    assert numbers(http.get(PO, params={"$filter": "AccountingDate gt 2000-01-01T00:00:00Z"})) == ["PO-dated"]

    def count(flt):
        r = http.get(PO, params={"$filter": flt, "$count": "true"})
        assert r.status_code == 200, r.text
        return r.json()["@odata.count"]

    assert count("AccountingDate eq 1900-01-01T12:00:00Z") == 6   # the fixture's orders (page size 4)
    assert numbers(http.get(PO, params={"$filter": f"IsDeliveredDirectly eq {NS}.NoYes'Yes'"})) == ["PO-dated"]
    assert count(f"IsDeliveredDirectly eq {NS}.NoYes'No'") == 6
    assert count("ReasonComment eq '' and CashDiscountPercentage eq 0 and ConfirmingPurchaseOrderCode eq ''") == 7
    ordered = numbers(http.get(PO, params={"$orderby": "AccountingDate desc,PurchaseOrderNumber", "$top": 3}))
    assert ordered == ["PO-dated", "PO-0", "PO-1"]
    assert count(f"PurchaseOrderStatus eq {NS}.PurchStatus'Backorder'") == 7
    # the sandbox's own flows on a record created over OData with a few properties
    http.post(PO, json={"PurchaseOrderNumber": "PO-api", "OrderVendorAccountNumber": "US-101"})
    fo.retry_delay_s = 0
    fo.confirm_purchase_order("usmf", "PO-api")
    assert fo.get_record(PO, {"dataAreaId": "usmf", "PurchaseOrderNumber": "PO-api"})["DocumentApprovalStatus"] == "Confirmed"
    http.post("VendorInvoiceHeaders", json={"HeaderReference": "H-api", "InvoiceNumber": "INV-api"})
    fo.post_vendor_invoice("usmf", "H-api")
    assert fo.is_posted("H-api", "usmf")
    expanded = http.get("VendorInvoiceHeaders(dataAreaId='usmf',HeaderReference='H1')",
                        params={"$expand": "VendorInvoiceLines"}).json()
    assert [line["Amount"] for line in expanded["VendorInvoiceLines"]] == [5.0]
    assert expanded["VendorInvoiceLines"][0]["ItemNumber"] == ""


# -- posted general journal entries: read-only ------------------------------------------------------------------
VENDORED = Path(__file__).resolve().parents[2] / "sandboxes" / "vendored_specs"


def journal_url(entry: dict) -> str:
    return f"{JOURNAL}(dataAreaId='{entry['dataAreaId']}',GeneralJournalAccountEntryRecId='{entry['GeneralJournalAccountEntryRecId']}')"


def test_the_vendored_cdm_file_is_the_one_its_provenance_names_and_gives_the_journal_entries_their_properties(http):
    """The file is byte-for-byte what the README's sha256 names; the sandbox's properties are its attributes."""
    raw = (VENDORED / "fo-cdm" / "GeneralJournalAccountEntryEntity.1.2.cdm.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest() in (VENDORED / "README.md").read_text()
    doc = json.loads(raw)
    assert json.dumps(doc, indent=2).encode() == raw            # CDM's own formatting, untouched
    [definition] = doc["definitions"]
    attributes = [a["name"] for a in definition["hasAttributes"] if "dataType" in a]
    root = ET.fromstring(http.get("$metadata").content)
    ns = {"e": "http://docs.oasis-open.org/odata/ns/edm"}
    props = {p.get("Name"): p.get("Type")
             for p in root.iterfind(".//e:EntityType[@Name='GeneralJournalAccountEntry']/e:Property", ns)}
    assert list(props) == ["dataAreaId", *attributes] and len(attributes) == 25
    assert props["TransactionCurrencyAmount"] == "Edm.Decimal" and props["AccountingDate"] == "Edm.DateTimeOffset"
    assert props["IsCredit"] == f"{NS}.NoYes" and props["GeneralJournalAccountEntryRecId"] == "Edm.String"


def test_posted_journal_entries_are_read_and_filtered_like_any_entity(fo, http):
    debit, credit = fo.post_general_journal("usmf", [
        {"LedgerAccount": "605100", "AccountDisplayValue": "605100-001-022", "TransactionCurrencyAmount": 1500.0},
        {"LedgerAccount": "200150", "TransactionCurrencyAmount": -1500.0}],
        journal_number="GJ-1", accounting_date="2026-11-30T12:00:00Z", description="Freight accrual")
    fo.post_general_journal("demf", [{"LedgerAccount": "605100", "TransactionCurrencyAmount": 10.0},
                                     {"LedgerAccount": "200150", "TransactionCurrencyAmount": -10.0}])
    assert debit["Voucher"] == credit["Voucher"] and debit["JournalNumber"] == "GJ-1"
    assert debit["GeneralJournalAccountEntryRecId"] != credit["GeneralJournalAccountEntryRecId"]
    assert (debit["TransactionCurrencyDebitAmount"], debit["TransactionCurrencyCreditAmount"]) == (1500.0, 0.0)
    assert (credit["TransactionCurrencyDebitAmount"], credit["TransactionCurrencyCreditAmount"]) == (0.0, 1500.0)
    assert credit["IsCredit"] == "Yes" and credit["AccountDisplayValue"] == "200150"
    rows = http.get(JOURNAL).json()["value"]                     # the default company only
    assert sorted(r["GeneralJournalAccountEntryRecId"] for r in rows) == sorted(
        [debit["GeneralJournalAccountEntryRecId"], credit["GeneralJournalAccountEntryRecId"]])
    flt = f"dataAreaId eq 'usmf' and TransactionCurrencyAmount gt 0 and IsCredit eq {NS}.NoYes'No'"
    [row] = http.get(JOURNAL, params={"$filter": flt, "cross-company": "true"}).json()["value"]
    assert row["LedgerAccount"] == "605100" and row["AccountingDate"] == "2026-11-30T12:00:00Z"
    assert http.get(journal_url(debit)).json()["Description"] == "Freight accrual"
    assert len(http.get(JOURNAL, params={"cross-company": "true"}).json()["value"]) == 4
    with pytest.raises(ValueError, match="do not balance"):
        fo.post_general_journal("usmf", [{"LedgerAccount": "605100", "TransactionCurrencyAmount": 5.0}])


def test_a_posted_journal_entry_refuses_every_write_as_a_read_only_entity(fo, http):
    debit, _ = fo.post_general_journal("usmf", [{"LedgerAccount": "605100", "TransactionCurrencyAmount": 1500.0},
                                                {"LedgerAccount": "200150", "TransactionCurrencyAmount": -1500.0}])
    url = journal_url(debit)
    etag = http.get(url).json()["@odata.etag"]
    for r in (http.post(JOURNAL, json={"dataAreaId": "usmf", "GeneralJournalAccountEntryRecId": "1",
                                       "LedgerAccount": "605100", "TransactionCurrencyAmount": 1.0}),
              http.patch(url, json={"TransactionCurrencyAmount": 9999.0}, headers={"If-Match": etag}),
              http.patch(url, json={"Description": "Reclass"}),
              http.delete(url, headers={"If-Match": "*"}),
              http.post(f"{url}/{NS}.Reverse", json={})):
        assert "read-only" in error(r, 405) and r.headers["allow"] == "GET"
    # inside a $batch changeset too: refused, nothing changed
    changeset = batch_body("cs", [http_part("PATCH", f"{BASE}/{url}", {"Description": "batched"})]).decode()
    body = batch_body("b", [f"Content-Type: multipart/mixed; boundary=cs\r\n\r\n{changeset}"])
    r = http.post("$batch", content=body, headers={"Content-Type": "multipart/mixed; boundary=b"})
    assert r.status_code == 200 and "HTTP/1.1 405 Method Not Allowed" in r.text
    row = fo.get_record(JOURNAL, {"dataAreaId": "usmf",
                                  "GeneralJournalAccountEntryRecId": debit["GeneralJournalAccountEntryRecId"]})
    assert row["TransactionCurrencyAmount"] == 1500.0 and row["Description"] == "" and row["@odata.etag"] == etag
    assert len(fo.records(JOURNAL)) == 2
    # the status is a setting (F&O's own answer to a write on a read-only entity is not documented)
    fo.read_only_write_status = 400
    error(http.patch(url, json={"Description": "Reclass"}), 400)

