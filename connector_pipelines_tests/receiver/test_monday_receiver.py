"""The receiver's monday.com endpoints: the challenge echo, app webhooks proven by a JWT (HS256 with the Signing
Secret, ``exp``, ``aud`` = this endpoint's URL), personal-token webhooks proven by a secret path segment; one inbox
row per event however often and in whatever order monday delivers — and the Monday sandbox delivering to it."""

from __future__ import annotations

import json
import logging
import time
from contextlib import closing

import httpx
import jwt
import pytest
from starlette.testclient import TestClient

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.receiver.app import (
    MONDAY_PATH,
    MONDAY_SOURCE,
    ReceiverSettings,
    create_app,
    monday_dedupe_keys,
)
from connector_pipelines.receiver.app import Verified as VerifiedCall
from sandboxes.common import SandboxServer, sync_transport
from sandboxes.monday import MondaySandbox

SIGNING = "monday-signing-secret-0123456789abcdef"
PATH_SECRET = "p4th-secret-0123456789abcdefABCDEF"
URL = "https://rx.example.com/webhooks/monday"


@pytest.fixture
def inbox(tmp_path) -> Inbox:
    return Inbox(get_engine(f"sqlite:///{tmp_path}/db.sqlite"))


def app(inbox: Inbox, **overrides) -> TestClient:
    values = {"monday_signing_secret": SIGNING, "monday_webhook_url": URL, "monday_path_secret": PATH_SECRET,
              "max_body_bytes": 20_000}
    return TestClient(create_app(inbox, ReceiverSettings(**{**values, **overrides})))


def event(trigger: str | None = "3f1c9a", pulse: int = 77, **extra) -> dict:
    ev = {"app": "monday", "type": "update_column_value", "triggerTime": "2026-10-01T10:00:00.000Z",
          "subscriptionId": 9, "userId": 11, "originalTriggerUuid": None, "boardId": 1234, "groupId": "topics",
          "pulseId": pulse, "pulseName": "Invoice 1", "columnId": "status", "columnType": "color",
          "columnTitle": "Status", "value": {"label": {"index": 1, "text": "Done"}},
          "previousValue": {"label": {"index": 0, "text": "Working on it"}}, "changedAt": 1_790_000_000.1,
          "isTopGroup": True, "triggerUuid": trigger, **extra}
    return {"event": ev}


def token(secret: str = SIGNING, aud: str | None = URL, exp_in: int = 300, **extra) -> str:
    now = int(time.time())
    claims = {"accountId": 5, "userId": 12, "iat": now, "exp": now + exp_in, "shortLivedToken": "slt_x", **extra}
    if aud is not None:
        claims["aud"] = aud
    return jwt.encode(claims, secret, algorithm="HS256")


def server_logs(caplog) -> str:
    """Every log line but the test client's own (httpx logs the URL it calls: that is the sender's log)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))


def post(client: TestClient, body, authorization: str | None = "sign", path: str = MONDAY_PATH,
         content_type: str = "application/json"):
    headers = {"Content-Type": content_type}
    if authorization == "sign":
        authorization = token()
    if authorization is not None:
        headers["Authorization"] = authorization
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers=headers)


# -- the challenge ---------------------------------------------------------------------------------------------
def test_the_challenge_is_echoed_and_nothing_is_stored(inbox):
    client = app(inbox)
    for auth in (None, token(), "garbage"):          # unsigned is accepted: the echo stores nothing
        r = post(client, {"challenge": "abc_-123"}, authorization=auth)
        assert r.status_code == 200 and r.json() == {"challenge": "abc_-123"}
    r = post(client, {"challenge": "xyz"}, authorization=None, path=f"{MONDAY_PATH}/{PATH_SECRET}")
    assert r.status_code == 200 and r.json() == {"challenge": "xyz"}
    assert inbox.count(MONDAY_SOURCE) == 0 and inbox.rejections(MONDAY_SOURCE) == 0


@pytest.mark.parametrize("challenge", [123, None, "x" * 2000])
def test_a_malformed_challenge_is_400(inbox, challenge):
    r = post(app(inbox), {"challenge": challenge}, authorization=None)
    assert r.status_code == 400 and inbox.count(MONDAY_SOURCE) == 0


def test_the_challenge_on_a_wrong_secret_path_is_refused(inbox):
    r = post(app(inbox), {"challenge": "abc"}, authorization=None, path=f"{MONDAY_PATH}/wrong")
    assert r.status_code == 401 and inbox.rejections(MONDAY_SOURCE) == 1


# -- app webhooks (JWT) ------------------------------------------------------------------------------------
def test_an_event_delivered_three_times_is_stored_once_with_its_whole_body(inbox):
    client = app(inbox)
    answers = [post(client, event("trig-1")) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [a.json()["stored"] for a in answers] == [1, 0, 0]
    [row] = inbox.read_after(MONDAY_SOURCE, 0, 10)
    assert row.payload == event("trig-1") and row.dedupe_key.startswith("trig-1|")


def test_out_of_order_deliveries_are_each_stored(inbox):
    client = app(inbox)
    for n in (3, 1, 2):
        assert post(client, event(f"trig-{n}", pulse=n)).status_code == 202
    assert [r.payload["event"]["triggerUuid"] for r in inbox.read_after(MONDAY_SOURCE, 0, 10)] == \
        ["trig-3", "trig-1", "trig-2"]


def test_a_bearer_prefix_is_tolerated(inbox):
    assert post(app(inbox), event(), authorization=f"Bearer {token()}").status_code == 202


@pytest.mark.parametrize("authorization,reason", [
    (None, "missing_signature"),
    ("", "missing_signature"),
    ("not-a-jwt", "bad_signature"),
    (token(secret="another-signing-secret-0123456789abcdef"), "bad_signature"),
    (token(exp_in=-120), "bad_signature"),                              # expired (beyond the leeway)
    (token(aud="https://elsewhere.example.com/webhooks/monday"), "bad_signature"),
    (token(aud=URL + "/"), "bad_signature"),                            # aud is compared exactly
    (token(aud=None), "bad_signature"),                                 # aud is required
    (jwt.encode({"aud": URL, "iat": int(time.time())}, SIGNING, algorithm="HS256"), "bad_signature"),  # no exp
    (jwt.encode({"aud": URL, "exp": int(time.time()) + 60}, None, algorithm="none"), "bad_signature"),
])
def test_a_bad_or_missing_jwt_is_401_counted_stores_nothing_and_logs_no_secret(inbox, caplog, authorization,
                                                                                 reason):
    with caplog.at_level(logging.DEBUG):
        r = post(app(inbox), event(), authorization=authorization)
    assert r.status_code == 401 and r.json() == {"error": reason}
    assert inbox.count(MONDAY_SOURCE) == 0 and inbox.rejections(MONDAY_SOURCE) == 1
    assert SIGNING not in server_logs(caplog) and PATH_SECRET not in server_logs(caplog)


def test_an_unsigned_malformed_body_is_401_not_400(inbox):
    assert post(app(inbox), b"{nope", authorization=None).status_code == 401


@pytest.mark.parametrize("settings", [{"monday_signing_secret": None}, {"monday_webhook_url": None}])
def test_app_webhooks_not_configured_are_503_so_monday_retries(inbox, settings):
    client = app(inbox, **settings)
    for body in (event(), {"challenge": "abc"}):      # the challenge too: creating the webhook fails visibly
        r = post(client, body)
        assert r.status_code == 503 and r.headers["Retry-After"]
    assert inbox.count(MONDAY_SOURCE) == 0


@pytest.mark.parametrize("body", [b"{nope", b"[1, 2]", b'"text"', b"{}", b'{"event": "x"}', b'{"event": {}}',
                                  b'{"event": {"type": 5}}'])
def test_a_signed_malformed_body_is_400(inbox, body):
    r = post(app(inbox), body)
    assert r.status_code == 400 and r.json() == {"error": "malformed_body"}
    assert inbox.count(MONDAY_SOURCE) == 0


def test_content_type_and_body_limit_are_the_generic_endpoints(inbox):
    client = app(inbox)
    assert post(client, event(), content_type="text/plain").status_code == 415
    assert post(client, event(pulseName="x" * 30_000)).status_code == 413
    assert inbox.count(MONDAY_SOURCE) == 0


# -- personal-token webhooks (secret path) -------------------------------------------------------------------
def test_the_personal_path_with_the_right_secret_stores_the_event(inbox):
    client = app(inbox)
    path = f"{MONDAY_PATH}/{PATH_SECRET}"
    assert [post(client, event("p-1"), authorization=None, path=path).json()["stored"] for _ in range(2)] == [1, 0]
    assert inbox.count(MONDAY_SOURCE) == 1


@pytest.mark.parametrize("segment", ["wrong", PATH_SECRET[:-1], PATH_SECRET + "x", PATH_SECRET.upper()])
def test_the_personal_path_with_a_wrong_secret_is_401_and_never_logged(inbox, caplog, segment):
    with caplog.at_level(logging.DEBUG):
        r = post(app(inbox), event(), authorization=None, path=f"{MONDAY_PATH}/{segment}")
    assert r.status_code == 401 and r.json() == {"error": "bad_secret"}
    assert inbox.count(MONDAY_SOURCE) == 0 and inbox.rejections(MONDAY_SOURCE) == 1
    assert PATH_SECRET not in server_logs(caplog) and segment not in server_logs(caplog)


def test_the_personal_path_not_configured_is_503(inbox):
    r = post(app(inbox, monday_path_secret=None), event(), authorization=None, path=f"{MONDAY_PATH}/anything")
    assert r.status_code == 503 and r.headers["Retry-After"] and inbox.count(MONDAY_SOURCE) == 0


def test_the_personal_path_malformed_is_400(inbox):
    r = post(app(inbox), b"{nope", authorization=None, path=f"{MONDAY_PATH}/{PATH_SECRET}")
    assert r.status_code == 400 and inbox.count(MONDAY_SOURCE) == 0


# -- dedupe keys and settings ----------------------------------------------------------------------------------
def test_dedupe_key_falls_back_to_original_trigger_then_a_digest():
    def key(body):
        [(k, _)] = monday_dedupe_keys(VerifiedCall(body))
        return k
    assert key(event("t1")) == "t1|9|77|status"
    assert key(event(None, originalTriggerUuid="orig")).startswith("orig|")
    digest = key(event(None))
    assert digest.startswith("sha256:") and digest == key(event(None))
    assert digest != key(event(None, pulse=78))


def test_settings_from_env_derive_the_url_and_never_print_secrets(monkeypatch):
    monkeypatch.setenv("CONNECTOR_MONDAY_SIGNING_SECRET", SIGNING)
    monkeypatch.setenv("CONNECTOR_MONDAY_PATH_SECRET", PATH_SECRET)
    monkeypatch.setenv("CONNECTOR_RECEIVER_PUBLIC_URL", "https://rx.example.com/")
    monkeypatch.delenv("CONNECTOR_MONDAY_WEBHOOK_URL", raising=False)
    s = ReceiverSettings.from_env()
    assert (s.monday_signing_secret, s.monday_path_secret, s.monday_webhook_url) == (SIGNING, PATH_SECRET, URL)
    monkeypatch.setenv("CONNECTOR_MONDAY_WEBHOOK_URL", "https://other.example.com/hooks/monday")
    assert ReceiverSettings.from_env().monday_webhook_url == "https://other.example.com/hooks/monday"
    text = repr(s) + str(s)
    assert SIGNING not in text and PATH_SECRET not in text and "monday_signing_secret=set" in text


def test_create_app_warns_when_monday_is_not_configured(inbox, caplog):
    with caplog.at_level(logging.WARNING, logger="connector_pipelines.receiver"):
        create_app(inbox, ReceiverSettings())
    assert "CONNECTOR_MONDAY_SIGNING_SECRET is not set" in caplog.text
    assert "CONNECTOR_MONDAY_PATH_SECRET is not set" in caplog.text
    assert "CONNECTOR_MONDAY_WEBHOOK_URL" in caplog.text


# -- the Monday sandbox delivers to the receiver ------------------------------------------------------------
HOOK = ('mutation ($b: ID!, $u: String!, $e: WebhookEventType!) { create_webhook(board_id: $b, url: $u, '
        'event: $e) { id } }')
CHANGE = ('mutation ($b: ID!, $i: ID!, $v: JSON!) { change_multiple_column_values(board_id: $b, item_id: $i, '
          'column_values: $v) { id } }')
CREATE = 'mutation ($b: ID!, $n: String!) { create_item(board_id: $b, item_name: $n) { id } }'


def gql(client: httpx.Client, query: str, variables: dict, token: str) -> dict:
    r = client.post("/v2", json={"query": query, "variables": variables},
                    headers={"Authorization": token, "API-Version": "2026-10"})
    assert r.status_code == 200 and "errors" not in r.json(), r.text
    return r.json()["data"]


@pytest.mark.parametrize("kind", ["app", "personal"])
def test_the_monday_sandbox_delivers_to_the_receiver_end_to_end(inbox, kind):
    sb = MondaySandbox()
    sb.add_token("tok", user_id="11", account_id="5", kind=kind)
    board = sb.add_board("B", [{"id": "ext", "title": "Ext", "type": "text"}])
    with SandboxServer(sb.app) as api:
        # The receiver's public URL is only known once it listens: the app is built around a settings holder.
        holder: dict = {}

        async def asgi(scope, receive, send):
            await holder["app"](scope, receive, send)

        with SandboxServer(asgi) as rx:
            url = f"{rx.base_url}{MONDAY_PATH}"
            sb.app_signing_secret = SIGNING
            holder["app"] = create_app(inbox, ReceiverSettings(monday_signing_secret=SIGNING, monday_webhook_url=url,
                                                               monday_path_secret=PATH_SECRET))
            target = url if kind == "app" else f"{url}/{PATH_SECRET}"
            with closing(httpx.Client(base_url=api.base_url, trust_env=False)) as c:
                gql(c, HOOK, {"b": board, "u": target, "e": "change_column_value"}, "tok")
                item = gql(c, CREATE, {"b": board, "n": "Invoice 1"}, "tok")["create_item"]["id"]
                for value in ("A", "B"):
                    gql(c, CHANGE, {"b": board, "i": item, "v": json.dumps({"ext": value})}, "tok")
            sb.redeliver = 3                     # at-least-once: every event posted three times
            assert sb.deliver_webhooks()["delivered"] == 2
    challenge, *posts = sb.webhook_deliveries
    assert challenge["challenge"] and challenge["status"] == 200
    assert len(posts) == 6 and {p["status"] for p in posts} == {202}
    assert bool(posts[0]["authorization"]) == (kind == "app")
    rows = inbox.read_after(MONDAY_SOURCE, 0, 10)
    assert [r.payload["event"]["value"] for r in rows] == [{"value": "A"}, {"value": "B"}]
    assert rows[0].payload == posts[0]["body"]


def test_a_sandbox_jwt_for_another_url_is_refused(inbox):
    """The sandbox signs aud = the URL it posts to: a receiver configured for another URL refuses it."""
    sb = MondaySandbox(delivery_transport=sync_transport(
        create_app(inbox, ReceiverSettings(monday_signing_secret=SIGNING, monday_webhook_url=URL))))
    sb.app_signing_secret = SIGNING
    sb.add_token("app", kind="app")
    board = sb.add_board("B", [{"id": "ext", "title": "Ext", "type": "text"}])
    with closing(httpx.Client(transport=sync_transport(sb.app), base_url="http://monday.test")) as c:
        gql(c, HOOK, {"b": board, "u": "http://rx.test/webhooks/monday", "e": "create_item"}, "app")
        gql(c, CREATE, {"b": board, "n": "X"}, "app")
    assert sb.deliver_webhooks()["failed"] == 1
    assert inbox.count(MONDAY_SOURCE) == 0 and inbox.rejections(MONDAY_SOURCE) == 1
