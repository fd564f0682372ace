"""MondayClient: every document it sends validates against monday's SDL (API 2026-10, shared/specs), the raw
token and pinned version, typed errors, rate limits and locks waited out (an injected clock: nothing sleeps),
paging through an expired cursor, batched creates that partly fail; then end to end against the monday sandbox."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import pytest
from graphql import build_schema, parse, validate
from graphql.execution.values import get_variable_values
from graphql.language import OperationDefinitionNode

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.failures import is_transient
from connector_pipelines.core.http import RetrySettings
from connector_pipelines.core.vault import Vault
from connector_pipelines.systems.monday import (
    Board,
    ColumnCodecError,
    MondayApiError,
    MondayAuthError,
    MondayBoardLocked,
    MondayClient,
    MondayColumnValueError,
    MondayConfigError,
    MondayCursorExpired,
    MondayNotFound,
    MondayRateLimited,
    RateGovernor,
    VaultToken,
    classify,
    raw,
    with_complexity,
)
from sandboxes.common import sync_transport
from sandboxes.monday import MondaySandbox
from sandboxes.specs import specs_dir

SCHEMA = build_schema((specs_dir() / "monday-graphql-schema.graphql").read_text(encoding="utf-8"))
API = "http://monday.test/v2"
TOKEN = "personal-token-0123456789abcdef"
TINY_RETRY = RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.05, max_retry_after_s=0.05)


def sdl_errors(document: str, variables: dict[str, Any] | None) -> list[str]:
    """What monday's schema says about a document and its variables (empty: valid)."""
    tree = parse(document)
    errors = [e.message for e in validate(SCHEMA, tree)]
    if errors:
        return errors
    op = next(d for d in tree.definitions if isinstance(d, OperationDefinitionNode))
    coerced = get_variable_values(SCHEMA, op.variable_definitions or [], variables or {})
    return [e.message for e in coerced] if isinstance(coerced, list) else []


class SpyTransport(httpx.BaseTransport):
    """Validates every GraphQL request against the SDL before passing it on; keeps what was sent."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.sent: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []
        self.invalid: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.read() or b"{}")
        problems = sdl_errors(payload["query"], payload.get("variables"))
        with self._lock:
            self.sent.append(payload)
            self.headers.append(request.headers)
            if problems:
                self.invalid.append((payload["query"], problems))
        assert not problems, f"document does not validate against the monday SDL: {problems}\n{payload['query']}"
        return self.inner.handle_request(request)

    def documents(self, needle: str = "") -> list[str]:
        return [p["query"] for p in self.sent if needle in p["query"]]


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(round(s, 3))
        self.t += s


Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]


class Scripted:
    """A fake monday: ``handler(payload) -> reply`` functions or canned replies, used in order (the last repeats)."""

    def __init__(self, *replies: Reply | Callable[[dict[str, Any]], Reply]) -> None:
        self.replies = list(replies)
        self.payloads: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.read())
        self.payloads.append(payload)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if callable(reply):
            reply = reply(payload)
        status, body, *rest = reply
        return httpx.Response(status, json=body, headers=rest[0] if rest else None)


def ok(data: dict[str, Any], complexity: dict[str, Any] | None = None) -> Reply:
    return 200, {"data": {"complexity": complexity or {"before": 10_000_000, "after": 9_999_000, "query": 1000,
                                                       "reset_in_x_seconds": 60}, **data}, "account_id": 1}


def client_for(script: Scripted, *, token: Any = TOKEN, clock: FakeClock | None = None,
               **kw: Any) -> tuple[MondayClient, SpyTransport, RateGovernor]:
    clock = clock or FakeClock()
    governor = RateGovernor(clock=clock.now, sleep=clock.sleep)
    spy = SpyTransport(httpx.MockTransport(script))
    client = MondayClient.connect(API, token=token, governor=governor, transport=spy, retry=TINY_RETRY, **kw)
    return client, spy, governor


BOARD = {"id": "100", "name": "Bills", "url": "https://x.monday.com/boards/100", "columns": [
    {"id": "name", "title": "Name", "type": "name", "settings": None, "settings_str": "{}", "archived": False},
    {"id": "status", "title": "Status", "type": "status", "settings": None,
     "settings_str": json.dumps({"labels": {"0": "Open", "1": "Done"}}), "archived": False},
    {"id": "ext", "title": "External id", "type": "text", "settings": None, "settings_str": "{}", "archived": False},
    {"id": "amount", "title": "Amount", "type": "numbers", "settings": {}, "settings_str": "{}", "archived": False},
], "groups": [{"id": "topics", "title": "Inbox"}]}


def item(i: int, status: str = "Open") -> dict[str, Any]:
    return {"id": str(i), "name": f"Bill {i}", "group": {"id": "topics"}, "column_values": [
        {"id": "ext", "type": "text", "text": f"K-{i}", "value": json.dumps(f"K-{i}")},
        {"id": "status", "type": "status", "text": status, "value": json.dumps({"index": 0})}]}


# ================================================================================================
# documents, headers, complexity
# ================================================================================================

def test_raw_token_pinned_version_and_complexity_on_every_query():
    script = Scripted(ok({"me": {"id": "1"}}))
    client, spy, governor = client_for(script)
    assert client.query("query { me { id } }") == {"me": {"id": "1"}}   # complexity stripped: not asked for
    h = spy.headers[0]
    assert h["Authorization"] == TOKEN and "bearer" not in h["Authorization"].lower()
    assert h["API-Version"] == "2026-10"
    assert "complexity { before after query reset_in_x_seconds }" in spy.sent[0]["query"]
    assert governor.remaining() == 9_999_000 and governor.observed == 1
    data = client.query("query { complexity { query } me { id } }")   # asked for: kept, not added twice
    assert data["complexity"]["query"] == 1000 and spy.sent[1]["query"].count("complexity") == 1
    assert TOKEN not in repr(client) and client.http.calls == 2


def test_with_complexity_lands_in_the_operation_not_in_a_default_value():
    doc = ('query ($q: ItemsQuery = {rules: [{column_id: "s", compare_value: [1]}]}) '
           '{ boards { items_page(query_params: $q) { cursor } } }')
    out = with_complexity(doc)
    assert out.index("complexity") > out.index(") {")
    assert not sdl_errors(out, None)
    m = with_complexity("mutation { archive_item(item_id: 1) { id } }")
    assert m.startswith("mutation {  complexity") or "complexity" in m.split("archive_item")[0]


def test_every_document_the_client_builds_validates_against_the_sdl():
    def reply(payload: dict[str, Any]) -> Reply:
        q = payload["query"]
        if "boards(ids: $ids)" in q:
            return ok({"boards": [BOARD]})
        if "items_page(" in q:
            return ok({"boards": [{"items_page": {"cursor": None, "items": [item(1)]}}]})
        if "items_page_by_column_values" in q:
            return ok({"items_page_by_column_values": {"cursor": None, "items": [item(1)]}})
        if "c0: create_item" in q:
            return ok({f"c{i}": {"id": str(900 + i)} for i in range(3) if f"n{i}" in payload["variables"]})
        if "create_item(" in q:
            return ok({"create_item": {"id": "9"}})
        if "change_multiple_column_values" in q:
            return ok({"change_multiple_column_values": {"id": "9"}})
        if "create_update" in q:
            return ok({"create_update": {"id": "77"}})
        if "archive_item" in q:
            return ok({"archive_item": {"id": "9"}})
        if "create_webhook" in q:
            return ok({"create_webhook": {"id": "5", "board_id": "100", "event": "change_column_value",
                                          "config": '{"columnId":"status"}'}})
        if "delete_webhook" in q:
            return ok({"delete_webhook": {"id": "5", "board_id": "100", "event": "change_column_value",
                                          "config": None}})
        if "webhooks(" in q:
            return ok({"webhooks": [{"id": "5", "board_id": "100", "event": "change_column_value",
                                     "config": '{"columnId":"status"}'}]})
        raise AssertionError(q)

    client, spy, _ = client_for(Scripted(reply))
    board = client.board(100)
    assert board.columns["status"].settings == {"labels": {"0": "Open", "1": "Done"}}   # from settings_str
    assert list(client.items_page(100)) and list(client.items_page(100, columns=["ext"], limit=50,
                                                                   query_params={"rules": [{"column_id": "status", "compare_value": [1]}]}))
    assert client.items_by_column_values(100, "ext", ["K-1", "K-2"])["K-1"][0]["id"] == "1"
    assert client.create_item(100, "Bill 9", {"ext": "K-9", "status": "Open"}, group_id="topics") == "9"
    assert [r.item_id for r in client.create_items(100, [{"name": f"B{i}", "column_values": {"ext": f"K{i}"}}
                                                         for i in range(3)])] == ["900", "901", "902"]
    client.change_multiple_column_values(100, 9, {"status": "Done", "amount": Decimal("12.5")})
    assert client.create_update(9, "<p>hi</p>") == "77"
    client.archive_item(9, board_id=100)
    assert client.create_webhook(100, "https://hooks.example/monday", "change_column_value",
                                 {"columnId": "status"}) == "5"
    assert client.webhooks(100)[0]["config"] == {"columnId": "status"}
    client.delete_webhook(5)
    assert not spy.invalid and len(spy.sent) >= 12
    # column_values go as a JSON string, encoded by the board's column types
    change = spy.sent[next(i for i, p in enumerate(spy.sent) if "change_multiple" in p["query"])]["variables"]
    assert json.loads(change["values"]) == {"status": {"label": "Done"}, "amount": "12.5"}


def test_an_invalid_document_is_caught_by_the_spy():
    with pytest.raises(AssertionError, match="Cannot query field"):
        client_for(Scripted(ok({})))[0].query("query { boards { no_such_field } }")


# ================================================================================================
# error classification
# ================================================================================================

CASES = [
    # 2025-07+ complexity budget
    (200, {"errors": [{"message": "Complexity budget exhausted",
                       "extensions": {"code": "COMPLEXITY_BUDGET_EXHAUSTED", "retry_in_seconds": 7}}]}, {},
     MondayRateLimited, 7.0),
    # legacy ComplexityException: the wait is only in the message
    (200, {"error_code": "ComplexityException", "status_code": 429, "error_data": {},
           "error_message": "Complexity budget exhausted, query cost 30001 budget remaining 19986 out of 1000000 "
                            "reset in 3 seconds", "errors": ["Complexity budget exhausted ... reset in 3 seconds"]},
     {}, MondayRateLimited, 3.0),
    (429, {"errors": [{"message": "Field limit exceeded", "extensions": {
        "code": "FIELD_LIMIT_EXCEEDED", "error_data": {"retry_in_seconds": 15, "entity": "boards"}}}]}, {},
     MondayRateLimited, 15.0),
    (429, {"error_message": "Rate Limit Exceeded.", "status_code": 429}, {"Retry-After": "11"},
     MondayRateLimited, 11.0),
    (429, {"errors": [{"message": "Concurrency limit exceeded", "extensions": {"code": "maxConcurrencyExceeded"}}]},
     {}, MondayRateLimited, None),
    (423, {"errors": [{"message": "Resource is currently locked, please try again later"}]}, {},
     MondayBoardLocked, None),
    (200, {"data": {"create_item": None}, "errors": [{"message": "invalid value - label does not exist in column.",
                                                      "path": ["create_item"], "extensions": {
                                                          "code": "ColumnValueException", "status_code": 200,
                                                          "error_data": {"column_type": "status"}}}]}, {},
     MondayColumnValueError, None),
    (200, {"errors": [{"message": "CursorExpiredError: The cursor provided for pagination has expired.",
                       "extensions": {"code": "CURSOR_EXPIRED"}}]}, {}, MondayCursorExpired, None),
    (200, {"errors": [{"message": "User unauthorized to perform action", "extensions": {
        "code": "UserUnauthorizedException", "status_code": 403}}]}, {}, MondayAuthError, None),
    (401, {"errors": [{"message": "Not Authenticated"}]}, {}, MondayAuthError, None),
    (200, {"errors": [{"message": "Board not found", "extensions": {"code": "InvalidBoardIdException"}}]}, {},
     MondayNotFound, None),
    (500, {"error_message": "Internal server error", "status_code": 500}, {}, MondayApiError, None),
]


@pytest.mark.parametrize(("status", "body", "headers", "kind", "retry_in"), CASES,
                         ids=[c[3].__name__ + str(i) for i, c in enumerate(CASES)])
def test_errors_are_classified(status, body, headers, kind, retry_in):
    [err] = classify(status, body, headers)
    assert type(err) is kind
    if kind is MondayRateLimited:
        assert err.retry_in_s == retry_in and err.status == 429
    # core.failures sees through them: limits and locks are transient, a bad value or the token is not
    assert is_transient(err) == (kind in (MondayRateLimited, MondayBoardLocked) or err.status >= 500)


def test_column_value_error_names_the_column_type_and_alias():
    [err] = classify(200, CASES[6][1])
    assert err.column_type == "status" and err.alias == "create_item" and err.status == 400
    assert "ColumnValueException" in str(err)


def test_daily_limit_is_raised_at_once_with_the_wait_until_midnight():
    [err] = classify(200, {"errors": [{"message": "Daily limit exceeded", "extensions": {
        "code": "DAILY_LIMIT_EXCEEDED"}}]})
    assert err.daily and 0 < err.retry_in_s <= 86_400
    script = Scripted((200, {"errors": [{"message": "Daily limit exceeded",
                                         "extensions": {"code": "DAILY_LIMIT_EXCEEDED"}}]}))
    client, spy, governor = client_for(script)
    with pytest.raises(MondayRateLimited) as exc:
        client.query("query { me { id } }")
    assert exc.value.daily and len(spy.sent) == 1 and governor.waited_s == 0


# ================================================================================================
# limits, locks, the token
# ================================================================================================

EXHAUSTED = (200, {"errors": [{"message": "Complexity budget exhausted",
                               "extensions": {"code": "COMPLEXITY_BUDGET_EXHAUSTED", "retry_in_seconds": 7}}],
                   "account_id": 1})


def test_a_complexity_refusal_is_waited_out_and_resent():
    clock = FakeClock()
    client, spy, governor = client_for(Scripted(EXHAUSTED, EXHAUSTED, ok({"me": {"id": "1"}})), clock=clock)
    assert client.query("query { me { id } }") == {"me": {"id": "1"}}
    assert len(spy.sent) == 3 and clock.sleeps == [7.0, 7.0]
    assert governor.waits["retry_in"] == pytest.approx(14.0) and client.stats["rate_limited"] == 2


def test_a_wait_longer_than_the_bound_is_raised_not_slept():
    long_wait = (200, {"errors": [{"message": "Complexity budget exhausted", "extensions": {
        "code": "COMPLEXITY_BUDGET_EXHAUSTED", "retry_in_seconds": 600}}]})
    client, spy, governor = client_for(Scripted(long_wait))
    with pytest.raises(MondayRateLimited) as exc:
        client.query("query { me { id } }")
    assert exc.value.retry_in_s == 600 and len(spy.sent) == 1 and governor.waited_s == 0


def test_rate_retries_are_bounded():
    clock = FakeClock()
    client, spy, _ = client_for(Scripted(EXHAUSTED), clock=clock, max_rate_retries=3)
    with pytest.raises(MondayRateLimited):
        client.query("query { me { id } }")
    assert len(spy.sent) == 4


def test_the_governor_makes_the_next_query_wait_for_the_reset_instead_of_being_refused():
    clock = FakeClock()
    low = {"before": 10_000, "after": 500, "query": 9_500, "reset_in_x_seconds": 42}
    client, spy, governor = client_for(Scripted(ok({"me": {"id": "1"}}, low)), clock=clock)
    client.query("query { me { id } }")     # learns this query costs 9,500 and 500 are left
    client.query("query { me { id } }")     # would not fit: waits for the reset first
    # 42 s and the 1 s margin (reset_in_x_seconds is whole seconds, the window slides)
    assert clock.sleeps == [43.0] and governor.waits["complexity"] == pytest.approx(43.0) and len(spy.sent) == 2


def test_a_locked_board_is_retried_with_backoff_then_succeeds():
    clock = FakeClock()
    locked = (423, {"errors": [{"message": "Resource is currently locked, please try again later"}]})
    client, spy, _governor = client_for(Scripted(locked, locked, ok({"create_item": {"id": "5"}})), clock=clock)
    assert client.create_item(100, "x", {"ext": raw("K")}) == "5"
    assert clock.sleeps == [0.5, 1.0] and client.stats["locked"] == 2 and len(spy.sent) == 3


def test_a_mutation_is_not_resent_after_a_server_error():
    client, spy, _ = client_for(Scripted((500, {"error_message": "Internal server error", "status_code": 500})))
    with pytest.raises(MondayApiError) as exc:
        client.create_item(100, "x", {"ext": raw("K")})
    assert exc.value.status == 500 and is_transient(exc.value) and len(spy.sent) == 1


def test_a_read_is_retried_after_a_server_error():
    client, spy, _ = client_for(Scripted((502, "bad gateway"), ok({"me": {"id": "1"}})))
    assert client.query("query { me { id } }") == {"me": {"id": "1"}} and len(spy.sent) == 2


@pytest.fixture
def vault(tmp_path):
    return Vault(get_engine(f"sqlite:///{tmp_path}/vault.sqlite"), [Vault.generate_key()])


def test_the_token_is_read_from_the_vault_and_reread_once_when_refused(vault):
    vault.put("monday:acme", {"token": "old-token"})
    source = VaultToken(vault, "monday:acme")

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] != "new-token":
            return httpx.Response(401, json={"errors": [{"message": "Not Authenticated"}]})
        return httpx.Response(200, json=ok({"me": {"id": "1"}})[1])

    client = MondayClient.connect(API, token=source, governor=RateGovernor(), transport=SpyTransport(
        httpx.MockTransport(handler)), retry=TINY_RETRY)
    assert source.get_token() == "old-token"   # cached for cache_s
    vault.put("monday:acme", {"token": "new-token"})   # a person rotated it; the client still holds the old one
    assert client.query("query { me { id } }") == {"me": {"id": "1"}}
    assert seen == ["old-token", "new-token"] and client.stats["token_rereads"] == 1
    vault.put("monday:acme", {"token": "revoked"})
    source.invalidate()
    with pytest.raises(MondayAuthError) as exc:
        client.query("query { me { id } }")
    assert "revoked" not in str(exc.value) and "new-token" not in repr(client) and not is_transient(exc.value)


def test_an_empty_vault_credential_is_a_clear_error(vault):
    from connector_pipelines.systems.monday import MondayTokenError

    with pytest.raises(MondayTokenError, match="monday:none"):
        VaultToken(vault, "monday:none").get_token()
    vault.put("monday:bad", {"user": "x"})
    with pytest.raises(MondayTokenError, match="no monday token"):
        VaultToken(vault, "monday:bad").get_token()


# ================================================================================================
# paging, lookups, batches, the board check
# ================================================================================================

def test_an_expired_cursor_mid_read_restarts_the_read_and_yields_each_item_once():
    pages = {"first": 0}

    def reply(payload: dict[str, Any]) -> Reply:
        q = payload["query"]
        if "boards(ids: $board)" in q:
            pages["first"] += 1
            return ok({"boards": [{"items_page": {"cursor": "c1", "items": [item(1), item(2)]}}]})
        cursor = payload["variables"]["cursor"]
        if cursor == "c1" and pages["first"] == 1:
            return 200, {"errors": [{"message": "CursorExpiredError: The cursor provided for pagination has "
                                                "expired.", "extensions": {"code": "CURSOR_EXPIRED"}}]}
        if cursor == "c1":
            return ok({"next_items_page": {"cursor": "c2", "items": [item(3)]}})
        return ok({"next_items_page": {"cursor": None, "items": [item(4)]}})

    client, _spy, _ = client_for(Scripted(reply))
    got = list(client.items_page(100, limit=2))
    assert [i["id"] for i in got] == ["1", "2", "3", "4"] and client.stats["cursor_restarts"] == 1
    assert got[0] == {"id": "1", "name": "Bill 1", "group_id": "topics", "columns": {"ext": "K-1", "status": "Open"},
                      "linked_item_ids": {}}


def test_a_cursor_that_keeps_expiring_gives_up():
    def reply(payload: dict[str, Any]) -> Reply:
        if "boards(ids: $board)" in payload["query"]:
            return ok({"boards": [{"items_page": {"cursor": "c1", "items": [item(1)]}}]})
        return 200, {"errors": [{"message": "CursorExpiredError: expired", "extensions": {"code": "CURSOR_EXPIRED"}}]}

    client, _, _ = client_for(Scripted(reply), cursor_restarts=2)
    with pytest.raises(MondayCursorExpired):
        list(client.items_page(100))
    assert client.stats["cursor_restarts"] == 3


def test_items_by_column_values_batches_values_and_maps_each_back():
    def reply(payload: dict[str, Any]) -> Reply:
        by = payload["variables"].get("by")
        if by:
            wanted = by[0]["column_values"]
            found = [item(int(v.split("-")[1])) for v in wanted if v != "K-404"]
            return ok({"items_page_by_column_values": {"cursor": "more" if "K-1" in wanted else None,
                                                       "items": found}})
        return ok({"items_page_by_column_values": {"cursor": None, "items": [item(1)]}})   # a repeat: de-duplicated

    client, spy, _ = client_for(Scripted(reply))
    out = client.items_by_column_values(100, "ext", ["K-1", "K-2", "K-404", "k-3", "K-1"], batch_size=2)
    assert {k: [i["id"] for i in v] for k, v in out.items()} == {"K-1": ["1"], "K-2": ["2"], "K-404": [],
                                                                "k-3": ["3"]}
    assert len(spy.documents("items_page_by_column_values")) == 3   # 2 batches + 1 follow-on page


def test_create_items_batches_and_a_refused_value_does_not_lose_the_others():
    def reply(payload: dict[str, Any]) -> Reply:
        names = {k: v for k, v in payload["variables"].items() if k.startswith("n")}
        data: dict[str, Any] = {}
        errors = []
        for key, name in names.items():
            alias = "c" + key[1:]
            if name == "bad":
                data[alias] = None
                errors.append({"message": "invalid value - label does not exist in column.", "path": [alias],
                               "extensions": {"code": "ColumnValueException", "error_data": {"column_type": "status"}}})
            else:
                data[alias] = {"id": str(1000 + int(name[1:]))}
        body = ok(data)[1]
        if errors:
            body["errors"] = errors
        return 200, body

    client, spy, _ = client_for(Scripted(reply))
    client._boards["100"] = Board.from_api(BOARD)   # the board read already (no call for it here)
    items = [{"name": "bad" if i == 3 else f"B{i}", "column_values": {"ext": f"K{i}"}} for i in range(5)]
    results = client.create_items(100, items, batch_size=2)
    assert [r.item_id for r in results] == ["1000", "1001", "1002", None, "1004"]
    assert isinstance(results[3].error, MondayColumnValueError) and results[3].error.alias == "c1"
    assert len(spy.sent) == 3   # 5 items, 2 per request
    assert spy.sent[0]["query"] == spy.sent[1]["query"]   # aliases are per batch: one document per batch size


def test_create_items_encodes_everything_before_sending():
    client, spy, _ = client_for(Scripted(ok({"boards": [BOARD]})))
    with pytest.raises(ColumnCodecError, match="amount"):
        client.create_items(100, [{"name": "a", "column_values": {"amount": 1}},
                                  {"name": "b", "column_values": {"amount": "lots"}}])
    assert not spy.documents("create_item")


def test_check_board_names_missing_columns_and_type_mismatches():
    client, _, _ = client_for(Scripted(ok({"boards": [BOARD]})))
    assert client.check_board(100, {"status": "status", "ext": "text"}).name == "Bills"
    with pytest.raises(MondayConfigError) as exc:
        client.check_board(100, {"status": "status", "ext": "numbers", "vendor": "board_relation"})
    assert exc.value.missing == ["vendor"] and exc.value.mismatched == {"ext": ("numbers", "text")}
    assert "'vendor'" in str(exc.value) and "'ext' is text, expected numbers" in str(exc.value)
    client2, _, _ = client_for(Scripted(ok({"boards": []})))
    with pytest.raises(MondayNotFound):
        client2.board(404)


# ================================================================================================
# against the monday sandbox
# ================================================================================================

SB_API = "http://monday.test/v2"


@pytest.fixture
def sb():
    sandbox = MondaySandbox(api_versions=("2026-10",))
    sandbox.add_token(TOKEN, user_id="1", kind="personal")
    return sandbox


@pytest.fixture
def boards(sb):
    vendors = sb.add_board("Vendors", [{"id": "vno", "title": "Vendor no", "type": "text"}])
    bills = sb.add_board("Bills", [
        {"id": "ext", "title": "External id", "type": "text"},
        {"id": "status", "title": "Status", "type": "status", "settings": {"labels": {"0": "Open", "1": "Done",
                                                                                       "2": "Stuck"}}},
        {"id": "amount", "title": "Amount", "type": "numbers"},
        {"id": "due", "title": "Due", "type": "date"},
        {"id": "erp", "title": "ERP link", "type": "link"},
        {"id": "tags", "title": "Tags", "type": "dropdown", "settings": {"labels": ["EU", "US"]}},
        {"id": "notes", "title": "Notes", "type": "long_text"},
        {"id": "vendor", "title": "Vendor", "type": "board_relation", "settings": {"boardIds": [int(vendors)]}},
    ])
    return {"vendors": vendors, "bills": bills}


def sandbox_client(sb: MondaySandbox, **kw: Any) -> tuple[MondayClient, SpyTransport, RateGovernor]:
    """The governor runs on the sandbox's clock: its waits advance that clock instead of sleeping."""
    gov_kw = {k: kw.pop(k) for k in ("mutations_per_minute_per_board",) if k in kw}
    governor = RateGovernor(clock=sb.clock.timestamp, sleep=sb.clock.advance,
                            budget_per_minute=sb.limits.complexity_per_minute, **gov_kw)
    spy = SpyTransport(sync_transport(sb.app))
    client = MondayClient.connect(SB_API, token=kw.pop("token", TOKEN), governor=governor, transport=spy,
                                  retry=TINY_RETRY, **kw)
    return client, spy, governor


EXPECTED = {"ext": "text", "status": "status", "amount": "numbers", "due": "date", "erp": "link",
            "tags": "dropdown", "notes": "long_text", "vendor": "board_relation"}


def test_sandbox_create_find_update_end_to_end(sb, boards):
    client, spy, governor = sandbox_client(sb)
    bills = boards["bills"]
    vendor_id = sb.create_item_as_user(boards["vendors"], "ACME", {"vno": "V-1"})
    board = client.check_board(bills, EXPECTED)
    assert board.group_id("Group Title") == "topics"
    with pytest.raises(MondayConfigError, match="missing column.*'approver'.*'amount' is numbers, expected text"):
        client.check_board(bills, {**EXPECTED, "amount": "text", "approver": "people"})

    values = {"ext": "INV-1", "status": "Open", "amount": Decimal("1234.5"), "due": "2026-12-31",
              "erp": {"url": "https://erp.example/bill/1", "text": "Bill 1"}, "tags": ["EU"],
              "notes": "Held: price variance", "vendor": [vendor_id]}
    found = client.items_by_column_values(bills, "ext", ["INV-1"])
    assert found == {"INV-1": []}   # find before create
    item_id = client.create_item(bills, "Bill 1", values, group_id="topics")
    [stored] = sb.items(bills)
    assert stored["id"] == item_id and stored["column_values"]["status"]["text"] == "Open"
    assert stored["column_values"]["vendor"]["linked_item_ids"] == [vendor_id]

    [again] = client.items_by_column_values(bills, "ext", ["INV-1", "INV-2"])["INV-1"]
    assert again["id"] == item_id and again["group_id"] == "topics"
    assert again["columns"] == {**values, "due": date(2026, 12, 31)}   # every codec round-trips through monday
    assert again["linked_item_ids"] == {"vendor": [vendor_id]}

    client.change_multiple_column_values(bills, item_id, {"status": "Done", "amount": 99})
    assert client.create_update(item_id, "<p>Released in the ERP</p>", board_id=bills)
    [read] = list(client.items_page(bills, columns=["status", "amount"]))
    assert read["columns"] == {"status": "Done", "amount": Decimal(99)}
    assert sb.get_item(item_id)["updates"] == ["<p>Released in the ERP</p>"]
    sb.change_column_as_user(item_id, "status", {"label": "Stuck"})   # a person changes it
    assert next(client.items_page(bills))["columns"]["status"] == "Stuck"
    client.archive_item(item_id, board_id=bills)
    assert sb.items(bills) == []
    reads = [p for p in spy.sent if p["query"].startswith("query")]
    assert not spy.invalid and governor.observed >= len(reads)   # every answer to a read carried complexity
    assert client.http.calls == sb.calls


def test_sandbox_refused_values_are_permanent_and_do_not_lose_a_batch(sb, boards):
    client, _, _ = sandbox_client(sb)
    bills = boards["bills"]
    with pytest.raises(MondayColumnValueError) as exc:
        client.create_item(bills, "x", {"status": raw({"label": "Shipped"})})
    assert not is_transient(exc.value) and exc.value.code == "ColumnValueException"
    items = [{"name": f"B{i}", "column_values": {"ext": f"K-{i}",
                                                 "status": raw({"label": "Shipped" if i == 2 else "Open"})}}
             for i in range(5)]
    results = client.create_items(bills, items, batch_size=5)
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert isinstance(results[2].error, MondayColumnValueError)
    assert sorted(i["column_values"]["ext"]["text"] for i in sb.items(bills)) == ["K-0", "K-1", "K-3", "K-4"]


def test_sandbox_batched_creates_then_a_second_run_finds_them_all(sb, boards):
    client, spy, _ = sandbox_client(sb, batch_size=10)
    bills = boards["bills"]
    keys = [f"INV-{i:03}" for i in range(30)]

    def sync() -> int:
        found = client.items_by_column_values(bills, "ext", keys, columns=["ext"])
        missing = [k for k in keys if not found[k]]
        created = client.create_items(bills, [{"name": k, "column_values": {"ext": k, "status": "Open"}}
                                              for k in missing])
        assert all(r.ok for r in created)
        return len(created)

    assert sync() == 30
    assert sb.mutation_calls("create_item") == 30 and len(spy.documents(": create_item(")) == 3
    assert sync() == 0   # find before create: nothing twice
    assert len(sb.items(bills)) == 30
    assert sb.calls_by_operation["items_page_by_column_values"] == 2


def test_sandbox_complexity_budget_storm_is_waited_out_without_duplicates(sb, boards):
    sb.limits.complexity_per_minute = 120_000   # about a dozen create_items a minute
    client, _, governor = sandbox_client(sb, batch_size=5)
    bills = boards["bills"]
    client.board(bills)
    created = client.create_items(bills, [{"name": f"S{i}", "column_values": {"ext": f"S-{i}"}} for i in range(40)])
    assert all(r.ok for r in created)
    assert sorted(i["name"] for i in sb.items(bills)) == sorted(f"S{i}" for i in range(40))   # each exactly once
    assert governor.waited_s > 60   # minutes of budget, waited on the sandbox clock, not in real time
    # the governor waits before sending (the sandbox reports no complexity on mutations: the documented
    # 10,000 points per create_item are reserved instead), so monday refuses nothing
    assert sb.served_429 == 0, (sb.served_429, governor.stats())


def test_sandbox_field_limit_and_rate_limit_are_retried_after_the_advertised_wait(sb, boards):
    client, spy, governor = sandbox_client(sb)
    sb.faults.field_limit_next = 2
    assert client.board(boards["bills"]).name == "Bills"
    assert governor.waits["retry_in"] == pytest.approx(30, abs=0.5) and client.stats["rate_limited"] == 2 and len(spy.sent) == 3
    sb.limits.requests_per_minute = 3
    for _ in range(5):
        client.query("query { me { id } }")
    assert client.stats["rate_limited"] >= 3


def test_sandbox_a_locked_board_then_success(sb, boards):
    client, _, governor = sandbox_client(sb)
    bills = boards["bills"]
    client.board(bills)
    sb.lock_board(bills, 3)
    item_id = client.create_item(bills, "After the lock", {"ext": "L-1"})
    assert [i["id"] for i in sb.items(bills)] == [item_id]
    assert client.stats["locked"] >= 2 and governor.waits["backoff"] >= 3


def test_sandbox_an_expired_cursor_mid_read_completes_the_read(sb, boards):
    client, _, _ = sandbox_client(sb)
    bills = boards["bills"]
    for i in range(250):
        sb.create_item_as_user(bills, f"Item {i}", {"ext": f"E-{i}"})
    got = []
    for n, it in enumerate(client.items_page(bills, columns=["ext"], limit=50), start=1):
        got.append(it["id"])
        if n == 120:
            sb.expire_cursors()   # e.g. a read that outlived the cursor's 60 minutes
    assert len(got) == 250 and len(set(got)) == 250
    assert client.stats["cursor_restarts"] == 1


def test_sandbox_board_mutation_pacing_avoids_the_cap(sb, boards):
    client, _, governor = sandbox_client(sb, mutations_per_minute_per_board=10)
    bills = boards["bills"]
    client.board(bills)
    sb.limits.board_mutations_per_minute = 10   # ASSUMPTION in both: the cap monday does not document
    for i in range(25):
        client.create_item(bills, f"P{i}", {"ext": f"P-{i}"})
    assert len(sb.items(bills)) == 25 and sb.served_429 == 0
    assert governor.waits["board_pacing"] == pytest.approx(120, abs=5)   # 25 at 10 a minute: two waits


def test_sandbox_webhooks_with_the_challenge(sb, boards):
    echo = httpx.MockTransport(lambda r: httpx.Response(200, content=r.read(),
                                                        headers={"Content-Type": "application/json"}))
    sb.delivery_transport = echo
    client, _, _ = sandbox_client(sb)
    bills = boards["bills"]
    wid = client.create_webhook(bills, "https://hooks.example/monday", "change_specific_column_value",
                                {"columnId": "status"})
    [hook] = client.webhooks(bills)
    assert hook == {"id": wid, "board_id": bills, "event": "change_specific_column_value",
                    "config": {"columnId": "status"}}
    client.delete_webhook(wid)
    assert client.webhooks(bills) == []


def test_sandbox_wrong_version_and_wrong_token(sb, boards):
    client, _, _ = sandbox_client(sb, api_version="2023-01")
    with pytest.raises(MondayApiError) as exc:
        client.board(boards["bills"])
    assert exc.value.status == 400 and "version" in str(exc.value).lower()
    bad, _, _ = sandbox_client(sb, token="not-a-token")
    with pytest.raises(MondayAuthError) as exc:
        bad.board(boards["bills"])
    assert "not-a-token" not in str(exc.value)


def test_clients_of_one_token_share_the_process_governor():
    from connector_pipelines.systems.monday import reset_governors

    reset_governors()
    try:
        transport = httpx.MockTransport(Scripted(ok({"me": {"id": "1"}})))
        a = MondayClient.connect(API, token=TOKEN, transport=transport)
        b = MondayClient.connect(API, token=TOKEN, transport=transport, mutations_per_minute_per_board=40)
        c = MondayClient.connect(API, token="another-token", transport=transport)
        assert a.governor is b.governor is not c.governor
        assert a.governor.mutations_per_minute_per_board == 40
        a.query("query { me { id } }")
        assert b.governor.observed == 1 and TOKEN not in repr(a.governor)
    finally:
        reset_governors()


class OverlapTransport(httpx.BaseTransport):
    """Counts mutation requests in flight at once (each held 50 ms, as a slow network would)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        mutation = json.loads(request.read() or b"{}").get("query", "").lstrip().startswith("mutation")
        if mutation:
            with self.lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            time.sleep(0.05)
        try:
            return self.inner.handle_request(request)
        finally:
            if mutation:
                with self.lock:
                    self.in_flight -= 1


def _two_processes_create(sb: MondaySandbox, board: str, guard_for: Callable[[], Any]) -> OverlapTransport:
    """Two clients with their own governors (two run workers) create items on one board at the same time."""
    transport = OverlapTransport(sync_transport(sb.app))
    clients = [MondayClient.connect(SB_API, token=TOKEN, governor=RateGovernor(), transport=transport,
                                    retry=TINY_RETRY, board_guard=guard_for()) for _ in range(2)]
    for c in clients:
        c.board(board)
    start = threading.Barrier(2)

    def work(n: int) -> None:
        start.wait()
        for i in range(6):
            clients[n].create_item(board, f"W{n}-{i}", {"ext": f"W-{n}-{i}"})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sb.items(board)) == 12
    return transport


def test_two_processes_never_mutate_one_board_at_once_with_the_shared_board_guard(sb, boards, tmp_path):
    from connector_pipelines.components.resources import board_guard

    engine = get_engine(f"sqlite:///{tmp_path}/leases.sqlite")
    guarded = _two_processes_create(sb, boards["bills"], lambda: board_guard(engine, 10.0))
    assert guarded.max_in_flight == 1
    # the control: without the guard the two processes' governors know nothing of each other
    control = sb.add_board("Control", [{"id": "ext", "title": "External id", "type": "text"}])
    unguarded = _two_processes_create(sb, control, lambda: None)
    assert unguarded.max_in_flight == 2


def test_a_board_another_process_keeps_is_a_transient_lock_error(sb, boards, tmp_path):
    from connector_pipelines.components.resources import MONDAY_BOARD_SCOPE, board_guard
    from connector_pipelines.core.leases import Leases

    engine = get_engine(f"sqlite:///{tmp_path}/leases.sqlite")
    other = Leases(engine, "another-worker", ttl_s=60)
    assert other.acquire(MONDAY_BOARD_SCOPE, [boards["bills"]])
    client = MondayClient.connect(SB_API, token=TOKEN, governor=RateGovernor(), transport=sync_transport(sb.app),
                                  retry=TINY_RETRY, board_guard=board_guard(engine, 0.3))
    client.board(boards["bills"])
    with pytest.raises(MondayBoardLocked) as caught:
        client.create_item(boards["bills"], "X", {"ext": "X-1"})
    assert is_transient(caught.value) and "another process" in str(caught.value)
    assert sb.items(boards["bills"]) == []
    other.release(MONDAY_BOARD_SCOPE, [boards["bills"]])
    client.create_item(boards["bills"], "X", {"ext": "X-1"})
    assert len(sb.items(boards["bills"])) == 1
