"""Acumatica contract-based REST records: value objects in, flat dicts out (and back), keys, screens, links.

Acumatica wraps every field in a value object, ``{"Status": {"value": "On Hold"}}``; ``{}`` means no
value; detail arrays and linked entities hold records of the same kind (API-FACTS §3). The product
works with flat dicts. This module is the one place that converts: ``unwrap`` on every read,
``wrap`` on every write.

Reserved, unwrapped keys of a record (the ``Entity`` schema of the endpoint's swagger): ``id`` (the
record's session GUID), ``rowNumber``, ``error`` (the record-level error text), ``files``, ``_links``,
and on writes ``delete`` (``true`` deletes a detail line). ``note`` is a value object like any field.
Custom fields (``$custom``) arrive as ``{"custom": {"Document": {"UsrX": {"type": "CustomStringField",
"value": …}}}}`` and come out as ``{"custom": {"Document": {"UsrX": …}}}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

# Key fields of the top-level entities the product reads, in the order GET /{Entity}/{k1}/{k2} takes them
# (the endpoint's swagger: "The values of the key fields of the record. The values are slash-delimited").
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "Bill": ("Type", "ReferenceNbr"),
    "Check": ("Type", "ReferenceNbr"),
    "PurchaseOrder": ("Type", "OrderNbr"),
    "Vendor": ("VendorID",),
}

# The screen behind each entity (Default/24.200.001 endpoint.xml: <TopLevelEntity name="Bill" screen="AP301000">).
SCREENS: dict[str, str] = {"Bill": "AP301000", "Check": "AP302000", "PurchaseOrder": "PO301000", "Vendor": "AP303000"}

# Keys that are not value objects: kept as they are by unwrap and wrap.
RESERVED = frozenset({"id", "rowNumber", "error", "files", "_links", "delete"})
_VALUE_KEYS = frozenset({"value", "error", "type"})

# The screen URL's query parameters per entity: (parameter, key field, API value -> screen code).
# UNCONFIRMED: the parameter names (the primary view's key field names of each screen: DocType/RefNbr on
# AP301000 and AP302000, OrderType/OrderNbr on PO301000, AcctCD on AP303000) and the codes the screen
# expects for the API's Type captions (INV for "Bill", ...). Unknown captions are passed through.
_AP_BILL_TYPES = {"Bill": "INV", "Credit Adj.": "ACR", "Debit Adj.": "ADR", "Prepayment": "PPM"}
_AP_CHECK_TYPES = {"Payment": "CHK", "Check": "CHK", "Prepayment": "PPM", "Refund": "REF",
                   "Voided Payment": "VCK", "Voided Check": "VCK", "Voided Refund": "VRF"}
_PO_TYPES = {"Normal": "RO", "Drop-Ship": "DP", "Blanket": "BL", "Standard": "SB", "Project Drop-Ship": "PD"}
LINK_PARAMS: dict[str, tuple[tuple[str, str, Mapping[str, str]], ...]] = {
    "Bill": (("DocType", "Type", _AP_BILL_TYPES), ("RefNbr", "ReferenceNbr", {})),
    "Check": (("DocType", "Type", _AP_CHECK_TYPES), ("RefNbr", "ReferenceNbr", {})),
    "PurchaseOrder": (("OrderType", "Type", _PO_TYPES), ("OrderNbr", "OrderNbr", {})),
    "Vendor": (("AcctCD", "VendorID", {}),),
}


def is_value_object(obj: Any) -> bool:
    """``{"value": …}``, ``{"value": …, "error": …}``, a custom field ``{"type": …, "value": …}``, or ``{}``."""
    return isinstance(obj, dict) and obj.keys() <= _VALUE_KEYS and ("value" in obj or "error" in obj or not obj)


def unwrap(record: Any) -> Any:
    """A record as Acumatica sends it -> a flat dict: value objects become their values, ``{}`` None.

    Detail arrays and linked entities are unwrapped recursively; ``id`` and the other reserved keys are kept;
    custom fields become ``{"custom": {view: {field: value}}}``. Anything that is not a dict or list is
    returned unchanged.
    """
    if isinstance(record, list):
        return [unwrap(item) for item in record]
    if not isinstance(record, dict):
        return record
    if is_value_object(record):
        return record.get("value")
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key in RESERVED:
            out[key] = value
        elif key == "custom" and isinstance(value, dict):
            out[key] = {view: {name: unwrap(field) for name, field in (fields or {}).items()}
                        for view, fields in value.items()}
        else:
            out[key] = unwrap(value)
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and abs(value) < 2 ** 53 else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def custom_field_type(value: Any) -> str:
    """The ``type`` of a custom field value object for a Python value (swagger: Custom*Field)."""
    if isinstance(value, bool):
        return "CustomBooleanField"
    if isinstance(value, int):
        return "CustomIntField"
    if isinstance(value, float | Decimal):
        return "CustomDecimalField"
    if isinstance(value, datetime | date):
        return "CustomDateTimeField"
    if isinstance(value, uuid.UUID):
        return "CustomGuidField"
    return "CustomStringField"


def wrap(flat: Any) -> Any:
    """A flat dict -> Acumatica's shape: every field a value object; detail arrays and linked entities recursively.

    ``None`` is sent as ``{"value": null}`` (the field is cleared: leave a key out to leave a field as it is).
    Datetimes and dates travel as ISO-8601 text, Decimals as numbers, UUIDs as text. A value that is already a
    value object (``{"value": …}``) is passed through, so wrapping twice changes nothing. Custom fields
    ``{"custom": {view: {field: value}}}`` get their ``type`` from the Python type (``custom_field_type``).
    """
    if isinstance(flat, list):
        return [wrap(item) for item in flat]
    if not isinstance(flat, dict):
        return {"value": _json_value(flat)}
    if is_value_object(flat) and flat:
        return flat
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in RESERVED:
            out[key] = value
        elif key == "custom" and isinstance(value, dict):
            out[key] = {view: {name: (field if is_value_object(field) and "type" in field
                                      else {"type": custom_field_type(field), "value": _json_value(field)})
                               for name, field in (fields or {}).items()}
                        for view, fields in value.items()}
        elif isinstance(value, list):
            out[key] = [wrap(item) if isinstance(item, dict) else {"value": _json_value(item)} for item in value]
        elif isinstance(value, dict):
            out[key] = wrap(value)
        else:
            out[key] = {"value": _json_value(value)}
    return out


def field_errors(record: Any, prefix: str = "") -> dict[str, str]:
    """Every error Acumatica put into a returned record (a 422 answer): ``{"Vendor": "…", "Details[0].Qty": "…"}``.

    The record-level ``error`` is reported under the prefix itself (``""`` at the top).
    """
    found: dict[str, str] = {}
    if isinstance(record, list):
        for i, item in enumerate(record):
            found.update(field_errors(item, f"{prefix}[{i}]"))
        return found
    if not isinstance(record, dict):
        return found
    if is_value_object(record):
        if record.get("error"):
            found[prefix] = str(record["error"])
        return found
    for key, value in record.items():
        path = f"{prefix}.{key}" if prefix else key
        if key == "error":
            if value:
                found[prefix] = str(value)
        elif key in RESERVED:
            continue
        elif key == "custom" and isinstance(value, dict):
            for view, fields in value.items():
                for name, fld in (fields or {}).items():
                    if isinstance(fld, dict) and fld.get("error"):
                        found[f"{path}.{view}.{name}"] = str(fld["error"])
        else:
            found.update(field_errors(value, path))
    return found


def key_fields(entity: str) -> tuple[str, ...] | None:
    return KEY_FIELDS.get(entity)


def key_values(entity: str, keys: Mapping[str, Any]) -> list[Any]:
    """The values of ``keys`` in the entity's key order (KEY_FIELDS; otherwise the mapping's own order)."""
    order = KEY_FIELDS.get(entity)
    if order is None:
        return list(keys.values())
    missing = [k for k in order if k not in keys]
    if missing:
        raise ValueError(f"a {entity} key needs {', '.join(order)}; missing {', '.join(missing)}")
    return [keys[k] for k in order]


def record_url(instance_url: str, entity: str, record: Mapping[str, Any], *, tenant: str | None = None) -> str:
    """A link back to the record's screen: ``{instance}/Main?ScreenId=AP301000&DocType=INV&RefNbr=000123``.

    ``record`` is a flat record (or just its key fields). ``tenant`` adds ``CompanyID=`` for multi-tenant sites.
    UNCONFIRMED: the query parameter names and type codes (see LINK_PARAMS) and ``CompanyID``; ScreenId and the
    screen ids are from the endpoint definition.
    """
    screen = SCREENS.get(entity)
    if screen is None:
        raise ValueError(f"no screen is known for Acumatica entity {entity!r}; known: {', '.join(sorted(SCREENS))}")
    query: dict[str, str] = {}
    if tenant:
        query["CompanyID"] = tenant
    query["ScreenId"] = screen
    for param, fld, codes in LINK_PARAMS.get(entity, ()):
        value = record.get(fld)
        if value is None:
            raise ValueError(f"a link to {entity} needs its {fld}")
        query[param] = codes.get(str(value), str(value))
    return f"{instance_url.rstrip('/')}/Main?{urlencode(query)}"
