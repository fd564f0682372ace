"""Business Central sandbox: OData queries and paging, If-Match, the post action, $metadata, and
subscriptions (handshake, renewal, expiry, delivery outcomes, collection notifications)."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from sandboxes.business_central import AUDIENCE, BusinessCentralSandbox
from sandboxes.common import SandboxServer, sync_transport

TENANT, ENV = "72f988bf-86f1-41af-91ab-2d7cd011db47", "production"
BASE = f"http://bc.test/v2.0/{TENANT}/{ENV}/api/v2.0"


class StubEntra:
    def __init__(self) -> None:
        self.valid = {"good-token"}
        self.audiences: list[str] = []

    def validate(self, token: str, audience: str) -> dict | None:
        self.audiences.append(audience)
        return {"aud": audience} if token in self.valid else None


class Receiver:
    """A tiny notification endpoint: answers the handshake (or not) and records notification bodies."""

    def __init__(self) -> None:
        self.echo = True
        self.status = 200
        self.handshakes = 0
        self.bodies: list[dict] = []

        async def endpoint(request: Request) -> Response:
            token = request.query_params.get("validationToken")
            if token is not None:
                self.handshakes += 1
                return PlainTextResponse(token if self.echo else "nope", 200)
            self.bodies.append(await request.json())
            return Response(status_code=self.status)

        self.server = SandboxServer(Starlette(routes=[Route("/hook", endpoint, methods=["GET", "POST"])]))

    @property
    def url(self) -> str:
        return f"{self.server.base_url}/hook"

    @property
    def entries(self) -> list[dict]:
        return [e for b in self.bodies for e in b["value"]]


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    r.server.start()
    yield r
    r.server.stop()


@pytest.fixture
def world(receiver):
    receiver.echo, receiver.status = True, 200
    receiver.handshakes, receiver.bodies = 0, []
    entra = StubEntra()
    bc = BusinessCentralSandbox(entra)
    bc.register_environment(TENANT, ENV)
    cid = bc.add_company("CRONUS USA, Inc.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transport = sync_transport(bc.app)
    http = httpx.Client(transport=transport, base_url=BASE, headers={"Authorization": "Bearer good-token"})
    yield bc, cid, http, entra
    http.close()


def _subscribe(http, cid, receiver, entity_set="purchaseInvoices"):
    return http.post("/subscriptions", json={"notificationUrl": receiver.url, "clientState": "s3cret",
                                              "resource": f"/api/v2.0/companies({cid})/{entity_set}"})


# -- auth and routing -------------------------------------------------------------------------------
def test_bad_token_is_401_with_bc_code_and_audience_is_bc(world):
    _bc, cid, http, entra = world
    r = http.get("/companies", headers={"Authorization": "Bearer forged"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "Authentication_InvalidCredentials"
    assert "CorrelationId" in r.json()["error"]["message"]
    assert set(entra.audiences) == {AUDIENCE}
    assert http.get("/companies").json()["value"][0]["id"] == cid


def test_static_tokens_and_tenantless_route():
    bc = BusinessCentralSandbox(None)
    bc.register_environment(TENANT, ENV)
    bc.add_token("t1")
    bc.add_company("X")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        http = httpx.Client(transport=sync_transport(bc.app), base_url="http://bc.test")
    assert http.get(f"/v2.0/{ENV}/api/v2.0/companies", headers={"Authorization": "Bearer t1"}).status_code == 200
    assert http.get(f"/v2.0/{ENV}/api/v2.0/companies", headers={"Authorization": "Bearer t2"}).status_code == 401
    assert http.get("/v2.0/other/api/v2.0/companies", headers={"Authorization": "Bearer t1"}).status_code == 404
    assert bc.calls_total == 3 and bc.calls[("GET", "/api/v2.0/companies")] == 3


# -- records and OData ------------------------------------------------------------------------------
def test_records_get_all_spec_properties_with_defaults(world):
    bc, cid, http, _ = world
    v = bc.add_vendor(cid, displayName="Fabrikam")
    inv = bc.add_purchase_invoice(cid, vendorId=v["id"])
    assert v["blocked"] == " " and v["number"] and v["lastModifiedDateTime"].endswith("Z") and v["@odata.etag"]
    assert inv["status"] == "Draft" and inv["vendorName"] == "Fabrikam" and "payToPostCode" in inv
    body = http.get(f"/companies({cid})/purchaseInvoices({inv['id']})").json()
    assert body["@odata.context"].endswith(f"companies({cid})/purchaseInvoices/$entity")
    assert body["@odata.etag"] == inv["@odata.etag"]
    with pytest.raises(ValueError):
        bc.add_vendor(cid, noSuchProperty=1)


def test_filter_operators_literals_and_select(world):
    bc, cid, http, _ = world
    a = bc.add_vendor(cid, displayName="O'Brien Ltd", blocked="All", balance=10)
    b = bc.add_vendor(cid, displayName="Contoso", blocked=" ", balance=250.5)
    c = bc.add_vendor(cid, displayName="Adatum", blocked="Payment", balance=99, taxLiable=True)

    def ids(flt, **extra):
        r = http.get(f"/companies({cid})/vendors", params={"$filter": flt, **extra})
        assert r.status_code == 200, r.text
        return {row["id"] for row in r.json()["value"]}

    assert ids("displayName eq 'O''Brien Ltd'") == {a["id"]}
    assert ids("blocked ne ' '") == {a["id"], c["id"]}
    assert ids("balance gt 99") == {b["id"]}
    assert ids("balance ge 99 and balance lt 250") == {c["id"]}
    assert ids("(blocked eq 'All' or blocked eq 'Payment') and balance le 10") == {a["id"]}
    assert ids(f"id eq {b['id']} or id eq {c['id'].upper()}") == {b["id"], c["id"]}
    assert ids("taxLiable eq true") == {c["id"]}
    assert ids(f"lastModifiedDateTime ge {a['lastModifiedDateTime']}") == {a["id"], b["id"], c["id"]}
    assert ids("lastModifiedDateTime lt 2000-01-01T00:00:00Z") == set()
    r = http.get(f"/companies({cid})/vendors", params={"$select": "id,displayName", "$orderby": "balance desc",
                                                        "$top": "2"})
    rows = r.json()["value"]
    assert [row["id"] for row in rows] == [b["id"], c["id"]]
    assert set(rows[0]) == {"@odata.etag", "id", "displayName"}
    r = http.get(f"/companies({cid})/vendors", params={"$orderby": "displayName", "$skip": "1"})
    assert [row["displayName"] for row in r.json()["value"]] == ["Contoso", "O'Brien Ltd"]


def test_unknown_property_and_bad_syntax_are_400(world):
    _bc, cid, http, _ = world
    for params in ({"$filter": "nosuch eq 1"}, {"$select": "id,nosuch"}, {"$orderby": "nosuch"},
                   {"$filter": "displayName eq"}, {"$filter": "(balance gt 1"}):
        r = http.get(f"/companies({cid})/vendors", params=params)
        assert r.status_code == 400, params
        assert r.json()["error"]["code"].startswith("BadRequest")


def test_paging_with_maxpagesize_follows_nextlink(world):
    bc, cid, http, _ = world
    made = [bc.add_purchase_invoice(cid, totalAmountIncludingTax=i)["id"] for i in range(7)]
    url, params, seen, pages = f"/companies({cid})/purchaseInvoices", {"$filter": "totalAmountIncludingTax ge 1"}, [], 0
    while url:
        r = http.get(url, params=params, headers={"Prefer": "odata.maxpagesize=3"})
        assert r.headers["Preference-Applied"] == "odata.maxpagesize=3"
        body = r.json()
        assert len(body["value"]) <= 3
        seen += [row["id"] for row in body["value"]]
        url, params = body.get("@odata.nextLink"), None
        if url:
            assert url.startswith(BASE) and "$skiptoken" in httpx.URL(url).params
        pages += 1
    assert seen == made[1:] and pages == 2


def test_over_max_page_size_without_paging_is_413(world):
    bc, cid, http, _ = world
    bc.max_page_size = 3
    for i in range(4):
        bc.add_vendor(cid)
    assert http.get(f"/companies({cid})/vendors").status_code == 413
    assert http.get(f"/companies({cid})/vendors", params={"$top": "3"}).status_code == 200
    r = http.get(f"/companies({cid})/vendors", headers={"Prefer": "odata.maxpagesize=50"})
    assert r.status_code == 200 and len(r.json()["value"]) == 3 and "@odata.nextLink" in r.json()


def test_patch_if_match_rules(world):
    bc, cid, http, _ = world
    v = bc.add_vendor(cid, blocked="All")
    url = f"/companies({cid})/vendors({v['id']})"
    r = http.patch(url, json={"blocked": " "})
    assert r.status_code == 400 and bc.get_record(cid, "vendors", v["id"])["blocked"] == "All"
    r = http.patch(url, json={"blocked": " "}, headers={"If-Match": v["@odata.etag"]})
    assert r.status_code == 200 and r.json()["blocked"] == "_x0020_"   # BC's member name for the blank member
    assert bc.get_record(cid, "vendors", v["id"])["blocked"] == " "     # stored as the caption
    assert r.json()["@odata.etag"] != v["@odata.etag"]
    stale = http.patch(url, json={"blocked": "All"}, headers={"If-Match": v["@odata.etag"]})
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "Request_EntityChanged"
    assert stale.json()["error"]["message"].startswith("Another user has already changed the record.")
    assert http.patch(url, json={"blocked": "All"}, headers={"If-Match": "*"}).status_code == 200
    assert http.patch(url, json={"nosuch": 1}, headers={"If-Match": "*"}).status_code == 400
    assert http.patch(url, json={"blocked": "Sometimes"}, headers={"If-Match": "*"}).status_code == 400
    assert http.get(f"/companies({cid})/vendors(00000000-0000-0000-0000-000000000042)").status_code == 404


def test_post_action_only_from_draft_or_in_review(world):
    bc, cid, http, _ = world
    draft = bc.add_purchase_invoice(cid, status="Draft")
    review = bc.add_purchase_invoice(cid, status="In Review")
    open_ = bc.add_purchase_invoice(cid, status="Open")
    for inv in (draft, review):
        r = http.post(f"/companies({cid})/purchaseInvoices({inv['id']})/Microsoft.NAV.post")
        assert r.status_code == 204 and r.content == b""
        assert bc.get_record(cid, "purchaseInvoices", inv["id"])["status"] == "Open"
    again = http.post(f"/companies({cid})/purchaseInvoices({draft['id']})/Microsoft.NAV.post")
    assert again.status_code == 400 and "CorrelationId" in again.json()["error"]["message"]
    assert http.post(f"/companies({cid})/purchaseInvoices({open_['id']})/Microsoft.NAV.post").status_code == 400
    assert bc.action_calls("post") == 2
    assert bc.calls[("POST", "/api/v2.0/companies({id})/purchaseInvoices({id})/Microsoft.NAV.post")] == 4


def test_metadata_describes_exactly_the_implemented_types(world):
    _bc, _cid, http, _ = world
    r = http.get("/$metadata")
    assert r.status_code == 200 and "xml" in r.headers["content-type"]
    ns = {"e": "http://docs.oasis-open.org/odata/ns/edm"}
    root = ET.fromstring(r.text)
    types = {t.get("Name"): t for t in root.iter("{http://docs.oasis-open.org/odata/ns/edm}EntityType")}
    assert set(types) == {"company", "vendor", "purchaseInvoice", "purchaseOrder", "subscriptions"}
    inv = {p.get("Name"): p.get("Type") for p in types["purchaseInvoice"].findall("e:Property", ns)}
    assert len(inv) == 48
    assert inv["lastModifiedDateTime"] == "Edm.DateTimeOffset" and inv["id"] == "Edm.Guid"
    assert inv["status"] == "Microsoft.NAV.invoiceEntityAggregateStatus" and inv["invoiceDate"] == "Edm.Date"
    assert "post" in {a.get("Name") for a in root.iter("{http://docs.oasis-open.org/odata/ns/edm}Action")}


# -- faults -----------------------------------------------------------------------------------------
def test_429_has_no_retry_after_by_default_and_503_has_one(world):
    bc, _cid, http, _ = world
    bc.faults.rate_limit_next = 1
    r = http.get("/companies")
    assert r.status_code == 429 and "retry-after" not in r.headers
    bc.faults.retry_after, bc.faults.rate_limit_next = "2", 1
    assert http.get("/companies").headers["retry-after"] == "2"
    bc.faults.retry_after, bc.faults.server_error_next = None, 1
    r = http.get("/companies")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


# -- subscriptions ----------------------------------------------------------------------------------
def test_subscription_needs_a_successful_handshake(world, receiver):
    bc, cid, http, _ = world
    receiver.echo = False
    r = _subscribe(http, cid, receiver)
    assert r.status_code == 400 and bc.subscriptions() == [] and receiver.handshakes == 1
    receiver.echo = True
    r = _subscribe(http, cid, receiver)
    assert r.status_code == 201, r.text
    sub = r.json()
    assert sub["resource"] == f"/api/v2.0/companies({cid})/purchaseInvoices" and sub["clientState"] == "s3cret"
    assert [s["subscriptionId"] for s in http.get("/subscriptions").json()["value"]] == [sub["subscriptionId"]]
    assert _subscribe(http, cid, receiver, "purchaseOrders").status_code == 400   # not webhook-supported
    unreachable = http.post("/subscriptions", json={"notificationUrl": "http://127.0.0.1:9/none",
                                                    "resource": f"/api/v2.0/companies({cid})/vendors"})
    assert unreachable.status_code == 400 and len(bc.subscriptions()) == 1


def test_renew_needs_if_match_and_handshake_and_extends_three_days(world, receiver):
    bc, cid, http, _ = world
    sub = _subscribe(http, cid, receiver).json()
    url = f"/subscriptions('{sub['subscriptionId']}')"
    assert http.patch(url, json={}).status_code == 400
    bc.clock.advance(days=2)
    receiver.echo = False
    assert http.patch(url, json={}, headers={"If-Match": sub["@odata.etag"]}).status_code == 400
    receiver.echo = True
    r = http.patch(url, json={}, headers={"If-Match": sub["@odata.etag"]})
    assert r.status_code == 200
    renewed = r.json()
    from sandboxes.business_central import parse_dt
    left = parse_dt(renewed["expirationDateTime"]) - bc.clock.now()
    assert 3 * 86400 - 60 < left.total_seconds() <= 3 * 86400
    assert http.patch(url, json={}, headers={"If-Match": sub["@odata.etag"]}).status_code == 409
    assert http.delete(url).status_code == 400
    assert http.delete(url, headers={"If-Match": renewed["@odata.etag"]}).status_code == 204
    assert bc.subscriptions() == []


def test_subscriptions_expire_after_three_days(world, receiver):
    bc, cid, http, _ = world
    _subscribe(http, cid, receiver)
    bc.clock.advance(days=2, hours=23)
    assert len(bc.subscriptions()) == 1
    bc.clock.advance(hours=2)
    bc.add_purchase_invoice(cid)
    assert bc.deliver_notifications()["delivered"] == 0
    assert receiver.bodies == [] and bc.subscriptions() == []
    assert http.get("/subscriptions").json()["value"] == []


def test_notifications_carry_bc_fields_and_only_the_subscribed_set(world, receiver):
    bc, cid, http, _ = world
    sub = _subscribe(http, cid, receiver).json()
    inv = bc.add_purchase_invoice(cid, status="Draft")
    bc.add_vendor(cid)   # nobody subscribed to vendors
    bc.add_purchase_order(cid)
    bc.update_record(cid, "purchaseInvoices", inv["id"], status="In Review")
    summary = bc.deliver_notifications()
    assert summary["delivered"] == 2 and summary["posts"] == 1
    entries = receiver.entries
    assert [e["changeType"] for e in entries] == ["created", "updated"]
    e = entries[0]
    assert set(e) == {"subscriptionId", "clientState", "expirationDateTime", "resource", "changeType",
                      "lastModifiedDateTime"}
    assert e["subscriptionId"] == sub["subscriptionId"] and e["clientState"] == "s3cret"
    assert e["resource"] == f"/api/v2.0/companies({cid})/purchaseInvoices({inv['id']})"
    assert bc.deliver_notifications()["posts"] == 0   # nothing left


def test_batches_hold_at_most_100_entries_and_duplicates_and_redelivery(world, receiver):
    bc, cid, http, _ = world
    _subscribe(http, cid, receiver)
    for _ in range(150):
        bc.add_purchase_invoice(cid)
    assert bc.deliver_notifications()["posts"] == 2
    assert [len(b["value"]) for b in receiver.bodies] == [100, 50]
    bc.redeliver_last()
    assert receiver.bodies[2:] == receiver.bodies[:2]
    receiver.bodies = []
    bc.duplicate_notifications = True
    bc.add_purchase_invoice(cid)
    bc.deliver_notifications()
    assert len(receiver.bodies) == 2 and receiver.bodies[0] == receiver.bodies[1]


def test_a_400_reply_deletes_the_subscription(world, receiver):
    bc, cid, http, _ = world
    _subscribe(http, cid, receiver)
    bc.add_purchase_invoice(cid)
    receiver.status = 400
    summary = bc.deliver_notifications()
    assert summary["delivered"] == 0 and len(summary["deleted_subscriptions"]) == 1
    assert bc.subscriptions() == [] and bc.pending_notifications() == 0


def test_a_503_reply_is_retried_until_36_hours(world, receiver):
    bc, cid, http, _ = world
    _subscribe(http, cid, receiver, "vendors")
    v = bc.add_vendor(cid)
    receiver.status = 503
    assert bc.deliver_notifications()["failed"] == 1
    assert len(bc.subscriptions()) == 1 and bc.pending_notifications() == 1
    receiver.status = 200
    receiver.bodies = []
    assert bc.deliver_notifications()["delivered"] == 1
    assert receiver.entries[0]["resource"].endswith(f"/vendors({v['id']})")
    # a change that keeps failing is given up after 36 hours
    receiver.status = 429
    bc.add_vendor(cid)
    bc.deliver_notifications()
    sub = bc.subscriptions()[0]
    http.patch(f"/subscriptions('{sub['subscriptionId']}')", json={}, headers={"If-Match": "*"})  # keep it alive
    bc.clock.advance(hours=37)
    http.patch(f"/subscriptions('{sub['subscriptionId']}')", json={}, headers={"If-Match": "*"})
    receiver.status, receiver.bodies = 200, []
    assert bc.deliver_notifications()["delivered"] == 0 and receiver.bodies == []


def test_more_changes_than_the_threshold_become_one_collection_entry(world, receiver):
    bc, cid, http, _ = world
    bc.collection_threshold = 5
    _subscribe(http, cid, receiver)
    made = [bc.add_purchase_invoice(cid) for _ in range(6)]
    bc.deliver_notifications()
    assert len(receiver.entries) == 1
    entry = receiver.entries[0]
    assert entry["changeType"] == "collection"
    prefix = f"/api/v2.0/companies({cid})/purchaseInvoices?$filter=lastModifiedDateTime gt "
    assert entry["resource"].startswith(prefix)
    # the filter, sent back to the API, covers every changed record
    flt = entry["resource"].split("?$filter=", 1)[1]
    rows = http.get(f"/companies({cid})/purchaseInvoices", params={"$filter": flt}).json()["value"]
    assert {r["id"] for r in made} <= {r["id"] for r in rows}


def test_drop_notifications_and_drop_pending(world, receiver):
    bc, cid, http, _ = world
    _subscribe(http, cid, receiver)
    bc.add_purchase_invoice(cid)
    assert bc.drop_pending_notifications() == 1
    bc.drop_notifications = True
    bc.add_purchase_invoice(cid)
    bc.deliver_notifications()
    bc.drop_notifications = False
    assert bc.deliver_notifications()["posts"] == 0 and receiver.bodies == []


# -- paging keys, seed helpers, real Entra tokens ---------------------------------------------------
def _pages(http, url, params, size):
    pages = []
    while url:
        body = http.get(url, params=params, headers={"Prefer": f"odata.maxpagesize={size}"}).json()
        pages.append([row["id"] for row in body["value"]])
        url, params = body.get("@odata.nextLink"), None
    return pages


def test_skiptoken_is_key_based_so_a_change_between_pages_skips_no_other_row(world):
    bc, cid, http, _ = world
    start = bc.clock.now()
    bc.clock.advance(seconds=1)
    made = [bc.add_vendor(cid, balance=i)["id"] for i in range(9)]
    end = bc.clock.now()
    flt = (f"lastModifiedDateTime gt {start.isoformat().replace('+00:00', 'Z')} and "
           f"lastModifiedDateTime le {end.isoformat().replace('+00:00', 'Z')}")
    url = f"/companies({cid})/vendors"
    first = http.get(url, params={"$filter": flt}, headers={"Prefer": "odata.maxpagesize=3"}).json()
    assert [r["id"] for r in first["value"]] == made[:3]
    bc.clock.advance(seconds=5)
    bc.update_record(cid, "vendors", made[1], displayName="moved out of the window")   # leaves the filter
    rest = _pages(http, first["@odata.nextLink"], None, 3)
    assert [i for page in rest for i in page] == made[3:]   # offset paging would have skipped made[3]
    # ordered paging: every row once, in $orderby order, across pages
    pages = _pages(http, url, {"$orderby": "balance desc"}, 4)
    assert [i for page in pages for i in page] == list(reversed(made)) and len(pages) == 3
    assert http.get(url, params={"$skiptoken": "garbage"}).status_code == 400


def test_records_helper_update_and_delete_queue_notifications(world, receiver):
    bc, cid, http, _ = world
    _subscribe(http, cid, receiver, "vendors")
    v = bc.add_vendor(cid, displayName="A")
    bc.clock.advance(seconds=1)
    updated = bc.update_record(cid, "vendors", v["id"], blocked="Payment")
    assert updated["@odata.etag"] != v["@odata.etag"] and updated["lastModifiedDateTime"] > v["lastModifiedDateTime"]
    assert [r["blocked"] for r in bc.records(cid, "vendors")] == ["Payment"]
    bc.delete_record(cid, "vendors", v["id"])
    assert bc.records(cid, "vendors") == []
    bc.deliver_notifications()
    assert [e["changeType"] for e in receiver.entries] == ["created", "updated", "deleted"]


def test_patch_through_the_api_notifies_and_post_requires_auth_first(world, receiver):
    bc, cid, http, _ = world
    _subscribe(http, cid, receiver)
    inv = bc.add_purchase_invoice(cid)
    bc.drop_pending_notifications()
    r = http.patch(f"/companies({cid})/purchaseInvoices({inv['id']})", json={"vendorInvoiceNumber": "X-1"},
                   headers={"If-Match": inv["@odata.etag"]})
    assert r.status_code == 200 and r.headers["etag"] == r.json()["@odata.etag"]
    r = http.post(f"/companies({cid})/purchaseInvoices({inv['id']})/Microsoft.NAV.post",
                  headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and bc.records(cid, "purchaseInvoices")[0]["status"] == "Draft"
    bc.deliver_notifications()
    assert [e["changeType"] for e in receiver.entries] == ["updated"]


def test_with_the_entra_sandbox_tokens_and_expiry():
    from sandboxes.entra import EntraSandbox

    entra = EntraSandbox()
    entra.register_app(TENANT, "app", "secret", [f"{AUDIENCE}/.default", "https://other.example/.default"])
    bc = BusinessCentralSandbox(entra)
    bc.register_environment(TENANT, ENV)
    bc.add_company("X")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        login = httpx.Client(transport=sync_transport(entra.app), base_url="https://login.test")
        http = httpx.Client(transport=sync_transport(bc.app), base_url=BASE)

    def token(scope):
        return login.post(f"/{TENANT}/oauth2/v2.0/token", data={"grant_type": "client_credentials",
                                                                "client_id": "app", "client_secret": "secret",
                                                                "scope": scope}).json()

    good = token(f"{AUDIENCE}/.default")
    auth = {"Authorization": f"Bearer {good['access_token']}"}
    assert http.get("/companies", headers=auth).status_code == 200
    other = token("https://other.example/.default")["access_token"]
    assert http.get("/companies", headers={"Authorization": f"Bearer {other}"}).status_code == 401   # wrong aud
    entra.clock.advance(seconds=good["expires_in"] + 1)
    r = http.get("/companies", headers=auth)
    assert r.status_code == 401 and r.json()["error"]["code"] == "Authentication_InvalidCredentials"
    fresh = {"Authorization": f"Bearer {token(f'{AUDIENCE}/.default')['access_token']}"}
    assert http.get("/companies", headers=fresh).status_code == 200
    entra.revoke_all()
    assert http.get("/companies", headers=fresh).status_code == 401


def test_handshake_method_is_configurable(world, receiver):
    bc, cid, http, _ = world
    bc.handshake_method = "GET"
    assert _subscribe(http, cid, receiver).status_code == 201 and receiver.handshakes == 1


def test_auto_delivery_in_the_background(world, receiver):
    import time

    bc, cid, http, _ = world
    _subscribe(http, cid, receiver)
    bc.start_auto_delivery(0.05)
    try:
        bc.add_purchase_invoice(cid)
        deadline = time.monotonic() + 5
        while not receiver.bodies and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        bc.stop_auto_delivery()
    assert [e["changeType"] for e in receiver.entries] == ["created"]


# -- typed $filter operands (the OData library's type rules) ------------------------------------------
INCOMPATIBLE = "A binary operator with incompatible types was detected. Found operand types '{}' and '{}' for operator kind '{}'."


@pytest.mark.parametrize("op,kind", [("eq", "Equal"), ("ne", "NotEqual"), ("gt", "GreaterThan"),
                                     ("ge", "GreaterThanOrEqual"), ("lt", "LessThan"), ("le", "LessThanOrEqual")])
def test_a_quoted_date_time_is_a_string_and_bc_refuses_the_comparison(world, op, kind):
    bc, cid, http, _ = world
    bc.add_vendor(cid)
    r = http.get(f"/companies({cid})/vendors", params={"$filter": f"lastModifiedDateTime {op} '2019-08-18T20:05:51Z'"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "BadRequest"
    assert error["message"].startswith(INCOMPATIBLE.format("Edm.DateTimeOffset", "Edm.String", kind) + "  CorrelationId:  ")
    ok = http.get(f"/companies({cid})/vendors", params={"$filter": f"lastModifiedDateTime {op} 2019-08-18T20:05:51Z"})
    assert ok.status_code == 200


@pytest.mark.parametrize("flt,left,right,kind", [
    ("'2019-08-18T20:05:51Z' lt lastModifiedDateTime", "Edm.String", "Edm.DateTimeOffset", "LessThan"),
    ("lastModifiedDateTime ge 2019-08-18", "Edm.DateTimeOffset", "Edm.Date", "GreaterThanOrEqual"),
    ("invoiceDate ge 2019-08-18T00:00:00Z", "Edm.Date", "Edm.DateTimeOffset", "GreaterThanOrEqual"),
    ("invoiceDate eq '2019-08-18'", "Edm.Date", "Edm.String", "Equal"),
    ("id eq '0b5b5e2c-1d3a-4c57-9a7e-2f7f1d1c2b3a'", "Edm.Guid", "Edm.String", "Equal"),
    ("vendorName eq 42", "Edm.String", "Edm.Int32", "Equal"),
    ("totalAmountIncludingTax gt '5'", "Edm.Decimal", "Edm.String", "GreaterThan"),
    ("status eq 1.5", "Microsoft.NAV.invoiceEntityAggregateStatus", "Edm.Decimal", "Equal"),
])
def test_every_comparison_is_typed_against_the_metadata(world, flt, left, right, kind):
    _bc, cid, http, _ = world
    r = http.get(f"/companies({cid})/purchaseInvoices", params={"$filter": flt})
    assert r.status_code == 400, flt
    assert r.json()["error"]["message"].startswith(INCOMPATIBLE.format(left, right, kind))


def test_typed_literals_that_match_still_filter(world):
    bc, cid, http, _ = world
    a = bc.add_purchase_invoice(cid, invoiceDate="2019-08-18", totalAmountIncludingTax=10)
    b = bc.add_purchase_invoice(cid, invoiceDate="2020-01-02", totalAmountIncludingTax=20.5)

    def ids(flt):
        r = http.get(f"/companies({cid})/purchaseInvoices", params={"$filter": flt})
        assert r.status_code == 200, r.text
        return {row["id"] for row in r.json()["value"]}

    assert ids("invoiceDate ge 2019-12-31") == {b["id"]}
    assert ids("totalAmountIncludingTax gt 10") == {b["id"]} == ids("totalAmountIncludingTax gt 10.0")
    assert ids(f"id eq {a['id']} and vendorName eq ''") == {a["id"]}
    assert ids("dueDate eq null") == set() and ids("vendorName ne null") == {a["id"], b["id"]}


# -- OData response headers -------------------------------------------------------------------------
ODATA_JSON = "application/json; odata.metadata=minimal; odata.streaming=true"


def test_answers_carry_odata_version_and_the_odata_json_content_type(world):
    bc, cid, http, _ = world
    v = bc.add_vendor(cid)
    inv = bc.add_purchase_invoice(cid)
    answers = [http.get("/companies"), http.get(f"/companies({cid})"), http.get(f"/companies({cid})/vendors"),
               http.get(f"/companies({cid})/vendors({v['id']})"),
               http.get(f"/companies({cid})/vendors({v['id']})", params={"$select": "id"}),
               http.post(f"/companies({cid})/vendors", json={"displayName": "New"}),
               http.patch(f"/companies({cid})/vendors({v['id']})", json={"displayName": "X"}, headers={"If-Match": "*"}),
               http.get("/subscriptions")]
    for r in answers:
        assert r.status_code in (200, 201), r.text
        assert r.headers["content-type"] == ODATA_JSON and r.headers["odata-version"] == "4.0", r.request.url
    meta = http.get("/$metadata")
    assert meta.headers["content-type"].startswith("application/xml")
    posted = http.post(f"/companies({cid})/purchaseInvoices({inv['id']})/Microsoft.NAV.post")
    assert posted.status_code == 204 and "content-type" not in posted.headers


def test_errors_are_plain_json_like_the_recorded_bc_404_unless_configured(world):
    bc, cid, http, _ = world
    missing = http.get(f"/companies({cid})/vendors(00000000-0000-0000-0000-000000000042)")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json" and "odata-version" not in missing.headers
    bc.odata_headers_on_errors = True
    for r in (http.get(f"/companies({cid})/vendors(00000000-0000-0000-0000-000000000042)"),
              http.get(f"/companies({cid})/vendors", params={"$filter": "displayName eq"}),
              http.get("/companies", headers={"Authorization": "Bearer forged"})):
        assert r.status_code >= 400
        assert r.headers["content-type"] == ODATA_JSON and r.headers["odata-version"] == "4.0"
    bc.faults.rate_limit_next = 1
    assert http.get("/companies").headers["odata-version"] == "4.0"


@pytest.mark.parametrize("flt,message", [
    ("displayName eq", "Expression expected at position 14 in 'displayName eq'."),
    ("(balance gt 1", "')' or operator expected at position 13 in '(balance gt 1'."),
    ("(balance gt 1 balance)", "')' or operator expected at position 14 in '(balance gt 1 balance)'."),
    ("balance gt 1 x", "Syntax error at position 14 in 'balance gt 1 x'."),
    ("displayName eq 'abc", "There is an unterminated string literal at position 15 in 'displayName eq 'abc'."),
    ("balance gt 1 # 2", "Syntax error: character '#' is not valid at position 13 in 'balance gt 1 # 2'."),
    ("balance", "The $filter expression must evaluate to a single boolean value."),
])
def test_filter_syntax_errors_use_the_odata_library_messages(world, flt, message):
    _bc, cid, http, _ = world
    r = http.get(f"/companies({cid})/vendors", params={"$filter": flt})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "BadRequest"
    assert r.json()["error"]["message"].startswith(message + "  CorrelationId:  ")


# -- enum members as BC's OData layer names them ----------------------------------------------------
def test_enum_values_go_over_the_wire_by_member_name(world):
    bc, cid, http, _ = world
    v = bc.add_vendor(cid)   # blocked: the blank member
    inv = bc.add_purchase_invoice(cid, status="In Review")
    assert bc.get_record(cid, "vendors", v["id"])["blocked"] == " "   # stored as the caption (the AL value)
    assert http.get(f"/companies({cid})/vendors({v['id']})").json()["blocked"] == "_x0020_"
    assert http.get(f"/companies({cid})/vendors", params={"$select": "blocked"}).json()["value"][0]["blocked"] == "_x0020_"
    assert http.get(f"/companies({cid})/purchaseInvoices").json()["value"][0]["status"] == "In_x0020_Review"
    created = http.post(f"/companies({cid})/vendors", json={"displayName": "N", "blocked": "Payment"}).json()
    assert created["blocked"] == "Payment"
    r = http.patch(f"/companies({cid})/purchaseInvoices({inv['id']})", json={"status": "Draft"}, headers={"If-Match": "*"})
    assert r.json()["status"] == "Draft"
    r = http.patch(f"/companies({cid})/vendors({created['id']})", json={"blocked": "_x0020_"}, headers={"If-Match": "*"})
    assert r.status_code == 200 and r.json()["blocked"] == "_x0020_"
    assert bc.get_record(cid, "vendors", created["id"])["blocked"] == " "
    assert http.post(f"/companies({cid})/vendors", json={"blocked": "Sometimes"}).status_code == 400
    # the $metadata names the same members
    ns = "{http://docs.oasis-open.org/odata/ns/edm}"
    root = ET.fromstring(http.get("/$metadata").text)
    members = {e.get("Name"): [(m.get("Name"), m.get("Value")) for m in e.iter(f"{ns}Member")]
               for e in root.iter(f"{ns}EnumType")}
    assert members["vendorBlocked"] == [("_x0020_", "0"), ("Payment", "1"), ("All", "2")]
    assert [n for n, _ in members["invoiceEntityAggregateStatus"]] == [
        "_x0020_", "Draft", "In_x0020_Review", "Open", "Paid", "Canceled", "Corrective"]


def test_enum_filters_take_member_names_and_captions_only_when_lenient(world):
    bc, cid, http, _ = world
    review = bc.add_purchase_invoice(cid, status="In Review")["id"]
    draft = bc.add_purchase_invoice(cid, status="Draft")["id"]
    opened = bc.add_purchase_invoice(cid, status="Open")["id"]

    def ids(flt):
        r = http.get(f"/companies({cid})/purchaseInvoices", params={"$filter": flt})
        assert r.status_code == 200, r.text
        return {row["id"] for row in r.json()["value"]}

    assert ids("status eq 'In_x0020_Review'") == {review} == ids("status eq 'in_x0020_review'") == ids("status eq '2'")
    assert ids("status eq 'In Review'") == {review}   # lenient by default (UNCONFIRMED at BC)
    assert ids("status gt 'Draft'") == {review, opened}   # enums order by the member's value
    order = http.get(f"/companies({cid})/purchaseInvoices", params={"$orderby": "status desc"}).json()["value"]
    assert [row["id"] for row in order] == [opened, review, draft]
    bc.strict_enum_names = True
    r = http.get(f"/companies({cid})/purchaseInvoices", params={"$filter": "status eq 'In Review'"})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith(
        INCOMPATIBLE.format("Microsoft.NAV.invoiceEntityAggregateStatus", "Edm.String", "Equal"))
    assert ids("status eq 'In_x0020_Review'") == {review}
    v = bc.add_vendor(cid, blocked="All")
    r = http.patch(f"/companies({cid})/vendors({v['id']})", json={"blocked": " "}, headers={"If-Match": "*"})
    assert r.status_code == 400


def test_the_caption_form_on_the_wire_is_a_setting(world):
    bc, cid, http, _ = world
    bc.enum_names = "display"
    v = bc.add_vendor(cid)
    bc.add_purchase_invoice(cid, status="In Review")
    assert http.get(f"/companies({cid})/vendors({v['id']})").json()["blocked"] == " "
    rows = http.get(f"/companies({cid})/purchaseInvoices", params={"$filter": "status eq 'In Review'"}).json()["value"]
    assert [row["status"] for row in rows] == ["In Review"]
