"""The Acumatica sandbox's data model: field shapes read from the vendor's OpenAPI document, value objects
both ways, HttpError bodies, and the store of records kept in key order.

A stored record is a flat dict: field -> Python value (str, float, int, bool, datetime; None = no value),
plus ``id`` (GUID string), and, for detail arrays, a list of such dicts (each with its own ``id``); a linked
entity (e.g. Vendor.MainContact) is a nested flat dict. On the wire every field is a value object
``{"Field": {"value": ...}}``; ``{}`` means no value (and, in a request, "leave as it is").
"""

from __future__ import annotations

import bisect
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from sandboxes.specs import load_json_spec

SPEC_FILE = "acumatica/Default_24.200.001.openapi.json"
SPEC_VERSION = "24.200.001"
ENDPOINT_NAME = "Default"

VALUE_TYPES = {
    "StringValue": "string", "DecimalValue": "number", "DoubleValue": "number", "IntValue": "int",
    "ShortValue": "int", "LongValue": "int", "ByteValue": "int", "BooleanValue": "bool",
    "DateTimeValue": "datetime", "GuidValue": "guid",
}
# OData type names the filter errors print (UNCONFIRMED: Acumatica's own wording of type mismatch errors)
EDM_NAMES = {"string": "Edm.String", "number": "Edm.Decimal", "int": "Edm.Int32", "bool": "Edm.Boolean",
             "datetime": "Edm.DateTimeOffset", "guid": "Edm.Guid"}

# Entities the sandbox emulates: screen, key fields, document or not.
ENTITIES: dict[str, dict[str, Any]] = {
    "Bill": {"screen": "AP301000", "keys": ("Type", "ReferenceNbr"), "document": True},
    "Check": {"screen": "AP302000", "keys": ("Type", "ReferenceNbr"), "document": True},
    "PurchaseOrder": {"screen": "PO301000", "keys": ("Type", "OrderNbr"), "document": True},
    "Vendor": {"screen": "AP303000", "keys": ("VendorID",), "document": False},
}
DEFAULT_TYPE = {"Bill": "Bill", "Check": "Payment", "PurchaseOrder": "Normal"}
NUMBER_FIELD = {"Bill": "ReferenceNbr", "Check": "ReferenceNbr", "PurchaseOrder": "OrderNbr", "Vendor": "VendorID"}


def spec() -> dict[str, Any]:
    return load_json_spec(SPEC_FILE)


@dataclass(frozen=True)
class FieldShape:
    kind: str                 # "value", "detail" (array of entities), "linked" (one nested entity)
    type: str | None = None   # for values: string, number, int, bool, datetime, guid
    schema: str | None = None  # for detail/linked: the component schema name


@cache
def shape(schema_name: str) -> dict[str, FieldShape]:
    """Field name -> FieldShape of a component schema (its allOf parts merged; Entity's own fields left out)."""
    schemas = spec()["components"]["schemas"]
    node = schemas[schema_name]
    parts = node.get("allOf", [node])
    fields: dict[str, FieldShape] = {}
    for part in parts:
        if "$ref" in part:
            continue   # Entity: id, rowNumber, note, custom, error, files
        for name, prop in part.get("properties", {}).items():
            ref = prop.get("$ref", "").rsplit("/", 1)[-1]
            if ref in VALUE_TYPES:
                fields[name] = FieldShape("value", VALUE_TYPES[ref])
            elif prop.get("type") == "array":
                item = prop.get("items", {}).get("$ref", "").rsplit("/", 1)[-1]
                if item:
                    fields[name] = FieldShape("detail", schema=item)
            elif ref:
                fields[name] = FieldShape("linked", schema=ref)
    return fields


def entity_actions(entity: str) -> set[str]:
    """The named actions the spec gives for an entity (paths ``/{Entity}/{Action}`` with a POST)."""
    out = set()
    for path, item in spec()["paths"].items():
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == entity and "post" in item and not parts[1].startswith(("{", "$")):
            out.add(parts[1])
    return out


# ---------------------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------------------
DATE_FORMATS = ("%m/%d/%Y", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %I:%M:%S %p")


def parse_datetime(text: str) -> datetime:
    """An Acumatica date-time value: ISO 8601 (offset optional, UTC assumed) or the US form "10/18/2021"."""
    t = text.strip()
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(t, fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    t = re.sub(r"(\.\d{6})\d+", r"\1", t)
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def format_datetime(dt: datetime) -> str:
    """As Acumatica shows date-times: ISO 8601 with an offset and milliseconds ("2020-08-11T10:47:41.170+00:00")."""
    return dt.isoformat(timespec="milliseconds")


class ValueError422(ValueError):
    """A field value that cannot be taken: ``errors`` maps field -> message (answered as 422)."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def to_python(value: Any, typ: str) -> Any:
    if value is None:
        return None
    if typ == "datetime":
        return parse_datetime(value) if isinstance(value, str) else value
    if typ == "number":
        return float(value)
    if typ == "int":
        return int(value)
    if typ == "bool":
        return bool(value)
    return str(value)


def to_wire(value: Any, typ: str | None) -> Any:
    if isinstance(value, datetime):
        return format_datetime(value)
    if typ == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def unwrap(schema_name: str, body: dict[str, Any], *, path: str = "") -> dict[str, Any]:
    """A request entity (value objects) -> flat changes. Fields not in the contract are left out; ``{}`` means
    no change; details stay a list of flat dicts (with ``id`` / ``delete`` when given)."""
    shapes = shape(schema_name)
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, wire in body.items():
        if name == "id" and wire:
            out["id"] = str(wire)
            continue
        if name == "delete" and wire is True:
            out["delete"] = True
            continue
        if name == "note" and isinstance(wire, dict) and "value" in wire:
            out["note"] = wire["value"]
            continue
        fs = shapes.get(name)
        if fs is None or wire is None:
            continue   # custom, rowNumber, _links, fields outside the contract: ignored
        if fs.kind == "value":
            if isinstance(wire, dict) and "value" in wire:
                try:
                    out[name] = to_python(wire["value"], fs.type or "string")
                except (TypeError, ValueError):
                    errors[path + name] = f"'{wire['value']}' is not a valid value for {name}."
        elif fs.kind == "detail" and isinstance(wire, list):
            out[name] = [unwrap(fs.schema or "", row, path=f"{path}{name}/") for row in wire if isinstance(row, dict)]
        elif fs.kind == "linked" and isinstance(wire, dict):
            out[name] = unwrap(fs.schema or "", wire, path=f"{path}{name}/")
    if errors:
        raise ValueError422(errors)
    return out


@dataclass
class Projection:
    """What a GET returns: ``select`` (top-level names, None = all), ``sub`` (detail/linked name -> selected
    sub-fields or None), ``expand`` (detail/linked names)."""

    select: frozenset[str] | None = None
    expand: frozenset[str] = frozenset()
    sub: dict[str, frozenset[str] | None] = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        return (self.select, self.expand, tuple(sorted((k, v) for k, v in self.sub.items())))


def wrap(schema_name: str, rec: dict[str, Any], proj: Projection | None, base: str | None, row: int = 1,
         errors: dict[str, str] | None = None) -> dict[str, Any]:
    """A stored record -> the wire entity with value objects (``$select``/``$expand`` applied)."""
    shapes = shape(schema_name)
    out: dict[str, Any] = {"id": rec["id"], "rowNumber": row, "note": {"value": rec.get("note") or ""}}
    select = proj.select if proj else None
    expand = proj.expand if proj else frozenset()
    for name, fs in shapes.items():
        if select is not None and name not in select and name not in expand:
            continue
        if fs.kind == "value":
            if name not in rec and not (errors and name in errors):
                continue
            value = rec.get(name)
            vo: dict[str, Any] = {} if value is None else {"value": to_wire(value, fs.type)}
            if errors and name in errors:
                vo["error"] = errors[name]
            out[name] = vo
        elif name in expand:
            sub = Projection(select=proj.sub.get(name)) if proj else None
            if fs.kind == "detail":
                out[name] = [wrap(fs.schema or "", r, sub, None, i + 1) for i, r in enumerate(rec.get(name) or [])]
            elif rec.get(name) is not None:
                out[name] = wrap(fs.schema or "", rec[name], sub, None)
    out["custom"] = {}
    if base is not None:
        out["_links"] = {"self": f"{base}/{rec['id']}", "files:put": f"{base}/{rec['id']}/files/{{filename}}"}
    return out


def flat_row(rec: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """A push-notification row: field -> plain value (not value objects)."""
    return {f: to_wire(rec.get(f), None) for f in fields}


# ---------------------------------------------------------------------------------------------------------
# HttpError
# ---------------------------------------------------------------------------------------------------------
class AcumaticaError(Exception):
    """An HttpError answer: status plus the spec's HttpError body."""

    def __init__(self, status: int, message: str, exception_message: str | None = None,
                 exception_type: str | None = None, model_state: dict[str, list[str]] | None = None,
                 headers: dict[str, str] | None = None):
        self.status = status
        self.body: dict[str, Any] = {"message": message}
        if exception_message is not None:
            self.body.update({"exceptionMessage": exception_message,
                              "exceptionType": exception_type or "PX.Api.ContractBased.OutcomeEntityHasErrorsException",
                              "stackTrace": None})
        if model_state:
            self.body["modelState"] = model_state
        self.headers = headers or {}
        super().__init__(f"{status}: {exception_message or message}")


class EntityError(ValueError):
    """A 422: the entity comes back with per-field ``error`` in its value objects."""

    def __init__(self, entity: str, rec: dict[str, Any], errors: dict[str, str]):
        self.entity, self.rec, self.errors = entity, rec, errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


# ---------------------------------------------------------------------------------------------------------
# store
# ---------------------------------------------------------------------------------------------------------
class Table:
    """The records of one entity, in key order (a sorted key list beside a dict; GUID index)."""

    def __init__(self, entity: str):
        self.entity = entity
        self.key_fields: tuple[str, ...] = ENTITIES[entity]["keys"]
        self.by_key: dict[tuple[str, ...], dict[str, Any]] = {}
        self.by_id: dict[str, dict[str, Any]] = {}
        self.order: list[tuple[str, ...]] = []
        self.counter = 0

    def key_of(self, rec: dict[str, Any]) -> tuple[str, ...]:
        return tuple(str(rec.get(k) or "") for k in self.key_fields)

    def insert(self, rec: dict[str, Any]) -> None:
        key = self.key_of(rec)
        self.by_key[key] = rec
        self.by_id[rec["id"]] = rec
        bisect.insort(self.order, key)

    def remove(self, rec: dict[str, Any]) -> None:
        key = self.key_of(rec)
        self.by_key.pop(key, None)
        self.by_id.pop(rec["id"], None)
        i = bisect.bisect_left(self.order, key)
        if i < len(self.order) and self.order[i] == key:
            del self.order[i]

    def find(self, ref: tuple[str, ...] | str) -> dict[str, Any] | None:
        if isinstance(ref, str):
            rec = self.by_id.get(ref.lower())
            if rec is not None or len(self.key_fields) != 1:
                return rec
            ref = (ref,)
        if len(ref) < len(self.key_fields):
            # Acumatica fills a leading document Type left out of the keys? No: an incomplete key finds nothing.
            return None
        return self.by_key.get(tuple(str(v) for v in ref[: len(self.key_fields)]))

    def rows(self) -> list[dict[str, Any]]:
        return [self.by_key[k] for k in self.order]

    def next_number(self) -> str:
        while True:
            self.counter += 1
            nbr = f"{self.counter:06d}"
            if not any(k[-1] == nbr for k in self.by_key):
                return nbr


class ModClock:
    """LastModifiedDateTime values from the sandbox clock, strictly increasing (1 ms apart at least)."""

    def __init__(self, clock: Any):
        self.clock = clock
        self.last: datetime | None = None
        self._lock = threading.Lock()

    def next(self) -> datetime:
        with self._lock:
            now = self.clock.now().astimezone(UTC)
            now = now.replace(microsecond=now.microsecond // 1000 * 1000)
            if self.last is not None and now <= self.last:
                now = self.last + timedelta(milliseconds=1)
            self.last = now
            return now


def new_id() -> str:
    return str(uuid.uuid4())


__all__ = ["ENTITIES", "AcumaticaError", "EntityError", "FieldShape", "ModClock", "Projection", "Table",
           "ValueError422", "entity_actions", "flat_row", "format_datetime", "new_id", "parse_datetime", "shape",
           "spec", "to_python", "to_wire", "unwrap", "wrap"]
