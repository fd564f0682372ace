"""Business Central API v2.0 sandbox (API-FACTS §2): companies, vendors, purchase invoices and orders,
the ``Microsoft.NAV.post`` bound action, OData queries and paging, and webhook subscriptions with
the validation handshake and batched notifications; and the web client's pages for people (``web_page``).

Routes: ``/v2.0/{tenant}/{environment}/api/v2.0/...`` and ``/v2.0/{environment}/api/v2.0/...``; the people pages
``/{tenant}/{environment}/?company=…&page=…&filter=…`` (the web client's URL form, which the product's record links
use: ``CONNECTOR_BC_WEB_CLIENT_URL`` = ``<sandbox>/<tenant>/<environment>``) and ``/_sandbox/`` (every environment):
each document with its state and its history (created, PATCHed, posted by the bound action, changed by a person).
Auth: a bearer token checked by ``entra.validate(token, AUDIENCE)`` (or, with ``entra=None``, a static
set of tokens added with ``add_token``). Faults come from ``common.FaultMiddleware``: 429 carries no
Retry-After unless ``faults.retry_after`` is set (BC documents none on 429); 502/503 always carry one.

``$filter`` comparisons are typed against ``$metadata`` like BC's OData library types them (a quoted date-time is
Edm.String: 400); JSON answers carry ``OData-Version: 4.0`` and BC's OData content type; enum values go over the
wire by member name (``"_x0020_"``, ``"In_x0020_Review"``; ``enum_names = "display"`` for the captions).

Choices not backed by BC docs are marked UNCONFIRMED; keep them configurable or harmless.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandboxes import pages
from sandboxes.common import (
    DeliveryPump,
    FaultMiddleware,
    Faults,
    SandboxClock,
    bearer_token,
    count_call,
)
from sandboxes.odata import (
    OPERATORS,
    FilterGrammar,
    ODataError,
    Token,
    comparable,
    incompatible,
    odata_headers,
    parse_dt,
    tokenize,
)
from sandboxes.specs import load_json_spec

AUDIENCE = "https://api.businesscentral.dynamics.com"
log = logging.getLogger(__name__)
SPEC_FILE = "bc-api-v2.0-resources.from-docs.json"
SUBSCRIPTION_LIFETIME = timedelta(days=3)
RETRY_WINDOW = timedelta(hours=36)
BATCH_LIMIT = 100          # entries per notification POST (UNCONFIRMED: BC documents batching, not a size)
RETRYABLE_REPLY = {408, 429} | set(range(500, 600))

# entity set -> resource (EDM entity type) name in the spec json
ENTITY_SETS = {"vendors": "vendor", "purchaseInvoices": "purchaseInvoice", "purchaseOrders": "purchaseOrder"}
WEBHOOK_SETS = {"vendors", "purchaseInvoices"}   # purchaseOrders is not webhook-supported (§2.3)
NUMBER_PREFIX = {"vendors": "V", "purchaseInvoices": "PI-", "purchaseOrders": "PO-"}
POSTABLE = ("Draft", "In Review")
# The web client's page ids (card and list) per entity set: the ``page=`` of a BC URL.
WEB_PAGES = {26: "vendors", 27: "vendors", 51: "purchaseInvoices", 9308: "purchaseInvoices", 50: "purchaseOrders",
             9307: "purchaseOrders"}
CARD_PAGE = {"vendors": 26, "purchaseInvoices": 51, "purchaseOrders": 50}
# What each page's table shows (the state columns first).
PAGE_COLUMNS = {"vendors": ("number", "displayName", "blocked", "balance", "currencyCode"),
                "purchaseInvoices": ("number", "vendorName", "status", "totalAmountIncludingTax", "currencyCode",
                                     "invoiceDate"),
                "purchaseOrders": ("number", "vendorName", "status", "totalAmountIncludingTax", "currencyCode",
                                   "orderDate")}
SET_TITLES = {"vendors": "Vendors", "purchaseInvoices": "Purchase invoices", "purchaseOrders": "Purchase orders"}
STATE_FIELD = {"vendors": "blocked", "purchaseInvoices": "status", "purchaseOrders": "status"}
HISTORY_SKIP = ("lastModifiedDateTime", "id")
ENUM_DEFAULTS = {"blocked": " ", "status": "Draft"}
SYSTEM_USER = "00000000-0000-0000-0000-000000000001"
# Content-Type of BC's JSON answers: a recording of a real BC API v2.0 (25.4) through WireMock carries exactly this and
# "OData-Version: 4.0" on 200/201 entity and collection answers (github.com/tfenster/wiremock-demo, wiremock/mappings;
# tobiasfenster.io/using-wiremock-to-mock-business-central). The same recording's 404 error carries a plain
# "Content-Type: application/json" and no OData-Version (see BusinessCentralSandbox.odata_headers_on_errors).
JSON_CONTENT_TYPE = "application/json; odata.metadata=minimal; odata.streaming=true"


def iso(dt: datetime) -> str:
    """UTC ISO-8601 with milliseconds and Z, as BC shows lastModifiedDateTime."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def odata_error(status: int, code: str, message: str, headers: dict[str, str] | None = None, *,
                odata: bool = False) -> JSONResponse:
    """BC's error envelope; messages end with a CorrelationId (§2.4). ``odata``: answer with the OData content type
    and OData-Version (the recorded BC 404 has neither: plain application/json)."""
    msg = f"{message}  CorrelationId:  {uuid.uuid4()}."
    if odata:
        return JSONResponse({"error": {"code": code, "message": msg}}, status, odata_headers(headers),
                            media_type=JSON_CONTENT_TYPE)
    return JSONResponse({"error": {"code": code, "message": msg}}, status, headers or {})


def encode_member(name: str) -> str:
    """An enum member's name as BC's $metadata and JSON spell it: every character that is not a letter, digit or
    '_' becomes _xHHHH_ (" " -> "_x0020_", "In Review" -> "In_x0020_Review", "Non-Inventory" ->
    "Non_x002D_Inventory"), as in a real BC v2.0 $metadata (github.com/rebelpl/bc-api2-common, build/metadata.xml)."""
    return "".join(c if c.isalnum() or c == "_" else f"_x{ord(c):04X}_" for c in name)


# ----------------------------------------------------------------------------------------------
# Spec: property names and types
# ----------------------------------------------------------------------------------------------
class Schema:
    def __init__(self) -> None:
        resources = load_json_spec(SPEC_FILE)["resources"]
        self.props: dict[str, dict[str, str]] = {}
        self.enums: dict[str, list[str]] = {}
        for name in ("vendor", "purchaseInvoice", "purchaseOrder", "company", "subscriptions"):
            props = {}
            for p in resources[name]["properties"]:
                props[p["name"]] = p["type"]
                if p["type"].startswith("NAV."):
                    self.enums[p["type"][4:]] = re.findall(r'"([^"]*)"', p["description"])
            self.props[name] = props

    def default(self, prop: str, typ: str) -> Any:
        if prop in ENUM_DEFAULTS and typ.startswith("NAV."):
            return ENUM_DEFAULTS[prop]
        return {"GUID": "00000000-0000-0000-0000-000000000000", "string": "", "date": "0001-01-01",
                "datetime": "0001-01-01T00:00:00Z", "decimal": 0, "boolean": False, "int64": 0,
                "int": 0}.get(typ, "" if not typ.startswith("NAV.") else " ")


EDM = {"GUID": "Edm.Guid", "string": "Edm.String", "date": "Edm.Date", "datetime": "Edm.DateTimeOffset",
       "decimal": "Edm.Decimal", "boolean": "Edm.Boolean", "int64": "Edm.Int64", "int": "Edm.Int32"}


def edm_type(typ: str) -> str:
    return f"Microsoft.NAV.{typ[4:]}" if typ.startswith("NAV.") else EDM.get(typ, "Edm.String")


# ----------------------------------------------------------------------------------------------
# OData $filter
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1 << 16)
def _typed_text(text: str, typ: str) -> Any:
    """A stored GUID or date-time text as its Python value, parsed once: a filter compares the same stored
    values on every row it runs on (``id eq … or id eq …`` parsed each row's id once per comparison)."""
    return uuid.UUID(text) if typ == "GUID" else parse_dt(text)


def coerce(value: Any, typ: str) -> Any:
    """A stored (JSON) value or a literal, as the Python value of the property's EDM type."""
    if value is None:
        return None
    try:
        if typ == "GUID":
            return value if isinstance(value, uuid.UUID) else _typed_text(str(value), typ)
        if typ == "datetime":
            return value if isinstance(value, datetime) else _typed_text(value, typ) if isinstance(
                value, str) else parse_dt(value)
        if typ == "date":
            if isinstance(value, datetime):
                return value.date()
            return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
        if typ in ("decimal", "int64", "int"):
            return float(value)
        if typ == "boolean":
            return bool(value)
    except (TypeError, ValueError):
        raise ODataError(400, "BadRequest", f"The value '{value}' is not valid for type '{typ}'.") from None
    return value if isinstance(value, str) else str(value)


class FilterParser(FilterGrammar):
    """BC's $filter. Each comparison is typed like the OData library types it: the property's EDM type from
    $metadata against the literal's (a quoted date-time is Edm.String, so ``lastModifiedDateTime gt '2019-…'`` is a
    400 "A binary operator with incompatible types was detected", as BC answers). Enum properties take a string
    literal naming a member (``enum_member(enum, text)`` resolves it, or says None: not a member)."""

    def __init__(self, text: str, props: dict[str, str], type_name: str, enums: dict[str, list[str]],
                 enum_member: Callable[[str, str], str | None]) -> None:
        super().__init__(text, tokenize(text))
        self.props = props
        self.type_name = type_name
        self.enums = enums
        self.enum_member = enum_member

    def _operand(self) -> Token:
        tok = self._take_operand()
        if tok.kind == "prop":
            if tok.value not in self.props:
                # UNCONFIRMED: exact BC code for an unknown property in $filter (message: the library's).
                raise ODataError(400, "BadRequest_NotFound",
                                 f"Could not find a property named '{tok.value}' on type 'Microsoft.NAV.{self.type_name}'.")
            return tok
        if tok.kind == "lit":
            return tok
        raise self._expression_expected()

    def _edm(self, tok: Token) -> str | None:
        return edm_type(self.props[tok.value]) if tok.kind == "prop" else tok.edm

    def _comparison(self):
        left = self._operand()
        op = self._operator()
        right = self._operand()
        props = self.props
        lt, rt = self._edm(left), self._edm(right)
        enum_side = next((t for t in (left, right) if t.kind == "prop" and props[t.value].startswith("NAV.")), None)
        if enum_side is not None:
            other = right if enum_side is left else left
            members = self.enum_members(props[enum_side.value])
            if other.kind == "prop":
                if props[other.value] != props[enum_side.value]:
                    raise incompatible(lt, rt, op)
            elif other.edm is None:
                pass   # null
            elif other.edm == "Edm.String":
                member = self.enum_member(props[enum_side.value][4:], other.value)
                if member is None:
                    raise incompatible(lt, rt, op)
                other = Token("lit", members.index(member), other.pos, other.end, lt)
            else:
                raise incompatible(lt, rt, op)
            left, right = (enum_side, other) if enum_side is left else (other, enum_side)
        elif not comparable(lt, rt):
            raise incompatible(lt, rt, op)
        fn = OPERATORS[op]

        def value(tok: Token, record: dict[str, Any]) -> Any:
            if tok.kind != "prop":
                return tok.value
            typ = props[tok.value]
            raw = record.get(tok.value)
            if typ.startswith("NAV."):
                members = self.enum_members(typ)
                return members.index(raw) if raw in members else None
            return coerce(raw, typ)

        def pred(record):
            a, b = value(left, record), value(right, record)
            if op not in ("eq", "ne") and (a is None or b is None):
                return False
            return fn(a, b)

        return pred

    def enum_members(self, typ: str) -> list[str]:
        return self.enums.get(typ[4:], [])


# ----------------------------------------------------------------------------------------------
# The sandbox
# ----------------------------------------------------------------------------------------------
class BusinessCentralSandbox:
    """BC API v2.0 on one Starlette app (``self.app``); serve it with ``SandboxServer`` or ``sync_transport``.

    ``entra``: an ``EntraSandbox`` (tokens validated with audience ``AUDIENCE``) or None (then only tokens
    added with ``add_token`` are accepted). ``max_page_size``: the most entities one response may hold
    (BC online: 20,000; more without paging is a 413). ``collection_threshold``: more changes than this
    for one subscription in one delivery window become a single ``collection`` notification (BC: 1,000).
    Seed with ``register_environment``, ``add_company``, ``add_vendor``, ``add_purchase_invoice``,
    ``add_purchase_order``, ``update_record``, ``delete_record``; inspect with ``records``, ``get_record``,
    ``subscriptions``, ``calls`` (Counter of (method, route template)), ``calls_total``, ``deliveries``.
    """

    def __init__(self, entra: Any = None, *, max_page_size: int = 20000, collection_threshold: int = 1000,
                 clock: SandboxClock | None = None) -> None:
        self.entra = entra
        self.clock = clock or SandboxClock()
        # BC documents no Retry-After on 429 (§2.4): off by default, switchable via faults.retry_after.
        self.faults = Faults(retry_after=None)
        self.server_error_retry_after = "1"   # 502/503 carry Retry-After (§2.4) even when faults.retry_after is None
        self.max_page_size = max_page_size
        self.collection_threshold = collection_threshold
        self.schema = Schema()
        self.environments: set[tuple[str, str]] = set()
        self.companies: dict[str, dict[str, Any]] = {}
        self._records: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}   # cid -> set -> id -> record
        self.tokens: set[str] = set()
        self._subscriptions: dict[str, dict[str, Any]] = {}
        self._pending: list[dict[str, Any]] = []
        self._seq = 0
        self._rowids: dict[str, int] = {}
        self._numbers: Counter[str] = Counter()
        self._actions: Counter[str] = Counter()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.calls_total = 0
        self.duplicate_notifications = False
        self.drop_notifications = False
        self.deliveries: list[dict[str, Any]] = []   # every notification POST made: url, body, status
        self._last_batches: list[tuple[str, dict[str, Any]]] = []
        # The handshake (§2.3): BC calls notificationUrl?validationToken=… and wants 200 + the token in the
        # body ("as plain text" in the Dataverse-API variant). UNCONFIRMED: the HTTP method (the docs name
        # none; POST as in Microsoft Graph's webhook handshake) and the time limit (5 s is from a third-party
        # blog, kauffmann.nl); both are settings.
        self.handshake_method = "POST"
        self.handshake_timeout_s = 5.0
        # Enum members on the wire. "encoded": as BC's OData layer names them, a blank member "_x0020_" and
        # "In_x0020_Review" (a real BC v2.0 $metadata has <Member Name="_x0020_"/> and "In_x0020_Review" in
        # vendorBlocked / invoiceEntityAggregateStatus: github.com/rebelpl/bc-api2-common build/metadata.xml; a
        # recorded real response carries "blocked": "_x0020_": github.com/tfenster/wiremock-demo; a client verified
        # status "In_x0020_Review" live). "display": the captions the docs print (" ", "In Review"), as before.
        # Records are stored (and seeded, and read back by records()/get_record()) with the captions, like the AL
        # value; only the OData wire is encoded.
        self.enum_names = "encoded"
        # UNCONFIRMED (read from the OData library's StringAsEnumResolver, not observed at BC): a $filter literal or a
        # body value for an enum must be a member name ('In_x0020_Review', case-insensitive, or its number); the
        # caption ('In Review') is then a 400. False: captions are accepted too.
        self.strict_enum_names = False
        # The recorded BC 404 error is plain "application/json" without OData-Version; True gives errors the OData
        # content type and OData-Version like other answers (UNCONFIRMED for BC's 400s from $filter).
        self.odata_headers_on_errors = False
        self._lock = threading.RLock()
        self._deliver_lock = threading.Lock()
        self._pump = DeliveryPump("bc-sandbox-delivery", lambda: self.deliver_notifications())
        self.history = pages.RecordHistory()    # record id -> its changes (the people pages show them)
        routes = [Route("/v2.0/{rest:path}", self._dispatch, methods=["GET", "POST", "PATCH", "DELETE"])]
        api = FaultMiddleware(Starlette(routes=routes), self.faults, self._rate_limit_response,
                              self._server_error_response, self._count)
        web = Starlette(routes=[Route("/_sandbox/", self._web_page, methods=["GET"]),
                                Route("/{tenant}/{environment}/", self._web_page, methods=["GET"])])
        self.app = pages.PagesFirst(api, web, lambda path: not path.startswith("/v2.0/"))

    # -- seeding and inspection ------------------------------------------------------------------
    def register_environment(self, tenant: str, environment: str) -> None:
        with self._lock:
            self.environments.add((tenant.lower(), environment.lower()))

    def add_token(self, token: str) -> None:
        with self._lock:
            self.tokens.add(token)

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self.tokens.discard(token)

    def add_company(self, name: str, **props: Any) -> str:
        cid = str(uuid.uuid4())
        now = iso(self.clock.now())
        record = {p: self.schema.default(p, t) for p, t in self.schema.props["company"].items()}
        record.update({"id": cid, "name": name, "displayName": name, "systemVersion": "26.0.0.0",
                       "systemCreatedAt": now, "systemModifiedAt": now}, **props)
        with self._lock:
            self.companies[cid] = record
            self._rowid(cid)
            self._records[cid] = {s: {} for s in ENTITY_SETS}
        return cid

    def add_vendor(self, company_id: str, **props: Any) -> dict[str, Any]:
        return self._create(company_id, "vendors", props)

    def add_purchase_invoice(self, company_id: str, **props: Any) -> dict[str, Any]:
        return self._create(company_id, "purchaseInvoices", props)

    def add_purchase_order(self, company_id: str, **props: Any) -> dict[str, Any]:
        return self._create(company_id, "purchaseOrders", props)

    def update_record(self, company_id: str, entity_set: str, record_id: str, **changes: Any) -> dict[str, Any]:
        return self._update(company_id, entity_set, record_id, changes)

    def delete_record(self, company_id: str, entity_set: str, record_id: str) -> None:
        self._delete(company_id, entity_set, record_id)

    def records(self, company_id: str, entity_set: str) -> list[dict[str, Any]]:
        """Copies of every record of ``entity_set`` in the company (insertion order)."""
        with self._lock:
            return [dict(r) for r in self._store(company_id, entity_set).values()]

    def get_record(self, company_id: str, entity_set: str, record_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._store(company_id, entity_set)[self._find_id(company_id, entity_set, record_id)])

    def action_calls(self, action: str) -> int:
        return self._actions[action]

    def subscriptions(self) -> list[dict[str, Any]]:
        with self._lock:
            self._expire_subscriptions()
            return [dict(s) for s in self._subscriptions.values()]

    def pending_notifications(self) -> int:
        with self._lock:
            return len(self._pending)

    def drop_pending_notifications(self) -> int:
        with self._lock:
            n = len(self._pending)
            self._pending.clear()
            return n

    # -- record store ------------------------------------------------------------------------------
    def _company_key(self, company_id: str) -> str:
        wanted = str(company_id).strip("'").lower()
        for cid in self.companies:
            if cid.lower() == wanted:
                return cid
        raise KeyError(company_id)

    def _store(self, company_id: str, entity_set: str) -> dict[str, dict[str, Any]]:
        if entity_set not in ENTITY_SETS:
            raise KeyError(entity_set)
        return self._records[self._company_key(company_id)][entity_set]

    def _find_id(self, company_id: str, entity_set: str, record_id: str) -> str:
        store = self._store(company_id, entity_set)
        rid = str(record_id).strip("'").lower()
        for key in store:
            if key.lower() == rid:
                return key
        raise KeyError(record_id)

    def _key_index(self, company_id: str, entity_set: str, record_id: str) -> str | None:
        """The stored key of ``record_id`` (case-insensitive): a dict lookup when the spelling matches."""
        store = self._store(company_id, entity_set)
        if record_id in store:
            return record_id
        low = record_id.lower()
        return next((k for k in store if k.lower() == low), None)   # another spelling: rare, scanned

    def _rowid(self, key: str) -> int:
        """A stable, increasing row number per key: the default order and the paging key (like BC's
        primary key; UNCONFIRMED which key BC's default order uses for each API page)."""
        k = str(key).lower()
        if k not in self._rowids:
            self._rowids[k] = len(self._rowids) + 1
        return self._rowids[k]

    def _new_etag(self) -> str:
        self._seq += 1
        return f'W/"JzE5OzE{self._seq:010d}{uuid.uuid4().hex[:8]}MDsn"'

    def _create(self, company_id: str, entity_set: str, props: dict[str, Any], *,
                via: str = "created in Business Central") -> dict[str, Any]:
        type_name = ENTITY_SETS[entity_set]
        spec = self.schema.props[type_name]
        unknown = [p for p in props if p not in spec]
        if unknown:
            raise ValueError(f"unknown {type_name} properties: {unknown}")
        with self._lock:
            cid = self._company_key(company_id)
            store = self._store(cid, entity_set)
            record = {p: self.schema.default(p, t) for p, t in spec.items()}
            self._numbers[entity_set] += 1
            record["number"] = f"{NUMBER_PREFIX[entity_set]}{10000 + self._numbers[entity_set]}"
            record.update(self._captions(type_name, props))
            record["id"] = str(props.get("id") or uuid.uuid4())
            vendor_id = record.get("vendorId")
            if vendor_id and entity_set != "vendors":
                vendor = next((v for k, v in self._records[cid]["vendors"].items()
                               if k.lower() == str(vendor_id).lower()), None)
                if vendor:
                    record["vendorNumber"] = props.get("vendorNumber") or vendor["number"]
                    record["vendorName"] = props.get("vendorName") or vendor["displayName"]
            record["lastModifiedDateTime"] = iso(self.clock.now())
            record["@odata.etag"] = self._new_etag()
            store[record["id"]] = record
            self._rowid(record["id"])
            self._queue(cid, entity_set, record["id"], "created", record["lastModifiedDateTime"])
            state = STATE_FIELD[entity_set]
            self.history.record(record["id"].lower(), via, [(state, None, record.get(state))], at=self.clock.now())
            return dict(record)

    def _update(self, company_id: str, entity_set: str, record_id: str, changes: dict[str, Any], *,
                via: str = "changed in Business Central") -> dict[str, Any]:
        spec = self.schema.props[ENTITY_SETS[entity_set]]
        unknown = [p for p in changes if p not in spec]
        if unknown:
            raise ValueError(f"unknown {ENTITY_SETS[entity_set]} properties: {unknown}")
        with self._lock:
            cid = self._company_key(company_id)
            record = self._store(cid, entity_set)[self._find_id(cid, entity_set, record_id)]
            captions = self._captions(ENTITY_SETS[entity_set], changes)
            before = {k: record.get(k) for k in captions}       # only what changes: an update stays cheap
            record.update(captions)
            self.history.record(record["id"].lower(), via, pages.RecordHistory.diff(before, captions, skip=HISTORY_SKIP),
                                at=self.clock.now())
            record["lastModifiedDateTime"] = iso(self.clock.now())
            record["@odata.etag"] = self._new_etag()
            self._queue(cid, entity_set, record["id"], "updated", record["lastModifiedDateTime"])
            return dict(record)

    def _captions(self, type_name: str, values: dict[str, Any]) -> dict[str, Any]:
        """Enum values given by member name ("_x0020_", "In_x0020_Review") or caption, stored as the caption."""
        out = dict(values)
        for prop, val in values.items():
            typ = self.schema.props[type_name].get(prop, "")
            if typ.startswith("NAV.") and isinstance(val, str):
                member = self._member(typ[4:], val, strict=False)
                if member is None:
                    raise ValueError(f"{val!r} is not a member of {typ}")
                out[prop] = member
        return out

    def _delete(self, company_id: str, entity_set: str, record_id: str) -> None:
        with self._lock:
            cid = self._company_key(company_id)
            store = self._store(cid, entity_set)
            rid = self._find_id(cid, entity_set, record_id)
            del store[rid]
            self._queue(cid, entity_set, rid, "deleted", iso(self.clock.now()))
            self.history.forget(rid.lower())

    # -- the web client's pages (people) ----------------------------------------------------------------
    async def _web_page(self, request: Request) -> Response:
        """Documents with their state and history: ``?company=<name>&page=<page id>&filter='No.' IS '<number>'`` picks
        one company, one page's entity set and one document (the web client's URL parameters), all optional."""
        esc, q = pages.esc, request.query_params
        tenant, env = request.path_params.get("tenant"), request.path_params.get("environment")
        title = "Business Central" + (f" · {tenant}/{env}" if tenant else " sandbox")
        nav = {"All documents": str(request.url.path)}
        if tenant is not None and not self._environment_known(tenant, env):
            return pages.page(title, f"<p>No environment {esc(env)} in tenant {esc(tenant)}.</p>", status=404)
        sets = list(ENTITY_SETS)
        if q.get("page"):
            entity_set = WEB_PAGES.get(int(q["page"])) if q["page"].isdigit() else None
            if entity_set is None:
                return pages.page(title, f"<p>Page {esc(q['page'])} is not one of this sandbox's pages "
                                         f"({', '.join(map(str, sorted(WEB_PAGES)))}).</p>", status=404, nav=nav)
            sets = [entity_set]
        number = None
        if q.get("filter"):
            m = re.search(r"'?No\.'?\s+IS\s+'([^']*)'", q["filter"], re.IGNORECASE)
            if m is None:
                return pages.page(title, f"<p>Filter not understood: {esc(q['filter'])} (use 'No.' IS '…').</p>",
                                  status=400, nav=nav)
            number = m.group(1).lower()
        with self._lock:
            wanted = (q.get("company") or "").lower()
            companies = [dict(c) for c in self.companies.values()
                         if not wanted or wanted in (c["name"].lower(), c["id"].lower())]
            found, parts = 0, []
            for company in companies:
                parts.append(f"<h2>{esc(company['name'])}</h2>")
                for entity_set in sets:
                    rows = [dict(r) for r in self._store(company["id"], entity_set).values()
                            if number is None or str(r.get("number", "")).lower() == number]
                    found += len(rows)
                    if number is not None and not rows:
                        continue
                    parts.append(self._web_table(str(request.url.path), company["name"], entity_set, rows))
        if not companies or (number is not None and not found):
            what = f"No. {q.get('filter')}" if number is not None else f"company {q.get('company')}"
            return pages.page(title, f"<p>Nothing found for {esc(what)}.</p>", status=404, nav=nav)
        return pages.page(title, *parts, nav=nav)

    def _web_table(self, path: str, company: str, entity_set: str, rows: list[dict[str, Any]], limit: int = 500) -> str:
        cols = PAGE_COLUMNS[entity_set]
        out = []
        for r in rows[:limit]:
            flt = urlencode({"company": company, "page": CARD_PAGE[entity_set], "filter": f"'No.' IS '{r['number']}'"})
            cells = [pages.link(f"{path}?{flt}", r["number"])]
            cells += [pages.esc(pages.show(r.get(c))) for c in cols[1:]]
            cells.append(pages.esc(r.get("lastModifiedDateTime")))
            cells.append(pages.history_html(self.history.of(r["id"].lower())))
            out.append(cells)
        more = f"<p>… and {len(rows) - limit} more.</p>" if len(rows) > limit else ""
        return (f"<h3>{SET_TITLES[entity_set]} ({len(rows)})</h3>"
                + pages.table(["No.", *cols[1:], "lastModifiedDateTime", "History"], out) + more)

    # -- notifications -----------------------------------------------------------------------------
    def _queue(self, cid: str, entity_set: str, rid: str, change: str, modified: str) -> None:
        self._expire_subscriptions()
        resource = f"/api/v2.0/companies({cid})/{entity_set}"
        for sub in self._subscriptions.values():
            if sub["resource"].lower() == resource.lower():
                self._pending.append({"subscriptionId": sub["subscriptionId"], "companyId": cid,
                                      "entitySet": entity_set, "id": rid, "changeType": change,
                                      "lastModifiedDateTime": modified, "queuedAt": self.clock.now()})

    def _expire_subscriptions(self) -> None:
        now = self.clock.now()
        for sid, sub in list(self._subscriptions.items()):
            if parse_dt(sub["expirationDateTime"]) <= now:
                self._remove_subscription(sid)

    def _remove_subscription(self, sid: str) -> None:
        self._subscriptions.pop(sid, None)
        self._pending = [p for p in self._pending if p["subscriptionId"] != sid]

    def deliver_notifications(self) -> dict[str, Any]:
        """POST queued notifications (synchronously), batched per notification URL, <= 100 per POST.

        2xx: delivered. 408/429/5xx or no answer: kept for a later call until 36 h after the change.
        Any other status: the subscription is deleted (§2.3). More than ``collection_threshold``
        changes of one subscription become one ``collection`` entry.
        """
        with self._deliver_lock:
            with self._lock:
                self._expire_subscriptions()
                now = self.clock.now()
                self._pending = [p for p in self._pending if now - p["queuedAt"] <= RETRY_WINDOW]
                if self.drop_notifications:
                    dropped = len(self._pending)
                    self._pending.clear()
                    return {"posts": 0, "delivered": 0, "dropped": dropped, "failed": 0, "deleted_subscriptions": []}
                pending = list(self._pending)
                subs = {sid: dict(s) for sid, s in self._subscriptions.items()}
            by_sub: dict[str, list[dict[str, Any]]] = {}
            for p in pending:
                by_sub.setdefault(p["subscriptionId"], []).append(p)
            by_url: dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]] = {}
            for sid, entries in by_sub.items():
                sub = subs[sid]
                base = {"subscriptionId": sid, "clientState": sub["clientState"],
                        "expirationDateTime": sub["expirationDateTime"]}
                items: list[tuple[dict[str, Any], list[dict[str, Any]]]]
                if len(entries) > self.collection_threshold:
                    first = min(parse_dt(e["lastModifiedDateTime"]) for e in entries)
                    last = max(e["lastModifiedDateTime"] for e in entries)
                    # BC's docs sample spells the property "lastDateTimeModified"; the API's name is used here.
                    since = iso(first - timedelta(milliseconds=1))
                    resource = f"{sub['resource']}?$filter=lastModifiedDateTime gt {since}"
                    items = [({**base, "resource": resource, "changeType": "collection",
                               "lastModifiedDateTime": last}, entries)]
                else:
                    items = [({**base,
                               "resource": f"/api/v2.0/companies({e['companyId']})/{e['entitySet']}({e['id']})",
                               "changeType": e["changeType"], "lastModifiedDateTime": e["lastModifiedDateTime"]}, [e])
                             for e in entries]
                by_url.setdefault(sub["notificationUrl"], []).extend(items)
            summary: dict[str, Any] = {"posts": 0, "delivered": 0, "failed": 0, "deleted_subscriptions": []}
            done: set[int] = set()
            gone: set[str] = set()
            last: list[tuple[str, dict[str, Any]]] = []
            with httpx.Client(trust_env=False, timeout=30.0) as http:
                for url, items in by_url.items():
                    for start in range(0, len(items), BATCH_LIMIT):
                        chunk = items[start:start + BATCH_LIMIT]
                        body = {"value": [payload for payload, _ in chunk]}
                        status = None
                        for _ in range(2 if self.duplicate_notifications else 1):
                            status = self._post_notification(http, url, body)
                            summary["posts"] += 1
                            if status is None or not 200 <= status < 300:
                                break
                        if status is not None and 200 <= status < 300:
                            last.append((url, body))
                            summary["delivered"] += len(chunk)
                            done |= {id(e) for _, es in chunk for e in es}
                        elif status is None or status in RETRYABLE_REPLY:
                            summary["failed"] += len(chunk)   # stays queued: BC retries for 36 hours
                        else:
                            summary["failed"] += len(chunk)   # any other status: BC deletes the subscription
                            gone |= {payload["subscriptionId"] for payload, _ in chunk}
            with self._lock:
                self._pending = [p for p in self._pending if id(p) not in done]
                for sid in gone:
                    self._remove_subscription(sid)
                if last:
                    self._last_batches = last
            summary["deleted_subscriptions"] = sorted(gone)
            return summary

    def _post_notification(self, http: httpx.Client, url: str, body: dict[str, Any]) -> int | None:
        try:
            status = http.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"}).status_code
        except httpx.HTTPError:
            status = None
        with self._lock:
            self.deliveries.append({"url": url, "body": body, "status": status})
        return status

    def redeliver_last(self) -> int:
        """POST the last delivered batch bodies again, as BC's at-least-once retry would."""
        with self._lock:
            batches = list(self._last_batches)
        with httpx.Client(trust_env=False, timeout=30.0) as http:
            for url, body in batches:
                self._post_notification(http, url, body)
        return len(batches)

    def start_auto_delivery(self, interval_s: float = 1.0) -> None:
        self._pump.start(interval_s)

    def stop_auto_delivery(self) -> None:
        self._pump.stop()

    # -- HTTP plumbing -----------------------------------------------------------------------------
    def _rate_limit_response(self, retry_after: str | None) -> Response:
        # UNCONFIRMED: the error code BC puts on a 429 body.
        return self._error(429, "Application_TooManyRequests", "Too many requests reached.",
                           {"Retry-After": retry_after} if retry_after else {})

    def _server_error_response(self, status: int, retry_after: str | None) -> Response:
        headers = {}
        if status in (502, 503):
            headers["Retry-After"] = retry_after or self.server_error_retry_after
        return self._error(status, "Internal_ServiceUnavailable", "The service is temporarily unavailable.", headers)

    def _count(self, request: Request) -> None:
        path = request.url.path
        m = re.search(r"/api/v2\.0(/.*)?$", path)
        template = "/api/v2.0" + re.sub(r"\([^)]*\)", "({id})", (m.group(1) or "")) if m else path
        count_call(self, request, template)

    def _authorized(self, request: Request) -> bool:
        token = bearer_token(request)
        if not token:
            return False
        if self.entra is not None:
            return bool(self.entra.validate(token, AUDIENCE))
        with self._lock:
            return token in self.tokens

    async def _dispatch(self, request: Request) -> Response:
        try:
            if not self._authorized(request):
                return self._error(401, "Authentication_InvalidCredentials",
                                   "The server has rejected the client credentials.",
                                   {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'})
            rest = request.path_params["rest"]
            m = re.match(r"^(?:(?P<tenant>[^/]+)/)?(?P<env>[^/]+)/api/v2\.0(?P<tail>/.*)?$", rest)
            if not m or not self._environment_known(m.group("tenant"), m.group("env")):
                return self._error(404, "BadRequest_NotFound", "The environment or endpoint was not found.")
            base = str(request.url).split("/api/v2.0", 1)[0] + "/api/v2.0"
            return await self._route(request, base, (m.group("tail") or "/").rstrip("/") or "/")
        except ODataError as e:
            return self._error(e.status, e.code, e.message, e.headers)

    def _environment_known(self, tenant: str | None, env: str) -> bool:
        with self._lock:
            if tenant is None:
                return any(e == env.lower() for _, e in self.environments)
            return (tenant.lower(), env.lower()) in self.environments

    async def _route(self, request: Request, base: str, tail: str) -> Response:
        method = request.method.upper()
        if tail == "/$metadata" and method == "GET":
            return Response(self.metadata_xml(), 200, media_type="application/xml")
        if tail == "/companies" and method == "GET":
            with self._lock:
                rows = [dict(c) for c in self.companies.values()]
            return self._collection(request, base, "companies", rows, self.schema.props["company"], "company")
        m = re.match(r"^/companies\(([^)]+)\)$", tail)
        if m and method == "GET":
            with self._lock:
                try:
                    company = dict(self.companies[self._company_key(m.group(1))])
                except KeyError:
                    raise ODataError(404, "BadRequest_NotFound", "The company does not exist.") from None
            return self._ok({"@odata.context": f"{base}/$metadata#companies/$entity", **company})
        if tail == "/subscriptions":
            if method == "GET":
                return self._collection(request, base, "subscriptions", self.subscriptions(),
                                        self.schema.props["subscriptions"], "subscriptions")
            if method == "POST":
                return await self._create_subscription(request, base)
        m = re.match(r"^/subscriptions\('?([^)']+)'?\)$", tail)
        if m:
            return await self._subscription_item(request, base, m.group(1), method)
        m = re.match(r"^/companies\(([^)]+)\)/(\w+)(?:\(([^)]+)\))?(/Microsoft\.NAV\.\w+)?$", tail)
        if m:
            cid, entity_set, rid, action = m.groups()
            if entity_set not in ENTITY_SETS:
                raise ODataError(404, "BadRequest_NotFound", f"Resource '{entity_set}' was not found.")
            with self._lock:
                try:
                    cid = self._company_key(cid)
                except KeyError:
                    raise ODataError(404, "BadRequest_NotFound", "The company does not exist.") from None
            if action:
                return self._action(cid, entity_set, rid, action.rsplit(".", 1)[1], method)
            if rid is not None:
                return await self._item(request, base, cid, entity_set, rid, method)
            if method == "GET":
                ids = _id_disjunction(request.query_params.get("$filter"))
                with self._lock:
                    store = self._store(cid, entity_set)
                    if ids is not None:
                        # Only ``id eq … or id eq …``: the key picks the candidates (the filter still runs
                        # on them below), so a lookup by ids costs the same over 100 or 100,000 records.
                        rows = [dict(r) for k, r in store.items() if k.lower() in ids] if len(ids) > len(store) \
                            else [dict(store[k]) for k in (self._key_index(cid, entity_set, i) for i in ids) if k]
                    else:
                        rows = [dict(r) for r in store.values()]
                return self._collection(request, base, f"companies({cid})/{entity_set}", rows,
                                        self.schema.props[ENTITY_SETS[entity_set]], ENTITY_SETS[entity_set])
            if method == "POST":
                body = await self._json(request)
                body = self._check_enums(ENTITY_SETS[entity_set], body)
                try:
                    record = self._create(cid, entity_set, {k: v for k, v in body.items() if k != "id"},
                                          via="created by POST (API)")
                except ValueError as e:
                    raise ODataError(400, "BadRequest_PropertyNotFound", str(e)) from None
                return self._entity(base, cid, entity_set, record, 201)
        known = tail.startswith(("/companies", "/subscriptions"))
        raise ODataError(405 if known else 404, "BadRequest_MethodNotAllowed" if known else "BadRequest_NotFound",
                         f"'{method} {tail}' is not supported.")

    async def _json(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise ODataError(400, "BadRequest", "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise ODataError(400, "BadRequest", "The request body must be a JSON object.")
        return body

    def _entity(self, base: str, cid: str, entity_set: str, record: dict[str, Any], status: int = 200) -> Response:
        body = {"@odata.context": f"{base}/$metadata#companies({cid})/{entity_set}/$entity",
                **self._wire(ENTITY_SETS[entity_set], record)}
        return self._ok(body, status, {"ETag": record["@odata.etag"]})

    def _ok(self, body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """A JSON answer with BC's OData content type and OData-Version."""
        return JSONResponse(body, status, odata_headers(headers), media_type=JSON_CONTENT_TYPE)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
        return odata_error(status, code, message, headers, odata=self.odata_headers_on_errors)

    def _sort_value(self, value: Any, typ: str) -> tuple[bool, Any]:
        """Ascending sort key of a stored value: nulls last, then by the property's EDM type (enums by the
        member's value, as OData orders them)."""
        if value is None:
            return (True, 0)
        if typ.startswith("NAV."):
            members = self.schema.enums.get(typ[4:], [])
            return (False, members.index(value) if value in members else -1)
        typed = coerce(value, typ)
        return (False, str(typed) if isinstance(typed, uuid.UUID) else typed)

    # -- enum members on the wire -------------------------------------------------------------------
    def _wire(self, type_name: str, record: dict[str, Any]) -> dict[str, Any]:
        """A record as the API serializes it: enum values by member name when ``enum_names`` is "encoded"."""
        if self.enum_names != "encoded":
            return record
        out = dict(record)
        for prop, typ in self.schema.props.get(type_name, {}).items():
            if typ.startswith("NAV.") and isinstance(out.get(prop), str):
                out[prop] = encode_member(out[prop])
        return out

    def _member(self, enum: str, text: str, *, strict: bool | None = None) -> str | None:
        """The caption of the member ``text`` names (a member name in any case, its number, or - unless strict -
        the caption itself); None when it names none."""
        members = self.schema.enums.get(enum, [])
        strict = self.strict_enum_names and self.enum_names == "encoded" if strict is None else strict
        for m in members:
            if encode_member(m).lower() == str(text).lower():
                return m
        if str(text).lstrip("-").isdigit() and 0 <= int(text) < len(members):
            return members[int(text)]
        if not strict and text in members:
            return text
        return None

    def _check_enums(self, type_name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Body enum values as captions; a value that names no member is a 400."""
        out = dict(body)
        for prop, val in body.items():
            typ = self.schema.props[type_name].get(prop, "")
            if typ.startswith("NAV.") and val is not None:
                member = self._member(typ[4:], val) if isinstance(val, str) else None
                if member is None:
                    # UNCONFIRMED: BC's code and wording for a value that is no member of the enum.
                    raise ODataError(400, "BadRequest", f"'{val}' is not a valid value for '{prop}'.")
                out[prop] = member
        return out

    @staticmethod
    def _check_if_match(request: Request, current_etag: str) -> None:
        if_match = (request.headers.get("if-match") or "").strip()
        if not if_match:
            # UNCONFIRMED: BC's exact status/code when If-Match is missing (docs: "required").
            raise ODataError(400, "BadRequest_RequiredParamNotProvided",
                             "Could not save the record because the If-Match header is missing.")
        if if_match != "*" and if_match != current_etag:
            raise ODataError(409, "Request_EntityChanged", "Another user has already changed the record.")

    async def _item(self, request: Request, base: str, cid: str, entity_set: str, rid: str, method: str) -> Response:
        type_name = ENTITY_SETS[entity_set]
        with self._lock:
            try:
                key = self._find_id(cid, entity_set, rid)
                current = dict(self._store(cid, entity_set)[key])
            except KeyError:
                raise ODataError(404, "BadRequest_NotFound",
                                 f"The {type_name} with id '{rid}' does not exist.") from None
        if method == "GET":
            select = request.query_params.get("$select")
            if select:
                current = self._select([self._wire(type_name, current)], select, self.schema.props[type_name],
                                       type_name)[0]
            return self._entity(base, cid, entity_set, current)
        if method == "PATCH":
            body = await self._json(request)
            spec = self.schema.props[type_name]
            with self._lock:
                if key not in self._store(cid, entity_set):
                    raise ODataError(404, "BadRequest_NotFound", f"The {type_name} with id '{rid}' does not exist.")
                self._check_if_match(request, self._store(cid, entity_set)[key]["@odata.etag"])
                for prop in body:
                    if prop.startswith("@odata."):
                        continue
                    if prop not in spec:
                        raise ODataError(400, "BadRequest_PropertyNotFound",
                                         f"Could not find a property named '{prop}' on type 'Microsoft.NAV.{type_name}'.")
                    if prop in ("id", "lastModifiedDateTime"):
                        raise ODataError(400, "BadRequest", f"The property '{prop}' is read-only.")
                changes = self._check_enums(type_name, {k: v for k, v in body.items() if not k.startswith("@odata.")})
                record = self._update(cid, entity_set, key, changes, via="by PATCH (API)")
            return self._entity(base, cid, entity_set, record)
        if method == "DELETE":
            with self._lock:
                if key not in self._store(cid, entity_set):
                    raise ODataError(404, "BadRequest_NotFound", f"The {type_name} with id '{rid}' does not exist.")
                self._check_if_match(request, self._store(cid, entity_set)[key]["@odata.etag"])
                self._delete(cid, entity_set, key)
            return Response(status_code=204)
        raise ODataError(405, "BadRequest_MethodNotAllowed", f"'{method}' is not allowed here.")

    def _action(self, cid: str, entity_set: str, rid: str | None, action: str, method: str) -> Response:
        if method != "POST" or rid is None or (entity_set, action) != ("purchaseInvoices", "post"):
            raise ODataError(400 if method == "POST" else 405, "BadRequest_MethodNotAllowed",
                             f"The action '{action}' is not supported on '{entity_set}'.")
        with self._lock:
            try:
                key = self._find_id(cid, entity_set, rid)
            except KeyError:
                raise ODataError(404, "BadRequest_NotFound",
                                 f"The purchaseInvoice with id '{rid}' does not exist.") from None
            status = self._store(cid, entity_set)[key]["status"]
            if status not in POSTABLE:
                # UNCONFIRMED: BC's code and wording when posting an invoice that is not a draft.
                raise ODataError(400, "Application_DialogException",
                                 f"The purchase invoice cannot be posted because its status is '{status}'.")
            self._update(cid, entity_set, key, {"status": "Open"}, via="posted by bound action Microsoft.NAV.post (API)")
            self._actions[action] += 1
        return Response(status_code=204)

    # -- collections and query options ---------------------------------------------------------
    @staticmethod
    def _select(rows: list[dict[str, Any]], select: str, props: dict[str, str], type_name: str) -> list[dict]:
        names = [s.strip() for s in select.split(",") if s.strip()]
        for n in names:
            if n not in props:
                raise ODataError(400, "BadRequest_NotFound",
                                 f"Could not find a property named '{n}' on type 'Microsoft.NAV.{type_name}'.")
        return [{**({"@odata.etag": r["@odata.etag"]} if "@odata.etag" in r else {}), **{n: r.get(n) for n in names}}
                for r in rows]

    def _collection(self, request: Request, base: str, path: str, rows: list[dict[str, Any]],
                    props: dict[str, str], type_name: str) -> Response:
        q = request.query_params
        known = {"$filter", "$select", "$top", "$skip", "$orderby", "$skiptoken", "tenant", "company"}
        for k in q:
            if k.startswith("$") and k not in known:
                raise ODataError(400, "BadRequest", f"The query option '{k}' is not supported.")
        key_prop = "subscriptionId" if type_name == "subscriptions" else "id"
        with self._lock:
            rows = [(self._rowid(r[key_prop]), r) for r in rows]
        if q.get("$filter"):
            pred = FilterParser(q["$filter"], props, type_name, self.schema.enums, self._member).parse()
            rows = [(n, r) for n, r in rows if pred(r)]
        rows.sort(key=lambda nr: nr[0])   # default order: the row key; ties of $orderby keep it
        order: list[tuple[str, bool]] = []
        for part in [p.strip() for p in q.get("$orderby", "").split(",") if p.strip()]:
            bits = part.split()
            prop, desc = bits[0], len(bits) > 1 and bits[1].lower() == "desc"
            if prop not in props:
                raise ODataError(400, "BadRequest_NotFound",
                                 f"Could not find a property named '{prop}' on type 'Microsoft.NAV.{type_name}'.")
            order.append((prop, desc))
        for prop, desc in reversed(order):
            typ = props[prop]
            rows.sort(key=lambda nr, p=prop, t=typ: self._sort_value(nr[1].get(p), t), reverse=desc)
        try:
            skip = int(q.get("$skip", 0))
            top = int(q["$top"]) if "$top" in q else None
        except ValueError:
            raise ODataError(400, "BadRequest", "Invalid $top or $skip.") from None
        rows = rows[skip:]
        if top is not None:
            rows = rows[:top]
        if q.get("$skiptoken"):
            # The skiptoken carries the sort key of the last row served, so a record that changes (or
            # leaves the filter) between two pages never shifts other rows out of the result — like
            # BC's key-based skiptoken. UNCONFIRMED: BC's token format (opaque here: base64 JSON).
            after = _decode_skiptoken(q["$skiptoken"], len(order))
            rows = [nr for nr in rows if _after(nr, after, order, props, self._sort_value)]
        pm = re.search(r"odata\.maxpagesize\s*=\s*(\d+)", request.headers.get("prefer", ""))
        headers: dict[str, str] = {}
        body: dict[str, Any] = {"@odata.context": f"{base}/$metadata#{path}"}
        if pm:
            page_size = max(1, min(int(pm.group(1)), self.max_page_size))
            headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
            page = rows[:page_size]
            if len(rows) > page_size:
                n, last = page[-1]
                token = _encode_skiptoken([last.get(p) for p, _ in order] + [n])
                params = [(k, v) for k, v in q.multi_items() if k != "$skiptoken"]
                params.append(("$skiptoken", token))
                body["@odata.nextLink"] = f"{str(request.url).split('?', 1)[0]}?{urlencode(params)}"
        else:
            if len(rows) > self.max_page_size:
                raise ODataError(413, "Request_EntityTooLarge",
                                 f"The response exceeds the maximum page size of {self.max_page_size} entities; "
                                 "use $top/$skip or Prefer: odata.maxpagesize.")
            page = rows
        out = [self._wire(type_name, r) for _, r in page]
        if q.get("$select"):
            out = self._select(out, q["$select"], props, type_name)
        body["value"] = out
        return self._ok(body, 200, headers)

    # -- subscriptions ---------------------------------------------------------------------------
    async def _handshake(self, notification_url: str) -> bool:
        token = uuid.uuid4().hex
        sep = "&" if "?" in notification_url else "?"
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=self.handshake_timeout_s) as http:
                r = await http.request(self.handshake_method, f"{notification_url}{sep}validationToken={token}")
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.text.strip().strip('"') == token

    def _check_resource(self, resource: str) -> str:
        m = re.match(r"^/?api/v2\.0/companies\(([^)]+)\)/(\w+)$", resource or "")
        if not m:
            raise ODataError(400, "BadRequest", f"The resource '{resource}' is not valid for a subscription.")
        with self._lock:
            try:
                cid = self._company_key(m.group(1))
            except KeyError:
                raise ODataError(400, "BadRequest_NotFound", "The company in the resource does not exist.") from None
        if m.group(2) not in WEBHOOK_SETS:
            # UNCONFIRMED: BC's code/wording; the fact (not webhook-supported) is from §2.3.
            raise ODataError(400, "BadRequest", f"The resource '{m.group(2)}' does not support webhook subscriptions.")
        return f"/api/v2.0/companies({cid})/{m.group(2)}"

    async def _create_subscription(self, request: Request, base: str) -> Response:
        body = await self._json(request)
        url = body.get("notificationUrl")
        if not url or not str(url).startswith(("http://", "https://")):
            raise ODataError(400, "BadRequest_RequiredParamNotProvided", "notificationUrl is required.")
        resource = self._check_resource(body.get("resource", ""))
        if not await self._handshake(url):
            # UNCONFIRMED: BC's code/wording for a failed handshake.
            raise ODataError(400, "BadRequest", "The notification URL did not answer the validation handshake.")
        now = self.clock.now()
        sub = {"subscriptionId": uuid.uuid4().hex, "notificationUrl": url, "resource": resource,
               "timestamp": self._seq, "userId": SYSTEM_USER, "lastModifiedDateTime": iso(now),
               "clientState": body.get("clientState", ""), "expirationDateTime": iso(now + SUBSCRIPTION_LIFETIME),
               "systemCreatedAt": iso(now), "systemCreatedBy": SYSTEM_USER, "systemModifiedAt": iso(now),
               "systemModifiedBy": SYSTEM_USER}
        with self._lock:
            sub["@odata.etag"] = self._new_etag()
            self._rowid(sub["subscriptionId"])
            self._subscriptions[sub["subscriptionId"]] = sub
            out = dict(sub)
        return self._ok({"@odata.context": f"{base}/$metadata#subscriptions/$entity", **out}, 201,
                        {"ETag": out["@odata.etag"]})

    async def _subscription_item(self, request: Request, base: str, sid: str, method: str) -> Response:
        with self._lock:
            self._expire_subscriptions()
            sub = self._subscriptions.get(sid)
            if sub is None:
                raise ODataError(404, "BadRequest_NotFound", f"The subscription '{sid}' does not exist.")
            current = dict(sub)
        ctx = {"@odata.context": f"{base}/$metadata#subscriptions/$entity"}
        if method == "GET":
            return self._ok({**ctx, **current}, 200, {"ETag": current["@odata.etag"]})
        if method == "DELETE":
            with self._lock:
                self._check_if_match(request, current["@odata.etag"])
                self._remove_subscription(sid)
            return Response(status_code=204)
        if method == "PATCH":
            self._check_if_match(request, current["@odata.etag"])   # required on renew (§2.3)
            body = await self._json(request)
            url = body.get("notificationUrl") or current["notificationUrl"]
            if "resource" in body and self._check_resource(body["resource"]) != current["resource"]:
                raise ODataError(400, "BadRequest", "The resource of a subscription cannot be changed.")
            if not await self._handshake(url):   # the handshake is required on renew too (§2.3)
                raise ODataError(400, "BadRequest", "The notification URL did not answer the validation handshake.")
            now = self.clock.now()
            with self._lock:
                sub = self._subscriptions.get(sid)
                if sub is None:
                    raise ODataError(404, "BadRequest_NotFound", f"The subscription '{sid}' does not exist.")
                self._check_if_match(request, sub["@odata.etag"])
                sub.update({"notificationUrl": url, "clientState": body.get("clientState", sub["clientState"]),
                            "expirationDateTime": iso(now + SUBSCRIPTION_LIFETIME), "lastModifiedDateTime": iso(now),
                            "systemModifiedAt": iso(now), "@odata.etag": self._new_etag()})
                out = dict(sub)
            return self._ok({**ctx, **out}, 200, {"ETag": out["@odata.etag"]})
        raise ODataError(405, "BadRequest_MethodNotAllowed", f"'{method}' is not allowed here.")

    # -- $metadata -------------------------------------------------------------------------------
    def metadata_xml(self) -> str:
        """EDMX of exactly what this sandbox implements (property names and types from the spec json)."""
        types = {"company": "id", "vendor": "id", "purchaseInvoice": "id", "purchaseOrder": "id",
                 "subscriptions": "subscriptionId"}
        out = ['<?xml version="1.0" encoding="utf-8"?>',
               '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">',
               "<edmx:DataServices>",
               '<Schema Namespace="Microsoft.NAV" xmlns="http://docs.oasis-open.org/odata/ns/edm">']
        used_enums = sorted({t[4:] for name in types for t in self.schema.props[name].values() if t.startswith("NAV.")})
        for enum in used_enums:
            out.append(f'<EnumType Name="{enum}">')
            for i, member in enumerate(self.schema.enums.get(enum, [])):
                out.append(f'<Member Name="{encode_member(member)}" Value="{i}"/>')
            out.append("</EnumType>")
        for name, key in types.items():
            out.append(f'<EntityType Name="{name}"><Key><PropertyRef Name="{key}"/></Key>')
            for prop, typ in self.schema.props[name].items():
                nullable = ' Nullable="false"' if prop == key else ""
                out.append(f'<Property Name="{prop}" Type="{edm_type(typ)}"{nullable}/>')
            if name == "company":
                for entity_set, type_name in ENTITY_SETS.items():
                    out.append(f'<NavigationProperty Name="{entity_set}" Type="Collection(Microsoft.NAV.{type_name})" '
                               'ContainsTarget="true"/>')
            out.append("</EntityType>")
        out.append('<Action Name="post" IsBound="true"><Parameter Name="bindingParameter" '
                   'Type="Microsoft.NAV.purchaseInvoice"/></Action>')
        out.append('<EntityContainer Name="NAV">')
        out.append('<EntitySet Name="companies" EntityType="Microsoft.NAV.company"/>')
        out.append('<EntitySet Name="subscriptions" EntityType="Microsoft.NAV.subscriptions"/>')
        out += ["</EntityContainer>", "</Schema>", "</edmx:DataServices>", "</edmx:Edmx>"]
        return "\n".join(out)




def _encode_skiptoken(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode().rstrip("=")


_ID_EQ = re.compile(r"\s*\(?\s*id\s+eq\s+'?([0-9A-Fa-f-]{36})'?\s*\)?\s*")


def _id_disjunction(flt: str | None) -> set[str] | None:
    """The ids of a $filter that is only ``id eq <guid>`` terms joined by ``or`` (lower case), else None."""
    if not flt:
        return None
    ids: set[str] = set()
    for term in re.split(r"\s+or\s+", flt.strip()):
        m = _ID_EQ.fullmatch(term)
        if m is None:
            return None
        ids.add(m.group(1).lower())
    return ids


def _decode_skiptoken(token: str, n_order: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError):
        raise ODataError(400, "BadRequest_InvalidToken", "The skip token is not valid.") from None
    if not isinstance(values, list) or len(values) != n_order + 1 or not isinstance(values[-1], int):
        raise ODataError(400, "BadRequest_InvalidToken", "The skip token is not valid.")
    return values


def _after(row: tuple[int, dict[str, Any]], token: list[Any], order: list[tuple[str, bool]],
           props: dict[str, str], sort_value: Callable[[Any, str], tuple[bool, Any]]) -> bool:
    """Whether ``row`` sorts strictly after the row the skiptoken names ($orderby keys, then row key)."""
    n, record = row
    for (prop, desc), tok in zip(order, token):
        a, b = sort_value(record.get(prop), props[prop]), sort_value(tok, props[prop])
        if a != b:
            return (a < b) if desc else (a > b)
    return n > token[-1]
