"""Column types of the monday.com sandbox: settings, write shapes, stored values, ``text`` and webhook values.

Write shapes (API-FACTS §6.3; developer.monday.com/api-reference/docs/change-column-values):
- ``column_values`` of create_item / change_multiple_column_values is a JSON object keyed by column id, each value
  the column's JSON shape or (for the simple columns) a plain string;
- ``change_simple_column_value`` takes the plain string form; ``change_column_value`` one JSON shape.

| type           | JSON shape                                  | plain string          | stored (``value``)                       |
|----------------|---------------------------------------------|-----------------------|------------------------------------------|
| status         | {"label": "Done"} or {"index": 1}           | "Done"                | {"index", "post_id", "changed_at"}       |
| text           | "abc"                                       | "abc"                 | "abc"                                    |
| numbers        | "12.5" (a JSON number too, UNCONFIRMED)     | "12.5"                | "12.5"                                   |
| date           | {"date": "YYYY-MM-DD", "time"?: "HH:MM:SS"} | "YYYY-MM-DD[ HH:MM:SS]"| {"date", "time"?, "changed_at"}         |
| link           | {"url", "text"}                             | "url text"            | {"url", "text", "changed_at"}            |
| dropdown       | {"labels": [...]} or {"ids": [...]}         | "A,B"                 | {"ids", "changed_at"}                    |
| board_relation | {"item_ids": [...]} (UNCONFIRMED shape)     | not accepted          | {"linkedPulseIds": [{"linkedPulseId"}]}  |
| long_text      | {"text": "..."}                             | "..."                 | {"text", "changed_at"}                   |

``null``, ``{}`` and ``""`` clear a value. A value the column cannot take raises ColumnValueException
(``error_data.column_type``). Confirmed: status by label or index and the unknown-label error, dropdown ids or
labels, date ``{"date","time"}``. UNCONFIRMED: the numbers/link/long_text/board_relation details, ``text`` of a
link ("text - url"), of a date with a time ("YYYY-MM-DD HH:MM:SS") and of a board_relation (the linked items'
names), the stored ``changed_at``. From API 2025-04 a board_relation's ``value`` reads as null (changelog): read
``BoardRelationValue.linked_item_ids``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, time
from typing import Any

from sandboxes.monday.errors import column_value_error

SUPPORTED = ("name", "status", "text", "numbers", "date", "link", "dropdown", "board_relation", "long_text")

# the SDL object type implementing ColumnValue for each column type
TYPENAMES = {"status": "StatusValue", "text": "TextValue", "numbers": "NumbersValue", "date": "DateValue",
             "link": "LinkValue", "dropdown": "DropdownValue", "board_relation": "BoardRelationValue",
             "long_text": "LongTextValue"}

# ColumnValueException error_data.column_type: the changelog's example for a status label is "color" (the
# status column's internal name); the others are the public type names (UNCONFIRMED).
ERROR_TYPES = {"status": "color"}

# monday's default status palette (index -> color, border, var_name); UNCONFIRMED beyond index 0/1/2.
PALETTE = [("#fdab3d", "#e99729", "orange"), ("#00c875", "#00b461", "green-shadow"),
           ("#df2f4a", "#ce3048", "red-shadow"), ("#579bfc", "#4387e8", "bright-blue"),
           ("#a25ddc", "#9238af", "purple"), ("#c4c4c4", "#b0b0b0", "grey"), ("#ff642e", "#e8551f", "dark-orange"),
           ("#037f4c", "#006e3d", "grass_green"), ("#0086c0", "#3a7ac4", "dark-blue"), ("#ffcb00", "#c0ab1b", "yellow")]

NUMBER_RE = re.compile(r"^-?\d+(\.\d+)?$")


@dataclass
class Column:
    id: str
    title: str
    type: str
    settings: dict[str, Any] = field(default_factory=dict)
    archived: bool = False
    description: str | None = None

    def __post_init__(self) -> None:
        if self.type not in SUPPORTED:
            raise ValueError(f"column type {self.type!r} is not emulated (supported: {', '.join(SUPPORTED)})")
        s = self.settings
        if self.type == "status":
            labels = {str(k): v for k, v in (s.get("labels") or {}).items()}
            s["labels"] = labels
            s.setdefault("done_colors", [1] if "1" in labels else [])
            s["labels_colors"] = {k: self._palette(int(k)) for k in labels}
        elif self.type == "dropdown":
            raw = s.get("labels") or []
            if isinstance(raw, dict):
                raw = [{"id": int(k), "name": v} for k, v in raw.items()]
            s["labels"] = [x if isinstance(x, dict) else {"id": i, "name": x} for i, x in enumerate(raw, 1)]
        elif self.type == "board_relation":
            s["boardIds"] = [int(b) for b in s.get("boardIds", [])]
            s.setdefault("allowMultipleItems", True)
        self.settings_str = json.dumps(s)

    @staticmethod
    def _palette(index: int) -> dict[str, str]:
        color, border, var = PALETTE[index % len(PALETTE)]
        return {"color": color, "border": border, "var_name": var}

    def refresh_settings(self) -> None:
        if self.type == "status":
            self.settings["labels_colors"] = {k: self._palette(int(k)) for k in self.settings["labels"]}
        self.settings_str = json.dumps(self.settings)

    @property
    def error_type(self) -> str:
        return ERROR_TYPES.get(self.type, self.type)

    # ---------------------------------------------------------------------------------------------------
    # status / dropdown labels
    # ---------------------------------------------------------------------------------------------------
    def status_label(self, index: int) -> str | None:
        return self.settings["labels"].get(str(index))

    def status_index(self, label: str, create: bool) -> int:
        for k, v in self.settings["labels"].items():
            if v == label:
                return int(k)
        if not create:
            raise column_value_error(self.error_type, "invalid value - label does not exist in column")
        index = max((int(k) for k in self.settings["labels"]), default=-1) + 1
        self.settings["labels"][str(index)] = label
        self.refresh_settings()
        return index

    def dropdown_names(self) -> dict[int, str]:
        return {int(x["id"]): x["name"] for x in self.settings["labels"]}

    def dropdown_id(self, label: str, create: bool) -> int:
        for x in self.settings["labels"]:
            if x["name"] == label:
                return int(x["id"])
        if not create:
            raise column_value_error(self.error_type, "invalid value - dropdown label does not exist in column")
        new_id = max((int(x["id"]) for x in self.settings["labels"]), default=0) + 1
        self.settings["labels"].append({"id": new_id, "name": label})
        self.refresh_settings()
        return new_id


def _bad(col: Column, what: str = "invalid value"):
    return column_value_error(col.error_type, what)


def _parse_date(col: Column, d: Any, t: Any) -> dict[str, Any]:
    if not isinstance(d, str):
        raise _bad(col, "invalid value - date must be a string in YYYY-MM-DD format")
    try:
        date.fromisoformat(d)
        if len(d) != 10:
            raise ValueError(d)
        if t not in (None, ""):
            if not isinstance(t, str):
                raise ValueError(t)
            time.fromisoformat(t)
    except ValueError:
        raise _bad(col, "invalid value - date must be in YYYY-MM-DD format and time in HH:MM:SS") from None
    out: dict[str, Any] = {"date": d}
    if t:
        out["time"] = t if len(t) == 8 else f"{t}:00"
    return out


def parse_write(col: Column, raw: Any, *, simple: bool, create_labels: bool,
                item_exists: Any = None) -> dict[str, Any] | str | None:
    """A written value -> the stored value (None: cleared). ``simple``: the plain-string form only.
    ``item_exists(item_id, board_ids)`` checks board_relation targets."""
    if raw is None or raw == "" or raw == {}:
        return None
    t = col.type
    if simple and not isinstance(raw, str):
        raise _bad(col)
    if t in ("text", "name"):
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise _bad(col, "invalid value - text column expects a string")
        return str(raw)
    if t == "numbers":
        if isinstance(raw, bool):
            raise _bad(col)
        s = str(raw).strip() if isinstance(raw, (str, int, float)) else None
        if s is None or not NUMBER_RE.match(s):
            raise _bad(col, "invalid value - numbers column expects a number as a string")
        return s
    if t == "status":
        if isinstance(raw, str):
            return {"index": col.status_index(raw, create_labels)}
        if isinstance(raw, dict) and "label" in raw and isinstance(raw["label"], str):
            return {"index": col.status_index(raw["label"], create_labels)}
        if isinstance(raw, dict) and "index" in raw:
            idx = raw["index"]
            try:
                idx = int(idx)
            except (TypeError, ValueError):
                raise _bad(col) from None
            if col.status_label(idx) is None:
                raise _bad(col, "invalid value - index does not exist in column")
            return {"index": idx}
        raise _bad(col)
    if t == "date":
        if isinstance(raw, str):
            parts = raw.strip().split(" ", 1)
            return _parse_date(col, parts[0], parts[1] if len(parts) > 1 else None)
        if isinstance(raw, dict) and "date" in raw:
            return _parse_date(col, raw["date"], raw.get("time"))
        raise _bad(col)
    if t == "link":
        if isinstance(raw, str):
            url, _, text = raw.strip().partition(" ")
            return {"url": url, "text": text or url}
        if isinstance(raw, dict) and isinstance(raw.get("url"), str):
            text = raw.get("text")
            if text is not None and not isinstance(text, str):
                raise _bad(col)
            return {"url": raw["url"], "text": text if text is not None else raw["url"]}
        raise _bad(col)
    if t == "long_text":
        if isinstance(raw, str):
            return {"text": raw}
        if isinstance(raw, dict) and isinstance(raw.get("text"), str):
            return {"text": raw["text"]}
        raise _bad(col)
    if t == "dropdown":
        names = col.dropdown_names()
        if isinstance(raw, str):
            labels: list[Any] = [x.strip() for x in raw.split(",") if x.strip()]
            return {"ids": [col.dropdown_id(x, create_labels) for x in labels]}
        if isinstance(raw, dict) and isinstance(raw.get("labels"), list):
            if not all(isinstance(x, str) for x in raw["labels"]):
                raise _bad(col)
            return {"ids": [col.dropdown_id(x, create_labels) for x in raw["labels"]]}
        if isinstance(raw, dict) and isinstance(raw.get("ids"), list):
            ids = []
            for x in raw["ids"]:
                try:
                    i = int(x)
                except (TypeError, ValueError):
                    raise _bad(col) from None
                if i not in names:
                    raise _bad(col, "invalid value - dropdown id does not exist in column")
                ids.append(i)
            return {"ids": ids}
        raise _bad(col)
    if t == "board_relation":
        if isinstance(raw, dict) and isinstance(raw.get("item_ids"), list):
            ids = raw["item_ids"]
        elif isinstance(raw, dict) and isinstance(raw.get("linkedPulseIds"), list):
            ids = [x.get("linkedPulseId") if isinstance(x, dict) else None for x in raw["linkedPulseIds"]]
        else:
            raise _bad(col, "invalid value - board relation expects {\"item_ids\": [...]}")
        out = []
        for x in ids:
            try:
                i = int(x)
            except (TypeError, ValueError):
                raise _bad(col) from None
            if item_exists is not None and not item_exists(str(i), col.settings.get("boardIds") or None):
                raise _bad(col, f"invalid value - item {i} cannot be linked")
            out.append(i)
        if not col.settings.get("allowMultipleItems", True) and len(out) > 1:
            raise _bad(col, "invalid value - this column links one item only")
        return {"linkedPulseIds": [{"linkedPulseId": i} for i in out]} if out else None
    raise _bad(col)


def linked_ids(stored: Any) -> list[str]:
    if not isinstance(stored, dict):
        return []
    return [str(x["linkedPulseId"]) for x in stored.get("linkedPulseIds", [])]


def text_of(col: Column, stored: Any, item_name: Any = None) -> str:
    """The column value's ``text`` ('' when empty). ``item_name(id)`` names linked items."""
    if stored is None:
        return ""
    t = col.type
    if t in ("text", "numbers"):
        return str(stored)
    if t == "status":
        return col.status_label(stored["index"]) or ""
    if t == "date":
        return f"{stored['date']} {stored['time']}" if stored.get("time") else stored["date"]
    if t == "link":
        return f"{stored['text']} - {stored['url']}" if stored.get("text") else stored["url"]
    if t == "long_text":
        return stored["text"]
    if t == "dropdown":
        names = col.dropdown_names()
        return ", ".join(names.get(i, "") for i in stored["ids"])
    if t == "board_relation":
        return ", ".join(filter(None, (item_name(i) if item_name else i for i in linked_ids(stored))))
    return ""


def api_value(col: Column, stored: Any) -> str | None:
    """``ColumnValue.value``: the stored JSON, encoded as a string (null for board_relation since 2025-04)."""
    if stored is None or col.type == "board_relation":
        return None
    return json.dumps(stored)


def webhook_value(col: Column, stored: Any) -> Any:
    """A value as webhook events carry it. Status: ``{"label": {"index", "text", "style", "is_done"},
    "post_id"}`` (support article / monday.com/integrations/webhooks); the others UNCONFIRMED."""
    if stored is None:
        return None
    t = col.type
    if t == "status":
        idx = stored["index"]
        style = Column._palette(idx)
        return {"label": {"index": idx, "text": col.status_label(idx) or "",
                          "style": {"color": style["color"], "border": style["border"],
                                    "var_name": style["var_name"]},
                          "is_done": idx in col.settings.get("done_colors", [])}, "post_id": None}
    if t == "text":
        return {"value": stored}
    if t == "numbers":
        return {"value": float(stored) if "." in stored else int(stored), "unit": None}
    if t == "date":
        return {"date": stored["date"], "icon": None, "time": stored.get("time")}
    if t == "dropdown":
        names = col.dropdown_names()
        return {"chosenValues": [{"id": i, "name": names.get(i, "")} for i in stored["ids"]]}
    return {k: v for k, v in stored.items() if k != "changed_at"}
