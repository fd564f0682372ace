"""The receiver: verify, store once, answer — 2xx stored, 503 transient, 4xx forgery/malformed."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import jwt
import pytest
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.receiver import verify
from connector_pipelines.receiver.app import ReceiverSettings, create_app

STATE = "bc-client-state-0123456789"
APP_SECRET = "jira-app-secret-0123456789abcdef0123456789"
HOOK_SECRET = "jira-admin-secret-0123456789abcdef0123"


@pytest.fixture
def inbox(tmp_path) -> Inbox:
    return Inbox(get_engine(f"sqlite:///{tmp_path}/db.sqlite"))


@pytest.fixture
def client(inbox) -> TestClient:
    settings = ReceiverSettings(bc_client_state=STATE, jira_app_client_secret=APP_SECRET,
                                jira_admin_webhook_secret=HOOK_SECRET, max_body_bytes=20_000)
    return TestClient(create_app(inbox, settings))


def bc_body(state=STATE, n=2) -> dict:
    return {"value": [{"subscriptionId": "sub-1", "clientState": state, "expirationDateTime": "2026-11-25T00:00:00Z",
                       "resource": f"/api/v2.0/companies(c1)/purchaseInvoices(i{i})", "changeType": "updated",
                       "lastModifiedDateTime": "2026-11-22T10:00:00Z"} for i in range(n)]}


def jira_body(key="FIN-1") -> bytes:
    return json.dumps({"webhookEvent": "jira:issue_updated", "issue": {"key": key}}).encode()


def hmac_headers(raw: bytes, ident="d-1", retry="0", secret=HOOK_SECRET) -> dict:
    sig = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature": sig, "X-Atlassian-Webhook-Identifier": ident, "X-Atlassian-Webhook-Retry": retry,
            "Content-Type": "application/json"}


def jwt_headers(ident="d-2", secret=APP_SECRET, exp_in=300) -> dict:
    now = int(time.time())
    token = jwt.encode({"iss": "app", "iat": now, "exp": now + exp_in}, secret, algorithm="HS256")
    return {"Authorization": f"Bearer {token}", "X-Atlassian-Webhook-Identifier": ident,
            "Content-Type": "application/json"}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bc_handshake_echoes_the_token_as_plain_text(client, method):
    r = client.request(method, "/webhooks/business-central", params={"validationToken": "abc 123+/="})
    assert r.status_code == 200 and r.text == "abc 123+/=" and r.headers["content-type"].startswith("text/plain")
    assert client.get("/webhooks/business-central", params={"validationToken": "x" * 5000}).status_code == 400


def test_bc_notification_stored_once_per_entry_across_redeliveries(client, inbox):
    for _ in range(3):
        r = client.post("/webhooks/business-central", json=bc_body())
        assert r.status_code == 202
    rows = inbox.read_after("business_central", 0, 100)
    assert len(rows) == 2
    assert "clientState" not in rows[0].payload
    assert rows[0].dedupe_key == "sub-1|/api/v2.0/companies(c1)/purchaseInvoices(i0)|2026-11-22T10:00:00Z|updated"


def test_bc_wrong_client_state_is_401_and_stores_nothing(client, inbox):
    assert client.post("/webhooks/business-central", json=bc_body(state="forged")).status_code == 401
    assert inbox.count("business_central") == 0 and inbox.rejections("business_central") == 1


@pytest.mark.parametrize("body", [b"not json", b'{"value": "x"}', b'{"value": []}', b'{"other": 1}'])
def test_bc_malformed_is_400(client, inbox, body):
    r = client.post("/webhooks/business-central", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and inbox.count("business_central") == 0


def test_storage_failure_answers_503_with_retry_after(client, inbox, monkeypatch):
    def broken(*_a, **_k):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(Inbox, "put", broken)
    r = client.post("/webhooks/business-central", json=bc_body())
    assert r.status_code == 503 and r.headers["Retry-After"]


def test_jira_hmac_good_is_stored_with_kind(client, inbox):
    raw = jira_body()
    assert client.post("/webhooks/jira", content=raw, headers=hmac_headers(raw)).status_code == 202
    [row] = inbox.read_after("jira", 0, 10)
    assert row.dedupe_key == "d-1" and row.payload["signature_kind"] == "hmac"
    assert row.payload["event"]["issue"]["key"] == "FIN-1"


def test_jira_bad_hmac_is_401_counted_and_not_stored(client, inbox):
    raw = jira_body()
    r = client.post("/webhooks/jira", content=raw, headers=hmac_headers(raw, secret="wrong"))
    assert r.status_code == 401
    tampered = client.post("/webhooks/jira", content=jira_body("FIN-2"), headers=hmac_headers(raw))
    assert tampered.status_code == 401
    assert inbox.count("jira") == 0 and inbox.rejections("jira") == 2


def test_jira_jwt_good_expired_and_wrong_secret(client, inbox):
    raw = jira_body()
    assert client.post("/webhooks/jira", content=raw, headers=jwt_headers("j-1")).status_code == 202
    assert client.post("/webhooks/jira", content=raw, headers=jwt_headers("j-2", exp_in=-600)).status_code == 401
    assert client.post("/webhooks/jira", content=raw, headers=jwt_headers("j-3", secret="x" * 40)).status_code == 401
    assert [r.dedupe_key for r in inbox.read_after("jira", 0, 10)] == ["j-1"]
    assert inbox.read_after("jira", 0, 10)[0].payload["signature_kind"] == "jwt"


def test_jira_retry_of_the_same_delivery_is_stored_once(client, inbox):
    raw = jira_body()
    for retry in ("0", "1", "2"):
        assert client.post("/webhooks/jira", content=raw, headers=hmac_headers(raw, "same", retry)).status_code == 202
    assert inbox.count("jira") == 1


def test_jira_missing_signature_or_identifier(client, inbox):
    raw = jira_body()
    assert client.post("/webhooks/jira", content=raw,
                       headers={"X-Atlassian-Webhook-Identifier": "x"}).status_code == 401
    headers = hmac_headers(raw)
    del headers["X-Atlassian-Webhook-Identifier"]
    assert client.post("/webhooks/jira", content=raw, headers=headers).status_code == 400
    assert inbox.count("jira") == 0


def test_unconfigured_secret_refuses(inbox):
    c = TestClient(create_app(inbox, ReceiverSettings()))
    raw = jira_body()
    assert c.post("/webhooks/jira", content=raw, headers=hmac_headers(raw)).status_code == 401
    assert c.post("/webhooks/business-central", json=bc_body()).status_code == 401


def test_oversized_body_is_413(client, inbox):
    big = json.dumps({"value": [{"x": "y" * 30_000}]}).encode()
    assert client.post("/webhooks/business-central", content=big,
                       headers={"Content-Type": "application/json"}).status_code == 413
    assert inbox.rejections("business_central") == 1


def test_signatures_are_compared_in_constant_time(client, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(verify.hmac, "compare_digest", spy)
    raw = jira_body()
    client.post("/webhooks/jira", content=raw, headers=hmac_headers(raw, "ct-1"))
    client.post("/webhooks/business-central", json=bc_body())
    assert len(calls) >= 3


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok", "inbox": "ok"}


def test_settings_repr_hides_secrets():
    assert STATE not in repr(ReceiverSettings(bc_client_state=STATE))
