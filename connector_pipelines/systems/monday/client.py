"""monday.com GraphQL client over ``core.http.ResilientClient``.

One endpoint, ``POST {api_url}`` (``https://api.monday.com/v2``) with ``{"query", "variables"}``; the raw token in
``Authorization`` (no Bearer) and ``API-Version`` pinned (default ``2026-10``, the SDL in shared/specs). Every
document the client builds is validated against that SDL in the tests.

Rules this client keeps (API-FACTS §6):
- every query and mutation carries ``complexity { before after query reset_in_x_seconds }`` (added to a
  caller's document when it lacks it) and the answer feeds the process-wide ``RateGovernor`` of the token,
  which makes callers wait for the budget's reset instead of being refused;
- application errors come as HTTP 200 with ``errors[]``: they are raised as typed errors (``errors.classify``).
  A request monday refused as a whole for a rate or complexity limit (COMPLEXITY_BUDGET_EXHAUSTED,
  FIELD_LIMIT_EXCEEDED, a 429) is re-sent after the advertised ``retry_in_seconds`` (or ``Retry-After``, or a
  backoff), a bounded number of times and never for a wait over ``max_retry_wait_s`` (the daily limit is raised
  at once); a 423 (board locked) is re-sent with a doubling backoff. Both are safe for mutations: monday refused
  them before acting. A mutation is never re-sent after a timeout or a 5xx (it may have happened: the caller
  looks the item up by its external key first, DESIGN §3.4);
- a 401 re-reads the token (the vault) once and resends;
- mutations on one board are serialised (and optionally paced) by the governor inside the process, and across
  the deployment's processes by ``board_guard`` when given (the Dagster resource passes a database lease: run
  workers of the same board take turns); a board another process keeps past the guard's wait is a transient
  ``MondayBoardLocked``;
- items come out flat: ``{"id", "name", "group_id", "columns": {col_id: decoded}, "linked_item_ids": {...}}``;
  column values are written from Python values through the codecs of the board's column types (``Raw`` values
  pass through);
- ``items_page``: ``boards { items_page }`` then ``next_items_page``; a cursor that expires mid-read (60 min)
  re-issues the read from the start, skipping items already yielded;
- ``items_by_column_values``: ``items_page_by_column_values`` in batches of values (find by external key
  before create);
- ``create_items``: several ``create_item`` mutations under aliases in one request (GraphQL executes a
  document's mutation fields one after another; monday documents 10,000 complexity points per create_item, so
  the batch is sized to the per-query limit and to the pacing cap). A batch can partly succeed: each item gets
  its id or its own error, and only items monday refused as a whole are re-sent.
No Dagster, no sandbox imports. The token never appears in a log, a repr or an error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from graphql import OperationDefinitionNode, OperationType, parse

from connector_pipelines.core.http import ApiError, ResilientClient, RetrySettings, response_body
from connector_pipelines.systems.monday.auth import (
    DEFAULT_API_VERSION,
    StaticToken,
    TokenSource,
    fingerprint,
    token_source,
)
from connector_pipelines.systems.monday.codecs import Raw, encode_column_values
from connector_pipelines.systems.monday.errors import (
    MondayApiError,
    MondayAuthError,
    MondayBoardLocked,
    MondayConfigError,
    MondayCursorExpired,
    MondayNotFound,
    MondayRateLimited,
    classify,
)
from connector_pipelines.systems.monday.governor import RateGovernor, governor_for
from connector_pipelines.systems.monday.models import Board, flat_item

log = logging.getLogger(__name__)

SYSTEM = "monday"
DEFAULT_API_URL = "https://api.monday.com/v2"
COMPLEXITY = "complexity { before after query reset_in_x_seconds }"
MAX_PAGE = 500                    # items_page / items_page_by_column_values limit maximum (SDL, API-FACTS §6.2)
CREATE_ITEM_COST = 10_000         # "Each create_item mutation uses 10,000 complexity points" (best practices)
DEFAULT_BATCH = 25                # create_item mutations per request (measured against the sandbox: docs/monday.md)
VALUES_PER_LOOKUP = 100           # values per items_page_by_column_values request (UNCONFIRMED limit; kept modest)
WEBHOOK_FIELDS = "id board_id event config"


def item_fields(with_column_ids: bool) -> str:
    """The selection every item read uses (column_values limited to ``$columns`` when ``with_column_ids``)."""
    args = "(ids: $columns)" if with_column_ids else ""
    return (f"id name group {{ id }} column_values{args} {{ id type text value "
            "... on BoardRelationValue { linked_item_ids } }")


@functools.lru_cache(maxsize=512)
def _prepare(document: str) -> tuple[str, str, bool, int]:
    """``(document with complexity, operation type, complexity injected, mutation root fields)``."""
    tree = parse(document)
    op = next((d for d in tree.definitions if isinstance(d, OperationDefinitionNode)), None)
    if op is None:
        raise ValueError("the GraphQL document has no operation")
    kind = "write" if op.operation == OperationType.MUTATION else "read"
    roots = [s for s in op.selection_set.selections if getattr(s, "name", None) is not None]
    has = any(s.name.value == "complexity" and getattr(s, "alias", None) is None for s in roots)
    fields = sum(1 for s in roots if s.name.value != "complexity")
    if has:
        return document, kind, False, fields
    start = op.selection_set.loc.start if op.selection_set.loc else document.index("{")
    return document[:start + 1] + f" {COMPLEXITY}" + document[start + 1:], kind, True, fields


def with_complexity(document: str) -> str:
    """``document`` with ``complexity { before after query reset_in_x_seconds }`` among its root fields."""
    return _prepare(document)[0]


@dataclass(frozen=True)
class CreatedItem:
    """One item of ``create_items``: its ``item_id``, or the ``error`` monday answered for it."""

    name: str
    item_id: str | None = None
    error: MondayApiError | None = None

    @property
    def ok(self) -> bool:
        return self.item_id is not None


def _root_data(body: Any) -> dict[str, Any]:
    data = body.get("data") if isinstance(body, dict) else None
    return data if isinstance(data, dict) else {}


def _refused_whole(body: Any) -> bool:
    """No root field answered (other than complexity): monday did nothing, the request may be re-sent."""
    return all(v is None for k, v in _root_data(body).items() if k != "complexity")


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), max(1, size)):
        yield seq[i:i + size]


class MondayClient:
    system = SYSTEM

    def __init__(self, http: ResilientClient, token: TokenSource, *, api_path: str = "/v2",
                 api_version: str = DEFAULT_API_VERSION, governor: RateGovernor, max_rate_retries: int = 6,
                 max_retry_wait_s: float = 90.0, max_lock_retries: int = 6, lock_backoff_s: float = 0.5,
                 cursor_restarts: int = 3, batch_size: int = DEFAULT_BATCH,
                 board_guard: Callable[[str], AbstractContextManager[bool]] | None = None) -> None:
        self.http = http
        # Mutations on one board from several processes: ``board_guard(board_id)`` holds a lock they share (the
        # resource passes a database lease); it yields False when another process kept the board too long.
        self.board_guard = board_guard
        self._token = token
        self.api_path = api_path or "/"
        self.api_version = api_version
        self.governor = governor
        self.max_rate_retries = max_rate_retries
        self.max_retry_wait_s = max_retry_wait_s
        self.max_lock_retries = max_lock_retries
        self.lock_backoff_s = lock_backoff_s
        self.cursor_restarts = cursor_restarts
        self.batch_size = max(1, batch_size)
        self._boards: dict[str, Board] = {}
        self.stats = {"rate_limited": 0, "locked": 0, "cursor_restarts": 0, "token_rereads": 0}

    @classmethod
    def connect(cls, api_url: str = DEFAULT_API_URL, *, token: str | TokenSource,
                api_version: str = DEFAULT_API_VERSION, governor: RateGovernor | None = None,
                transport: httpx.BaseTransport | None = None, retry: RetrySettings | None = None,
                timeout_s: float = 60.0, verify: bool | str = True,
                mutations_per_minute_per_board: int | None = None, batch_size: int = DEFAULT_BATCH,
                **kw: Any) -> MondayClient:
        """A client for ``api_url`` with a raw token (``str``) or a ``TokenSource`` (``VaultToken``).

        ``governor``: by default the process's governor of this token (``governor_for``), shared with every
        other client of the token; ``mutations_per_minute_per_board`` configures its pacing (an ASSUMPTION, off by
        default). ``timeout_s``: monday cuts every call at 60 s (API-FACTS §6.1)."""
        source = token_source(token)
        parts = urlsplit(api_url)
        if not parts.scheme or not parts.netloc:
            raise ValueError(f"api_url must be absolute (https://api.monday.com/v2), not {api_url!r}")
        origin = f"{parts.scheme}://{parts.netloc}"
        if governor is None:
            governor = governor_for(source.get_token(), mutations_per_minute_per_board=mutations_per_minute_per_board)
        elif mutations_per_minute_per_board is not None:
            governor.configure(mutations_per_minute_per_board=mutations_per_minute_per_board)
        http = ResilientClient(SYSTEM, origin, None, timeout_s=timeout_s, retry=retry, transport=transport,
                               verify=verify, headers={"Accept": "application/json", "API-Version": api_version})
        return cls(http, source, api_path=parts.path or "/", api_version=api_version, governor=governor,
                   batch_size=batch_size, **kw)

    def __repr__(self) -> str:
        return (f"MondayClient(api={self.http.base_url}{self.api_path!s}, api_version={self.api_version!r}, "
                f"token={self._token!r})")

    def close(self) -> None:
        self.http.close()

    @property
    def token_fingerprint(self) -> str:
        return fingerprint(self._token.get_token())

    # -- the one request path -----------------------------------------------------------------------------
    def _post(self, document: str, variables: Mapping[str, Any] | None, op: str,
              *, board_id: Any = None) -> tuple[Any, list[MondayApiError]]:
        """Send one document (retrying whole refusals); returns ``(body, errors)`` — errors not raised here."""
        doc, kind, _, fields = _prepare(document)
        if board_id is not None and kind == "write":
            with self.governor.mutation(board_id, count=max(1, fields)), self._guard(str(board_id)) as held:
                if not held:
                    raise MondayBoardLocked(f"board {board_id} is being written by another process of this "
                                            "deployment; try again later", operation=op)
                return self._post_unlocked(doc, variables, op, kind, fields)
        return self._post_unlocked(doc, variables, op, kind, fields)

    def _guard(self, board_id: str) -> AbstractContextManager[bool]:
        return self.board_guard(board_id) if self.board_guard is not None else nullcontext(True)

    def _post_unlocked(self, doc: str, variables: Mapping[str, Any] | None, op: str, kind: str,
                       fields: int) -> tuple[Any, list[MondayApiError]]:
        shape = hashlib.sha1(doc.encode("utf-8")).hexdigest()[:16]
        default = CREATE_ITEM_COST * max(1, fields) if kind == "write" else 1
        rate_tries = lock_tries = 0
        reread = False
        payload = {"query": doc, "variables": dict(variables or {})}
        while True:
            self.governor.acquire(self.governor.estimate(shape, default), kind=kind)
            token = self._token.get_token()
            try:
                r = self.http.request("POST", self.api_path, json=payload,
                                      headers={"Authorization": token, "API-Version": self.api_version},
                                      expected=(400, 401, 403, 404, 423, 429), idempotent=kind == "read")
            except ApiError as exc:
                errs = classify(exc.status, exc.body, operation=op, url=self.api_path)
                raise (errs[0] if errs else MondayApiError(str(exc), status=exc.status, operation=op)) from None
            body = response_body(r)
            complexity = _root_data(body).get("complexity")
            if isinstance(complexity, dict):
                self.governor.observe(complexity, kind=kind, shape=shape)
            errors = classify(r.status_code, body, r.headers, operation=op, url=self.api_path)
            if not errors:
                return body, []
            whole = _refused_whole(body)
            rate = next((e for e in errors if isinstance(e, MondayRateLimited)), None)
            locked = next((e for e in errors if isinstance(e, MondayBoardLocked)), None)
            auth = next((e for e in errors if isinstance(e, MondayAuthError) and e.status == 401), None)
            if (whole and auth is not None and not reread and hasattr(self._token, "invalidate")
                    and not isinstance(self._token, StaticToken)):   # a static token would be sent again as is
                reread = True
                self.stats["token_rereads"] += 1
                self._token.invalidate(token)
                continue
            if whole and rate is not None:
                self.stats["rate_limited"] += 1
                wait = rate.retry_in_s if rate.retry_in_s is not None else min(60.0, 2.0 ** rate_tries)
                if rate.daily or wait > self.max_retry_wait_s or rate_tries >= self.max_rate_retries:
                    raise rate
                rate_tries += 1
                log.info("monday %s: %s; retrying in %.1fs (attempt %d)", op, rate.code or "rate limited", wait,
                         rate_tries)
                self.governor.note_retry_in(wait)
                continue
            if whole and locked is not None:
                self.stats["locked"] += 1
                if lock_tries >= self.max_lock_retries:
                    raise locked
                wait = min(30.0, self.lock_backoff_s * 2 ** lock_tries)
                lock_tries += 1
                log.info("monday %s: board locked; retrying in %.1fs (attempt %d)", op, wait, lock_tries)
                self.governor.pause(wait, "backoff")
                continue
            return body, errors

    def _call(self, document: str, variables: Mapping[str, Any] | None = None, *, op: str,
              board_id: Any = None) -> dict[str, Any]:
        body, errors = self._post(document, variables, op, board_id=board_id)
        if errors:
            raise errors[0]
        return _root_data(body)

    # -- generic ----------------------------------------------------------------------------------------------
    def query(self, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run any query or mutation; returns ``data`` (without the complexity field the client added).
        Errors raise typed ``MondayApiError`` subclasses; rate limits and locks are waited out first."""
        _, kind, injected, _ = _prepare(document)
        data = self._call(document, variables, op="query" if kind == "read" else "mutation")
        if injected:
            data = {k: v for k, v in data.items() if k != "complexity"}
        return data

    # -- boards -----------------------------------------------------------------------------------------------
    BOARD_QUERY = ("query ($ids: [ID!]) { boards(ids: $ids) { id name url "
                   "columns { id title type settings settings_str archived } groups { id title } } }")

    def board(self, board_id: Any, *, refresh: bool = True) -> Board:
        """The board's columns (id, title, type, parsed settings) and groups; cached for encoding writes."""
        key = str(board_id)
        if not refresh and key in self._boards:
            return self._boards[key]
        data = self._call(self.BOARD_QUERY, {"ids": [key]}, op="boards")
        boards = data.get("boards") or []
        if not boards or boards[0] is None:
            raise MondayNotFound(f"board {key} does not exist or the token cannot see it", operation="boards")
        board = Board.from_api(boards[0])
        self._boards[key] = board
        return board

    def check_board(self, board_id: Any, expected: Mapping[str, str]) -> Board:
        """Read the board and check it has every ``expected`` column id with the expected type; raises
        ``MondayConfigError`` naming the missing columns and the type mismatches (what ``ping`` uses)."""
        board = self.board(board_id)
        missing = [cid for cid in expected if cid not in board.columns]
        mismatched = {cid: (want, board.columns[cid].type) for cid, want in expected.items()
                      if cid in board.columns and board.columns[cid].type != want}
        if missing or mismatched:
            parts = []
            if missing:
                parts.append("missing column(s) " + ", ".join(repr(c) for c in missing))
            if mismatched:
                parts.append("type mismatch: " + ", ".join(f"{cid!r} is {got}, expected {want}"
                                                           for cid, (want, got) in mismatched.items()))
            have = ", ".join(f"{c.id} ({c.type}: {c.title})" for c in board.columns.values())
            raise MondayConfigError(f"monday board {board.id} ({board.name!r}) does not match the configuration: "
                                    f"{'; '.join(parts)}. The board has: {have}", board_id=board.id,
                                    missing=missing, mismatched=mismatched)
        return board

    def _cached_board(self, board_id: Any) -> Board | None:
        return self._boards.get(str(board_id))

    def _encode(self, board_id: Any, column_values: Mapping[str, Any] | None) -> str | None:
        if not column_values:
            return None
        if all(isinstance(v, Raw) for v in column_values.values()):
            return json.dumps({k: v.value for k, v in column_values.items()})
        board = self._cached_board(board_id)
        if board is None or any(cid not in board.columns for cid in column_values):
            board = self.board(board_id)
        return json.dumps(encode_column_values(board.columns, column_values), separators=(",", ":"))

    # -- reads --------------------------------------------------------------------------------------------------
    def _page_vars(self, columns: list[str] | None, **kw: Any) -> dict[str, Any]:
        out = dict(kw)
        if columns is not None:
            out["columns"] = list(columns)
        return out

    def items_page(self, board_id: Any, *, columns: list[str] | None = None, limit: int = MAX_PAGE,
                   query_params: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of the board (matching ``query_params``, an ``ItemsQuery``), flat, page by page.
        ``columns``: only these column ids (None: all). A cursor that expires mid-read starts the read again,
        yielding only items not yet yielded."""
        limit = max(1, min(int(limit), MAX_PAGE))
        cols = columns is not None
        fields = item_fields(cols)
        qp_decl = ", $qp: ItemsQuery" if query_params is not None else ""
        qp_arg = ", query_params: $qp" if query_params is not None else ""
        col_decl = ", $columns: [String!]" if cols else ""
        first = (f"query ($board: [ID!], $limit: Int!{qp_decl}{col_decl}) {{ boards(ids: $board) {{ "
                 f"items_page(limit: $limit{qp_arg}) {{ cursor items {{ {fields} }} }} }} }}")
        nxt = (f"query ($cursor: String!, $limit: Int!{col_decl}) {{ next_items_page(cursor: $cursor, limit: $limit) "
               f"{{ cursor items {{ {fields} }} }} }}")
        first_vars = self._page_vars(columns, board=[str(board_id)], limit=limit)
        if query_params is not None:
            first_vars["qp"] = dict(query_params)

        def pages() -> Iterator[list[dict[str, Any]]]:
            data = self._call(first, first_vars, op="items_page")
            boards = data.get("boards") or []
            if not boards or boards[0] is None:
                raise MondayNotFound(f"board {board_id} does not exist or the token cannot see it", operation="items_page")
            page = boards[0].get("items_page") or {}
            yield page.get("items") or []
            cursor = page.get("cursor")
            while cursor:
                data = self._call(nxt, self._page_vars(columns, cursor=cursor, limit=limit), op="next_items_page")
                page = data.get("next_items_page") or {}
                yield page.get("items") or []
                cursor = page.get("cursor")

        for item in self._restartable(pages, board_id):
            yield flat_item(item, self._cached_board(board_id))

    def _restartable(self, pages: Any, board_id: Any) -> Iterator[dict[str, Any]]:
        """The raw items of ``pages()``, each once; an expired cursor calls ``pages()`` again from the start."""
        seen: set[str] = set()
        restarts = 0
        while True:
            try:
                for items in pages():
                    for item in items:
                        if item is None or str(item.get("id")) in seen:
                            continue
                        seen.add(str(item["id"]))
                        yield item
                return
            except MondayCursorExpired:
                restarts += 1
                self.stats["cursor_restarts"] += 1
                if restarts > self.cursor_restarts:
                    raise
                log.info("monday board %s: cursor expired mid-read; reading again from the start (%d items "
                         "already read are skipped)", board_id, len(seen))

    def items_by_column_values(self, board_id: Any, column_id: str, values: Iterable[str], *,
                               columns: list[str] | None = None,
                               batch_size: int = VALUES_PER_LOOKUP) -> dict[str, list[dict[str, Any]]]:
        """Items whose ``column_id`` holds one of ``values`` (exact text match, then case-insensitive), as
        ``{value: [flat items]}`` with every value asked present (``[]``: none). Values are looked up in batches
        with ``items_page_by_column_values`` (values in one column are OR'd), every page followed."""
        wanted = [str(v) for v in dict.fromkeys(values) if v is not None and str(v) != ""]
        result: dict[str, list[dict[str, Any]]] = {v: [] for v in wanted}
        if not wanted:
            return result
        if columns is not None and column_id not in columns:
            columns = [*columns, column_id]
        cols = columns is not None
        fields = item_fields(cols)
        col_decl = ", $columns: [String!]" if cols else ""
        first = (f"query ($board: ID!, $by: [ItemsPageByColumnValuesQuery!], $limit: Int!{col_decl}) {{ "
                 f"items_page_by_column_values(board_id: $board, columns: $by, limit: $limit) "
                 f"{{ cursor items {{ {fields} }} }} }}")
        nxt = (f"query ($board: ID!, $cursor: String, $limit: Int!{col_decl}) {{ "
               f"items_page_by_column_values(board_id: $board, cursor: $cursor, limit: $limit) "
               f"{{ cursor items {{ {fields} }} }} }}")
        exact = {v: v for v in wanted}
        folded = {v.casefold(): v for v in wanted}
        for chunk in _chunks(wanted, batch_size):
            def pages(chunk: Sequence[str] = chunk) -> Iterator[list[dict[str, Any]]]:
                variables = self._page_vars(columns, board=str(board_id), limit=MAX_PAGE,
                                            by=[{"column_id": column_id, "column_values": list(chunk)}])
                data = self._call(first, variables, op="items_page_by_column_values")
                page = data.get("items_page_by_column_values") or {}
                yield page.get("items") or []
                cursor = page.get("cursor")
                while cursor:
                    variables = self._page_vars(columns, board=str(board_id), cursor=cursor, limit=MAX_PAGE)
                    data = self._call(nxt, variables, op="items_page_by_column_values")
                    page = data.get("items_page_by_column_values") or {}
                    yield page.get("items") or []
                    cursor = page.get("cursor")

            for item in self._restartable(pages, board_id):
                text = _column_text(item, column_id)
                key = exact.get(text) if text is not None else None
                if key is None and text is not None:
                    key = folded.get(text.casefold())
                if key is not None:
                    result[key].append(flat_item(item, self._cached_board(board_id)))
        return result

    # -- writes -------------------------------------------------------------------------------------------------
    CREATE_ITEM = ("mutation ($board: ID!, $name: String!, $group: String, $values: JSON) { "
                   "create_item(board_id: $board, item_name: $name, group_id: $group, column_values: $values) "
                   "{ id } }")

    def create_item(self, board_id: Any, item_name: str, column_values: Mapping[str, Any] | None = None, *,
                    group_id: str | None = None) -> str:
        """Create one item; returns its id. ``column_values``: Python values by column id, encoded with the
        codecs of the board's column types (``Raw`` values as they are). Not re-sent after a timeout or 5xx."""
        values = self._encode(board_id, column_values)
        data = self._call(self.CREATE_ITEM, {"board": str(board_id), "name": item_name, "group": group_id,
                                             "values": values}, op="create_item", board_id=board_id)
        created = data.get("create_item") or {}
        return str(created["id"])

    def create_items(self, board_id: Any, items: Sequence[Mapping[str, Any]], *,
                     batch_size: int | None = None) -> list[CreatedItem]:
        """Create many items, several ``create_item`` mutations per request. ``items``: ``{"name",
        "column_values"?, "group_id"?}``. Returns one ``CreatedItem`` per item, in order: its id, or the error
        monday gave for it (a refused column value does not lose the other items' ids). Every item is encoded
        before the first request (a value of the wrong kind raises ``ColumnCodecError`` and nothing is sent).
        A request that fails as a whole (retries spent, a timeout or 5xx: it may have happened) gives its error
        to its items and to every item not sent yet: look them up by external key before creating them again."""
        prepared = [(str(it["name"]), self._encode(board_id, it.get("column_values")), it.get("group_id"))
                    for it in items]
        size = batch_size or self.batch_size
        size = min(size, max(1, self.governor.max_query_complexity // CREATE_ITEM_COST))
        cap = self.governor.mutations_per_minute_per_board
        if cap is not None:
            size = min(size, cap)
        results: dict[int, CreatedItem] = {}
        failed: Exception | None = None
        for start in range(0, len(prepared), size):
            pending = list(range(start, min(start + size, len(prepared))))
            tries = 0
            while pending and failed is None:
                try:
                    outcome = self._create_batch(board_id, [(i, *prepared[i]) for i in pending])
                except (MondayApiError, httpx.TransportError) as exc:
                    failed = exc
                    break
                retry: list[int] = []
                for i, (item_id, error) in outcome.items():
                    if item_id is not None:
                        results[i] = CreatedItem(prepared[i][0], item_id=item_id)
                    elif (isinstance(error, (MondayRateLimited, MondayBoardLocked))
                          and tries < self.max_lock_retries):
                        retry.append(i)   # refused on its own in a partly answered batch: safe to re-send
                    else:
                        results[i] = CreatedItem(prepared[i][0], error=error)
                if retry:
                    tries += 1
                    waits = [getattr(outcome[i][1], "retry_in_s", None) for i in retry]
                    wait = max([w for w in waits if w is not None], default=0.0) or min(
                        30.0, self.lock_backoff_s * 2 ** tries)
                    self.governor.pause(wait, "backoff")
                pending = retry
            if failed is not None:
                break
        out = []
        for i, (name, _, _) in enumerate(prepared):
            if i in results:
                out.append(results[i])
            else:
                error = failed if isinstance(failed, MondayApiError) else MondayApiError(
                    f"create_items: {type(failed).__name__}: {failed}", status=503, operation="create_items")
                out.append(CreatedItem(name, error=error))
        return out

    def _create_batch(self, board_id: Any,
                      batch: list[tuple[int, str, str | None, str | None]]) -> dict[int, tuple[str | None, Any]]:
        """One request of aliased create_item mutations (``c0``, ``c1``, … within the batch, so batches of one
        size send the same document): ``{index: (item_id, None) | (None, error)}``."""
        decls = ["$board: ID!"]
        fields = []
        variables: dict[str, Any] = {"board": str(board_id)}
        for j, (_, name, values, group) in enumerate(batch):
            decls += [f"$n{j}: String!", f"$v{j}: JSON", f"$g{j}: String"]
            fields.append(f"c{j}: create_item(board_id: $board, item_name: $n{j}, group_id: $g{j}, "
                          f"column_values: $v{j}) {{ id }}")
            variables.update({f"n{j}": name, f"v{j}": values, f"g{j}": group})
        document = f"mutation ({', '.join(decls)}) {{ {' '.join(fields)} }}"
        body, errors = self._post(document, variables, "create_items", board_id=board_id)
        data = _root_data(body)
        by_alias = {e.alias: e for e in errors if e.alias}
        general = next((e for e in errors if not e.alias), None)
        out: dict[int, tuple[str | None, Any]] = {}
        for j, (i, *_) in enumerate(batch):
            created = data.get(f"c{j}")
            if isinstance(created, dict) and created.get("id") is not None:
                out[i] = (str(created["id"]), None)
            else:
                error = by_alias.get(f"c{j}") or general or (errors[0] if errors else None) or MondayApiError(
                    "create_item answered no id", operation="create_items")
                out[i] = (None, error)
        return out

    CHANGE_VALUES = ("mutation ($board: ID!, $item: ID, $values: JSON!) { change_multiple_column_values("
                     "board_id: $board, item_id: $item, column_values: $values) { id } }")

    def change_multiple_column_values(self, board_id: Any, item_id: Any, column_values: Mapping[str, Any]) -> None:
        """Update several columns of one item (Python values, encoded like ``create_item``)."""
        values = self._encode(board_id, column_values)
        if values is None:
            return
        self._call(self.CHANGE_VALUES, {"board": str(board_id), "item": str(item_id), "values": values},
                   op="change_multiple_column_values", board_id=board_id)

    CREATE_UPDATE = "mutation ($item: ID, $body: String!) { create_update(item_id: $item, body: $body) { id } }"

    def create_update(self, item_id: Any, body: str, *, board_id: Any = None) -> str:
        """Add an update (a comment) to an item; returns the update's id. ``board_id`` (optional) serialises it
        with the board's other mutations."""
        data = self._call(self.CREATE_UPDATE, {"item": str(item_id), "body": body}, op="create_update",
                          board_id=board_id)
        return str((data.get("create_update") or {})["id"])

    ARCHIVE_ITEM = "mutation ($item: ID) { archive_item(item_id: $item) { id } }"

    def archive_item(self, item_id: Any, *, board_id: Any = None) -> None:
        self._call(self.ARCHIVE_ITEM, {"item": str(item_id)}, op="archive_item", board_id=board_id)

    # -- webhooks -----------------------------------------------------------------------------------------------
    CREATE_WEBHOOK = ("mutation ($board: ID!, $url: String!, $event: WebhookEventType!, $config: JSON) { "
                      f"create_webhook(board_id: $board, url: $url, event: $event, config: $config) {{ {WEBHOOK_FIELDS} }} }}")
    DELETE_WEBHOOK = f"mutation ($id: ID!) {{ delete_webhook(id: $id) {{ {WEBHOOK_FIELDS} }} }}"
    WEBHOOKS = f"query ($board: ID!) {{ webhooks(board_id: $board) {{ {WEBHOOK_FIELDS} }} }}"

    def create_webhook(self, board_id: Any, url: str, event: str, config: Mapping[str, Any] | None = None) -> str:
        """Subscribe ``url`` to a board event (a ``WebhookEventType`` name); monday POSTs ``{"challenge"}`` to
        the url first and the receiver must echo it. ``config`` (e.g. ``{"columnId": "status"}``) is sent as a
        JSON string. Returns the webhook id."""
        variables = {"board": str(board_id), "url": url, "event": event,
                     "config": json.dumps(dict(config)) if config is not None else None}
        data = self._call(self.CREATE_WEBHOOK, variables, op="create_webhook", board_id=board_id)
        return str((data.get("create_webhook") or {})["id"])

    def delete_webhook(self, webhook_id: Any) -> None:
        self._call(self.DELETE_WEBHOOK, {"id": str(webhook_id)}, op="delete_webhook")

    def webhooks(self, board_id: Any) -> list[dict[str, Any]]:
        """The board's webhooks: ``[{"id", "board_id", "event", "config"}]`` (config parsed when it is JSON)."""
        data = self._call(self.WEBHOOKS, {"board": str(board_id)}, op="webhooks")
        out = []
        for w in data.get("webhooks") or []:
            if not isinstance(w, dict):
                continue
            config = w.get("config")
            if isinstance(config, str):
                try:
                    config = json.loads(config)
                except ValueError:
                    pass
            out.append({"id": str(w["id"]), "board_id": str(w.get("board_id")), "event": w.get("event"),
                        "config": config})
        return out

    # -- misc -----------------------------------------------------------------------------------------------------
    def run_stats(self) -> dict[str, Any]:
        """Calls, retries and waits of this client and its governor (for run metadata and benchmarks)."""
        return {"calls": self.http.calls, **self.stats, "governor": self.governor.stats()}


def _column_text(item: Mapping[str, Any], column_id: str) -> str | None:
    """The ``text`` of one column of a raw item (what items_page_by_column_values matches on)."""
    for cv in item.get("column_values") or []:
        if isinstance(cv, Mapping) and str(cv.get("id")) == column_id:
            text = cv.get("text")
            return text.strip() if isinstance(text, str) else None
    return None


__all__ = ["DEFAULT_API_URL", "CreatedItem", "MondayClient", "item_fields", "with_complexity"]
