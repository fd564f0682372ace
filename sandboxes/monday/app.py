"""``MondaySandbox``: one monday.com account behind ``POST /v2`` (API-FACTS §6), plus the people page.

Transport (§6.1): ``POST /v2`` with ``{"query", "variables", "operationName"?}``; ``Authorization: <token>`` (the
raw token, as documented; ``Bearer <token>`` is accepted too, UNCONFIRMED whether monday does). No or an unknown
token -> HTTP 401 ``{"errors": [{"message": "Not Authenticated", "extensions": {"code": "UNAUTHENTICATED"}}]}``
(UNCONFIRMED body). ``API-Version``: one of ``api_versions`` (absent -> the first of them); any other -> HTTP 400
``{"errors": [{"message": "Invalid API version ...", "extensions": {"code": "InvalidVersionException"}}]}``
(UNCONFIRMED status and code). Every version is served from the 2026-10 SDL. A body that is not JSON or has no
query -> HTTP 400 (UNCONFIRMED body).

Every document is validated against the SDL (schema.py) before anything runs; answers are ``{"data",
"account_id", "extensions": {"request_id"}}`` plus ``errors`` (application errors: HTTP 200, partial data).
Limits and their errors: limits.py. Faults (``faults``): latency, forced 429/5xx (common.Faults) and
``field_limit_next`` (FIELD_LIMIT_EXCEEDED for the next N requests); the people pages (``/_sandbox``, ``/boards/…``,
``/pulses/…``) are never faulted.
Columns: columns.py; paging and cursors: paging.py; webhooks: webhooks.py; people page: ui.py.

Counters: ``calls`` (every ``POST /v2`` that arrived), ``calls_by_operation`` (per root field name, once per call
that ran), ``mutation_calls(name)`` (each executed mutation field, aliases counted), ``complexity_used`` (points
charged), ``served_429``.
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from graphql import GraphQLError, OperationType
from graphql.execution.values import get_variable_values
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandboxes.common import DeliveryPump, FaultMiddleware, Faults, SandboxClock
from sandboxes.monday import ui
from sandboxes.monday.columns import Column, api_value, linked_ids, parse_write
from sandboxes.monday.errors import HttpFailure, MondayError
from sandboxes.monday.executor import Context, execute_selection
from sandboxes.monday.limits import Limits, Window
from sandboxes.monday.model import GROUP_COLORS, Board, Group, Item, Store, Update, Webhook, iso
from sandboxes.monday.paging import Pager
from sandboxes.monday.resolvers import MutationRoot, QueryRoot
from sandboxes.monday.schema import complexity, prepare, root_fields, schema
from sandboxes.monday.views import HTML_TAG
from sandboxes.monday.webhooks import WebhookHub
from sandboxes.pages import RecordHistory

QUERY_ROOT = QueryRoot()
MUTATION_ROOT = MutationRoot()


class MondayFaults(Faults):
    """common.Faults plus ``field_limit_next`` (FIELD_LIMIT_EXCEEDED for the next N requests) and
    ``drop_webhooks_next`` (the next N webhook events are lost: never posted, counted as dropped);
    ``/_sandbox`` paths are never faulted."""

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("applies_to", lambda path: not path.startswith(("/_sandbox", "/boards/", "/pulses/")))
        self.field_limit_next: int = kw.pop("field_limit_next", 0)
        self.drop_webhooks_next: int = kw.pop("drop_webhooks_next", 0)
        self.field_limit_retry_s: int = kw.pop("field_limit_retry_s", 15)
        super().__init__(**kw)


class RequestState:
    """What resolvers see of one request (``ctx.state``)."""

    __slots__ = ("account_id", "complexity", "kind", "pager", "sb", "store", "user_id")

    def __init__(self, sb: MondaySandbox, tok: dict[str, Any], cplx: dict[str, int]) -> None:
        self.sb = sb
        self.store = sb.store
        self.pager = sb.pager
        self.user_id = tok["user_id"]
        self.account_id = tok["account_id"]
        self.kind = tok["kind"]
        self.complexity = cplx


def _failure(f: HttpFailure, account_id: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {}
    if f.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(f.retry_after)))
    body: dict[str, Any] = {"errors": [f.error()]}
    if account_id is not None:
        body["account_id"] = _num(account_id)
    return f.status, body, headers


def _num(x: Any) -> Any:
    try:
        return int(x)
    except (TypeError, ValueError):
        return x


class MondaySandbox:
    """One monday.com account: boards, items, tokens, limits, webhooks. ``app`` is the Starlette ASGI app."""

    def __init__(self, api_versions: tuple[str, ...] = ("2026-10",), *,
                 delivery_transport: httpx.BaseTransport | None = None,
                 web_url: str = "https://sandbox.monday.com") -> None:
        self.api_versions = tuple(api_versions)
        self.web_url = web_url.rstrip("/")
        self.delivery_transport = delivery_transport
        self.clock = SandboxClock()
        self.faults = MondayFaults()
        self.limits = Limits()
        self.store = Store()
        self.pager = Pager(self.store, self.clock)
        self.app_signing_secret = "sandbox-app-signing-secret-0123456789abcdef"
        self.calls = 0
        self.calls_by_operation: Counter[str] = Counter()
        self.complexity_used = 0
        self._mutations: Counter[str] = Counter()
        self._limit_429 = 0
        self._tokens: dict[str, dict[str, Any]] = {}
        self._budgets: dict[tuple[str, str], Window] = {}
        self._minute: dict[str, Window] = defaultdict(Window)
        self._daily: dict[str, tuple[str, int]] = {}
        self._board_windows: dict[str, Window] = defaultdict(Window)
        self._locks: dict[str, float] = {}
        self._lock = threading.RLock()
        self._hub = WebhookHub(self)
        self.activity = RecordHistory()   # item id -> its activity log (created, column changes, updates), for the pages
        self._pump = DeliveryPump("monday-webhooks", self.deliver_webhooks)
        schema()   # build the SDL once, up front
        self.app = self._build_app()

    # ---------------------------------------------------------------------------------------------------
    # settings and counters
    # ---------------------------------------------------------------------------------------------------
    @property
    def cursor_ttl_s(self) -> float:
        return self.pager.ttl_s

    @cursor_ttl_s.setter
    def cursor_ttl_s(self, value: float) -> None:
        self.pager.ttl_s = value

    @property
    def served_429(self) -> int:
        return self._limit_429 + self.faults.served_429

    @property
    def redeliver(self) -> int:
        return self._hub.redeliver

    @redeliver.setter
    def redeliver(self, value: int) -> None:
        self._hub.redeliver = value

    @property
    def reorder(self) -> bool:
        return self._hub.reorder

    @reorder.setter
    def reorder(self, value: bool) -> None:
        self._hub.reorder = value

    @property
    def webhook_deliveries(self) -> list[dict[str, Any]]:
        """Every POST to a webhook URL: url, body, status (None: no answer), challenge / attempt, authorization."""
        with self._hub._lock:
            return list(self._hub.deliveries)

    def mutation_calls(self, name: str) -> int:
        return self._mutations[name]

    # ---------------------------------------------------------------------------------------------------
    # setup
    # ---------------------------------------------------------------------------------------------------
    def add_token(self, token: str, *, user_id: str = "1", account_id: str = "1", kind: str = "personal") -> None:
        if kind not in ("personal", "app"):
            raise ValueError("kind is 'personal' or 'app'")
        with self._lock:
            self._tokens[token] = {"user_id": str(user_id), "account_id": str(account_id), "kind": kind,
                                   "expires_at": None}

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def _issue_short_lived_token(self, user_id: str, account_id: str) -> str:
        token = f"slt_{uuid.uuid4().hex}"
        with self._lock:
            self._tokens[token] = {"user_id": user_id, "account_id": account_id, "kind": "app",
                                   "expires_at": self.clock.timestamp() + 300}
        return token

    def add_board(self, name: str, columns: list[dict[str, Any]], *, board_id: str | None = None) -> str:
        """A board with its columns (and the default group "topics"); ``board_id`` pins its id (the id a
        customer's configuration names), otherwise the next free one."""
        with self._lock:
            if board_id is not None and str(board_id) in self.store.boards:
                raise ValueError(f"board {board_id} exists")
            now = iso(self.clock.now())
            cols = {"name": Column("name", "Name", "name")}
            for c in columns:
                col = Column(str(c["id"]), c.get("title") or str(c["id"]), c["type"], dict(c.get("settings") or {}),
                             description=c.get("description"))
                if col.id in cols:
                    raise ValueError(f"duplicate column id {col.id!r}")
                cols[col.id] = col
            board = Board(str(board_id) if board_id is not None else self.store.next_board_id(), name, cols, {},
                          now, now)
            board.groups["topics"] = Group("topics", "Group Title", GROUP_COLORS[0], "65536")
            self.store.boards[board.id] = board
            return board.id

    def add_group(self, board_id: str, title: str) -> str:
        with self._lock:
            board = self.store.boards[str(board_id)]
            gid = self.store.new_group_id(board, title)
            n = len(board.groups)
            board.groups[gid] = Group(gid, title, GROUP_COLORS[n % len(GROUP_COLORS)], str(65536 * (n + 1)))
            return gid

    def lock_board(self, board_id: str, seconds: float) -> None:
        with self._lock:
            self._locks[str(board_id)] = self.clock.timestamp() + seconds

    def expire_cursors(self) -> None:
        with self._lock:
            self.pager.expire_all()

    # ---------------------------------------------------------------------------------------------------
    # reading (Python API)
    # ---------------------------------------------------------------------------------------------------
    def _item_dict(self, it: Item) -> dict[str, Any]:
        board = self.store.boards[it.board_id]
        cvs = {}
        for col in board.columns.values():
            if col.type == "name":
                continue
            stored = it.values.get(col.id)
            v = api_value(col, stored)
            cvs[col.id] = {"text": self.store.text(board, it, col), "value": json.loads(v) if v else None,
                           "linked_item_ids": linked_ids(stored)}
        return {"id": it.id, "name": it.name, "group_id": it.group_id, "state": it.state,
                "updates": [u.body for u in it.updates], "column_values": cvs}

    def items(self, board_id: str, *, archived: bool = False) -> list[dict[str, Any]]:
        """The board's active items in board order; ``archived=True`` adds the archived ones."""
        with self._lock:
            board = self.store.boards[str(board_id)]
            states = ("active", "archived") if archived else ("active",)
            return [self._item_dict(self.store.items[i]) for i in board.item_ids
                    if self.store.items[i].state in states]

    def get_item(self, item_id: str) -> dict[str, Any]:
        with self._lock:
            return self._item_dict(self.store.items[str(item_id)])

    def board_id_of(self, item_id: str) -> str:
        return self.store.items[str(item_id)].board_id

    # ---------------------------------------------------------------------------------------------------
    # people
    # ---------------------------------------------------------------------------------------------------
    def change_column_as_user(self, item_id: str, column_id: str, value: Any, user_id: str = "77") -> None:
        """A person edits a column in monday's UI (``value`` in a write shape, e.g. {"label": "Done"}); fires
        webhooks; no API limits apply."""
        with self._lock:
            it = self.store.items[str(item_id)]
            board = self.store.boards[it.board_id]
            self._change_values(board, it, {column_id: value}, user_id=str(user_id), create_labels=False,
                                via_api=False)

    def create_item_as_user(self, board_id: str, name: str, column_values: dict[str, Any] | None = None,
                            group_id: str | None = None, user_id: str = "77") -> str:
        with self._lock:
            board = self.store.boards[str(board_id)]
            return self._create_item(board, name, group_id, column_values or {}, user_id=str(user_id),
                                     create_labels=False, via_api=False).id

    # ---------------------------------------------------------------------------------------------------
    # item operations (API mutations and people)
    # ---------------------------------------------------------------------------------------------------
    def _guard_board(self, board: Board) -> None:
        now = self.clock.timestamp()
        until = self._locks.get(board.id)
        if until is not None and until > now:
            raise HttpFailure(423, "Resource is currently locked, please try again later", "RESOURCE_LOCKED",
                              retry_after=until - now, extensions={"board_id": board.id})
        cap = self.limits.board_mutations_per_minute
        if cap is not None:
            w = self._board_windows[board.id]
            if w.used(now) >= cap:
                wait = w.reset_in(now)
                raise HttpFailure(429, f"Mutation limit exceeded for board {board.id}",
                                  "BOARD_MUTATION_LIMIT_EXCEEDED", retry_after=wait,
                                  extensions={"retry_in_seconds": wait, "board_id": board.id})
            w.add(now)

    def _item_exists(self, item_id: str, board_ids: list[int] | None) -> bool:
        it = self.store.items.get(item_id)
        if it is None or it.state == "deleted":
            return False
        return not board_ids or int(it.board_id) in board_ids

    def _parse_values(self, board: Board, values: dict[str, Any], *, simple: bool,
                      create_labels: bool) -> tuple[dict[str, Any], str | None]:
        parsed: dict[str, Any] = {}
        rename = None
        now = iso(self.clock.now())
        for cid, raw in values.items():
            col = board.columns.get(cid)
            if col is None or col.archived:
                raise MondayError(f"This column ID doesn't exist for the board: {cid}", "InvalidColumnIdException",
                                  error_data={"column_id": cid})
            stored = parse_write(col, raw, simple=simple, create_labels=create_labels, item_exists=self._item_exists)
            if col.type == "name":
                if not stored:
                    raise MondayError("Item name can't be empty", "InvalidArgumentException",
                                      error_data={"column_id": "name"})
                rename = stored
                continue
            if isinstance(stored, dict):
                stored = {**stored, "changed_at": now}
                if col.type == "status":
                    stored["post_id"] = None
            parsed[cid] = stored
        return parsed, rename

    def _create_item(self, board: Board, name: str, group_id: str | None, values: dict[str, Any], *,
                     user_id: str, create_labels: bool, via_api: bool) -> Item:
        if via_api:
            self._guard_board(board)
        if len(name) > 255:
            raise MondayError("Item name is too long (maximum is 255 characters)", "ItemNameTooLongException",
                              error_data={"limit": 255})
        if group_id:
            g = board.groups.get(group_id)
            if g is None or g.deleted:
                raise MondayError(f"Group {group_id} not found on board {board.id}", "InvalidGroupIdException",
                                  error_data={"group_id": group_id})
        else:
            group_id = next(g.id for g in board.groups.values() if not g.deleted)
        if not isinstance(values, dict):
            raise MondayError("column_values must be a JSON object", "JsonParseException",
                              error_data={"argument": "column_values"})
        parsed, rename = self._parse_values(board, values, simple=False, create_labels=create_labels)
        now = iso(self.clock.now())
        it = Item(self.store.next_item_id(), board.id, group_id, rename or name, user_id, now, now,
                  values={k: v for k, v in parsed.items() if v is not None})
        self.store.items[it.id] = it
        board.item_ids.append(it.id)
        board.updated_at = now
        self.store.reindex(board, it)
        self._hub.item_created(board, it, user_id)
        self.activity.record(it.id, _who(user_id, via_api, "created"), at=self.clock.now())
        return it

    def _change_values(self, board: Board, it: Item, values: dict[str, Any], *, user_id: str, create_labels: bool,
                       via_api: bool, simple: bool = False) -> None:
        if it.board_id != board.id:
            raise MondayError(f"Item {it.id} not found on board {board.id}", "InvalidItemIdException",
                              error_data={"item_id": it.id, "board_id": board.id})
        if via_api:
            self._guard_board(board)
        parsed, rename = self._parse_values(board, values, simple=simple, create_labels=create_labels)
        changed = [cid for cid, v in parsed.items() if _strip(it.values.get(cid)) != _strip(v)]
        touched = set(changed) | ({"name"} if rename and rename != it.name else set())
        if not touched:
            return
        olds = {cid: it.values.get(cid) for cid in changed}
        old_texts = {cid: self.store.text(board, it, board.columns[cid]) for cid in changed}
        old_name = it.name
        self.store.unindex(board, it, touched)
        for cid in changed:
            if parsed[cid] is None:
                it.values.pop(cid, None)
            else:
                it.values[cid] = parsed[cid]
        if rename:
            it.name = rename
        it.updated_at = board.updated_at = iso(self.clock.now())
        self.store.reindex(board, it, touched)
        for cid in changed:
            self._hub.column_changed(board, it, board.columns[cid], olds[cid], it.values.get(cid), user_id)
        diff = [(board.columns[cid].title, old_texts[cid], self.store.text(board, it, board.columns[cid]))
                for cid in changed]
        if it.name != old_name:
            diff.insert(0, ("Name", old_name, it.name))
        self.activity.record(it.id, _who(user_id, via_api, "changed"), diff, at=self.clock.now())

    def _create_update(self, it: Item, body: str, *, user_id: str, via_api: bool) -> Update:
        board = self.store.boards[it.board_id]
        if via_api:
            self._guard_board(board)
        u = Update(self.store.next_update_id(), it.id, body, user_id, iso(self.clock.now()))
        it.updates.append(u)
        self.activity.record(it.id, _who(user_id, via_api, "update posted"), at=self.clock.now())
        self._hub.update_created(board, it, u, HTML_TAG.sub("", body), user_id)
        return u

    def _set_state(self, it: Item, state: str, *, user_id: str, via_api: bool) -> None:
        board = self.store.boards[it.board_id]
        if via_api:
            self._guard_board(board)
        if it.state == state:
            return
        self.store.unindex(board, it)
        self.activity.record(it.id, _who(user_id, via_api, state), [("State", it.state, state)], at=self.clock.now())
        it.state = state
        it.updated_at = iso(self.clock.now())
        event, kind = ("item_archived", "archive_pulse") if state == "archived" else ("item_deleted", "delete_pulse")
        self._hub.item_state(board, it, event, kind, user_id)

    def _move_item(self, it: Item, group_id: str, *, user_id: str, via_api: bool) -> None:
        board = self.store.boards[it.board_id]
        if via_api:
            self._guard_board(board)
        g = board.groups.get(group_id)
        if g is None or g.deleted:
            raise MondayError(f"Group {group_id} not found on board {board.id}", "InvalidGroupIdException",
                              error_data={"group_id": group_id})
        if it.group_id == group_id:
            return
        source = it.group_id
        it.group_id = group_id
        it.updated_at = iso(self.clock.now())
        self._hub.item_state(board, it, "item_moved_to_any_group", "move_pulse_into_group", user_id,
                             {"sourceGroupId": source, "destGroupId": group_id, "groupId": group_id})

    def _create_webhook(self, board: Board, url: str, event: str, config: Any, req: RequestState) -> Webhook:
        cfg = config if isinstance(config, dict) else None
        for w in self.store.webhooks.values():
            if w.board_id == board.id and w.event == event and w.config == cfg and w.token_kind == req.kind:
                raise MondayError(f"A webhook for {event} already exists on board {board.id}",
                                  "WebhookAlreadyExistsException", error_data={"webhook_id": w.id})
        if event == "change_specific_column_value" and not (cfg and cfg.get("columnId") in board.columns):
            raise MondayError("config.columnId must name a column of the board", "InvalidArgumentException",
                              error_data={"config": cfg})
        self._hub.challenge(url, req.kind, req.account_id, req.user_id)
        w = Webhook(self.store.next_webhook_id(), board.id, url, event, cfg, req.kind, req.account_id, req.user_id)
        self.store.webhooks[w.id] = w
        return w

    # ---------------------------------------------------------------------------------------------------
    # webhooks
    # ---------------------------------------------------------------------------------------------------
    def deliver_webhooks(self, retry_now: bool = False) -> dict[str, int]:
        """POST the due events (see webhooks.py); returns delivered / failed / dropped / posts. ``retry_now``:
        failed events are retried at once instead of a minute later on the sandbox clock."""
        return self._hub.deliver(retry_now)

    def pending_webhooks(self) -> int:
        return self._hub.pending()

    def start_auto_delivery(self, interval_s: float = 0.5) -> None:
        self._pump.start(interval_s)

    def stop_auto_delivery(self) -> None:
        self._pump.stop()

    # ---------------------------------------------------------------------------------------------------
    # HTTP
    # ---------------------------------------------------------------------------------------------------
    def _rate_limit_response(self, retry_after: str | None) -> Response:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return JSONResponse({"errors": [{"message": "Rate limit exceeded", "extensions": {
            "code": "RATE_LIMIT_EXCEEDED", "retry_in_seconds": int(retry_after or 1)}}]}, 429, headers)

    @staticmethod
    def _server_error_response(status: int, retry_after: str | None) -> Response:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return JSONResponse({"errors": [{"message": "Internal server error", "extensions": {
            "code": "INTERNAL_SERVER_ERROR", "status_code": status}}]}, status, headers)

    def _count(self, request: Request) -> None:
        if request.url.path.startswith("/v2"):
            with self._lock:
                self.calls += 1

    def _build_app(self) -> Any:
        routes = [Route("/v2", self._v2, methods=["POST"]), *ui.routes(self)]
        return FaultMiddleware(Starlette(routes=routes), self.faults, self._rate_limit_response,
                               self._server_error_response, count=self._count)

    def _authenticate(self, header: str) -> dict[str, Any] | None:
        token = header.strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        tok = self._tokens.get(token)
        if tok is None:
            return None
        if tok["expires_at"] is not None and tok["expires_at"] <= self.clock.timestamp():
            return None
        return {**tok, "token": token}

    def _admit(self, tok: dict[str, Any]) -> None:
        """Account-level limits before the query is read: daily calls, requests per minute, field limit."""
        now_dt = self.clock.now()
        now = now_dt.timestamp()
        acct = tok["account_id"]
        lim = self.limits
        if lim.daily_calls is not None:
            day = now_dt.strftime("%Y-%m-%d")
            d, n = self._daily.get(acct, (day, 0))
            if d != day:
                n = 0
            if n >= lim.daily_calls:
                midnight = datetime(now_dt.year, now_dt.month, now_dt.day, tzinfo=UTC) + timedelta(days=1)
                wait = max(1, math.ceil((midnight - now_dt).total_seconds()))
                self._limit_429 += 1
                raise HttpFailure(429, "Daily limit exceeded", "DAILY_LIMIT_EXCEEDED", retry_after=wait,
                                  extensions={"retry_in_seconds": wait})
            self._daily[acct] = (day, n + 1)
        if lim.requests_per_minute is not None:
            w = self._minute[acct]
            if w.used(now) >= lim.requests_per_minute:
                wait = w.reset_in(now)
                self._limit_429 += 1
                raise HttpFailure(429, "Rate limit exceeded", "RATE_LIMIT_EXCEEDED", retry_after=wait,
                                  extensions={"retry_in_seconds": wait})
            w.add(now)

    def _field_limit(self, field: str) -> None:
        f = self.faults
        if f.field_limit_next > 0:
            f.field_limit_next -= 1
            self._limit_429 += 1
            wait = f.field_limit_retry_s
            raise HttpFailure(429, "Concurrency limit exceeded for the field", "FIELD_LIMIT_EXCEEDED",
                              retry_after=wait, extensions={"retry_in_seconds": wait, "status_code": 429,
                                                            "error_data": {"retry_in_seconds": wait,
                                                                           "entity": field}})

    def _charge(self, tok: dict[str, Any], cost: int, is_mutation: bool) -> dict[str, int]:
        now = self.clock.timestamp()
        lim = self.limits
        if tok["kind"] == "app":
            key = (tok["token"], "write" if is_mutation else "read")
            cap = lim.app_writes_per_minute if is_mutation else lim.app_reads_per_minute
        else:
            key = (tok["token"], "all")
            cap = lim.complexity_per_minute
        w = self._budgets.get(key)
        if w is None:
            w = self._budgets[key] = Window()
        used = w.used(now)
        if used + cost > cap:
            wait = w.wait_for(now, cost, cap)
            self._limit_429 += 1
            raise HttpFailure(429, "Complexity budget exhausted", "COMPLEXITY_BUDGET_EXHAUSTED", retry_after=wait,
                              extensions={"retry_in_seconds": wait})
        w.add(now, cost)
        self.complexity_used += cost
        before = cap - used
        return {"before": before, "after": before - cost, "query": cost, "reset_in_x_seconds": w.reset_in(now)}

    async def _v2(self, request: Request) -> Response:
        raw = await request.body()
        with self._lock:
            tok = self._authenticate(request.headers.get("authorization", ""))
        if tok is None:
            return JSONResponse({"errors": [{"message": "Not Authenticated",
                                             "extensions": {"code": "UNAUTHENTICATED"}}]}, 401)
        version = request.headers.get("api-version")
        if version is not None and version not in self.api_versions:
            return JSONResponse({"errors": [{"message": f"Invalid API version '{version}'. Supported versions: "
                                                        f"{', '.join(self.api_versions)}",
                                             "extensions": {"code": "InvalidVersionException"}}],
                                 "account_id": _num(tok["account_id"])}, 400)
        try:
            body = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("query"), str) or not body["query"].strip():
            return JSONResponse({"errors": [{"message": "No query string was present",
                                             "extensions": {"code": "INVALID_REQUEST"}}]}, 400)
        prepared = prepare(body["query"])
        if prepared.needs_io:
            status, out, headers = await run_in_threadpool(self._run, tok, prepared, body)
        else:
            status, out, headers = self._run(tok, prepared, body)
        return JSONResponse(out, status, headers)

    def _run(self, tok: dict[str, Any], prepared: Any, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        acct = _num(tok["account_id"])
        with self._lock:
            try:
                self._admit(tok)
                if prepared.errors:
                    return 200, {"errors": prepared.errors, "account_id": acct}, {}
                name = body.get("operationName")
                ops = prepared.operations
                op = ops.get(name) if name else (next(iter(ops.values())) if len(ops) == 1 else None)
                if op is None:
                    msg = (f"Unknown operation named '{name}'." if name else
                           "Must provide operation name if query contains multiple operations.")
                    return 200, {"errors": [{"message": msg, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}],
                                 "account_id": acct}, {}
                inputs = body.get("variables") or {}
                coerced = get_variable_values(schema(), op.variable_definitions or [], inputs
                                              if isinstance(inputs, dict) else {})
                if isinstance(coerced, list):
                    return 200, {"errors": [_graphql_error(e, "GRAPHQL_VALIDATION_FAILED") for e in coerced],
                                 "account_id": acct}, {}
                fields = root_fields(prepared, op)
                for f in dict.fromkeys(f.name.value for f in fields):
                    self._field_limit(f)
                is_mutation = op.operation == OperationType.MUTATION
                cost = complexity(prepared, op, coerced)
                if cost > self.limits.max_query_complexity:
                    return 200, {"errors": [{"message": f"Query has complexity of {cost}, which exceeds max "
                                                        f"complexity of {self.limits.max_query_complexity}",
                                             "extensions": {"code": "maxComplexityExceeded",
                                                            "complexity": cost,
                                                            "maxComplexity": self.limits.max_query_complexity}}],
                                 "account_id": acct}, {}
                cplx = self._charge(tok, cost, is_mutation)
                for f in dict.fromkeys(f.name.value for f in fields):
                    self.calls_by_operation[f] += 1
                if is_mutation:
                    for f in fields:
                        self._mutations[f.name.value] += 1
                ctx = Context(prepared, coerced, RequestState(self, tok, cplx))
                sch = schema()
                root_type, root = (sch.mutation_type, MUTATION_ROOT) if is_mutation else (sch.query_type, QUERY_ROOT)
                data = execute_selection(ctx, root_type, root, (op.selection_set,), ())
            except HttpFailure as f:
                return _failure(f, tok["account_id"])
        out: dict[str, Any] = {"data": data}
        if ctx.errors:
            out["errors"] = ctx.errors
        out["account_id"] = acct
        out["extensions"] = {"request_id": str(uuid.uuid4())}
        return 200, out, {}


def _graphql_error(err: GraphQLError, code: str) -> dict[str, Any]:
    out: dict[str, Any] = {"message": err.message, "extensions": {"code": code}}
    if err.locations:
        out["locations"] = [{"line": loc.line, "column": loc.column} for loc in err.locations]
    return out


def _who(user_id: str, via_api: bool, what: str) -> str:
    """An activity entry's 'how': "changed by API (user 9001)" or "changed by a person (user 77)"."""
    return f"{what} by {'API' if via_api else 'a person'} (user {user_id})"


def _strip(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: x for k, x in v.items() if k not in ("changed_at", "post_id")}
    return v
