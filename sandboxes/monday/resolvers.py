"""Root fields: the queries and mutations the sandbox emulates (API-FACTS §6.2-6.4). Writes go through the
sandbox's item operations (items.py), which validate column values, keep the lookup index, apply the board lock
and the per-board mutation cap, and emit webhook events.

- ``items(ids)``: at most 100 ids (monday's documented cap; more -> an error, UNCONFIRMED wording); ``limit``
  defaults to 25 (the vendor SDK's note: "the API defaults the page size to 25").
- ``create_item(board_id, item_name, group_id, column_values, create_labels_if_missing)``: ``group_id`` unknown
  -> ``InvalidGroupIdException`` (UNCONFIRMED code); absent -> the board's top group. ``item_name`` longer than
  255 characters -> ``ItemNameTooLongException``.
- ``column_values`` (JSON): a JSON-encoded string per the docs; a JSON object given through variables is taken
  too (UNCONFIRMED leniency).
"""

from __future__ import annotations

import json
from typing import Any

from sandboxes.monday.errors import MondayError
from sandboxes.monday.views import (
    BoardView,
    ItemsResponseView,
    ItemView,
    UpdateView,
    _board,
    _item,
    webhook_dict,
)

MAX_ITEM_IDS = 100


def _json_arg(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise MondayError(f"{what} is not valid JSON", "JsonParseException",
                              error_data={"argument": what}) from None
    return value


class QueryRoot:
    TYPENAME = "Query"

    def gql_boards(self, a: dict[str, Any], ctx: Any) -> list[BoardView]:
        store = ctx.state.store
        state = a.get("state") or "active"
        if a.get("ids"):
            boards = [store.boards[i] for i in dict.fromkeys(a["ids"]) if i in store.boards]
        else:
            boards = list(store.boards.values())
        boards = [b for b in boards if state == "all" or b.state == state]
        limit = a.get("limit") or 25
        page = max(1, a.get("page") or 1)
        return [BoardView(b) for b in boards[(page - 1) * limit: page * limit]]

    def gql_items(self, a: dict[str, Any], ctx: Any) -> list[ItemView]:
        ids = a.get("ids") or []
        if len(ids) > MAX_ITEM_IDS:
            raise MondayError(f"You can query up to {MAX_ITEM_IDS} items by ids at a time", "InvalidArgumentException",
                              error_data={"ids": len(ids)})
        items = ctx.state.store.items
        found = [items[i] for i in dict.fromkeys(ids) if i in items and items[i].state != "deleted"]
        if a.get("exclude_nonactive"):
            found = [it for it in found if it.state == "active"]
        if a.get("newest_first"):
            found.sort(key=lambda it: int(it.id), reverse=True)
        limit = a.get("limit") or 25
        page = max(1, a.get("page") or 1)
        return [ItemView(it) for it in found[(page - 1) * limit: page * limit]]

    def gql_next_items_page(self, a: dict[str, Any], ctx: Any) -> ItemsResponseView:
        return ItemsResponseView(ctx.state.pager.next_page(a["cursor"], a["limit"]))

    def gql_items_page_by_column_values(self, a: dict[str, Any], ctx: Any) -> ItemsResponseView:
        req = ctx.state
        if a.get("cursor"):
            return ItemsResponseView(req.pager.next_page(a["cursor"], a["limit"]))
        board = _board(req, a["board_id"])
        return ItemsResponseView(req.pager.by_column_values(board, a.get("columns") or [], a["limit"]))

    def gql_complexity(self, a: Any, ctx: Any) -> dict[str, int]:
        return ctx.state.complexity

    def gql_webhooks(self, a: dict[str, Any], ctx: Any) -> list[dict[str, Any]]:
        req = ctx.state
        hooks = [w for w in req.store.webhooks.values() if w.board_id == str(a["board_id"])]
        if a.get("app_webhooks_only"):
            hooks = [w for w in hooks if w.token_kind == "app"]
        return [webhook_dict(w) for w in hooks]

    def gql_me(self, a: Any, ctx: Any) -> dict[str, Any]:
        req = ctx.state
        return {"id": req.user_id, "name": f"User {req.user_id}", "email": f"user{req.user_id}@sandbox.test",
                "enabled": True, "is_admin": True, "account": {"id": req.account_id, "name": "Sandbox account"}}


class MutationRoot:
    TYPENAME = "Mutation"

    def gql_create_item(self, a: dict[str, Any], ctx: Any) -> ItemView:
        req = ctx.state
        board = _board(req, a["board_id"])
        values = _json_arg(a.get("column_values"), "column_values") or {}
        it = req.sb._create_item(board, a["item_name"], a.get("group_id"), values, user_id=req.user_id,
                                 create_labels=bool(a.get("create_labels_if_missing")), via_api=True)
        return ItemView(it)

    def gql_change_multiple_column_values(self, a: dict[str, Any], ctx: Any) -> ItemView:
        req = ctx.state
        board = _board(req, a["board_id"])
        it = _item(req, a.get("item_id"))
        values = _json_arg(a["column_values"], "column_values")
        if not isinstance(values, dict):
            raise MondayError("column_values must be a JSON object", "JsonParseException",
                              error_data={"argument": "column_values"})
        req.sb._change_values(board, it, values, user_id=req.user_id,
                              create_labels=bool(a.get("create_labels_if_missing")), via_api=True)
        return ItemView(it)

    def gql_change_column_value(self, a: dict[str, Any], ctx: Any) -> ItemView:
        req = ctx.state
        board = _board(req, a["board_id"])
        it = _item(req, a.get("item_id"))
        value = _json_arg(a["value"], "value")
        req.sb._change_values(board, it, {a["column_id"]: value}, user_id=req.user_id,
                              create_labels=bool(a.get("create_labels_if_missing")), via_api=True)
        return ItemView(it)

    def gql_change_simple_column_value(self, a: dict[str, Any], ctx: Any) -> ItemView:
        req = ctx.state
        board = _board(req, a["board_id"])
        it = _item(req, a.get("item_id"))
        req.sb._change_values(board, it, {a["column_id"]: a.get("value") or ""}, user_id=req.user_id,
                              create_labels=bool(a.get("create_labels_if_missing")), via_api=True, simple=True)
        return ItemView(it)

    def gql_create_update(self, a: dict[str, Any], ctx: Any) -> UpdateView:
        req = ctx.state
        it = _item(req, a.get("item_id"))
        return UpdateView(req.sb._create_update(it, a["body"], user_id=req.user_id, via_api=True))

    def gql_archive_item(self, a: dict[str, Any], ctx: Any) -> ItemView:
        req = ctx.state
        it = _item(req, a.get("item_id"))
        req.sb._set_state(it, "archived", user_id=req.user_id, via_api=True)
        return ItemView(it)

    def gql_delete_item(self, a: dict[str, Any], ctx: Any) -> ItemView:
        req = ctx.state
        it = _item(req, a.get("item_id"))
        req.sb._set_state(it, "deleted", user_id=req.user_id, via_api=True)
        return ItemView(it)

    def gql_move_item_to_group(self, a: dict[str, Any], ctx: Any) -> ItemView:
        req = ctx.state
        it = _item(req, a.get("item_id"))
        req.sb._move_item(it, a["group_id"], user_id=req.user_id, via_api=True)
        return ItemView(it)

    def gql_create_webhook(self, a: dict[str, Any], ctx: Any) -> dict[str, Any]:
        req = ctx.state
        board = _board(req, a["board_id"])
        config = _json_arg(a.get("config"), "config")
        w = req.sb._create_webhook(board, a["url"], a["event"], config, req)
        return webhook_dict(w)

    def gql_delete_webhook(self, a: dict[str, Any], ctx: Any) -> dict[str, Any]:
        req = ctx.state
        w = req.store.webhooks.pop(str(a["id"]), None)
        if w is None:
            raise MondayError(f"Webhook {a['id']} not found", "ResourceNotFoundException",
                              error_data={"webhook_id": str(a["id"])})
        return webhook_dict(w)
