"""BusinessCentralClient against the BC sandbox on a loopback port, with tokens from the Entra sandbox
served over TLS (msal + the throwaway CA), exactly as in production but for the hosts."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from connector_pipelines.core.http import ApiError, RetrySettings
from connector_pipelines.systems.business_central import BusinessCentralClient, odata_datetime
from connector_pipelines.systems.entra import EntraTokenProvider
from sandboxes.business_central import BusinessCentralSandbox, parse_dt
from sandboxes.common import SandboxServer

TENANT, ENV = "72f988bf-86f1-41af-91ab-2d7cd011db47", "production"
CLIENT_ID, SECRET = "6b7a3a6c-0f4e-4c43-9b5e-5c7f0b1d2e01", "bc-client-test-secret~0123456789"
SCOPE = "https://api.businesscentral.dynamics.com/.default"
TINY_RETRY = RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.05, max_retry_after_s=0.5)


class StaticTokens:
    """A token provider handing out a fixed token; ``invalidate`` switches to the next one."""

    def __init__(self, bc: BusinessCentralSandbox) -> None:
        self.bc = bc
        self.n = 1
        self.invalidated: list[str] = []
        bc.add_token(self.token)

    @property
    def token(self) -> str:
        return f"token-{self.n}"

    def get_token(self) -> str:
        return self.token

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)
        self.n += 1
        self.bc.add_token(self.token)


@pytest.fixture(scope="module")
def receiver():
    bodies: list[dict] = []

    async def hook(request: Request) -> Response:
        token = request.query_params.get("validationToken")
        if token is not None:
            return PlainTextResponse(token)
        bodies.append(await request.json())
        return Response(status_code=202)

    server = SandboxServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])).start()
    server.bodies = bodies
    yield server
    server.stop()


@pytest.fixture
def world(entra_over_tls):
    entra, entra_server, tls = entra_over_tls
    entra.register_app(TENANT, CLIENT_ID, SECRET, [SCOPE])
    bc = BusinessCentralSandbox(entra)
    bc.strict_enum_names = True   # enum values only by member name ("_x0020_"): the client must translate
    bc.register_environment(TENANT, ENV)
    cid = bc.add_company("CRONUS USA, Inc.")
    tokens = EntraTokenProvider(TENANT, CLIENT_ID, SECRET, SCOPE, authority_host=entra_server.base_url,
                                ca_bundle=str(tls.ca_bundle), clock=entra.clock.timestamp)
    with SandboxServer(bc.app) as server:
        client = BusinessCentralClient.connect(server.base_url, TENANT, ENV, tokens, retry=TINY_RETRY)
        client.metadata()   # one $metadata read per client, made here so the call counts below are the reads
        yield bc, cid, client, tokens
        client.close()
        tokens.close()


@pytest.fixture
def static_world():
    bc = BusinessCentralSandbox(None)
    bc.register_environment(TENANT, ENV)
    cid = bc.add_company("CRONUS USA, Inc.")
    tokens = StaticTokens(bc)
    with SandboxServer(bc.app) as server:
        client = BusinessCentralClient.connect(server.base_url, TENANT, ENV, tokens, retry=TINY_RETRY)
        yield bc, cid, client, tokens
        client.close()


def test_companies_and_company_id(world):
    _bc, cid, client, _ = world
    assert client.company_id("CRONUS USA, Inc.") == cid
    with pytest.raises(LookupError):
        client.company_id("Nope Inc.")


def test_modified_between_reads_every_page_of_the_window(world):
    bc, cid, client, _ = world
    before = [bc.add_purchase_invoice(cid) for _ in range(3)]
    bc.clock.advance(seconds=10)
    start = bc.clock.now()
    bc.clock.advance(seconds=1)
    inside = []
    for i in range(25):   # BC stamps milliseconds: 25 in-process inserts can share one, so step the clock
        inside.append(bc.add_purchase_invoice(cid, totalAmountIncludingTax=i)["id"])
        bc.clock.advance(milliseconds=1)
    end = bc.clock.now()
    bc.clock.advance(seconds=1)
    bc.add_purchase_invoice(cid)   # after the window
    bc.update_record(cid, "purchaseInvoices", before[0]["id"], status="In Review")   # also after
    calls = client.http.calls
    got = list(client.list(cid, "purchaseInvoices", filter=None, page_size=10))
    assert len(got) == 29 and client.http.calls - calls == 3
    calls = client.http.calls
    rows = [r["id"] for r in client.modified_between(cid, "purchaseInvoices", start, end)]
    assert rows == inside
    assert client.http.calls - calls == 1   # default page size 1000
    pages = list(client.list(cid, "purchaseInvoices", filter=f"lastModifiedDateTime gt {odata_datetime(start)} "
                             f"and lastModifiedDateTime le {odata_datetime(end)}", page_size=7))
    assert [r["id"] for r in pages] == inside
    # boundaries: gt start, le end
    edge = list(client.modified_between(cid, "purchaseInvoices", parse_dt(bc.get_record(
        cid, "purchaseInvoices", inside[0])["lastModifiedDateTime"]), end))
    assert inside[0] not in [r["id"] for r in edge] and inside[-1] in [r["id"] for r in edge]
    few = list(client.modified_between(cid, "purchaseInvoices", start, end, filter="totalAmountIncludingTax lt 2",
                                       select=["id", "number"]))
    assert [r["id"] for r in few] == inside[:2]
    assert set(few[0]) == {"@odata.etag", "id", "lastModifiedDateTime", "number"}


def test_modified_between_pages_through_nextlinks(world):
    bc, cid, client, _ = world
    start = bc.clock.now() - timedelta(seconds=1)
    made = [bc.add_vendor(cid)["id"] for _ in range(12)]
    calls = client.http.calls
    rows = list(client.list(cid, "vendors", filter=f"lastModifiedDateTime gt {odata_datetime(start)}", page_size=5))
    assert [r["id"] for r in rows] == made and client.http.calls - calls == 3
    assert bc.calls[("GET", "/api/v2.0/companies({id})/vendors")] == 3


def test_odata_datetime_literal():
    from datetime import UTC, datetime, timezone
    assert odata_datetime(datetime(2019, 8, 18, 20, 5, 51, 603000, tzinfo=UTC)) == "2019-08-18T20:05:51.603Z"
    assert odata_datetime(datetime(2019, 8, 18, 22, 5, 51, tzinfo=timezone(timedelta(hours=2)))) == \
        "2019-08-18T20:05:51.000Z"
    assert odata_datetime(datetime(2019, 8, 18, 20, 5, 51, 603001)) == "2019-08-18T20:05:51.603001Z"


def test_get_many_chunks_the_id_filter(world):
    bc, cid, client, _ = world
    ids = [bc.add_purchase_invoice(cid)["id"] for _ in range(90)]
    missing = "00000000-0000-0000-0000-0000000000aa"
    calls = client.http.calls
    found = client.get_many(cid, "purchaseInvoices", [*ids, missing, ids[0]], chunk=40, select=["number"])
    assert set(found) == set(ids) and client.http.calls - calls == 3   # 91 distinct ids / 40
    assert set(found[ids[5]]) == {"@odata.etag", "id", "number"}


def test_get_returns_none_on_404(world):
    bc, cid, client, _ = world
    v = bc.add_vendor(cid)
    assert client.get(cid, "vendors", v["id"])["id"] == v["id"]
    assert client.get(cid, "vendors", "00000000-0000-0000-0000-000000000001") is None


def test_unblock_vendor_uses_if_match(world):
    bc, cid, client, _ = world
    v = bc.add_vendor(cid, blocked="All")
    current = client.get(cid, "vendors", v["id"])
    updated = client.unblock_vendor(cid, v["id"], current["@odata.etag"])
    assert updated["blocked"] == " " and bc.get_record(cid, "vendors", v["id"])["blocked"] == " "
    with pytest.raises(ApiError) as err:   # the etag is stale now
        client.unblock_vendor(cid, v["id"], current["@odata.etag"])
    assert err.value.status == 409 and err.value.body["error"]["code"] == "Request_EntityChanged"


def test_enum_members_travel_by_name_and_read_as_captions(world):
    """BC spells enum members XML-encoded ("_x0020_", "In_x0020_Review"); the product works in captions."""
    bc, cid, client, tokens = world
    inv = bc.add_purchase_invoice(cid, status="In Review")
    raw = httpx.get(f"{client.http.base_url.rstrip('/')}/companies({cid})/purchaseInvoices({inv['id']})",
                    headers={"Authorization": f"Bearer {tokens.get_token()}"}).json()
    assert raw.get("status") == "In_x0020_Review", raw
    assert client.get(cid, "purchaseInvoices", inv["id"])["status"] == "In Review"
    literal = client.literal("purchaseInvoices", "status", "In Review")
    assert literal == "'In_x0020_Review'"
    assert [r["id"] for r in client.list(cid, "purchaseInvoices", filter=f"status eq {literal}")] == [inv["id"]]
    with pytest.raises(ApiError) as err:   # the caption is not a member name: BC's OData layer refuses it
        list(client.list(cid, "purchaseInvoices", filter="status eq 'In Review'"))
    assert err.value.status == 400
    assert client.literal("purchaseInvoices", "number", "In Review") == "'In Review'"   # not an enum: as is


def test_post_purchase_invoice(world):
    bc, cid, client, _ = world
    inv = bc.add_purchase_invoice(cid, status="In Review")
    assert client.post_purchase_invoice(cid, inv["id"]) is None
    assert bc.get_record(cid, "purchaseInvoices", inv["id"])["status"] == "Open" and bc.action_calls("post") == 1
    with pytest.raises(ApiError) as err:
        client.post_purchase_invoice(cid, inv["id"])
    assert err.value.status == 400 and bc.action_calls("post") == 1


def test_subscription_lifecycle(world, receiver):
    bc, cid, client, _ = world
    url = f"{receiver.base_url}/hook"
    resource = f"/api/v2.0/companies({cid})/purchaseInvoices"
    sub = client.create_subscription(url, resource, "state-1")
    assert sub["resource"] == resource and sub["clientState"] == "state-1"
    assert [s["subscriptionId"] for s in client.list_subscriptions()] == [sub["subscriptionId"]]
    with pytest.raises(ApiError) as err:
        client.create_subscription(url, f"/api/v2.0/companies({cid})/purchaseOrders", "state-1")
    assert err.value.status == 400
    receiver.bodies.clear()
    inv = bc.add_purchase_invoice(cid)
    bc.deliver_notifications()
    entry = receiver.bodies[0]["value"][0]
    assert BusinessCentralClient.parse_resource(entry["resource"]) == (cid, "purchaseInvoices", inv["id"])
    bc.clock.advance(days=2)
    renewed = client.renew_subscription(sub["subscriptionId"], sub["@odata.etag"])
    assert parse_dt(renewed["expirationDateTime"]) > parse_dt(sub["expirationDateTime"])
    with pytest.raises(ApiError) as err:
        client.delete_subscription(sub["subscriptionId"], sub["@odata.etag"])   # stale etag
    assert err.value.status == 409
    client.delete_subscription(sub["subscriptionId"], renewed["@odata.etag"])
    assert client.list_subscriptions() == []


def test_parse_resource():
    p = BusinessCentralClient.parse_resource
    assert p("/api/v2.0/companies(c1)/purchaseInvoices(i1)") == ("c1", "purchaseInvoices", "i1")
    assert p("api/v2.0/companies(c1)/vendors") == ("c1", "vendors", None)
    for bad in ("/api/v1.0/companies(c)/vendors(v)", "/api/v2.0/vendors(v)", "", "companies(c)/vendors",
                "/api/v2.0/companies(c)/vendors?$filter=x"):
        with pytest.raises(ValueError):
            p(bad)


def test_a_429_storm_without_retry_after_ends_in_success(world):
    bc, cid, client, _ = world
    bc.add_vendor(cid)
    assert bc.faults.retry_after is None
    bc.faults.rate_limit_next = 3
    assert len(list(client.list(cid, "vendors"))) == 1
    assert bc.faults.served_429 == 3 and client.http.retries == 3
    # no Retry-After: exponential backoff with jitter, 0.01 * 2**n * [0.5, 1.5] -> at least 0.035 s in all
    assert 0.035 <= client.http.waited_s <= 0.11


def test_a_503_with_retry_after_zero_ends_in_success(world):
    bc, cid, client, _ = world
    bc.faults.retry_after = "0"
    bc.faults.server_error_next = 1
    assert client.company_id("CRONUS USA, Inc.") == cid
    assert bc.faults.served_5xx == 1 and client.http.retries == 1 and client.http.waited_s == 0


def test_an_access_token_revoked_mid_run_is_refreshed_once(world):
    bc, cid, client, tokens = world
    for i in range(30):
        bc.add_vendor(cid, balance=i)
    client.companies()   # the run's first token
    issued = bc.entra.tokens_issued
    rows = []
    for n, row in enumerate(client.list(cid, "vendors", page_size=10)):
        rows.append(row["id"])
        if n == 12:
            bc.entra.revoke_all()   # mid-run: page 2 is being read, page 3 comes next
    assert len(rows) == 30 and len(set(rows)) == 30
    assert tokens.tokens_fetched == 2 and bc.entra.tokens_issued - issued == 1
    assert bc.calls[("GET", "/api/v2.0/companies({id})/vendors")] == 4   # 3 pages + the refused one


def test_an_expired_access_token_is_replaced_before_use(world):
    bc, cid, client, tokens = world
    assert client.company_id("CRONUS USA, Inc.") == cid
    calls = client.http.calls
    bc.entra.clock.advance(hours=2)   # past any Entra lifetime (60-90 min)
    assert client.company_id("CRONUS USA, Inc.") == cid
    assert tokens.tokens_fetched == 2 and client.http.calls - calls == 1   # refreshed before, no 401


def test_a_provider_that_cannot_produce_a_working_token_surfaces_the_401(static_world):
    bc, cid, client, tokens = static_world
    client.companies()
    bc.revoke_token("token-1")
    calls = client.http.calls
    assert client.company_id("CRONUS USA, Inc.") == cid
    assert tokens.invalidated == ["token-1"] and client.http.calls - calls == 2
    # a provider that cannot produce a working token: one retry, then the 401 surfaces
    bc.revoke_token("token-2")
    tokens.bc = BusinessCentralSandbox(None)   # new tokens go nowhere
    with pytest.raises(ApiError) as err:
        client.companies()
    assert err.value.status == 401 and tokens.invalidated == ["token-1", "token-2"]
    assert err.value.body["error"]["code"] == "Authentication_InvalidCredentials"
