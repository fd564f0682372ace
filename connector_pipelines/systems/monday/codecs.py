"""Column-value codecs: a Python value to monday's column-value JSON (writes), and monday's ``{text, value}``
back to a Python value (reads). One codec per column type; ``codec_for(column_type, settings)`` is the registry.

Writes: ``create_item`` / ``change_multiple_column_values`` take ``column_values`` as a JSON-encoded string keyed
by column id (API-FACTS §6.3); ``encode`` gives the per-column part (a dict, or a plain string for text and
numbers); ``None`` clears the column (sent as JSON ``null``; UNCONFIRMED for every type but status/checkbox).
Reads: each item column value comes as ``{"text", "value"}`` where ``value`` is monday's raw JSON (a JSON
string on the wire, or null) and, for board_relation, ``linked_item_ids`` (``value`` is null there since
2025-04, API-FACTS §6.2).

| type | Python | written as | read from |
|---|---|---|---|
| status | label ``str`` (or ``int`` index) | ``{"label": …}`` / ``{"index": n}`` (confirmed) | ``text`` (the label); index via settings |
| text | ``str`` | ``"…"`` | ``text`` |
| numbers | ``Decimal``/``int``/``float``/numeric ``str`` | ``"12.5"`` (a string of a number) | ``value``/``text`` -> ``Decimal`` |
| date | ``date``, ``datetime``, ISO ``str`` | ``{"date": "YYYY-MM-DD"}`` (+ ``"time"`` with ``with_time``) | ``value.date``/``time`` -> ``date``/``datetime`` |
| link | ``str`` url, ``{"url", "text"}``, ``(url, text)`` | ``{"url", "text"}`` | ``value`` -> ``{"url", "text"}`` |
| dropdown | ``list[str]`` labels (or ``int`` ids) | ``{"ids": […]}`` when settings name the labels (confirmed), else ``{"labels": […]}`` (UNCONFIRMED) | ``value.ids`` + settings, else ``text`` split on ", " |
| board_relation | ``list`` of item ids | ``{"item_ids": [int…]}`` (UNCONFIRMED shape) | ``linked_item_ids`` -> ``list[str]`` |
| long_text | ``str`` | ``{"text": …}`` | ``value.text``/``text`` |
| checkbox | ``bool`` | ``{"checked": "true"}``; ``False`` clears (``null``) | ``value.checked`` -> ``bool`` |

Sources: developer.monday.com column-type pages (status, dropdown, date, numbers, link) and the changelog;
[3rd] for long_text and checkbox shapes (monday SDK examples). Values are encoded before any call, so a value
of the wrong kind fails here with ``ColumnCodecError`` naming the column type — never half-way through a batch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from connector_pipelines.systems.monday.errors import MondayError


class ColumnCodecError(MondayError, ValueError):
    """A Python value the column type cannot take, or a column type with no codec."""


class UnsupportedColumnType(ColumnCodecError):
    """No codec for this column type (``codec_for``)."""


@dataclass(frozen=True)
class Raw:
    """A column value already in monday's JSON shape: written as it is, never encoded."""

    value: Any


def raw(value: Any) -> Raw:
    return Raw(value)


def parse_value(value: Any) -> Any:
    """monday's ``value`` field: a JSON string on the wire (or already parsed, or null)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def parse_settings(settings: Any) -> dict[str, Any]:
    """A column's settings: the ``settings`` JSON (2025-10+) or the deprecated ``settings_str`` string."""
    if settings is None or settings == "":
        return {}
    if isinstance(settings, str):
        try:
            settings = json.loads(settings)
        except ValueError:
            return {}
    return dict(settings) if isinstance(settings, Mapping) else {}


def _labels(settings: Mapping[str, Any]) -> dict[int, str]:
    """``{id/index: label}`` from status or dropdown settings, in either of monday's shapes:
    ``{"labels": {"0": "Done"}}`` (status settings_str), ``{"labels": [{"id": 1, "name": "A"}]}`` (dropdown),
    ``{"labels": [{"index": 0, "label": "Done"}]}`` (2025-10 ``settings``; UNCONFIRMED field names)."""
    labels = settings.get("labels")
    out: dict[int, str] = {}
    if isinstance(labels, Mapping):
        for k, v in labels.items():
            name = v.get("label") or v.get("name") if isinstance(v, Mapping) else v
            if str(k).lstrip("-").isdigit() and isinstance(name, str):
                out[int(k)] = name
    elif isinstance(labels, list):
        for i, entry in enumerate(labels):
            if isinstance(entry, Mapping):
                key = entry.get("id", entry.get("index", i))
                name = entry.get("name", entry.get("label"))
                if isinstance(name, str) and str(key).lstrip("-").isdigit():
                    out[int(key)] = name
            elif isinstance(entry, str):
                out[i] = entry
    return out


class Codec:
    """Encode a Python value for one column type, and decode ``{text, value}`` back."""

    column_type: ClassVar[str] = ""

    def __init__(self, settings: Any = None) -> None:
        self.settings = parse_settings(settings)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def _bad(self, value: Any, expected: str) -> ColumnCodecError:
        return ColumnCodecError(f"a {self.column_type} column takes {expected}, not {type(value).__name__} "
                                f"{str(value)[:60]!r}")

    def encode(self, value: Any) -> Any:
        raise NotImplementedError

    def decode(self, text: str | None, value: Any = None, *, linked_item_ids: Iterable[Any] | None = None) -> Any:
        raise NotImplementedError

    def decode_column(self, column_value: Mapping[str, Any]) -> Any:
        """Decode one item column value as read (``{"text", "value", "linked_item_ids"?}``)."""
        return self.decode(column_value.get("text"), column_value.get("value"),
                           linked_item_ids=column_value.get("linked_item_ids"))


def _text_or_none(text: Any) -> str | None:
    return text if isinstance(text, str) and text != "" else None


class StatusCodec(Codec):
    column_type = "status"

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool):
            raise self._bad(value, "a label (str) or an index (int)")
        if isinstance(value, int):
            return {"index": value}
        if isinstance(value, str):
            labels = _labels(self.settings)
            if labels and value not in labels.values():
                raise ColumnCodecError(f"status label {value!r} is not on the column (it has "
                                       f"{', '.join(sorted(labels.values()))})")
            return {"label": value}
        if isinstance(value, Mapping) and ({"label"} <= value.keys() or {"index"} <= value.keys()):
            return dict(value)
        raise self._bad(value, "a label (str) or an index (int)")

    def decode(self, text: str | None, value: Any = None, *, linked_item_ids: Iterable[Any] | None = None) -> Any:
        label = _text_or_none(text)
        if label is not None:
            return label
        parsed = parse_value(value)
        if isinstance(parsed, Mapping):
            if isinstance(parsed.get("label"), str):
                return parsed["label"]
            index = parsed.get("index")
            if index is not None:
                return _labels(self.settings).get(int(index))
        return None

    def index_of(self, label: str) -> int | None:
        """The index of ``label`` in the column's settings (None when the settings do not name it)."""
        for index, name in _labels(self.settings).items():
            if name == label:
                return index
        return None


class TextCodec(Codec):
    column_type = "text"

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (str, int, Decimal)) and not isinstance(value, bool):
            return str(value)
        raise self._bad(value, "a str")

    def decode(self, text: str | None, value: Any = None, *, linked_item_ids: Iterable[Any] | None = None) -> Any:
        if _text_or_none(text) is not None:
            return text
        parsed = parse_value(value)
        return parsed if isinstance(parsed, str) and parsed != "" else None


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _decimal_text(d: Decimal) -> str:
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


class NumbersCodec(Codec):
    column_type = "numbers"

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool):
            raise self._bad(value, "a number")
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            if math.isnan(value) or math.isinf(value):
                raise self._bad(value, "a finite number")
            return _decimal_text(Decimal(repr(value)))
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise self._bad(value, "a finite number")
            return _decimal_text(value)
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            return _decimal_text(Decimal(value.strip()))
        raise self._bad(value, "a number (int, float, Decimal or a numeric str)")

    def decode(self, text: str | None, value: Any = None, *, linked_item_ids: Iterable[Any] | None = None) -> Any:
        parsed = parse_value(value)
        for candidate in (parsed, text):
            if isinstance(candidate, (int, float)) and not isinstance(candidate, bool):
                return Decimal(str(candidate))
            if isinstance(candidate, str) and candidate.strip():
                try:
                    return Decimal(candidate.strip().replace(",", ""))
                except InvalidOperation:
                    continue
        return None


def _as_date(value: str) -> date | datetime:
    text = value.strip()
    if len(text) == 10:
        return date.fromisoformat(text)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


class DateCodec(Codec):
    """``date`` -> ``{"date"}``. A ``datetime`` sends its own calendar date (no time-zone shift) unless the
    codec was made ``with_time``: then it is converted to UTC and sent as ``{"date", "time"}`` (monday keeps
    date-column times in UTC)."""

    column_type = "date"

    def __init__(self, settings: Any = None, *, with_time: bool = False) -> None:
        super().__init__(settings)
        self.with_time = with_time

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = _as_date(value)
            except ValueError:
                raise self._bad(value, "a date, a datetime or an ISO-8601 date string") from None
        if isinstance(value, datetime):
            if self.with_time:
                moment = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
                return {"date": moment.date().isoformat(), "time": moment.time().replace(microsecond=0).isoformat()}
            return {"date": value.date().isoformat()}
        if isinstance(value, date):
            return {"date": value.isoformat()}
        raise self._bad(value, "a date, a datetime or an ISO-8601 date string")

    def decode(self, text: str | None, value: Any = None, *, linked_item_ids: Iterable[Any] | None = None) -> Any:
        parsed = parse_value(value)
        if isinstance(parsed, Mapping) and parsed.get("date"):
            day = date.fromisoformat(str(parsed["date"]))
            if parsed.get("time"):
                return datetime.combine(day, time.fromisoformat(str(parsed["time"])), tzinfo=UTC)
            return day
        if _text_or_none(text):   # "YYYY-MM-DD" or "YYYY-MM-DD HH:MM" (local to the user: the date part only)
            try:
                return date.fromisoformat((text or "")[:10])
            except ValueError:
                return None
        return None


class LinkCodec(Codec):
    column_type = "link"

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            return {"url": value, "text": value}
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
            return {"url": value[0], "text": value[1]}
        if isinstance(value, Mapping) and isinstance(value.get("url"), str):
            return {"url": value["url"], "text": str(value.get("text") or value["url"])}
        raise self._bad(value, "a url (str), (url, text) or {'url', 'text'}")

    def decode(self, text: str | None, value: Any = None, *, linked_item_ids: Iterable[Any] | None = None) -> Any:
        parsed = parse_value(value)
        if isinstance(parsed, Mapping) and parsed.get("url"):
            return {"url": str(parsed["url"]), "text": str(parsed.get("text") or parsed["url"])}
        if _text_or_none(text):   # text is "label - url" (UNCONFIRMED); keep the url part
            url = text.rsplit(" - ", 1)[-1] if text else ""
            label = text.rsplit(" - ", 1)[0] if text and " - " in text else url
            return {"url": url, "text": label}
        return None


class DropdownCodec(Codec):
    column_type = "dropdown"

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise self._bad(value, "a list of labels (str) or ids (int)")
        values = list(value)
        if not values:
            return None
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return {"ids": values}
        if not all(isinstance(v, str) for v in values):
            raise self._bad(value, "a list of labels (str) or of ids (int), not both")
        labels = _labels(self.settings)
        if labels:
            ids = {name: i for i, name in labels.items()}
            missing = [v for v in values if v not in ids]
            if missing:
                raise ColumnCodecError(f"dropdown label(s) {', '.join(map(repr, missing))} not on the column (it has "
                                       f"{', '.join(sorted(ids))})")
            return {"ids": [ids[v] for v in values]}
        return {"labels": values}

    def decode(self, text: str | None, value: Any = None, *, linked_item_ids: Iterable[Any] | None = None) -> Any:
        parsed = parse_value(value)
        labels = _labels(self.settings)
        if isinstance(parsed, Mapping) and isinstance(parsed.get("ids"), list) and labels:
            names = [labels.get(int(i)) for i in parsed["ids"] if str(i).lstrip("-").isdigit()]
            if all(names):
                return [n for n in names if n]
        if isinstance(parsed, Mapping) and isinstance(parsed.get("labels"), list):
            return [str(v) for v in parsed["labels"]]
        if _text_or_none(text):
            return [part.strip() for part in (text or "").split(", ") if part.strip()]
        return []


class BoardRelationCodec(Codec):
    column_type = "board_relation"

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, Mapping) and isinstance(value.get("item_ids"), list):
            value = value["item_ids"]
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise self._bad(value, "a list of item ids")
        ids = []
        for v in value:
            if isinstance(v, bool) or not str(v).strip().isdigit():
                raise self._bad(v, "item ids (int or digit str)")
            ids.append(int(str(v).strip()))
        return {"item_ids": ids}

    def decode(self, text: str | None, value: Any = None, *, linked_item_ids: Iterable[Any] | None = None) -> Any:
        if linked_item_ids is not None:
            return [str(i) for i in linked_item_ids]
        parsed = parse_value(value)   # before 2025-04: {"linkedPulseIds": [{"linkedPulseId": 1}]}
        if isinstance(parsed, Mapping):
            if isinstance(parsed.get("item_ids"), list):
                return [str(i) for i in parsed["item_ids"]]
            if isinstance(parsed.get("linkedPulseIds"), list):
                return [str(p.get("linkedPulseId")) for p in parsed["linkedPulseIds"] if isinstance(p, Mapping)]
        return []


class LongTextCodec(Codec):
    column_type = "long_text"

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            return {"text": value}
        raise self._bad(value, "a str")

    def decode(self, text: str | None, value: Any = None, *, linked_item_ids: Iterable[Any] | None = None) -> Any:
        parsed = parse_value(value)
        if isinstance(parsed, Mapping) and isinstance(parsed.get("text"), str) and parsed["text"] != "":
            return parsed["text"]
        return _text_or_none(text)


class CheckboxCodec(Codec):
    column_type = "checkbox"

    def encode(self, value: Any) -> Any:
        if value is None or value is False:
            return None
        if value is True:
            return {"checked": "true"}
        raise self._bad(value, "a bool")

    def decode(self, text: str | None, value: Any = None, *, linked_item_ids: Iterable[Any] | None = None) -> Any:
        parsed = parse_value(value)
        if isinstance(parsed, Mapping):
            checked = parsed.get("checked")
            return checked is True or str(checked).lower() == "true"
        return bool(_text_or_none(text)) and text not in ("false", "0")


CODECS: dict[str, type[Codec]] = {c.column_type: c for c in (
    StatusCodec, TextCodec, NumbersCodec, DateCodec, LinkCodec, DropdownCodec, BoardRelationCodec, LongTextCodec,
    CheckboxCodec)}


def codec_for(column_type: str, settings: Any = None) -> Codec:
    """The codec of a column type (``settings``: the column's settings, used by status and dropdown)."""
    cls = CODECS.get(str(column_type))
    if cls is None:
        raise UnsupportedColumnType(f"no codec for monday column type {column_type!r}; supported: "
                                    f"{', '.join(sorted(CODECS))}")
    return cls(settings)


def encode_column_values(types: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``{column_id: monday JSON}`` from Python values; ``types`` maps a column id to its type name or to a
    ``Column`` (with ``type`` and ``settings``). ``Raw`` values pass through; an unknown column id raises."""
    out: dict[str, Any] = {}
    for column_id, value in values.items():
        if isinstance(value, Raw):
            out[column_id] = value.value
            continue
        column = types.get(column_id)
        if column is None:
            raise ColumnCodecError(f"column {column_id!r} is not on the board (it has {', '.join(sorted(types))})")
        ctype = getattr(column, "type", column)
        codec = codec_for(ctype, getattr(column, "settings", None))
        try:
            out[column_id] = codec.encode(value)
        except ColumnCodecError as exc:
            raise ColumnCodecError(f"column {column_id!r}: {exc}") from None
    return out


def decode_column_value(column_value: Mapping[str, Any], settings: Any = None) -> Any:
    """Decode one read column value by its ``type``; a type with no codec gives its ``text`` (or None)."""
    ctype = column_value.get("type")
    cls = CODECS.get(str(ctype))
    if cls is None:
        return _text_or_none(column_value.get("text"))
    return cls(settings).decode_column(column_value)


__all__ = [
    "CODECS",
    "BoardRelationCodec",
    "CheckboxCodec",
    "Codec",
    "ColumnCodecError",
    "DateCodec",
    "DropdownCodec",
    "LinkCodec",
    "LongTextCodec",
    "NumbersCodec",
    "Raw",
    "StatusCodec",
    "TextCodec",
    "UnsupportedColumnType",
    "codec_for",
    "decode_column_value",
    "encode_column_values",
    "parse_settings",
    "parse_value",
    "raw",
]
