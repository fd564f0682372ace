"""Models of the parts of monday's answers the product relies on: boards (columns, groups) and flat items."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from connector_pipelines.systems.monday.codecs import CODECS, Codec, codec_for, parse_settings


class Column(BaseModel):
    """A board column: ``id``, ``title``, ``type`` (a ColumnType name) and its parsed ``settings``."""

    model_config = ConfigDict(frozen=True)

    id: str
    title: str
    type: str
    settings: dict[str, Any] = Field(default_factory=dict)
    archived: bool = False

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Column:
        settings = data.get("settings")
        parsed = parse_settings(settings) if settings not in (None, "", {}) else parse_settings(data.get("settings_str"))
        return cls(id=str(data["id"]), title=str(data.get("title") or data["id"]), type=str(data.get("type")),
                   settings=parsed, archived=bool(data.get("archived") or False))

    @property
    def codec(self) -> Codec:
        """This column's codec (raises ``UnsupportedColumnType`` for a type with none)."""
        return codec_for(self.type, self.settings)

    @property
    def has_codec(self) -> bool:
        return self.type in CODECS


class Group(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    title: str


class Board(BaseModel):
    """A board as ``MondayClient.board`` reads it."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    columns: dict[str, Column]
    groups: list[Group] = Field(default_factory=list)
    url: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Board:
        columns = [Column.from_api(c) for c in data.get("columns") or [] if isinstance(c, Mapping)]
        groups = [Group(id=str(g["id"]), title=str(g.get("title") or g["id"]))
                  for g in data.get("groups") or [] if isinstance(g, Mapping)]
        return cls(id=str(data["id"]), name=str(data.get("name") or ""), columns={c.id: c for c in columns},
                   groups=groups, url=data.get("url"))

    def column(self, column_id: str) -> Column:
        try:
            return self.columns[column_id]
        except KeyError:
            raise KeyError(f"board {self.id} has no column {column_id!r} (it has "
                           f"{', '.join(sorted(self.columns))})") from None

    def group_id(self, title_or_id: str) -> str | None:
        """A group's id by id or title (None when the board has no such group)."""
        for g in self.groups:
            if title_or_id in (g.id, g.title):
                return g.id
        return None


def flat_item(item: Mapping[str, Any], board: Board | None = None) -> dict[str, Any]:
    """``{"id", "name", "group_id", "columns": {col_id: decoded}, "linked_item_ids": {col_id: [ids]}}`` from an
    item as read (``column_values: [{id, type, text, value, linked_item_ids?}]``). The board, when known, gives
    the columns' settings (status indexes, dropdown ids); a column type with no codec gives its ``text``."""
    columns: dict[str, Any] = {}
    linked: dict[str, list[str]] = {}
    for cv in item.get("column_values") or []:
        if not isinstance(cv, Mapping) or "id" not in cv:
            continue
        cid = str(cv["id"])
        column = board.columns.get(cid) if board is not None else None
        ctype = str(cv.get("type") or (column.type if column else ""))
        if cv.get("linked_item_ids") is not None or ctype == "board_relation":
            linked[cid] = [str(i) for i in cv.get("linked_item_ids") or []]
        cls = CODECS.get(ctype)
        if cls is None:
            text = cv.get("text")
            columns[cid] = text if isinstance(text, str) and text != "" else None
        else:
            columns[cid] = cls(column.settings if column else None).decode_column(cv)
    group = item.get("group")
    group_id = group.get("id") if isinstance(group, Mapping) else item.get("group_id")
    return {"id": str(item["id"]), "name": item.get("name"), "group_id": str(group_id) if group_id else None,
            "columns": columns, "linked_item_ids": linked}


__all__ = ["Board", "Column", "Group", "flat_item"]
