"""Item paging of the monday.com sandbox: ``items_page(limit, cursor, query_params)``, ``next_items_page(cursor,
limit)`` and ``items_page_by_column_values(board_id, columns, limit, cursor)`` (API-FACTS §6.2).

- ``limit`` is 1..500 (``limit`` above 500 -> an error, UNCONFIRMED wording and code); the cursor is null on the
  last page.
- A cursor is an opaque string naming the matching item ids as they were when the first page was asked for
  (snapshot; items deleted or archived since are skipped). It lives ``cursor_ttl_s`` (3,600 s: "valid for 60
  minutes") from the answer that returned it (UNCONFIRMED: whether monday counts from the first page);
  ``expire_cursors()`` ends all of them now. An expired or unknown cursor -> ``CursorExpiredError: The cursor
  provided for pagination has expired...`` (the message text the vendor's own Python SDK matches on;
  UNCONFIRMED: the extensions code ``CURSOR_EXPIRED``).
- ``items_page_by_column_values``: values within one column are OR'd, columns AND'd; a value matches the
  column's ``text`` exactly (status: its label; ``name``: the item name). Served from a per-board index.
- ``query_params`` (``ItemsQuery``): ``ids``, ``groups``, ``rules`` (column_id, compare_value, operator,
  compare_attribute), ``operator`` and/or, ``order_by``. Rules compare with the column's text; status rules
  also take label indexes and dropdown rules ids; ``__last_updated__``/``__creation_log__`` compare the item's
  updated/created time (compare_value ``["EXACT", "<ISO date-time>"]`` or a date-time). Operators: any_of,
  not_any_of, is_empty, is_not_empty, greater_than(_or_equals), lower_than(_or_equal), between,
  contains_text, not_contains_text, starts_with, ends_with (UNCONFIRMED: monday's exact per-type semantics).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sandboxes.monday.errors import MondayError
from sandboxes.monday.model import Board, Item, Store

MAX_LIMIT = 500
CURSOR_EXPIRED_MESSAGE = ("CursorExpiredError: The cursor provided for pagination has expired. Please refresh your "
                          "query and obtain a new cursor to continue fetching items")


@dataclass
class Cursor:
    ids: list[str]
    pos: int
    issued_at: float
    board_id: str


def check_limit(limit: int) -> None:
    if limit < 1 or limit > MAX_LIMIT:
        raise MondayError(f"Limit must be between 1 and {MAX_LIMIT}", "InvalidArgumentException",
                          error_data={"limit": limit})


class Pager:
    def __init__(self, store: Store, clock: Any) -> None:
        self.store = store
        self.clock = clock
        self.cursors: dict[str, Cursor] = {}
        self.ttl_s = 3600.0

    def expire_all(self) -> None:
        self.cursors.clear()

    def _prune(self, now: float) -> None:
        if len(self.cursors) > 10_000:
            for k in [k for k, c in self.cursors.items() if now - c.issued_at > self.ttl_s]:
                del self.cursors[k]

    def page(self, board_id: str, ids: list[str], pos: int, limit: int) -> dict[str, Any]:
        """One page from ``ids[pos:]``: active items only, plus the next cursor (None at the end)."""
        items: list[Item] = []
        store_items = self.store.items
        n = len(ids)
        while pos < n and len(items) < limit:
            it = store_items.get(ids[pos])
            pos += 1
            if it is not None and it.state == "active":
                items.append(it)
        cursor = None
        if pos < n:
            now = self.clock.timestamp()
            self._prune(now)
            cursor = f"MSw{secrets.token_urlsafe(24)}"
            self.cursors[cursor] = Cursor(ids, pos, now, board_id)
        return {"cursor": cursor, "items": items}

    def next_page(self, cursor: str, limit: int) -> dict[str, Any]:
        check_limit(limit)
        c = self.cursors.get(cursor)
        if c is None or self.clock.timestamp() - c.issued_at > self.ttl_s:
            self.cursors.pop(cursor, None)
            raise MondayError(CURSOR_EXPIRED_MESSAGE, "CURSOR_EXPIRED", error_data={})
        return self.page(c.board_id, c.ids, c.pos, limit)

    # ---------------------------------------------------------------------------------------------------
    def by_column_values(self, board: Board, columns: list[dict[str, Any]], limit: int) -> dict[str, Any]:
        check_limit(limit)
        result: set[str] | None = None
        for spec in columns or []:
            cid = spec["column_id"]
            if cid != "name" and cid not in board.columns:
                raise MondayError(f"Column {cid} not found on board {board.id}", "InvalidColumnIdException",
                                  error_data={"column_id": cid})
            idx = self.store.column_index(board, cid)
            matched: set[str] = set()
            for v in spec.get("column_values") or []:
                matched |= idx.get("" if v is None else str(v), set())
            result = matched if result is None else result & matched
        if result is None:
            ids = list(board.item_ids)
        else:
            order = {iid: n for n, iid in enumerate(board.item_ids)} if len(result) > 1 else {}
            ids = sorted(result, key=lambda i: order.get(i, 0))
        return self.page(board.id, ids, 0, limit)

    def items_page(self, board: Board, limit: int, query: dict[str, Any] | None,
                   group_id: str | None = None) -> dict[str, Any]:
        check_limit(limit)
        items = [self.store.items[i] for i in board.item_ids]
        items = [it for it in items if it.state == "active" and (group_id is None or it.group_id == group_id)]
        if query:
            items = self._filter(board, items, query)
        return self.page(board.id, [it.id for it in items], 0, limit)

    # ---------------------------------------------------------------------------------------------------
    def _attr(self, board: Board, item: Item, column_id: str, compare_attribute: str | None) -> Any:
        if column_id == "__last_updated__" or (compare_attribute or "").upper() == "UPDATED_AT":
            return item.updated_at
        if column_id == "__creation_log__":
            return item.created_at
        if column_id == "name":
            return item.name
        col = board.columns.get(column_id)
        if col is None:
            raise MondayError(f"Column {column_id} not found on board {board.id}", "InvalidColumnIdException",
                              error_data={"column_id": column_id})
        return self.store.text(board, item, col)

    def _candidates(self, board: Board, item: Item, column_id: str) -> set[str]:
        col = board.columns.get(column_id)
        stored = item.values.get(column_id) if col is not None else None
        out = {self._attr(board, item, column_id, None)}
        if col is not None and stored is not None:
            if col.type == "status":
                out.add(str(stored["index"]))
            elif col.type == "dropdown":
                out |= {str(i) for i in stored["ids"]}
                names = col.dropdown_names()
                out |= {names.get(i, "") for i in stored["ids"]}
        return out

    @staticmethod
    def _values(compare_value: Any) -> list[str]:
        vals = compare_value if isinstance(compare_value, list) else [compare_value]
        vals = [v for v in vals if not (isinstance(v, str) and v.upper() in ("EXACT", "TODAY"))]
        return ["" if v is None else str(v) for v in vals]

    def _rule(self, board: Board, item: Item, rule: dict[str, Any]) -> bool:
        cid = rule["column_id"]
        op = rule.get("operator") or "any_of"
        vals = self._values(rule.get("compare_value"))
        if op in ("any_of", "not_any_of"):
            hit = bool(self._candidates(board, item, cid) & set(vals))
            return hit if op == "any_of" else not hit
        value = self._attr(board, item, cid, rule.get("compare_attribute"))
        if op == "is_empty":
            return value in ("", None)
        if op == "is_not_empty":
            return value not in ("", None)
        if op in ("contains_text", "not_contains_text"):
            hit = any(v.lower() in (value or "").lower() for v in vals)
            return hit if op == "contains_text" else not hit
        if op == "starts_with":
            return any((value or "").startswith(v) for v in vals)
        if op == "ends_with":
            return any((value or "").endswith(v) for v in vals)
        if value in ("", None) or not vals:
            return False
        a, b = _comparable(value), _comparable(vals[0])
        if op == "greater_than":
            return a > b
        if op == "greater_than_or_equals":
            return a >= b
        if op == "lower_than":
            return a < b
        if op == "lower_than_or_equal":
            return a <= b
        if op == "between" and len(vals) >= 2:
            return _comparable(vals[0]) <= a <= _comparable(vals[1])
        raise MondayError(f"Operator {op} is not supported for column {cid}", "InvalidArgumentException",
                          error_data={"operator": op})

    def _filter(self, board: Board, items: list[Item], q: dict[str, Any]) -> list[Item]:
        if q.get("ids"):
            wanted = {str(i) for i in q["ids"]}
            items = [it for it in items if it.id in wanted]
        if q.get("groups"):
            groups = {g["group_id"] if isinstance(g, dict) else str(g) for g in q["groups"]}
            items = [it for it in items if it.group_id in groups]
        rules = q.get("rules") or []
        if rules:
            combine = any if (q.get("operator") or "and") == "or" else all
            items = [it for it in items if combine(self._rule(board, it, r) for r in rules)]
        for ob in reversed(q.get("order_by") or []):
            cid = ob["column_id"]
            items.sort(key=lambda it, cid=cid: _comparable(self._attr(board, it, cid, None)),
                       reverse=(ob.get("direction") or "asc") == "desc")
        return items


def _comparable(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return (0, float(v), "")
        except ValueError:
            return (1, 0.0, v)
    return (0, float(v), "")
