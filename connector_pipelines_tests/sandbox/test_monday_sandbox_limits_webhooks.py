"""monday.com sandbox: complexity (per query, per-minute budget, the ``complexity`` field), minute and daily limits,
FIELD_LIMIT_EXCEEDED, the board lock (423), the per-board mutation cap (an ASSUMPTION), and webhooks: challenge,
event payloads, app JWTs, retries once a minute for 30 minutes, redelivery and reordering."""

from __future__ import annotations

import json
import time
from contextlib import closing

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from sandboxes.common import SandboxServer, sync_transport
from sandboxes.monday import MondaySandbox

SECRET = "app-signing-secret-0123456789abcdef"
LABELS = {"0": "Working on it", "1": "Done", "2": "Stuck"}
CREATE = ('mutation ($b: ID!, $n: String!, $v: JSON) { create_item(board_id: $b, item_name: $n, column_values: $v) '
          '{ id } }')
CHANGE = ('mutation ($b: ID!, $i: ID!, $v: JSON!) { change_multiple_column_values(board_id: $b, item_id: $i, '
          'column_values: $v) { id } }')
HOOK = ('mutation ($b: ID!, $u: String!, $e: WebhookEventType!, $c: JSON) { create_webhook(board_id: $b, url: $u, '
        'event: $e, config: $c) { id board_id event config } }')


class Receiver:
    """A webhook endpoint: echoes challenges (unless told not to), records events, answers ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.echo = True
        self.received: list[tuple[dict, dict]] = []

        async def hook(request: Request):
            body = json.loads(await request.body())
            if "challenge" in body:
                return JSONResponse(body if self.echo else {"challenge": "wrong"})
            self.received.append((body, dict(request.headers)))
            return PlainTextResponse("ok", self.status)

        self.app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    @property
    def events(self) -> list[dict]:
        return [b["event"] for b, _ in self.received]


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def sb(receiver) -> MondaySandbox:
    sb = MondaySandbox(delivery_transport=sync_transport(receiver.app))
    sb.add_token("tok", user_id="11", account_id="5")
    sb.add_token("app-tok", user_id="12", account_id="5", kind="app")
    return sb


@pytest.fixture
def board(sb) -> str:
    return sb.add_board("B", [{"id": "status", "title": "Status", "type": "status", "settings": {"labels": LABELS}},
                              {"id": "ext", "title": "Ext", "type": "text"}])


@pytest.fixture
def client(sb):
    with closing(httpx.Client(transport=sync_transport(sb.app), base_url="http://monday.test")) as c:
        yield c


def post(client, query, variables=None, token="tok"):
    return client.post("/v2", json={"query": query, "variables": variables or {}},
                       headers={"Authorization": token, "API-Version": "2026-10"})


def gql(client, query, variables=None, token="tok"):
    r = post(client, query, variables, token)
    assert r.status_code == 200 and "errors" not in r.json(), r.text
    return r.json()["data"]


def create(client, board, name="x", values=None, token="tok"):
    return gql(client, CREATE, {"b": board, "n": name, "v": json.dumps(values or {})}, token)["create_item"]["id"]


# ------------------------------------------------------------------------------------------------------
# complexity
# ------------------------------------------------------------------------------------------------------
def test_complexity_field_reports_the_budget(sb, board, client):
    q = "{ complexity { before after query reset_in_x_seconds } boards { id } }"
    first = gql(client, q)["complexity"]
    assert first["before"] == 10_000_000 and first["after"] == first["before"] - first["query"] > 0
    assert first["reset_in_x_seconds"] == 60
    second = gql(client, q)["complexity"]
    assert second["before"] == first["after"]
    create(client, board)
    assert sb.complexity_used >= 2 * first["query"] + 10_000


def test_a_query_over_the_per_query_limit_is_refused_before_running(sb, board, client):
    sb.limits.max_query_complexity = 5_000
    r = post(client, CREATE, {"b": board, "n": "x"})
    assert r.status_code == 200
    err = r.json()["errors"][0]
    assert err["extensions"]["code"] == "maxComplexityExceeded" and "exceeds max complexity of 5000" in err["message"]
    assert sb.items(board) == [] and sb.mutation_calls("create_item") == 0
    # a page of 500 items with their column values is costed by its limit
    sb.limits.max_query_complexity = 5_000_000
    heavy = ("query ($b: [ID!]) { boards(ids: $b) { items_page(limit: 500) { items { id name "
             "column_values { id text value } updates { id body } } } } }")
    assert post(client, heavy, {"b": [board]}).json()["data"]["boards"][0]["items_page"]["items"] == []
    sb.limits.max_query_complexity = 50_000
    assert post(client, heavy, {"b": [board]}).json()["errors"][0]["extensions"]["code"] == "maxComplexityExceeded"


def test_per_minute_budget_exhausted_then_replenished(sb, board, client):
    sb.limits.complexity_per_minute = 25_000
    create(client, board)
    create(client, board)
    r = post(client, CREATE, {"b": board, "n": "third"})
    assert r.status_code == 429
    err = r.json()["errors"][0]
    assert err["message"] == "Complexity budget exhausted"
    assert err["extensions"]["code"] == "COMPLEXITY_BUDGET_EXHAUSTED"
    wait = err["extensions"]["retry_in_seconds"]
    assert 1 <= wait <= 60 and r.headers["Retry-After"] == str(wait)
    assert sb.served_429 == 1 and len(sb.items(board)) == 2
    sb.clock.advance(seconds=wait)
    create(client, board, "third")


def test_app_tokens_have_separate_read_and_write_budgets(sb, board, client):
    sb.limits.app_writes_per_minute = 15_000
    sb.limits.app_reads_per_minute = 1_000_000
    create(client, board, token="app-tok")
    assert post(client, CREATE, {"b": board, "n": "y"}, token="app-tok").status_code == 429
    assert gql(client, "{ boards { id } }", token="app-tok")["boards"]
    create(client, board, token="tok")            # another token, its own budget


# ------------------------------------------------------------------------------------------------------
# request limits, faults, lock, per-board cap
# ------------------------------------------------------------------------------------------------------
def test_minute_request_limit_gives_429_with_retry_after(sb, board, client):
    sb.limits.requests_per_minute = 2
    gql(client, "{ me { id } }")
    gql(client, "{ me { id } }")
    r = post(client, "{ me { id } }")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["errors"][0]["extensions"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert sb.served_429 == 1 and sb.calls == 3
    sb.clock.advance(seconds=61)
    gql(client, "{ me { id } }")


def test_daily_limit_resets_at_midnight_utc(sb, board, client):
    sb.limits.daily_calls = 1
    gql(client, "{ me { id } }")
    r = post(client, "{ me { id } }")
    assert r.status_code == 429
    ext = r.json()["errors"][0]["extensions"]
    assert ext["code"] == "DAILY_LIMIT_EXCEEDED" and 0 < ext["retry_in_seconds"] <= 86_400
    sb.clock.advance(seconds=ext["retry_in_seconds"])
    gql(client, "{ me { id } }")


def test_field_limit_exceeded_and_forced_429(sb, board, client):
    sb.faults.field_limit_next = 1
    r = post(client, "{ boards { id } }")
    assert r.status_code == 429
    ext = r.json()["errors"][0]["extensions"]
    assert ext["code"] == "FIELD_LIMIT_EXCEEDED"
    assert ext["error_data"] == {"retry_in_seconds": 15, "entity": "boards"} and ext["retry_in_seconds"] == 15
    gql(client, "{ boards { id } }")
    sb.faults.rate_limit_next = 1
    r = post(client, "{ boards { id } }")
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert sb.served_429 == 2
    assert client.get("/_sandbox/").status_code == 200     # the people page is never faulted


def test_locked_board_answers_423_to_writes_only(sb, board, client):
    it = create(client, board)
    other = sb.add_board("Other", [])
    sb.lock_board(board, 5)
    r = post(client, CHANGE, {"b": board, "i": it, "v": '{"ext": "a"}'})
    assert r.status_code == 423 and r.headers["Retry-After"] == "5"
    assert r.json()["errors"][0]["message"] == "Resource is currently locked, please try again later"
    assert gql(client, "query ($b: [ID!]) { boards(ids: $b) { id } }", {"b": [board]})["boards"]
    create(client, other)
    sb.clock.advance(seconds=5)
    gql(client, CHANGE, {"b": board, "i": it, "v": '{"ext": "a"}'})


def test_per_board_mutation_cap_is_an_assumption_and_off_by_default(sb, board, client):
    for n in range(5):
        create(client, board, f"i{n}")
    sb.limits.board_mutations_per_minute = 2
    other = sb.add_board("Other", [])
    create(client, board)
    create(client, board)
    r = post(client, CREATE, {"b": board, "n": "over"})
    assert r.status_code == 429 and r.json()["errors"][0]["extensions"]["code"] == "BOARD_MUTATION_LIMIT_EXCEEDED"
    assert int(r.headers["Retry-After"]) >= 1
    create(client, other)
    sb.clock.advance(seconds=60)
    create(client, board)


# ------------------------------------------------------------------------------------------------------
# webhooks
# ------------------------------------------------------------------------------------------------------
def test_create_webhook_sends_the_challenge_and_lists_it(sb, board, client, receiver):
    out = gql(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "change_column_value"})["create_webhook"]
    assert out["board_id"] == board and out["event"] == "change_column_value" and out["config"] is None
    challenge = sb.webhook_deliveries[0]
    assert challenge["challenge"] and challenge["status"] == 200 and "challenge" in challenge["body"]
    listed = gql(client, "query ($b: ID!) { webhooks(board_id: $b) { id event } }", {"b": board})["webhooks"]
    assert listed == [{"id": out["id"], "event": "change_column_value"}]
    # one per board and event
    r = post(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "change_column_value"})
    assert r.json()["errors"][0]["path"] == ["create_webhook"]
    gql(client, "mutation ($i: ID!) { delete_webhook(id: $i) { id } }", {"i": out["id"]})
    assert gql(client, "query ($b: ID!) { webhooks(board_id: $b) { id } }", {"b": board})["webhooks"] == []


def test_a_failed_challenge_fails_the_creation(sb, board, client, receiver):
    receiver.echo = False
    r = post(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "create_item"})
    err = r.json()["errors"][0]
    assert err["message"] == "Failed to communicate with URL provided." and r.json()["data"]["create_webhook"] is None
    assert sb.store.webhooks == {}
    r = post(client, HOOK, {"b": board, "u": "http://nowhere.invalid/hook", "e": "create_item"})
    assert r.json()["errors"][0]["extensions"]["code"] == "WebhookChallengeFailedException"


def test_column_change_events_from_the_api_and_from_a_person(sb, board, client, receiver):
    it = create(client, board, "Invoice", {"status": {"label": "Working on it"}})
    gql(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "change_column_value"})
    gql(client, CHANGE, {"b": board, "i": it, "v": '{"ext": "X-1", "status": {"label": "Stuck"}}'})
    sb.change_column_as_user(it, "status", {"label": "Done"}, user_id="77")
    gql(client, CHANGE, {"b": board, "i": it, "v": '{"ext": "X-1"}'})       # unchanged: no event
    assert sb.pending_webhooks() == 3
    assert sb.deliver_webhooks() == {"delivered": 3, "failed": 0, "dropped": 0, "posts": 3}
    ext, stuck, done = receiver.events
    assert ext["type"] == "update_column_value" and ext["columnId"] == "ext"
    assert ext["value"] == {"value": "X-1"} and ext["previousValue"] is None and ext["userId"] == 11
    assert stuck["previousValue"]["label"]["text"] == "Working on it" and stuck["value"]["label"]["index"] == 2
    assert done["boardId"] == int(board) and done["pulseId"] == int(it) and done["pulseName"] == "Invoice"
    assert done["userId"] == 77 and done["columnType"] == "color" and done["columnTitle"] == "Status"
    assert done["value"]["label"]["text"] == "Done" and done["value"]["label"]["index"] == 1
    assert done["value"]["label"]["is_done"] is True
    assert done["previousValue"]["label"]["text"] == "Stuck"
    assert done["groupId"] == "topics" and done["isTopGroup"] is True and done["originalTriggerUuid"] is None
    assert len(done["triggerUuid"]) == 32 and done["triggerTime"].endswith("Z")
    assert done["subscriptionId"] == int(next(iter(sb.store.webhooks)))
    assert all("authorization" not in h for _, h in receiver.received)     # personal token: no JWT


def test_create_item_status_and_specific_column_events(sb, board, client, receiver):
    gql(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "create_item"})
    gql(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "change_status_column_value",
                       "c": json.dumps({"columnId": "status", "columnValue": {"index": 1}})})
    gql(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "change_specific_column_value",
                       "c": json.dumps({"columnId": "ext"})})
    it = create(client, board, "New", {"ext": "E"})
    sb.change_column_as_user(it, "status", {"label": "Stuck"})        # index 2: filtered out
    sb.change_column_as_user(it, "status", {"label": "Done"})
    sb.change_column_as_user(it, "ext", "F")
    sb.deliver_webhooks()
    created, status, specific = receiver.events
    assert created["type"] == "create_pulse" and created["pulseName"] == "New" and created["groupName"]
    assert created["columnValues"] == {"ext": {"value": "E"}}
    assert status["columnId"] == "status" and status["value"]["label"]["index"] == 1
    assert specific["columnId"] == "ext" and specific["value"] == {"value": "F"}


def test_app_webhooks_carry_a_jwt_signed_with_the_signing_secret(sb, board, client, receiver):
    sb.app_signing_secret = SECRET
    gql(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "create_item"}, token="app-tok")
    assert gql(client, "query ($b: ID!) { webhooks(board_id: $b, app_webhooks_only: true) { id } }",
               {"b": board})["webhooks"]
    create(client, board)
    sb.deliver_webhooks()
    (_, headers), = receiver.received
    token = headers["authorization"]
    assert not token.lower().startswith("bearer")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="http://rx.test/hook")
    assert claims["accountId"] == 5 and claims["userId"] == 12 and claims["exp"] > claims["iat"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-of-at-least-32-bytes", algorithms=["HS256"], audience="http://rx.test/hook")
    # the short-lived token works against the API for a few minutes
    assert gql(client, "{ me { id } }", token=claims["shortLivedToken"])["me"]["id"] == "12"
    sb.clock.advance(seconds=301)
    assert post(client, "{ me { id } }", token=claims["shortLivedToken"]).status_code == 401


def test_failed_deliveries_retry_once_a_minute_for_30_minutes(sb, board, client, receiver):
    gql(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "create_item"})
    create(client, board)
    receiver.status = 500
    assert sb.deliver_webhooks()["failed"] == 1
    assert sb.deliver_webhooks() == {"delivered": 0, "failed": 0, "dropped": 0, "posts": 0}   # not due yet
    for _ in range(29):
        sb.clock.advance(seconds=60)
        assert sb.deliver_webhooks()["failed"] == 1
    sb.clock.advance(seconds=60)
    assert sb.deliver_webhooks()["dropped"] == 1 and sb.pending_webhooks() == 0
    assert len(receiver.received) == 31
    # a receiver that comes back within the window gets the event
    create(client, board)
    sb.deliver_webhooks()
    receiver.status = 200
    sb.clock.advance(seconds=60)
    assert sb.deliver_webhooks()["delivered"] == 1


def test_retry_now_switch_skips_the_minute_waits(sb, board, client, receiver):
    gql(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "create_item"})
    create(client, board)
    receiver.status = 503
    outcomes = [sb.deliver_webhooks(retry_now=True) for _ in range(31)]
    assert [o["failed"] for o in outcomes[:30]] == [1] * 30 and outcomes[30]["dropped"] == 1
    assert sb.pending_webhooks() == 0 and len(receiver.received) == 31


def test_redeliver_and_reorder(sb, board, client, receiver):
    gql(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "create_item"})
    create(client, board, "first")
    create(client, board, "second")
    sb.redeliver = 2
    sb.reorder = True
    out = sb.deliver_webhooks()
    assert out["delivered"] == 2 and out["posts"] == 4
    assert [e["pulseName"] for e in receiver.events] == ["second", "second", "first", "first"]
    assert len({e["triggerUuid"] for e in receiver.events}) == 2
    sb.redeliver, sb.reorder = 1, False
    sb.faults.drop_webhooks_next = 1
    create(client, board, "lost")
    create(client, board, "kept")
    assert sb.deliver_webhooks()["dropped"] == 1
    assert receiver.events[-1]["pulseName"] == "kept" and len(receiver.events) == 5


def test_auto_delivery_pump(sb, board, client, receiver):
    gql(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "create_item"})
    sb.start_auto_delivery(0.05)
    try:
        create(client, board)
        deadline = time.monotonic() + 5
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sb.stop_auto_delivery()
    assert len(receiver.received) == 1


def test_deleted_webhooks_get_nothing(sb, board, client, receiver):
    hook = gql(client, HOOK, {"b": board, "u": "http://rx.test/hook", "e": "create_item"})["create_webhook"]["id"]
    create(client, board)
    gql(client, "mutation ($i: ID!) { delete_webhook(id: $i) { id } }", {"i": hook})
    create(client, board)
    assert sb.deliver_webhooks()["delivered"] == 0 and receiver.received == []


def test_webhooks_on_loopback_ports(receiver):
    """The demo's shape: sandbox and receiver on real ports; the challenge runs off the sandbox's event loop."""
    sb = MondaySandbox()
    sb.add_token("tok")
    board = sb.add_board("B", [{"id": "status", "title": "Status", "type": "status", "settings": {"labels": LABELS}}])
    with SandboxServer(receiver.app) as rx, SandboxServer(sb.app) as srv, \
            httpx.Client(base_url=srv.base_url, trust_env=False) as c:
        hook = gql(c, HOOK, {"b": board, "u": f"{rx.base_url}/hook", "e": "change_status_column_value"})
        assert hook["create_webhook"]["id"]
        item = create(c, board)
        sb.change_column_as_user(item, "status", {"label": "Done"})
        assert sb.deliver_webhooks()["delivered"] == 1
    assert receiver.events[0]["value"]["label"]["text"] == "Done"
