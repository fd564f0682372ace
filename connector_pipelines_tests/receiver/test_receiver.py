"""The receiver: verify, store once, answer — 2xx stored, 503 transient, 4xx forgery/malformed/oversized."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.receiver.app import ReceiverSettings, create_app

STATE = "bc-client-state-0123456789"
APP_SECRET = "jira-app-secret-0123456789abcdef0123456789"
HOOK_SECRET = "jira-admin-secret-0123456789abcdef0123"
BC = "/webhooks/business-central"
JIRA = "/webhooks/jira"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def inbox(tmp_path) -> Inbox:
    return Inbox(get_engine(f"sqlite:///{tmp_path}/db.sqlite"))


def settings(**overrides) -> ReceiverSettings:
    values = {"bc_client_state": STATE, "jira_app_client_secret": APP_SECRET,
              "jira_admin_webhook_secret": HOOK_SECRET, "max_body_bytes": 20_000}
    return ReceiverSettings(**{**values, **overrides})


@pytest.fixture
def client(inbox) -> TestClient:
    return TestClient(create_app(inbox, settings()))


def bc_entry(i=0, state=STATE, sub="sub-1", change="updated", resource=None) -> dict:
    return {"subscriptionId": sub, "clientState": state, "expirationDateTime": "2026-11-25T00:00:00Z",
            "resource": resource or f"/api/v2.0/companies(c1)/purchaseInvoices(i{i})", "changeType": change,
            "lastModifiedDateTime": "2026-11-22T10:00:00Z"}


def bc_body(state=STATE, n=2) -> dict:
    return {"value": [bc_entry(i, state) for i in range(n)]}


def jira_body(key="FIN-1") -> bytes:
    return json.dumps({"webhookEvent": "jira:issue_updated", "issue": {"key": key}}).encode()


def hmac_headers(raw: bytes, ident="d-1", retry="0", secret=HOOK_SECRET) -> dict:
    sig = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature": sig, "Content-Type": "application/json"}
    if ident is not None:
        headers["X-Atlassian-Webhook-Identifier"] = ident
    if retry is not None:
        headers["X-Atlassian-Webhook-Retry"] = retry
    return headers


def jwt_headers(ident="d-2", secret=APP_SECRET, exp_in=300, claims=None, alg="HS256") -> dict:
    now = int(time.time())
    payload = {"iss": "app-client-id", "iat": now, "exp": now + exp_in} if claims is None else claims
    token = jwt.encode(payload, secret, algorithm=alg)
    return {"Authorization": f"Bearer {token}", "X-Atlassian-Webhook-Identifier": ident,
            "X-Atlassian-Webhook-Retry": "0", "Content-Type": "application/json"}


def reasons(inbox: Inbox) -> dict[tuple[str, str, int], int]:
    """Refusals counted so far: {(source, reason, status): count}."""
    return inbox.rejection_counts()


# -- Business Central -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bc_handshake_echoes_the_token_verbatim_as_plain_text(client, inbox, method):
    token = "Abc 123+/=&%é"
    r = client.request(method, BC, params={"validationToken": token})
    assert r.status_code == 200 and r.text == token
    assert r.headers["content-type"].startswith("text/plain")
    assert inbox.count("business_central") == 0
    assert client.request(method, BC, params={"validationToken": "x" * 1025}).status_code == 400
    assert reasons(inbox) == {("business_central", "validation_token_too_long", 400): 1}


def test_bc_handshake_works_before_the_secret_is_configured(inbox):
    c = TestClient(create_app(inbox, settings(bc_client_state=None)))
    assert c.post(BC, params={"validationToken": "tok"}).text == "tok"


def test_bc_notification_stored_once_per_entry_across_redeliveries(client, inbox):
    for _ in range(3):
        r = client.post(BC, json=bc_body())
        assert r.status_code == 202
    assert r.json() == {"stored": 0, "duplicates": 2}
    rows = inbox.read_after("business_central", 0, 100)
    assert [r.dedupe_key for r in rows] == [
        f"sub-1|/api/v2.0/companies(c1)/purchaseInvoices(i{i})|2026-11-22T10:00:00Z|updated" for i in range(2)]
    expected = bc_entry(0)
    del expected["clientState"]  # the secret never reaches the inbox
    assert rows[0].payload == expected


def test_bc_batch_of_several_subscriptions_and_a_collection(client, inbox):
    coll = "/api/v2.0/companies(c1)/vendors?$filter=lastModifiedDateTime gt 2026-11-22T09:00:00Z"
    body = {"value": [bc_entry(0), bc_entry(0, sub="sub-2"), bc_entry(sub="sub-3", change="collection", resource=coll),
                      bc_entry(0, change="deleted")]}
    assert client.post(BC, json=body).json() == {"stored": 4, "duplicates": 0}
    keys = [r.dedupe_key for r in inbox.read_after("business_central", 0, 100)]
    assert f"sub-3|{coll}|2026-11-22T10:00:00Z|collection" in keys
    assert len(set(keys)) == 4


def test_bc_over_long_key_is_stored_under_a_digest(client, inbox):
    long_resource = "/api/v2.0/companies(c1)/vendors?$filter=" + "x" * 600
    assert client.post(BC, json={"value": [bc_entry(resource=long_resource)]}).status_code == 202
    assert client.post(BC, json={"value": [bc_entry(resource=long_resource)]}).json()["duplicates"] == 1
    [row] = inbox.read_after("business_central", 0, 10)
    assert row.dedupe_key.startswith("sha256:") and len(row.dedupe_key) <= 512
    assert row.payload["resource"] == long_resource


@pytest.mark.parametrize("state", ["forged", "", None, 12345, STATE + "x"])
def test_bc_wrong_client_state_is_401_and_stores_nothing(client, inbox, state):
    body = {"value": [bc_entry(0), {**bc_entry(1), "clientState": state}]}  # one forged entry spoils the call
    assert client.post(BC, json=body).status_code == 401
    assert inbox.count("business_central") == 0
    assert reasons(inbox) == {("business_central", "bad_client_state", 401): 1}


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b"[" * 5_000 + b"]" * 5_000, b'{"value": "x"}',
                                  b'{"value": []}', b'{"other": 1}', b'[1]', b'{"value": [1]}',
                                  json.dumps({"value": [{**bc_entry(), "subscriptionId": None}]}).encode(),
                                  json.dumps({"value": [{k: v for k, v in bc_entry().items()
                                                         if k != "resource"}]}).encode()])
def test_bc_malformed_is_400_counted_and_stores_nothing(client, inbox, body):
    r = client.post(BC, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and inbox.count("business_central") == 0
    assert reasons(inbox) == {("business_central", "malformed_body", 400): 1}


def test_bc_without_a_configured_client_state_answers_503_so_bc_keeps_the_subscription(inbox):
    c = TestClient(create_app(inbox, settings(bc_client_state=None)))
    r = c.post(BC, json=bc_body())
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert inbox.count("business_central") == 0


def test_storage_failure_answers_503_with_retry_after_and_logs_no_payload(client, inbox, monkeypatch, caplog):
    def broken(*_a, **_k):
        raise OperationalError("INSERT INTO cp_inbox", {"payload": "BODY-CONTENT-MARKER"},
                               Exception("database is locked"))

    monkeypatch.setattr(Inbox, "put_many", broken)
    with caplog.at_level(logging.INFO, logger="connector_pipelines.receiver"):
        r = client.post(BC, json=bc_body())
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        raw = jira_body()
        r = client.post(JIRA, content=raw, headers=hmac_headers(raw))
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert "database is locked" in caplog.text and "BODY-CONTENT-MARKER" not in caplog.text
    monkeypatch.undo()
    assert inbox.count("business_central") == 0 and inbox.count("jira") == 0
    assert client.post(BC, json=bc_body()).status_code == 202  # the retry after the outage stores it


def test_a_delivery_is_stored_in_one_put_many_call(client, inbox, monkeypatch):
    calls = []
    real = Inbox.put_many
    monkeypatch.setattr(Inbox, "put_many", lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    assert client.post(BC, json=bc_body(n=3)).json() == {"stored": 3, "duplicates": 0}
    assert [(source, len(items)) for source, items, _proof in calls] == [("business_central", 3)]


# -- Jira -----------------------------------------------------------------------------------------------
def test_jira_hmac_good_is_stored_with_kind_and_retry(client, inbox):
    raw = jira_body()
    assert client.post(JIRA, content=raw, headers=hmac_headers(raw, retry="0")).status_code == 202
    [row] = inbox.read_after("jira", 0, 10)
    assert row.dedupe_key == "d-1"
    assert row.payload == {"event": json.loads(raw), "signature_kind": "hmac", "retry": 0}


def test_jira_hmac_is_over_the_exact_raw_bytes(client, inbox):
    raw = b'{ "webhookEvent" : "jira:issue_created",\n  "issue": {"key": "FIN-9"} }'  # not canonical JSON
    assert client.post(JIRA, content=raw, headers=hmac_headers(raw, "raw-1")).status_code == 202
    reserialised = json.dumps(json.loads(raw)).encode()
    assert client.post(JIRA, content=reserialised, headers=hmac_headers(raw, "raw-2")).status_code == 401


def test_jira_bad_hmac_is_401_counted_and_not_stored(client, inbox):
    raw = jira_body()
    assert client.post(JIRA, content=raw, headers=hmac_headers(raw, secret="wrong")).status_code == 401
    tampered = jira_body("FIN-2")
    assert client.post(JIRA, content=tampered, headers=hmac_headers(raw)).status_code == 401
    sha1 = {**hmac_headers(raw), "X-Hub-Signature": "sha1=" + hmac.new(HOOK_SECRET.encode(), raw, "sha1").hexdigest()}
    assert client.post(JIRA, content=raw, headers=sha1).status_code == 401
    assert inbox.count("jira") == 0
    assert reasons(inbox) == {("jira", "bad_signature", 401): 3}


def test_jira_forged_call_is_401_even_with_a_malformed_body(client, inbox):
    r = client.post(JIRA, content=b"not json", headers=hmac_headers(jira_body()))
    assert r.status_code == 401 and reasons(inbox) == {("jira", "bad_signature", 401): 1}


def test_jira_jwt_good_expired_and_wrong_secret(client, inbox):
    raw = jira_body()
    assert client.post(JIRA, content=raw, headers=jwt_headers("j-1")).status_code == 202
    assert client.post(JIRA, content=raw, headers=jwt_headers("j-2", exp_in=-600)).status_code == 401
    assert client.post(JIRA, content=raw, headers=jwt_headers("j-3", secret="x" * 40)).status_code == 401
    [row] = inbox.read_after("jira", 0, 10)
    assert row.dedupe_key == "j-1" and row.payload["signature_kind"] == "jwt" and row.payload["retry"] == 0
    assert reasons(inbox) == {("jira", "bad_signature", 401): 2}


def test_jira_jwt_claims_only_exp_is_required(client, inbox):
    raw = jira_body()
    now = int(time.time())
    # Small clock skew is tolerated; unknown iss/aud/qsh are not demanded (the claim set is unconfirmed).
    assert client.post(JIRA, content=raw, headers=jwt_headers("skew", exp_in=-5)).status_code == 202
    odd = {"iss": "someone", "aud": "whatever", "qsh": "abc", "sub": "x", "exp": now + 60}
    assert client.post(JIRA, content=raw, headers=jwt_headers("claims", claims=odd)).status_code == 202
    # No exp, a future nbf, another algorithm, alg=none, or a non-Bearer scheme: refused.
    assert client.post(JIRA, content=raw, headers=jwt_headers("no-exp", claims={"iss": "a"})).status_code == 401
    assert client.post(JIRA, content=raw, headers=jwt_headers(
        "nbf", claims={"exp": now + 900, "nbf": now + 600})).status_code == 401
    assert client.post(JIRA, content=raw, headers=jwt_headers(
        "hs512", alg="HS512", secret=APP_SECRET + "x" * 30)).status_code == 401
    none = jwt.encode({"exp": now + 60}, None, algorithm="none")
    assert client.post(JIRA, content=raw, headers={**jwt_headers("none"),
                                                    "Authorization": f"Bearer {none}"}).status_code == 401
    basic = {**jwt_headers("basic"), "Authorization": "Basic " + jwt_headers()["Authorization"][7:]}
    assert client.post(JIRA, content=raw, headers=basic).status_code == 401
    assert sorted(r.dedupe_key for r in inbox.read_after("jira", 0, 10)) == ["claims", "skew"]


def test_jira_retries_of_one_delivery_are_stored_once(client, inbox):
    raw = jira_body()
    for retry in ("0", "1", "2"):
        assert client.post(JIRA, content=raw, headers=hmac_headers(raw, "same", retry)).status_code == 202
    assert client.post(JIRA, content=raw, headers=jwt_headers("same")).status_code == 202
    [row] = inbox.read_after("jira", 0, 10)
    assert row.payload["retry"] == 0


def test_jira_missing_signature_identifier_or_json(client, inbox):
    raw = jira_body()
    assert client.post(JIRA, content=raw, headers={"X-Atlassian-Webhook-Identifier": "x",
                                                   "Content-Type": "application/json"}).status_code == 401
    assert client.post(JIRA, content=raw, headers=hmac_headers(raw, ident=None)).status_code == 400
    assert client.post(JIRA, content=raw, headers=hmac_headers(raw, ident="  ")).status_code == 400
    for bad in (b"not json", b"[1, 2]"):
        assert client.post(JIRA, content=bad, headers=hmac_headers(bad, "bad")).status_code == 400
    assert inbox.count("jira") == 0
    assert reasons(inbox) == {("jira", "missing_signature", 401): 1, ("jira", "missing_identifier", 400): 2,
                              ("jira", "malformed_body", 400): 2}


def test_unconfigured_jira_secrets_refuse_that_kind(inbox):
    raw = jira_body()
    only_jwt = TestClient(create_app(inbox, settings(jira_admin_webhook_secret=None)))
    assert only_jwt.post(JIRA, content=raw, headers=hmac_headers(raw)).status_code == 401
    assert only_jwt.post(JIRA, content=raw, headers=jwt_headers("ok")).status_code == 202
    only_hmac = TestClient(create_app(inbox, settings(jira_app_client_secret=None)))
    assert only_hmac.post(JIRA, content=raw, headers=jwt_headers("no")).status_code == 401
    assert only_hmac.post(JIRA, content=raw, headers=hmac_headers(raw, "ok2")).status_code == 202
    assert sorted(r.dedupe_key for r in inbox.read_after("jira", 0, 10)) == ["ok", "ok2"]


def test_jira_get_is_not_allowed(client, inbox):
    assert client.get(JIRA).status_code == 405 and inbox.count("jira") == 0


# -- Limits, constant time, health ------------------------------------------------------------------------
def test_oversized_body_is_413_by_content_length(client, inbox):
    big = json.dumps({"value": [{"x": "y" * 30_000}]}).encode()
    assert client.post(BC, content=big, headers={"Content-Type": "application/json"}).status_code == 413
    raw = jira_body() + b" " * 30_000
    assert client.post(JIRA, content=raw, headers=hmac_headers(raw)).status_code == 413
    assert inbox.count("business_central") == 0 and inbox.count("jira") == 0
    assert reasons(inbox) == {("business_central", "body_too_large", 413): 1, ("jira", "body_too_large", 413): 1}


JSON_CT = (b"content-type", b"application/json")


def _asgi_post(app, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """POST through the raw ASGI interface; returns (status, how many body chunks the app pulled)."""
    pulled = 0
    sent: list[dict] = []

    async def receive():
        nonlocal pulled
        if pulled >= len(chunks):
            raise AssertionError("read past the end of the body")
        pulled += 1
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"test"), *headers], "client": ("127.0.0.1", 1), "server": ("test", 80)}
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), pulled


def test_oversized_streamed_body_is_413_without_reading_it_all(inbox):
    app = create_app(inbox, settings(max_body_bytes=10_000))
    chunks = [b"x" * 4_000] * 50  # 200 kB, chunked: no Content-Length
    status, pulled = _asgi_post(app, BC, [(b"transfer-encoding", b"chunked"), JSON_CT], chunks)
    assert status == 413 and pulled == 3  # stopped at the first chunk past 10 kB
    # A declared Content-Length over the limit is refused before any body is read.
    status, pulled = _asgi_post(app, JIRA, [(b"content-length", b"999999"), JSON_CT], [b"{}"])
    assert status == 413 and pulled == 0
    assert reasons(inbox) == {("business_central", "body_too_large", 413): 1, ("jira", "body_too_large", 413): 1}


def test_signatures_are_compared_in_constant_time(client, inbox, monkeypatch):
    """Every check goes through hmac.compare_digest and obeys it: with it answering False, all refuse."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    raw = jira_body()
    expected_sig = hmac.new(HOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest().encode()
    assert client.post(JIRA, content=raw, headers=hmac_headers(raw, "ct-1")).status_code == 202
    assert calls == [(expected_sig, expected_sig)]
    calls.clear()
    assert client.post(BC, json=bc_body(n=2)).status_code == 202
    assert calls == [(STATE.encode(), STATE.encode())] * 2
    calls.clear()
    assert client.post(JIRA, content=raw, headers=jwt_headers("ct-2")).status_code == 202
    assert len(calls) == 1  # PyJWT's HS256 verify

    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
    assert client.post(JIRA, content=raw, headers=hmac_headers(raw, "ct-3")).status_code == 401
    assert client.post(JIRA, content=raw, headers=jwt_headers("ct-4")).status_code == 401
    assert client.post(BC, json={"value": [bc_entry(7)]}).status_code == 401


def test_rejections_never_record_or_log_secrets_or_bodies(client, inbox, caplog):
    with caplog.at_level(logging.INFO, logger="connector_pipelines.receiver"):
        client.post(BC, json={"value": [bc_entry(state="FORGED-STATE-MARKER")]})
        raw = b'{"issue": "BODY-MARKER"}'
        client.post(JIRA, content=raw, headers=hmac_headers(raw, secret="SECRET-MARKER"))
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 2
    text = caplog.text + repr(reasons(inbox))
    for marker in ("MARKER", STATE, HOOK_SECRET, APP_SECRET):
        assert marker not in text


def test_healthz(client, inbox, monkeypatch):
    assert client.get("/healthz").json() == {"status": "ok", "inbox": "ok"}

    def down(*_a, **_k):
        raise OperationalError("SELECT 1", {}, Exception("unable to open database file"))

    monkeypatch.setattr(inbox.engine, "connect", down)
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["inbox"] == "unavailable"


def test_settings_from_env_and_repr_hides_secrets(monkeypatch):
    monkeypatch.setenv("CONNECTOR_BC_CLIENT_STATE", STATE)
    monkeypatch.setenv("CONNECTOR_JIRA_CLIENT_SECRET", APP_SECRET)
    monkeypatch.setenv("CONNECTOR_JIRA_WEBHOOK_SECRET", "")
    s = ReceiverSettings.from_env()
    assert (s.bc_client_state, s.jira_app_client_secret, s.jira_admin_webhook_secret) == (STATE, APP_SECRET, None)
    assert s.max_body_bytes == 1_000_000 and s.max_bc_entries_per_call == 5_000
    assert (s.jira_jwt_max_age_s, s.replay_window_s) == (600, 30 * 24 * 3600)
    monkeypatch.setenv("CONNECTOR_RECEIVER_MAX_BC_ENTRIES", "2000")
    monkeypatch.setenv("CONNECTOR_JIRA_JWT_MAX_AGE_S", "120")
    monkeypatch.setenv("CONNECTOR_REPLAY_WINDOW_S", "3600")
    s = ReceiverSettings.from_env()
    assert (s.max_bc_entries_per_call, s.jira_jwt_max_age_s, s.replay_window_s) == (2000, 120, 3600)
    assert STATE not in repr(s) and APP_SECRET not in repr(s) and STATE not in str(s)


# -- The process `python -m connector_pipelines.receiver` -------------------------------------------------
def test_module_entry_point_serves(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    env.update(DAGSTER_HOME=str(tmp_path / "home"), CONNECTOR_BC_CLIENT_STATE=STATE)
    proc = subprocess.Popen([sys.executable, "-m", "connector_pipelines.receiver", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 8
        while True:
            try:
                assert httpx.get(f"{base}/healthz", timeout=1).json() == {"status": "ok", "inbox": "ok"}
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "receiver did not start"
                time.sleep(0.05)
        assert httpx.post(f"{base}{BC}", params={"validationToken": "t0k"}).text == "t0k"
        assert httpx.post(f"{base}{BC}", json=bc_body()).status_code == 202

        def chunked():
            for _ in range(1_100):
                yield b"x" * 1_000

        assert httpx.post(f"{base}{BC}", content=chunked(),
                          headers={"Content-Type": "application/json"}).status_code == 413
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    db = Inbox(get_engine(f"sqlite:///{tmp_path / 'home' / 'connector_pipelines.sqlite'}"))
    assert db.count("business_central") == 2
