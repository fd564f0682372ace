"""The monday.com sandbox's store: boards, groups, columns, items (with their column values), updates, webhooks
and the per-board lookup index behind ``items_page_by_column_values``.

Ids: boards and items are numeric strings (like monday's), groups are slugs (the default group is ``topics``).
Items keep creation order on their board; ``items_page`` answers them in that order (UNCONFIRMED: monday's
default order is the board's position order).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sandboxes.monday.columns import Column, text_of

GROUP_COLORS = ["#579bfc", "#a25ddc", "#00c875", "#fdab3d", "#e2445c", "#037f4c"]


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def iso_seconds(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Group:
    id: str
    title: str
    color: str
    position: str
    archived: bool = False
    deleted: bool = False


@dataclass
class Update:
    id: str
    item_id: str
    body: str
    creator_id: str
    created_at: str


@dataclass
class Item:
    id: str
    board_id: str
    group_id: str
    name: str
    creator_id: str
    created_at: str
    updated_at: str
    state: str = "active"                       # active | archived | deleted
    values: dict[str, Any] = field(default_factory=dict)   # column id -> stored value (see columns.py)
    updates: list[Update] = field(default_factory=list)


@dataclass
class Board:
    id: str
    name: str
    columns: dict[str, Column]
    groups: dict[str, Group]
    created_at: str
    updated_at: str
    item_ids: list[str] = field(default_factory=list)
    state: str = "active"
    board_kind: str = "public"
    workspace_id: str = "1"
    # column id -> text -> item ids (built on first lookup, kept up to date on writes)
    index: dict[str, dict[str, set[str]]] = field(default_factory=dict)


@dataclass
class Webhook:
    id: str
    board_id: str
    url: str
    event: str
    config: dict[str, Any] | None
    token_kind: str          # "personal" | "app": app webhooks carry a JWT
    account_id: str
    user_id: str


class Store:
    """All boards and items of one account, with id counters."""

    def __init__(self) -> None:
        self.boards: dict[str, Board] = {}
        self.items: dict[str, Item] = {}
        self.webhooks: dict[str, Webhook] = {}
        self._board_ids = itertools.count(1_800_000_001)
        self._item_ids = itertools.count(1_900_000_001)
        self._update_ids = itertools.count(3_100_000_001)
        self._webhook_ids = itertools.count(400_000_001)
        self._group_n = itertools.count(1)

    def next_board_id(self) -> str:
        return str(next(self._board_ids))

    def next_item_id(self) -> str:
        return str(next(self._item_ids))

    def next_update_id(self) -> str:
        return str(next(self._update_ids))

    def next_webhook_id(self) -> str:
        return str(next(self._webhook_ids))

    def new_group_id(self, board: Board, title: str) -> str:
        slug = "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")[:20] or "group"
        gid = f"{slug}_{next(self._group_n)}"
        while gid in board.groups:
            gid = f"{slug}_{next(self._group_n)}"
        return gid

    def item_name(self, item_id: str) -> str | None:
        it = self.items.get(item_id)
        return it.name if it is not None else None

    def text(self, board: Board, item: Item, col: Column) -> str:
        return text_of(col, item.values.get(col.id), self.item_name)

    # ---------------------------------------------------------------------------------------------------
    # lookup index (items_page_by_column_values)
    # ---------------------------------------------------------------------------------------------------
    def lookup_key(self, board: Board, item: Item, column_id: str) -> str:
        if column_id == "name":
            return item.name
        col = board.columns[column_id]
        return self.text(board, item, col)

    def column_index(self, board: Board, column_id: str) -> dict[str, set[str]]:
        idx = board.index.get(column_id)
        if idx is None:
            idx = {}
            for iid in board.item_ids:
                it = self.items[iid]
                if it.state != "active":
                    continue
                idx.setdefault(self.lookup_key(board, it, column_id), set()).add(iid)
            board.index[column_id] = idx
        return idx

    def unindex(self, board: Board, item: Item, column_ids: Any = None) -> dict[str, str]:
        """Take an item out of the built indexes (``column_ids``: only those); returns the keys it had."""
        old = {}
        for cid, idx in board.index.items():
            if column_ids is not None and cid not in column_ids:
                continue
            key = self.lookup_key(board, item, cid)
            old[cid] = key
            s = idx.get(key)
            if s is not None:
                s.discard(item.id)
                if not s:
                    del idx[key]
        return old

    def reindex(self, board: Board, item: Item, column_ids: Any = None) -> None:
        if item.state != "active":
            return
        for cid, idx in board.index.items():
            if column_ids is not None and cid not in column_ids:
                continue
            idx.setdefault(self.lookup_key(board, item, cid), set()).add(item.id)

    def relation_columns(self) -> list[tuple[Board, Column]]:
        return [(b, c) for b in self.boards.values() for c in b.columns.values() if c.type == "board_relation"]
