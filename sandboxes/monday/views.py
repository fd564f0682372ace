"""The SDL's object types over the store (executor.py resolves ``gql_<field>`` methods, else attributes).

Emulated: Query.boards / items / items_page_by_column_values / next_items_page / complexity / webhooks / me;
Board (id name state board_kind workspace_id created_at updated_at url items_count columns groups top_group
items_page); Group (id title color position archived deleted items_page); Column (id title type settings
settings_str archived description); Item (id name state board group created_at updated_at creator_id url
relative_link column_values updates subitems parent_item); the ColumnValue implementations of columns.py (id
type text value column, plus their typed fields: StatusValue index/label/is_done/label_style/update_id,
DateValue date/time, LinkValue url/url_text, NumbersValue number, DropdownValue values, BoardRelationValue
linked_item_ids/linked_items/display_value); Update (id body text_body item_id creator_id created_at); Webhook.
Anything else of the SDL validates and reads as null.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sandboxes.monday.columns import Column, api_value, linked_ids
from sandboxes.monday.errors import MondayError
from sandboxes.monday.model import Board, Group, Item, Update

HTML_TAG = re.compile(r"<[^>]+>")


def _board(req: Any, board_id: Any) -> Board:
    board = req.store.boards.get(str(board_id))
    if board is None or board.state == "deleted":
        raise MondayError(f"Board {board_id} not found", "InvalidBoardIdException",
                          error_data={"board_id": str(board_id)})
    return board


def _item(req: Any, item_id: Any) -> Item:
    it = req.store.items.get(str(item_id)) if item_id is not None else None
    if it is None or it.state == "deleted":
        raise MondayError(f"Item {item_id} not found", "InvalidItemIdException",
                          error_data={"item_id": None if item_id is None else str(item_id)})
    return it


class ItemsResponseView:
    TYPENAME = "ItemsResponse"
    __slots__ = ("cursor", "items")

    def __init__(self, page: dict[str, Any]) -> None:
        self.cursor = page["cursor"]
        self.items = [ItemView(it) for it in page["items"]]


class BoardView:
    TYPENAME = "Board"
    __slots__ = ("b",)

    def __init__(self, board: Board) -> None:
        self.b = board

    def gql_id(self, a: Any, ctx: Any) -> str:
        return self.b.id

    def gql_name(self, a: Any, ctx: Any) -> str:
        return self.b.name

    def gql_state(self, a: Any, ctx: Any) -> str:
        return self.b.state

    def gql_board_kind(self, a: Any, ctx: Any) -> str:
        return self.b.board_kind

    def gql_workspace_id(self, a: Any, ctx: Any) -> str:
        return self.b.workspace_id

    def gql_created_at(self, a: Any, ctx: Any) -> str:
        return self.b.created_at

    def gql_updated_at(self, a: Any, ctx: Any) -> str:
        return self.b.updated_at

    def gql_url(self, a: Any, ctx: Any) -> str:
        return f"{ctx.state.sb.web_url}/boards/{self.b.id}"

    def gql_permissions(self, a: Any, ctx: Any) -> str:
        return "everyone"

    def gql_items_count(self, a: Any, ctx: Any) -> int:
        items = ctx.state.store.items
        return sum(1 for i in self.b.item_ids if items[i].state == "active")

    def gql_columns(self, a: dict[str, Any], ctx: Any) -> list[Column]:
        cols = [c for c in self.b.columns.values() if not c.archived]
        if a.get("ids"):
            ids = set(a["ids"])
            cols = [c for c in cols if c.id in ids]
        if a.get("types"):
            types = set(a["types"])
            cols = [c for c in cols if c.type in types]
        return cols

    def gql_groups(self, a: dict[str, Any], ctx: Any) -> list[GroupView]:
        groups = [g for g in self.b.groups.values() if not g.deleted]
        if a.get("ids"):
            ids = set(a["ids"])
            groups = [g for g in groups if g.id in ids]
        return [GroupView(self.b, g) for g in groups]

    def gql_top_group(self, a: Any, ctx: Any) -> GroupView:
        g = next(g for g in self.b.groups.values() if not g.deleted)
        return GroupView(self.b, g)

    def gql_items_page(self, a: dict[str, Any], ctx: Any) -> ItemsResponseView:
        req = ctx.state
        if a.get("cursor"):
            return ItemsResponseView(req.pager.next_page(a["cursor"], a["limit"]))
        return ItemsResponseView(req.pager.items_page(self.b, a["limit"], a.get("query_params")))


class GroupView:
    TYPENAME = "Group"
    __slots__ = ("b", "g")

    def __init__(self, board: Board, group: Group) -> None:
        self.b = board
        self.g = group

    def gql_id(self, a: Any, ctx: Any) -> str:
        return self.g.id

    def gql_title(self, a: Any, ctx: Any) -> str:
        return self.g.title

    def gql_color(self, a: Any, ctx: Any) -> str:
        return self.g.color

    def gql_position(self, a: Any, ctx: Any) -> str:
        return self.g.position

    def gql_archived(self, a: Any, ctx: Any) -> bool:
        return self.g.archived

    def gql_deleted(self, a: Any, ctx: Any) -> bool:
        return self.g.deleted

    def gql_items_page(self, a: dict[str, Any], ctx: Any) -> ItemsResponseView:
        req = ctx.state
        if a.get("cursor"):
            return ItemsResponseView(req.pager.next_page(a["cursor"], a["limit"]))
        return ItemsResponseView(req.pager.items_page(self.b, a["limit"], a.get("query_params"), self.g.id))


class ItemView:
    TYPENAME = "Item"
    __slots__ = ("it",)

    def __init__(self, item: Item) -> None:
        self.it = item

    def gql_id(self, a: Any, ctx: Any) -> str:
        return self.it.id

    def gql_name(self, a: Any, ctx: Any) -> str:
        return self.it.name

    def gql_state(self, a: Any, ctx: Any) -> str:
        return self.it.state

    def gql_created_at(self, a: Any, ctx: Any) -> str:
        return self.it.created_at

    def gql_updated_at(self, a: Any, ctx: Any) -> str:
        return self.it.updated_at

    def gql_creator_id(self, a: Any, ctx: Any) -> str:
        return self.it.creator_id

    def gql_email(self, a: Any, ctx: Any) -> str:
        return f"pulse-{self.it.id}@sandbox.monday.com"

    def gql_url(self, a: Any, ctx: Any) -> str:
        return f"{ctx.state.sb.web_url}/boards/{self.it.board_id}/pulses/{self.it.id}"

    def gql_relative_link(self, a: Any, ctx: Any) -> str:
        return f"/boards/{self.it.board_id}/pulses/{self.it.id}"

    def gql_board(self, a: Any, ctx: Any) -> BoardView:
        return BoardView(ctx.state.store.boards[self.it.board_id])

    def gql_group(self, a: Any, ctx: Any) -> GroupView:
        b = ctx.state.store.boards[self.it.board_id]
        return GroupView(b, b.groups[self.it.group_id])

    def gql_subitems(self, a: Any, ctx: Any) -> list[Any]:
        return []

    def gql_parent_item(self, a: Any, ctx: Any) -> None:
        return None

    def gql_subscribers(self, a: Any, ctx: Any) -> list[Any]:
        return []

    def gql_updates(self, a: dict[str, Any], ctx: Any) -> list[UpdateView]:
        ups = list(reversed(self.it.updates))      # newest first
        if a.get("ids"):
            ids = {str(i) for i in a["ids"]}
            ups = [u for u in ups if u.id in ids]
        limit = a.get("limit") or 25
        page = max(1, a.get("page") or 1)
        return [UpdateView(u) for u in ups[(page - 1) * limit: page * limit]]

    def gql_column_values(self, a: dict[str, Any], ctx: Any) -> list[ColumnValueView]:
        board = ctx.state.store.boards[self.it.board_id]
        cols = [c for c in board.columns.values() if not c.archived and c.type != "name"]
        if a.get("ids"):
            ids = set(a["ids"])
            cols = [c for c in cols if c.id in ids]
        if a.get("types"):
            types = set(a["types"])
            cols = [c for c in cols if c.type in types]
        return [VIEW_CLASSES[c.type](self.it, c) for c in cols]


class UpdateView:
    TYPENAME = "Update"
    __slots__ = ("u",)

    def __init__(self, u: Update) -> None:
        self.u = u

    def gql_id(self, a: Any, ctx: Any) -> str:
        return self.u.id

    def gql_body(self, a: Any, ctx: Any) -> str:
        return self.u.body

    def gql_text_body(self, a: Any, ctx: Any) -> str:
        return HTML_TAG.sub("", self.u.body)

    def gql_item_id(self, a: Any, ctx: Any) -> str:
        return self.u.item_id

    def gql_creator_id(self, a: Any, ctx: Any) -> str:
        return self.u.creator_id

    def gql_created_at(self, a: Any, ctx: Any) -> str:
        return self.u.created_at

    def gql_updated_at(self, a: Any, ctx: Any) -> str:
        return self.u.created_at

    def gql_edited_at(self, a: Any, ctx: Any) -> str:
        return self.u.created_at

    def gql_item(self, a: Any, ctx: Any) -> ItemView | None:
        it = ctx.state.store.items.get(self.u.item_id)
        return ItemView(it) if it is not None else None


class ColumnValueView:
    TYPENAME = "ColumnValue"
    __slots__ = ("col", "it")

    def __init__(self, item: Item, col: Column) -> None:
        self.it = item
        self.col = col

    @property
    def stored(self) -> Any:
        return self.it.values.get(self.col.id)

    def gql_id(self, a: Any, ctx: Any) -> str:
        return self.col.id

    def gql_type(self, a: Any, ctx: Any) -> str:
        return self.col.type

    def gql_is_leaf(self, a: Any, ctx: Any) -> bool:
        return True

    def gql_column(self, a: Any, ctx: Any) -> Column:
        return self.col

    def gql_text(self, a: Any, ctx: Any) -> str:
        store = ctx.state.store
        return store.text(store.boards[self.it.board_id], self.it, self.col)

    def gql_value(self, a: Any, ctx: Any) -> str | None:
        return api_value(self.col, self.stored)

    def gql_updated_at(self, a: Any, ctx: Any) -> str | None:
        s = self.stored
        return s.get("changed_at") if isinstance(s, dict) else None


class StatusValueView(ColumnValueView):
    TYPENAME = "StatusValue"
    __slots__ = ()

    def gql_index(self, a: Any, ctx: Any) -> int | None:
        s = self.stored
        return s["index"] if s else None

    def gql_label(self, a: Any, ctx: Any) -> str | None:
        s = self.stored
        return self.col.status_label(s["index"]) if s else None

    def gql_is_done(self, a: Any, ctx: Any) -> bool:
        s = self.stored
        return bool(s) and s["index"] in self.col.settings.get("done_colors", [])

    def gql_label_style(self, a: Any, ctx: Any) -> dict[str, str] | None:
        s = self.stored
        if not s:
            return None
        style = Column._palette(s["index"])
        return {"color": style["color"], "border": style["border"]}

    def gql_update_id(self, a: Any, ctx: Any) -> None:
        return None


class TextValueView(ColumnValueView):
    TYPENAME = "TextValue"
    __slots__ = ()


class LongTextValueView(ColumnValueView):
    TYPENAME = "LongTextValue"
    __slots__ = ()


class NumbersValueView(ColumnValueView):
    TYPENAME = "NumbersValue"
    __slots__ = ()

    def gql_number(self, a: Any, ctx: Any) -> float | None:
        s = self.stored
        return float(s) if s is not None else None

    def gql_symbol(self, a: Any, ctx: Any) -> str:
        return self.col.settings.get("unit", {}).get("symbol", "") if isinstance(self.col.settings.get("unit"),
                                                                                 dict) else ""


class DateValueView(ColumnValueView):
    TYPENAME = "DateValue"
    __slots__ = ()

    def gql_date(self, a: Any, ctx: Any) -> str | None:
        s = self.stored
        return s["date"] if s else None

    def gql_time(self, a: Any, ctx: Any) -> str | None:
        s = self.stored
        return s.get("time") if s else None


class LinkValueView(ColumnValueView):
    TYPENAME = "LinkValue"
    __slots__ = ()

    def gql_url(self, a: Any, ctx: Any) -> str | None:
        s = self.stored
        return s["url"] if s else None

    def gql_url_text(self, a: Any, ctx: Any) -> str | None:
        s = self.stored
        return s.get("text") if s else None


class DropdownValueView(ColumnValueView):
    TYPENAME = "DropdownValue"
    __slots__ = ()

    def gql_values(self, a: Any, ctx: Any) -> list[dict[str, Any]]:
        s = self.stored
        if not s:
            return []
        names = self.col.dropdown_names()
        return [{"id": i, "label": names.get(i, "")} for i in s["ids"]]


class BoardRelationValueView(ColumnValueView):
    TYPENAME = "BoardRelationValue"
    __slots__ = ()

    def gql_linked_item_ids(self, a: Any, ctx: Any) -> list[str]:
        return linked_ids(self.stored)

    def gql_linked_items(self, a: Any, ctx: Any) -> list[ItemView]:
        items = ctx.state.store.items
        return [ItemView(items[i]) for i in linked_ids(self.stored) if i in items and items[i].state != "deleted"]

    def gql_display_value(self, a: Any, ctx: Any) -> str:
        return self.gql_text(a, ctx)


VIEW_CLASSES: dict[str, type[ColumnValueView]] = {
    "status": StatusValueView, "text": TextValueView, "numbers": NumbersValueView, "date": DateValueView,
    "link": LinkValueView, "dropdown": DropdownValueView, "board_relation": BoardRelationValueView,
    "long_text": LongTextValueView,
}


def webhook_dict(w: Any) -> dict[str, Any]:
    return {"id": w.id, "board_id": w.board_id, "event": w.event,
            "config": json.dumps(w.config) if w.config is not None else None}
