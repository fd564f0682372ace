"""The receiver under stress: a slow database, a failing one, oversized batches, bytes a database refuses,
wrong content types, vanishing clients, floods of forgeries, old or replayed signatures."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from connector_pipelines.core.db import get_engine, inbox_rejections, replay_guard
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.receiver.app import FO_PATH, create_app
from connector_pipelines.receiver.verify import escape_unstorable, jwt_valid_until, valid_app_jwt
from connector_pipelines_tests.receiver.test_receiver import (
    APP_SECRET,
    BC,
    JIRA,
    STATE,
    bc_body,
    bc_entry,
    hmac_headers,
    jira_body,
    jwt_headers,
    settings,
)
from sandboxes.common import SandboxServer

FO_SECRET = "fo-endpoint-secret-0123456789abcdef"
FO_HEADERS = {"X-Connector-Secret": FO_SECRET, "Content-Type": "application/json"}


@pytest.fixture
def inbox(tmp_path) -> Inbox:
    return Inbox(get_engine(f"sqlite:///{tmp_path}/db.sqlite"))


@pytest.fixture(params=["sqlite", "postgres"])
def any_inbox(request, tmp_path) -> Inbox:
    """The inbox on SQLite and on a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return Inbox(get_engine(f"sqlite:///{tmp_path}/db.sqlite"))
    return Inbox(get_engine(request.getfixturevalue("pg_url")))


def client_for(inbox: Inbox, **overrides) -> TestClient:
    """A client that sees 5xx as answers (never as raised exceptions)."""
    return TestClient(create_app(inbox, settings(fo_events_secret=FO_SECRET, **overrides)),
                      raise_server_exceptions=False)


def fo_event(control: int, **extra) -> dict:
    return {"BusinessEventId": "PurchaseOrderConfirmedBusinessEvent", "ControlNumber": control, **extra}


def token(claims: dict, secret: str = APP_SECRET) -> str:
    return "Bearer " + jwt.encode(claims, secret, algorithm="HS256")


# -- 1. the event loop stays free ---------------------------------------------------------------------------
def test_a_blocked_database_call_does_not_stall_healthz_or_refusals(inbox, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = Inbox.put_many

    def blocked(self, *args, **kwargs):
        entered.set()
        release.wait(15)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Inbox, "put_many", blocked)
    forged = {"value": [bc_entry(state="forged")]}
    with SandboxServer(create_app(inbox, settings())) as server, ThreadPoolExecutor(1) as pool, \
            httpx.Client(base_url=server.base_url, timeout=5, trust_env=False) as http:
        try:
            pending = pool.submit(http.post, BC, json=bc_body(), timeout=30)
            assert entered.wait(5), "the delivery never reached put_many"
            assert http.get("/healthz").json() == {"status": "ok", "inbox": "ok"}
            assert http.post(BC, json=forged).status_code == 401
            assert not pending.done() and inbox.rejections("business_central", "bad_client_state") == 1
        finally:
            release.set()
        assert pending.result(timeout=15).json() == {"stored": 2, "duplicates": 0}


# -- 2. one transaction per delivery --------------------------------------------------------------------------
def test_a_failure_after_some_entries_stores_none_of_the_delivery(any_inbox):
    engine = any_inbox.engine
    in_tx: list[str] = []
    written: list[str] = []

    def begin(_conn):
        in_tx.clear()

    def before(_conn, _cursor, statement, *_rest):
        if statement.startswith("INSERT INTO cp_inbox ("):
            in_tx.append(statement)
            if len(in_tx) >= 2:  # the second batch of entries of any transaction fails
                raise OperationalError(statement[:20], None, Exception("disk I/O error"))

    def after(_conn, _cursor, statement, *_rest):
        if statement.startswith("INSERT INTO cp_inbox ("):
            written.append(statement)

    events = [("begin", begin), ("before_cursor_execute", before), ("after_cursor_execute", after)]
    for name, fn in events:
        sa.event.listen(engine, name, fn)
    c = client_for(any_inbox, max_body_bytes=1_000_000)
    body = bc_body(n=600)  # more than one INSERT batch
    try:
        r = c.post(BC, json=body)
    finally:
        for name, fn in events:
            sa.event.remove(engine, name, fn)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert written, "no entry was written before the failure: the test proves nothing"
    assert any_inbox.count("business_central") == 0
    assert c.post(BC, json=body).json() == {"stored": 600, "duplicates": 0}
    assert [r.seq for r in any_inbox.read_after("business_central", 0, 1000)] == list(range(1, 601))


# -- 3. entries per call ----------------------------------------------------------------------------------------
def test_bc_over_the_entry_cap_is_413_counted_and_stores_nothing(inbox):
    c = client_for(inbox, max_body_bytes=3_000_000)

    def entries(n):
        return {"value": [{"subscriptionId": "s", "clientState": STATE, "resource": f"/r({i})"} for i in range(n)]}

    r = c.post(BC, json=entries(5_001))
    assert r.status_code == 413 and r.json() == {"error": "too_many_entries"}
    assert inbox.count("business_central") == 0
    assert inbox.rejection_counts() == {("business_central", "too_many_entries", 413): 1}
    assert c.post(BC, json=entries(5_000)).json() == {"stored": 5_000, "duplicates": 0}
    small = client_for(inbox, max_bc_entries_per_call=2)
    assert small.post(BC, json=bc_body(n=3)).status_code == 413
    assert small.post(BC, json=bc_body(n=2)).status_code == 202


def test_fo_over_its_cap_is_413_too_many_entries(inbox):
    c = client_for(inbox, max_body_bytes=1_000_000)
    r = c.post(FO_PATH, content=json.dumps([fo_event(i) for i in range(1, 1_002)]), headers=FO_HEADERS)
    assert r.status_code == 413 and r.json() == {"error": "too_many_entries"}
    assert inbox.count("finance_operations") == 0
    assert inbox.rejections("finance_operations", "too_many_entries") == 1
    r = c.post(FO_PATH, content=json.dumps([fo_event(i) for i in range(1, 1_001)]), headers=FO_HEADERS)
    assert r.json() == {"stored": 1_000, "duplicates": 0}


# -- 4. bytes a database refuses, in an authenticated body ----------------------------------------------------
def test_escape_unstorable_replaces_nul_and_lone_surrogates_everywhere():
    value = {"a\x00": ["x\udc80", {"k\ud800": "v"}, 1, None, "😀"], "plain": "ok"}
    fixed, changed = escape_unstorable(value)
    assert changed and fixed == {"a\\u0000": ["x\\udc80", {"k\\ud800": "v"}, 1, None, "😀"], "plain": "ok"}
    assert escape_unstorable({"a": ["b"]}) == ({"a": ["b"]}, False)
    deep: list = []
    node = deep
    for _ in range(5_000):  # deeper than the recursion limit
        node.append([])
        node = node[0]
    node.append("\x00")
    assert escape_unstorable(deep)[1]


def test_nul_and_lone_surrogates_are_stored_escaped_never_a_5xx(any_inbox, caplog):
    c = client_for(any_inbox)
    entry = {**bc_entry(0), "subscriptionId": "sub\u0000", "resource": "/vendors(PAYLOAD-MARKER\udc80)",
             "extra\u0000": ["\udc80\u0000", {"deep\ud800": "😀"}]}
    raw_bc = json.dumps({"value": [entry]}).encode()  # ASCII, with \u0000 and \udc80 escapes
    raw_jira = json.dumps({"webhookEvent": "jira:issue_updated", "issue": {"key": "FIN-1\u0000"},
                           "comment": "PAYLOAD-MARKER\udc80"}).encode()
    raw_fo = json.dumps(fo_event(77, PurchaseOrderNumber="PO\u0000\udc80")).encode()
    with caplog.at_level(logging.INFO, logger="connector_pipelines.receiver"):
        for _ in range(2):
            assert c.post(BC, content=raw_bc, headers={"Content-Type": "application/json"}).status_code == 202
            assert c.post(JIRA, content=raw_jira, headers=hmac_headers(raw_jira, "nul-1")).status_code == 202
            assert c.post(FO_PATH, content=raw_fo, headers=FO_HEADERS).status_code == 202
    [bc] = any_inbox.read_after("business_central", 0, 10)
    assert bc.dedupe_key == "sub\\u0000|/vendors(PAYLOAD-MARKER\\udc80)|2026-11-22T10:00:00Z|updated"
    assert bc.payload["extra\\u0000"] == ["\\udc80\\u0000", {"deep\\ud800": "😀"}]
    [jira] = any_inbox.read_after("jira", 0, 10)
    assert jira.payload["event"]["issue"]["key"] == "FIN-1\\u0000"
    [fo] = any_inbox.read_after("finance_operations", 0, 10)
    assert fo.dedupe_key == "77" and fo.payload["PurchaseOrderNumber"] == "PO\\u0000\\udc80"
    warnings = [r for r in caplog.records if "stored escaped" in r.getMessage()]
    assert len(warnings) == 6 and all(r.levelno == logging.WARNING for r in warnings)
    assert "PAYLOAD-MARKER" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_forged_client_state_with_a_lone_surrogate_is_401_and_bytes_not_utf8_are_400(inbox):
    c = client_for(inbox)
    json_ct = {"Content-Type": "application/json"}
    forged = json.dumps({"value": [bc_entry(state=STATE + "\udc80")]}).encode()
    assert c.post(BC, content=forged, headers=json_ct).status_code == 401
    genuine = json.dumps({"value": [bc_entry(resource="/vendors(é)")]}, ensure_ascii=False)
    for raw in (genuine.encode("latin-1"), genuine.encode().replace("é".encode(), b"\xff")):  # not UTF-8
        r = c.post(BC, content=raw, headers=json_ct)
        assert r.status_code == 400 and r.json() == {"error": "malformed_body"}
    assert inbox.count("business_central") == 0
    assert inbox.rejection_counts() == {("business_central", "bad_client_state", 401): 1,
                                        ("business_central", "malformed_body", 400): 2}
    # A surrogate encoded as raw bytes (CESU-8, which json.loads decodes) is escaped like a \u escape.
    raw = json.dumps({"value": [bc_entry(resource="/vendors(X)")]}).encode().replace(b"(X)", b"(\xed\xb2\x80)")
    assert c.post(BC, content=raw, headers=json_ct).status_code == 202
    [row] = inbox.read_after("business_central", 0, 10)
    assert row.payload["resource"] == "/vendors(\\udc80)"


# -- 5. content type ------------------------------------------------------------------------------------------
def _signed(path: str, content_type: str | None, n: int) -> tuple[bytes, dict]:
    if path == BC:
        raw, headers = json.dumps({"value": [bc_entry(n)]}).encode(), {}
    elif path == JIRA:
        raw = jira_body(f"FIN-{n}")
        headers = hmac_headers(raw, f"ct-{n}")
    else:
        raw, headers = json.dumps(fo_event(n)).encode(), dict(FO_HEADERS)
    headers.pop("Content-Type", None)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return raw, headers


@pytest.mark.parametrize("path", [BC, JIRA, FO_PATH])
def test_a_body_that_is_not_json_by_its_content_type_is_415(inbox, path):
    c = client_for(inbox)
    refused = [None, "text/plain", "application/x-www-form-urlencoded", "text/json", "application/jsonp", ""]
    for n, ctype in enumerate(refused, 1):
        raw, headers = _signed(path, ctype, n)
        r = c.post(path, content=raw, headers=headers)
        assert r.status_code == 415 and r.json() == {"error": "unsupported_media_type"}, ctype
    [(source, reason, status)] = inbox.rejection_counts()
    assert (reason, status) == ("unsupported_media_type", 415)
    assert inbox.rejections(source) == len(refused) and inbox.count(source) == 0
    accepted = ["application/json", "application/json; charset=utf-8", "Application/JSON ; charset=UTF-8",
                "application/vnd.example+json"]
    for n, ctype in enumerate(accepted, 100):
        raw, headers = _signed(path, ctype, n)
        assert c.post(path, content=raw, headers=headers).status_code == 202, ctype
    assert inbox.count(source) == len(accepted)


def test_the_bc_handshake_is_answered_whatever_the_content_type(inbox):
    c = client_for(inbox)
    r = c.post(BC, params={"validationToken": "tok"}, content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.text == "tok" and inbox.rejections() == 0


# -- 6. a client that disconnects mid-body ----------------------------------------------------------------------
def test_a_client_disconnecting_mid_body_logs_one_info_line_and_no_traceback(inbox, caplog):
    app = create_app(inbox, settings())
    messages = iter([{"type": "http.request", "body": b'{"value": [{"subscr', "more_body": True},
                     {"type": "http.disconnect"}])
    sent: list[dict] = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": BC, "raw_path": BC.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"test"), (b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    with caplog.at_level(logging.DEBUG):
        asyncio.run(app(scope, receive, send))
    assert sent == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()] == [
        "business_central webhook: the client disconnected before its body was read"]
    assert inbox.count("business_central") == 0 and inbox.rejections() == 0


# -- 7. refusals are aggregated -------------------------------------------------------------------------------------
def test_two_hundred_forgeries_leave_a_handful_of_counter_rows(inbox):
    c = client_for(inbox)
    for i in range(120):
        assert c.post(BC, json={"value": [bc_entry(i, state=f"forged-{i}")]}).status_code == 401
    for i in range(80):
        raw = jira_body(f"FIN-{i}")
        assert c.post(JIRA, content=raw, headers=hmac_headers(raw, f"f-{i}", secret=f"wrong-{i}")).status_code == 401
    assert inbox.rejection_counts() == {("business_central", "bad_client_state", 401): 120,
                                        ("jira", "bad_signature", 401): 80}
    with inbox.engine.connect() as conn:
        rows = conn.execute(sa.select(inbox_rejections)).all()
    hours = {r.hour for r in rows}
    assert len(hours) <= 2 and len(rows) <= 2 * len(hours)  # one row per (source, reason, status, hour)
    assert sum(r.count for r in rows) == 200


# -- 8. the age of a Jira JWT -----------------------------------------------------------------------------------------
def test_valid_app_jwt_returns_the_claims_and_bounds_the_tokens_age():
    now = int(time.time())
    claims = {"iss": "app", "iat": now - 500, "exp": now + 60}
    assert valid_app_jwt(token(claims), APP_SECRET) == claims
    assert valid_app_jwt(token({"iat": now - 625, "exp": now + 60}), APP_SECRET)        # within the leeway
    assert valid_app_jwt(token({"iat": now - 700, "exp": now + 60}), APP_SECRET) is None
    assert valid_app_jwt(token({"iat": now - 200, "exp": now + 60}), APP_SECRET, max_age_s=120) is None
    assert valid_app_jwt(token({"exp": now + 500}), APP_SECRET) == {"exp": now + 500}
    assert valid_app_jwt(token({"exp": now + 3_600}), APP_SECRET) is None                 # unbounded lifetime
    assert valid_app_jwt(token({"iat": now}), APP_SECRET) is None                          # exp still required
    assert valid_app_jwt(token(claims), "x" * 40) is None and valid_app_jwt(token(claims), None) is None
    assert valid_app_jwt(token(claims).replace("Bearer", "Basic"), APP_SECRET) is None
    odd = {"iat": now, "exp": now + 60, "jti": 7, "sub": 8}   # claim types are not Atlassian's documented ones
    assert valid_app_jwt(token(odd), APP_SECRET) == odd
    # How long a replay guard must remember a token: until it is refused anyway.
    assert jwt_valid_until({"iat": now, "exp": now + 300}) == now + 330
    assert jwt_valid_until({"iat": now, "exp": now + 10**12}) == now + 630
    assert jwt_valid_until({"exp": now + 300}, max_age_s=60) == now + 330


def test_the_receiver_refuses_an_old_jwt_by_its_setting(inbox):
    now = int(time.time())
    raw = jira_body()
    c = client_for(inbox, jira_jwt_max_age_s=60)
    old = {**jwt_headers("old"), "Authorization": token({"iat": now - 200, "exp": now + 60})}
    assert c.post(JIRA, content=raw, headers=old).status_code == 401
    forever = {**jwt_headers("forever"), "Authorization": token({"exp": now + 86_400})}
    assert c.post(JIRA, content=raw, headers=forever).status_code == 401
    fresh = {**jwt_headers("fresh"), "Authorization": token({"iat": now - 10, "exp": now + 60})}
    assert c.post(JIRA, content=raw, headers=fresh).status_code == 202
    assert inbox.rejection_counts() == {("jira", "bad_signature", 401): 2}


# -- 9. replayed signatures -------------------------------------------------------------------------------------------
def test_a_captured_jwt_delivery_resent_under_a_new_identifier_is_a_replay(inbox):
    c = client_for(inbox)
    captured, raw = jwt_headers("r-1"), jira_body("FIN-1")
    assert c.post(JIRA, content=raw, headers=captured).status_code == 202
    r = c.post(JIRA, content=raw, headers={**captured, "X-Atlassian-Webhook-Identifier": "r-2"})
    assert r.status_code == 401 and r.json() == {"error": "replayed_signature"}
    assert [row.dedupe_key for row in inbox.read_after("jira", 0, 10)] == ["r-1"]
    assert inbox.rejection_counts() == {("jira", "replayed_signature", 401): 1}
    # The guard forgets the token when the token itself would be refused (exp, or iat + max age, + leeway).
    claims = jwt.decode(captured["Authorization"][7:], options={"verify_signature": False})
    with inbox.engine.connect() as conn:
        [expires_at] = conn.execute(sa.select(replay_guard.c.expires_at)).scalars().all()
    assert expires_at == datetime.fromtimestamp(claims["exp"] + 30, UTC).replace(tzinfo=None)


def test_a_known_jwt_with_a_new_body_is_stored_only_as_a_signal(inbox):
    """Jira's JWT claims are UNCONFIRMED: two genuine deliveries in one second may carry the same token, so a
    token seen with another body cannot be refused without losing genuine events. It is stored (a signal);
    the resolution run re-reads the issue from Jira and acts only on what Jira says (test_exactly_once_e2e)."""
    c = client_for(inbox)
    same_second = jwt_headers("s-1")
    assert c.post(JIRA, content=jira_body("FIN-1"), headers=same_second).status_code == 202
    r = c.post(JIRA, content=jira_body("FIN-2"), headers={**same_second, "X-Atlassian-Webhook-Identifier": "s-2"})
    assert r.status_code == 202 and r.json() == {"stored": 1, "duplicates": 0}
    assert inbox.rejections() == 0


def test_the_same_delivery_resent_unchanged_is_a_duplicate_not_a_replay(inbox):
    c = client_for(inbox)
    raw, headers = jira_body(), jwt_headers("same-1")
    assert c.post(JIRA, content=raw, headers=headers).json() == {"stored": 1, "duplicates": 0}
    r = c.post(JIRA, content=raw, headers=headers)
    assert r.status_code == 202 and r.json() == {"stored": 0, "duplicates": 1}
    assert inbox.count("jira") == 1 and inbox.rejections() == 0


def test_an_hmac_signed_body_under_a_new_identifier_is_a_replay(inbox):
    c = client_for(inbox, replay_window_s=3_600)
    raw = jira_body()
    assert c.post(JIRA, content=raw, headers=hmac_headers(raw, "h-1")).status_code == 202
    assert c.post(JIRA, content=raw, headers=hmac_headers(raw, "h-1", retry="1")).json() == {"stored": 0,
                                                                                           "duplicates": 1}
    r = c.post(JIRA, content=raw, headers=hmac_headers(raw, "h-2"))
    assert r.status_code == 401 and r.json() == {"error": "replayed_signature"}
    assert [row.dedupe_key for row in inbox.read_after("jira", 0, 10)] == ["h-1"]
    with inbox.engine.connect() as conn:
        [expires_at] = conn.execute(sa.select(replay_guard.c.expires_at)).scalars().all()
    assert abs(expires_at - (datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1))) < timedelta(minutes=1)


def test_two_receivers_on_one_postgres_database_refuse_each_others_replays(pg_url):
    first = Inbox(get_engine(pg_url))
    second_engine = sa.create_engine(pg_url)  # another process's pool
    try:
        one, two = client_for(first), client_for(Inbox(second_engine))
        jwt_delivery, raw = jwt_headers("pg-1"), jira_body("FIN-1")
        assert one.post(JIRA, content=raw, headers=jwt_delivery).status_code == 202
        assert one.post(JIRA, content=raw, headers=hmac_headers(raw, "pg-2")).status_code == 202
        replays = [(raw, {**jwt_delivery, "X-Atlassian-Webhook-Identifier": "pg-3"}),
                   (raw, hmac_headers(raw, "pg-4"))]
        for body, headers in replays:
            r = two.post(JIRA, content=body, headers=headers)
            assert r.status_code == 401 and r.json() == {"error": "replayed_signature"}
        assert two.post(JIRA, content=raw, headers=jwt_delivery).json() == {"stored": 0, "duplicates": 1}
        assert sorted(row.dedupe_key for row in first.read_after("jira", 0, 10)) == ["pg-1", "pg-2"]
        assert first.rejection_counts() == {("jira", "replayed_signature", 401): 2}
    finally:
        second_engine.dispose()
