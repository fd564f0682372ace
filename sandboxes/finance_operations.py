"""Dynamics 365 Finance & Operations sandbox (API-FACTS §1): OData v4 under ``/data`` and business events.

OData: vendors, purchase order headers and lines, vendor invoice headers and lines, and posted general journal
account entries (read-only: POST, PATCH, DELETE and actions refused), with properties from Microsoft's CDM
attribute lists (``specs/fo-cdm``; the journal entries' list is vendored in ``vendored_specs/fo-cdm``; PO lines are
not there: a minimal, UNCONFIRMED set). Every record holds every property of its entity type: what the caller did
not set reads as F&O's empty value (``EMPTY``).
``$filter`` comparisons are typed against ``$metadata`` (a quoted date-time is Edm.String: 400); JSON answers carry
``OData-Version: 4.0`` and ``application/json; odata.metadata=minimal``.
``$filter $select $top $skip $count $orderby $expand`` (one level), enum literals
``Microsoft.Dynamics.DataEntities.<Enum>'<Value>'`` (eq/ne only), ``contains`` as ``eq '*x*'``, the ``in``
and ``has`` operators refused, server paging with ``@odata.nextLink`` (≤ 10,000 per page), ``$batch`` with
atomic changesets (≤ 5,000 operations), the caller's default company unless ``cross-company=true``,
``dataAreaId`` in every key, case-sensitive entity sets, ``$metadata`` (CSDL v4), OData error bodies,
429 + Retry-After (faults, and an optional sliding-window service-protection limiter).
Bound actions exist only when "deployed" (``deploy_action``): the standard product has none for workflows.

Business events (§1.4): stub envelopes (never the record) with ControlNumber increasing with gaps, sent one
per POST to HTTPS endpoints only, activated per legal entity (blank = all), retried 3 times ``retry_delay_s``
apart (F&O: 1 s), then kept in ``errors`` for ``resend``; ``redeliver`` and ``deliver_events(order=…)``
produce duplicates and out-of-order arrival.

Auth: bearer tokens from the Entra sandbox for audience ``https://{environment_host}`` (and, when given, the
F&O tenant). UNCONFIRMED behaviours are settings, named in comments.

People pages: the web client's URL form ``/?cmp=<legal entity>&mi=<menu item>`` (the link the product writes for a
record: its environment URL, legal entity and the form's menu item) and ``/_sandbox/``: the documents of each form
with their state and history (inserted, PATCHed, bound actions, posted / confirmed / rejected with the business
event fired, changed by a person).
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import logging
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit
from xml.sax.saxutils import escape

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
    equality_hint,
    incompatible,
    matches_hint,
    odata_headers,
    parse_dt,
    tokenize,
    with_hint,
)
from sandboxes.specs import load_json_spec, load_vendored_json

log = logging.getLogger(__name__)
NS = "Microsoft.Dynamics.DataEntities"
ENUMS = {
    "NoYes": ["No", "Yes"],
    "PurchStatus": ["None", "Backorder", "Received", "Invoiced", "Canceled"],
    "VersioningDocumentState": ["Draft", "InReview", "Rejected", "Approved", "InExternalReview", "Confirmed",
                                "Finalized"],
}
ENUM_PROPS = {"PurchaseOrderStatus": "PurchStatus", "DocumentApprovalStatus": "VersioningDocumentState"}
NUMBER_RE = re.compile(r"(Amount|Price|Quantity|Percentage|Percent|Discount|ExchangeRate|Latitude|Longitude)$")
DATETIME_RE = re.compile(r"(DateTime|ValidFrom|ValidTo)$")
DATE_RE = re.compile(r"(Date|Date_W)$")
# CDM types these attributes "string"; F&O exposes its boolean fields as the NoYes enum ("IsWithholdingTaxCalculate":
# "No" in a real VendorPaymentJournalLines payload). UNCONFIRMED per field: which of them really are NoYes.
NOYES_RE = re.compile(r"^(Is|Are|Has|Will)[A-Z]")
MAX_BATCH_OPERATIONS = 5000
# F&O returns every property of the entity type; a field nobody set reads as its type's empty value. Observed in real
# F&O payloads (VendorPaymentJournalLines, public code samples): strings "", numbers 0, enums their first member
# ("TypeOfOperation": "Blank", NoYes "No"), a date-only field "1900-01-01T12:00:00Z" ("DeliveryDate") and a
# date-time field "1900-01-01T00:00:00Z" ("RemittanceAddressValidFrom").
EMPTY = {"string": "", "decimal": 0, "int": 0, "date": "1900-01-01T12:00:00Z", "datetime": "1900-01-01T00:00:00Z"}
# What F&O's own insert logic sets on a new record (UNCONFIRMED: PurchTable.initValue makes a new order an open
# order, PurchStatus::Backorder; approval starts in Draft).
INITIAL_VALUES = {"PurchaseOrderHeadersV2": {"PurchaseOrderStatus": "Backorder", "DocumentApprovalStatus": "Draft"}}
# Content-Type of F&O's JSON answers. UNCONFIRMED parameter list (ASP.NET Web API OData may add odata.streaming and
# IEEE754Compatible); the media type and OData-Version 4.0 are OData v4's JSON format.
JSON_CONTENT_TYPE = "application/json; odata.metadata=minimal"
# The web client's forms (menu items, ``mi=``) per entity set, for the people pages. UNCONFIRMED: the menu item names
# beyond those docs/finance_operations.md gives (VendTableListPage, VendorInvoiceJournal, PurchTable).
MENU_ITEMS = {"VendTableListPage": "VendorsV2", "VendTable": "VendorsV2",
              "VendorInvoiceJournal": "VendorInvoiceHeaders",
              "PurchTable": "PurchaseOrderHeadersV2", "PurchTableListPage": "PurchaseOrderHeadersV2",
              "LedgerTransVoucher": "GeneralJournalAccountEntries"}
# What each form's table shows (the document number first, then its state).
FORM_COLUMNS = {
    "VendorsV2": ("VendorAccountNumber", "VendorOrganizationName", "OnHoldStatus", "CurrencyCode"),
    "VendorInvoiceHeaders": ("HeaderReference", "InvoiceNumber", "VendorAccount", "VendorName", "InvoiceDate",
                             "Currency", "InvoiceDescription"),
    "PurchaseOrderHeadersV2": ("PurchaseOrderNumber", "PurchaseOrderName", "DocumentApprovalStatus",
                               "PurchaseOrderStatus", "OrderVendorAccountNumber", "CurrencyCode"),
    "GeneralJournalAccountEntries": ("Voucher", "JournalNumber", "AccountDisplayValue", "TransactionCurrencyAmount",
                                     "TransactionCurrencyCode", "AccountingDate", "Description"),
}
FORM_TITLES = {"VendorsV2": "Vendors", "VendorInvoiceHeaders": "Vendor invoices",
               "PurchaseOrderHeadersV2": "Purchase orders", "GeneralJournalAccountEntries": "Voucher transactions"}
STATE_FIELD = {"VendorsV2": "OnHoldStatus", "PurchaseOrderHeadersV2": "DocumentApprovalStatus"}


@dataclass
class EntityDef:
    entity_set: str
    type_name: str
    keys: list[str]
    props: dict[str, str]   # name -> "string" | "decimal" | "int" | "date" | "datetime" | "enum:<Name>"
    navigation: dict[str, tuple[str, list[str]]] = field(default_factory=dict)   # nav -> (target set, join keys)
    # The data entity's IsReadOnly = Yes: "only read operations are allowed" (FO-docs
    # data-entities/behavioral-properties-data-entities.md); the records come from F&O's own processes (posting).
    read_only: bool = False


def _cdm_attributes(cdm_entity: str, *, vendored: bool = False) -> list[str]:
    """The attribute names of a CDM entity file: from shared/specs/fo-cdm, or ``vendored`` from the sandboxes'
    own vendored_specs/fo-cdm (a file shared/specs does not hold)."""
    name = f"fo-cdm/{cdm_entity}.cdm.json"
    doc = load_vendored_json(name) if vendored else load_json_spec(name)
    names: list[str] = []
    for definition in doc.get("definitions", []):
        for attr in definition.get("hasAttributes", []):
            # entity references (Relationship_…, BackingTable_…Relationship) carry no dataType: no OData property
            if isinstance(attr, dict) and "name" in attr and "dataType" in attr:
                names.append(attr["name"])
    return names


def _prop_type(name: str) -> str:
    """The property's type (CDM types nearly everything "string"): named enums, NoYes flags, line numbers,
    amounts, dates (Edm.DateTimeOffset in $metadata, date-only or date-time) by their names."""
    if name in ENUM_PROPS:
        return f"enum:{ENUM_PROPS[name]}"
    if NOYES_RE.match(name):
        return "enum:NoYes"
    if name in ("LineNumber", "InvoiceLineNumber", "PurchLineNumber"):
        return "int"
    if NUMBER_RE.search(name) and not name.endswith("Id"):
        return "decimal"
    if DATETIME_RE.search(name):
        return "datetime"
    if DATE_RE.search(name):
        return "date"
    return "string"


def empty_value(typ: str) -> Any:
    """What F&O shows for a field nobody set."""
    return ENUMS[typ[5:]][0] if typ.startswith("enum:") else EMPTY[typ]


def edm_type(typ: str) -> str:
    if typ.startswith("enum:"):
        return f"{NS}.{typ[5:]}"
    return {"string": "Edm.String", "decimal": "Edm.Decimal", "date": "Edm.DateTimeOffset",
            "datetime": "Edm.DateTimeOffset", "int": "Edm.Int64"}[typ]


def build_entities() -> dict[str, EntityDef]:
    def from_cdm(cdm: str, extra: list[str], *, vendored: bool = False) -> dict[str, str]:
        props = {"dataAreaId": "string"}
        for n in [*_cdm_attributes(cdm, vendored=vendored), *extra]:
            if not n.startswith("Relationship_"):
                props[n] = _prop_type(n)
        return props

    # PurchaseOrderLineV2 is not in specs/fo-cdm: a minimal field set (UNCONFIRMED names beyond the keys).
    po_line_props = {"dataAreaId": "string", "PurchaseOrderNumber": "string", "LineNumber": "int",
                     "ItemNumber": "string", "LineDescription": "string", "OrderedPurchaseQuantity": "decimal",
                     "PurchasePrice": "decimal", "LineAmount": "decimal", "CurrencyCode": "string"}
    entities = [
        EntityDef("VendorsV2", "VendorV2", ["dataAreaId", "VendorAccountNumber"], from_cdm("VendVendorV2Entity", [])),
        EntityDef("PurchaseOrderHeadersV2", "PurchaseOrderHeaderV2", ["dataAreaId", "PurchaseOrderNumber"],
                  from_cdm("PurchPurchaseOrderHeaderV2Entity", []),
                  # navigation names are UNCONFIRMED (no public $metadata): the lines' entity set name
                  {"PurchaseOrderLinesV2": ("PurchaseOrderLinesV2", ["dataAreaId", "PurchaseOrderNumber"])}),
        EntityDef("PurchaseOrderLinesV2", "PurchaseOrderLineV2", ["dataAreaId", "PurchaseOrderNumber", "LineNumber"],
                  po_line_props),
        # VendorInvoiceHeaders' key HeaderReference is inferred from the line entity page (UNCONFIRMED).
        EntityDef("VendorInvoiceHeaders", "VendorInvoiceHeader", ["dataAreaId", "HeaderReference"],
                  from_cdm("VendorInvoiceHeaderEntity", []),
                  {"VendorInvoiceLines": ("VendorInvoiceLines", ["dataAreaId", "HeaderReference"])}),
        EntityDef("VendorInvoiceLines", "VendorInvoiceLine", ["dataAreaId", "HeaderReference", "InvoiceLineNumber"],
                  from_cdm("VendorInvoiceLineEntity", [])),
        # Posted ledger lines (GeneralJournalAccountEntryEntity, CDM 1.2, vendored). UNCONFIRMED [3rd]: the public
        # names GeneralJournalAccountEntries / GeneralJournalAccountEntry (third-party clients use them; Microsoft's
        # 8.1.2 extensibility list opened the entity's PublicCollectionName, PublicEntityName and IsPublic to
        # extensions), the key (its only unique attribute, the backing row's RecId; CDM types it string), dataAreaId
        # (the CDM file has the PrimaryCompanyContext relationship the company-specific entities have), and that
        # the entity is IsReadOnly (a posted ledger entry is never changed: corrections are new vouchers).
        EntityDef("GeneralJournalAccountEntries", "GeneralJournalAccountEntry",
                  ["dataAreaId", "GeneralJournalAccountEntryRecId"],
                  from_cdm("GeneralJournalAccountEntryEntity.1.2", [], vendored=True), read_only=True),
    ]
    return {e.entity_set: e for e in entities}


def error_body(code: str, message: str) -> dict[str, Any]:
    """The OData v4 error body (F&O's exact shape is UNCONFIRMED: one function to change)."""
    return {"error": {"code": code, "message": message,
                      "innererror": {"message": message, "type": "Microsoft.Dynamics.Platform.Integration."
                                     "Services.OData.AxODataException", "stacktrace": ""}}}


def fo_error(status: int, message: str, headers: dict[str, str] | None = None, code: str = "", *,
             odata: bool = True) -> JSONResponse:
    """An error answer; ``odata``: with the OData JSON content type and OData-Version like every other answer
    (UNCONFIRMED for F&O's errors)."""
    if odata:
        return JSONResponse(error_body(code, message), status, odata_headers(headers), media_type=JSON_CONTENT_TYPE)
    return JSONResponse(error_body(code, message), status, headers or {})


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


# ----------------------------------------------------------------------------------------------
# $filter
# ----------------------------------------------------------------------------------------------
class FOFilter(FilterGrammar):
    """The shared filter grammar with F&O's rules (API-FACTS §1.1), each comparison typed like the OData library
    types it: a date-time property against a quoted '2019-…' literal (Edm.String) is a 400 "A binary operator with
    incompatible types was detected", an enum property takes only its typed literal
    ``Microsoft.Dynamics.DataEntities.<Enum>'<Member>'`` (eq/ne only)."""

    error_code = ""

    def __init__(self, text: str, entity: EntityDef) -> None:
        # FO-docs odata.md: "the has and in operators are not supported" (checked outside string literals)
        bare = re.sub(r"'(?:[^']|'')*'", "''", text)
        refused = re.search(r"(?<![\w.])(in|has)(?![\w.])", bare, re.IGNORECASE)
        if refused:
            raise ODataError(400, "", f"The operator '{refused.group(1).lower()}' is not supported. "
                                      "Use an 'or' of 'eq' comparisons.")
        tokens: list[Token] = []
        raw = tokenize(text, self.error_code)
        i = 0
        while i < len(raw):
            tok = raw[i]
            nxt = raw[i + 1] if i + 1 < len(raw) else None
            if tok.kind == "prop" and tok.value.startswith(f"{NS}.") and nxt is not None \
                    and nxt.edm == "Edm.String" and nxt.pos == tok.end:
                enum = tok.value[len(NS) + 1:]
                tokens.append(Token("enum", (enum, nxt.value), tok.pos, nxt.end, f"{NS}.{enum}"))
                i += 2
                continue
            tokens.append(tok)
            i += 1
        super().__init__(text, tokens)
        self.entity = entity

    def _operand(self) -> Token:
        tok = self._take_operand()
        if tok.kind == "prop":
            if tok.value not in self.entity.props:
                raise ODataError(400, "", f"Could not find a property named '{tok.value}' on type "
                                          f"'{NS}.{self.entity.type_name}'.")
            return tok
        if tok.kind in ("lit", "enum"):
            return tok
        raise self._expression_expected()

    def _edm(self, tok: Token) -> str | None:
        return edm_type(self.entity.props[tok.value]) if tok.kind == "prop" else tok.edm

    def _comparison(self):
        left = self._operand()
        op = self._operator()
        right = self._operand()
        written = (self._edm(left), self._edm(right), op)   # the message names the operands as written
        if left.kind != "prop":
            left, right = right, left
            op = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge"}.get(op, op)
        if left.kind != "prop" or right.kind == "prop":
            # UNCONFIRMED: F&O's answer to literal-literal or property-property comparisons (refused here).
            raise ODataError(400, "", f"A comparison needs one property and one literal in $filter '{self.text}'.")
        prop = left.value
        typ = self.entity.props[prop]
        if typ.startswith("enum:"):
            enum = typ[5:]
            if right.kind == "lit" and right.edm is None:   # null
                want = None
            elif right.kind != "enum" or right.value[0] != enum:
                raise incompatible(*written)
            elif right.value[1] not in ENUMS[enum]:
                # the library's Binder_IsNotValidEnumConstant (UNCONFIRMED which message F&O gives)
                raise ODataError(400, "", f"The string '{right.value[1]}' is not a valid enumeration type constant.")
            else:
                want = right.value[1]
            if op not in ("eq", "ne"):
                raise ODataError(400, "", f"Only eq and ne are supported on the enum property '{prop}'.")
            return (lambda r: r.get(prop) == want) if op == "eq" else (lambda r: r.get(prop) != want)
        if right.kind == "enum" or not comparable(edm_type(typ), right.edm):
            raise incompatible(*written)
        lit = right.value
        if typ == "string":
            if op in ("eq", "ne") and isinstance(lit, str) and "*" in lit:
                # F&O's contains/startswith: eq '*x*' (a wildcard literal), case-insensitive like its SQL
                pattern = re.compile("^" + ".*".join(re.escape(p) for p in lit.split("*")) + "$", re.IGNORECASE | re.DOTALL)
                match = lambda r: bool(pattern.match(str(r.get(prop) or "")))
                return match if op == "eq" else (lambda r: not match(r))
            want = lit.lower() if isinstance(lit, str) else None

            def value(r):
                v = r.get(prop)
                return v.lower() if isinstance(v, str) else v
        elif typ in ("decimal", "int"):
            want = float(lit) if lit is not None else None

            def value(r):
                v = r.get(prop)
                return float(v) if v not in (None, "") else None
        else:   # date, datetime: Edm.DateTimeOffset
            want = lit

            def value(r):
                return parse_dt(r.get(prop))
        fn = OPERATORS[op]

        def pred(r):
            a = value(r)
            if op not in ("eq", "ne") and (a is None or want is None):
                return False
            return fn(a, want)

        if typ == "string" and op == "eq" and isinstance(want, str):
            return with_hint(pred, {prop: frozenset({want})})   # true only where lower(prop) == want
        return pred


def _hinted_keys(entity: EntityDef, hint: dict[str, frozenset[str]], limit: int) -> list[tuple[str, ...]] | None:
    """The stored keys a filter can match when it pins every key property (``equality_hint``: the lower-cased
    values each may take): their combinations, looked up instead of scanning the set. None when a key property is
    free, or when there would be more combinations than rows (then a scan is cheaper). Stored keys are the key
    properties' values lower-cased (``_key_of``), so every row the hint admits is among them."""
    if not hint or any(k not in hint for k in entity.keys):
        return None
    combinations = 1
    for k in entity.keys:
        combinations *= len(hint[k])
    if combinations > limit:
        return None
    return list(itertools.product(*(sorted(hint[k]) for k in entity.keys)))


def _sort_key(value: Any) -> tuple[bool, Any]:
    if value is None:
        return (False, "")
    if isinstance(value, str):
        return (True, value.lower())
    return (True, value)


KEY_PART = re.compile(r"\s*(\w+)\s*=\s*('(?:[^']|'')*'|[^,]+)\s*(?:,|$)")


def parse_keys(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(text):
        m = KEY_PART.match(text, pos)
        if not m:
            raise ODataError(400, "", f"Bad key segment '({text})'.")
        raw = m.group(2).strip()
        out[m.group(1)] = raw[1:-1].replace("''", "'") if raw.startswith("'") else raw
        pos = m.end()
    return out


# ----------------------------------------------------------------------------------------------
# The sandbox
# ----------------------------------------------------------------------------------------------
@dataclass
class Endpoint:
    name: str
    url: str
    headers: dict[str, str]
    verify: bool | str = True


class FinanceOperationsSandbox:
    """One F&O environment on a Starlette app (``self.app``); serve with ``SandboxServer`` or ``sync_transport``."""

    def __init__(self, entra: Any = None, *, environment_host: str = "contoso-prod.operations.dynamics.com",
                 default_company: str = "usmf", max_page_size: int = 10000, clock: SandboxClock | None = None,
                 tenant: str | None = None) -> None:
        self.entra = entra
        self.tenant = tenant
        self.environment_host = environment_host
        self.audience = f"https://{environment_host}"
        self.default_company = default_company.lower()
        self.max_page_size = max_page_size
        self.clock = clock or SandboxClock()
        self.faults = Faults(retry_after="1")
        self.entities = build_entities()
        # UNCONFIRMED settings
        self.honour_maxpagesize = False           # Prefer: odata.maxpagesize (BC honours it; F&O unknown)
        self.key_read_needs_cross_company = True  # a key outside the default company without cross-company -> 404
        self.posted_invoices_readable = True      # posted headers stay readable (update refused)
        self.send_legacy_legal_entity = False     # older payloads: LegalEntity instead of BusinessEventLegalEntity
        self.odata_headers_on_errors = True       # errors carry the OData content type and OData-Version too
        # a write to a read-only entity (IsReadOnly = Yes): F&O's status and message are not documented; 405 with
        # Allow: GET is what an OData service answers for a method the resource does not support
        self.read_only_write_status = 405
        # service protection (§1.3): None = off; (requests, window_s) = sliding window per environment
        self.service_protection: tuple[int, float] | None = None
        self._window: list[float] = []
        self.retry_delay_s = 1.0                  # F&O: 1 s between the 3 retries (configurable there too)
        self.tokens: set[str] = set()
        self.legal_entities: set[str] = set()
        self._rows: dict[str, dict[tuple, dict[str, Any]]] = {s: {} for s in self.entities}
        self._posted: set[tuple] = set()
        self._seq = Counter()
        self._etag = 0
        self._recid = 5637144575                  # RecIds are unique per environment (F&O's start at 5637144576)
        self._actions: dict[tuple[str, str], Callable[[dict[str, Any], dict[str, Any]], Any]] = {}
        self._action_calls: Counter[str] = Counter()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.calls_total = 0
        # business events
        self.endpoints: dict[str, Endpoint] = {}
        self.activations: set[tuple[str, str, str]] = set()   # (event id, endpoint, legal entity or "")
        self._queue: list[tuple[str, dict[str, Any]]] = []
        self._delivered: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[tuple[str, dict[str, Any]]] = []
        self.deliveries: list[tuple[str, int, int | None]] = []   # (url, ControlNumber, status or None)
        self._control = 5637144576
        self._random = random.Random(20261123)
        self.transport: httpx.BaseTransport | None = None
        self._lock = threading.RLock()
        self._deliver_lock = threading.Lock()
        self._pump = DeliveryPump("fo-events", lambda: self.deliver_events())
        self.history = pages.RecordHistory()      # (entity set, key) -> its changes (the people pages show them)
        routes = [Route("/data/{rest:path}", self._dispatch, methods=["GET", "POST", "PATCH", "DELETE"]),
                  Route("/data", self._dispatch, methods=["GET"])]
        api = FaultMiddleware(Starlette(routes=routes), self.faults, self._rate_limit_response,
                              self._server_error_response, self._count)
        web = Starlette(routes=[Route("/", self._web_page, methods=["GET"]),
                                Route("/_sandbox/", self._web_page, methods=["GET"])])
        self.app = pages.PagesFirst(api, web, lambda path: path in ("/", "/_sandbox/"))

    # -- seeding and inspection ------------------------------------------------------------------
    def add_token(self, token: str) -> None:
        self.tokens.add(token)

    def add_legal_entity(self, data_area_id: str) -> None:
        self.legal_entities.add(data_area_id.lower())

    def _key_of(self, entity: EntityDef, record: dict[str, Any]) -> tuple:
        return tuple(str(record.get(k, "")).lower() for k in entity.keys)

    def _insert(self, entity_set: str, area: str, props: dict[str, Any], *,
                via: str = "created in Finance and Operations") -> dict[str, Any]:
        entity = self.entities[entity_set]
        area = area.lower()
        if area not in self.legal_entities:
            raise ODataError(400, "", f"The company '{area}' does not exist.")
        # every property of the entity type, with what F&O's insert logic sets, then what the caller gave
        record: dict[str, Any] = {name: empty_value(typ) for name, typ in entity.props.items()}
        record.update(INITIAL_VALUES.get(entity_set, {}))
        record["dataAreaId"] = area
        for name, value in props.items():
            if name not in entity.props:
                raise ODataError(400, "", f"Could not find a property named '{name}' on type '{NS}.{entity.type_name}'.")
            typ = entity.props[name]
            if typ.startswith("enum:") and value not in ENUMS[typ[5:]]:
                raise ODataError(400, "", f"'{value}' is not a valid value of {NS}.{typ[5:]} for '{name}'.")
            record[name] = _json_value(value)
        for k in entity.keys:
            if (k not in props and k != "dataAreaId") or record.get(k) in (None, ""):
                raise ODataError(400, "", f"The key field '{k}' of {entity.type_name} must be given.")
        key = self._key_of(entity, record)
        with self._lock:
            if key in self._rows[entity_set]:
                raise ODataError(400, "", f"The record already exists: {dict(zip(entity.keys, key, strict=True))}.")
            record["@odata.etag"] = self._next_etag()
            self._rows[entity_set][key] = record
        if entity_set in FORM_COLUMNS:      # documents, not their lines
            state = STATE_FIELD.get(entity_set)
            self.history.record((entity_set, key), via, [(state, None, record.get(state))] if state else (),
                                at=self.clock.now())
        return dict(record)

    def _next_etag(self) -> str:
        self._etag += 1
        return 'W/"' + base64.b64encode(f"{self._etag},{time.time_ns()}".encode()).decode() + '"'

    def _number(self, prefix: str) -> str:
        self._seq[prefix] += 1
        return f"{prefix}{self._seq[prefix]:06d}"

    def add_vendor(self, area: str, **props: Any) -> dict[str, Any]:
        props.setdefault("VendorAccountNumber", self._number("V-"))
        return self._insert("VendorsV2", area, props)

    def add_purchase_order(self, area: str, lines: list[dict[str, Any]] | None = None, **props: Any) -> dict[str, Any]:
        with self._lock:
            props.setdefault("PurchaseOrderNumber", self._number("PO-"))
            header = self._insert("PurchaseOrderHeadersV2", area, props)
            for i, line in enumerate(lines or [], start=1):
                self._insert("PurchaseOrderLinesV2", area, {"PurchaseOrderNumber": header["PurchaseOrderNumber"],
                                                             "LineNumber": i, **line})
        return header

    def add_vendor_invoice(self, area: str, lines: list[dict[str, Any]] | None = None, **props: Any) -> dict[str, Any]:
        with self._lock:
            props.setdefault("HeaderReference", self._number("VIH-"))
            header = self._insert("VendorInvoiceHeaders", area, props)
            for i, line in enumerate(lines or [], start=1):
                self._insert("VendorInvoiceLines", area, {"HeaderReference": header["HeaderReference"],
                                                          "InvoiceLineNumber": i, **line})
        return header

    def post_general_journal(self, area: str, lines: list[dict[str, Any]], *, journal_number: str | None = None,
                             voucher: str | None = None, accounting_date: str | None = None, currency: str = "USD",
                             description: str = "") -> list[dict[str, Any]]:
        """Post a general journal voucher: one GeneralJournalAccountEntries record per line (``LedgerAccount``,
        ``TransactionCurrencyAmount``: debit positive, credit negative; any other property of the entity). Like
        F&O's posting, a voucher whose lines do not sum to zero is refused."""
        amounts = [Decimal(str(line.get("TransactionCurrencyAmount", 0))) for line in lines]
        if not lines or sum(amounts) != 0:
            raise ValueError(f"the transactions on the voucher do not balance: {sum(amounts)}")
        with self._lock:
            journal_number = journal_number or self._number("GJ-")
            voucher = voucher or self._number("GNJL")
            posted = []
            for line, amount in zip(lines, amounts, strict=True):
                self._recid += 1
                props = {"JournalNumber": journal_number, "Voucher": voucher, "TransactionCurrencyCode": currency,
                         "AccountingDate": accounting_date or f"{datetime.now(UTC).date().isoformat()}T12:00:00Z",
                         "PostingLayer": "Current", "PostingType": "LedgerJournal", "JournalCategory": "Daily",
                         "Description": description, "DataArea": area.lower(),
                         "GeneralJournalAccountEntryRecId": str(self._recid),
                         "TransactionCurrencyDebitAmount": max(amount, Decimal(0)),
                         "TransactionCurrencyCreditAmount": max(-amount, Decimal(0)),
                         "AccountingCurrencyAmount": amount, "ReportingCurrencyAmount": amount,
                         "IsCredit": "Yes" if amount < 0 else "No", **line}
                props.setdefault("AccountDisplayValue", props.get("LedgerAccount", ""))
                posted.append(self._insert("GeneralJournalAccountEntries", area, props))
        return posted

    def _find(self, entity_set: str, keys: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        entity = self.entities[entity_set]
        key = tuple(str(keys.get(k, "")).lower() for k in entity.keys)
        with self._lock:
            row = self._rows[entity_set].get(key)
        if row is None or (entity_set == "VendorInvoiceHeaders" and key in self._posted
                           and not self.posted_invoices_readable):
            raise ODataError(404, "", f"No {entity.type_name} with key {keys}.")
        return key, row

    def get_record(self, entity_set: str, keys: dict[str, Any]) -> dict[str, Any]:
        return dict(self._find(entity_set, keys)[1])

    def records(self, entity_set: str, area: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = [dict(r) for r in self._rows[entity_set].values()]
        return [r for r in rows if area is None or r["dataAreaId"] == area.lower()]

    def update_record(self, entity_set: str, keys: dict[str, Any], *, via: str = "changed in Finance and Operations",
                      **changes: Any) -> dict[str, Any]:
        with self._lock:
            key, row = self._find(entity_set, keys)
            before = {k: row.get(k) for k in changes}
            row.update({k: _json_value(v) for k, v in changes.items()})
            row["@odata.etag"] = self._next_etag()
            self._remember(entity_set, key, via, before, row)
            return dict(row)

    def _remember(self, entity_set: str, key: tuple, via: str, before: dict[str, Any], after: dict[str, Any], *,
                  note: str = "") -> None:
        if entity_set in FORM_COLUMNS:
            self.history.record((entity_set, key), via, pages.RecordHistory.diff(before, after, keys=before),
                                note=note, at=self.clock.now())

    def delete_record(self, entity_set: str, keys: dict[str, Any]) -> None:
        with self._lock:
            key, _ = self._find(entity_set, keys)
            del self._rows[entity_set][key]
            self.history.forget((entity_set, key))

    def is_posted(self, header_reference: str, area: str) -> bool:
        return (area.lower(), header_reference.lower()) in self._posted

    # -- the web client's pages (people) ----------------------------------------------------------------
    async def _web_page(self, request: Request) -> Response:
        """``?cmp=<legal entity>&mi=<menu item>`` (both optional): the form's documents with state and history."""
        esc, q = pages.esc, request.query_params
        title = f"Finance and Operations · {self.environment_host}"
        nav = {"All forms": str(request.url.path)}
        sets = list(FORM_COLUMNS)
        if q.get("mi"):
            if q["mi"] not in MENU_ITEMS:
                return pages.page(title, f"<p>No form for menu item {esc(q['mi'])} in this sandbox (known: "
                                         f"{esc(', '.join(sorted(MENU_ITEMS)))}).</p>", status=404, nav=nav)
            sets = [MENU_ITEMS[q["mi"]]]
        area = (q.get("cmp") or "").lower() or None
        if area is not None and area not in self.legal_entities:
            return pages.page(title, f"<p>The company {esc(area)} does not exist.</p>", status=404, nav=nav)
        parts = [f"<p>Legal entity: <b>{esc(area or 'all')}</b></p>"]
        with self._lock:
            for entity_set in sets:
                rows = [(key, dict(row)) for key, row in self._rows[entity_set].items()
                        if area is None or row["dataAreaId"] == area]
                parts.append(self._web_table(str(request.url.path), entity_set, rows))
        return pages.page(title, *parts, nav=nav)

    def _web_table(self, path: str, entity_set: str, rows: list[tuple[tuple, dict[str, Any]]], limit: int = 500) -> str:
        cols = FORM_COLUMNS[entity_set]
        menu_item = next(mi for mi, es in MENU_ITEMS.items() if es == entity_set)
        out = []
        for key, r in rows[:limit]:
            cells = [pages.esc(r["dataAreaId"]), pages.esc(pages.show(r.get(cols[0])))]
            cells += [pages.esc(pages.show(r.get(c))) for c in cols[1:]]
            if entity_set == "VendorInvoiceHeaders":
                cells.append("Posted" if key in self._posted else "Pending")
            cells.append(pages.history_html(self.history.of((entity_set, key))))
            out.append(cells)
        heads = ["Company", *cols] + (["Posting"] if entity_set == "VendorInvoiceHeaders" else []) + ["History"]
        more = f"<p>… and {len(rows) - limit} more.</p>" if len(rows) > limit else ""
        form = pages.link(f"{path}?{urlencode({'mi': menu_item})}", menu_item)
        return (f"<h3>{FORM_TITLES[entity_set]} ({len(rows)}) <small>{form}</small></h3>"
                + pages.table(heads, out) + more)

    # -- bound actions (customer extensions) -------------------------------------------------------
    def deploy_action(self, entity_set: str, name: str,
                      handler: Callable[[dict[str, Any], dict[str, Any]], Any]) -> None:
        """Expose ``POST /data/<set>(<keys>)/Microsoft.Dynamics.DataEntities.<name>``: ``handler(record,
        parameters)`` mutates the record (under the sandbox lock) and returns the action's value."""
        self._actions[(entity_set, name)] = handler

    def deploy_workflow_resubmit(self, action_name: str = "SubmitToWorkflow") -> None:
        """The customer extension docs/finance_operations.md describes: resubmit a rejected PO."""

        def resubmit(record: dict[str, Any], params: dict[str, Any]) -> None:
            if record.get("DocumentApprovalStatus") != "Rejected":
                raise ODataError(400, "", f"Purchase order {record['PurchaseOrderNumber']} cannot be submitted to "
                                          f"workflow in status {record.get('DocumentApprovalStatus')}.")
            record["DocumentApprovalStatus"] = "InReview"
            self.workflow_comments.append((record["PurchaseOrderNumber"], str(params.get("Comment", ""))))

        self.workflow_comments: list[tuple[str, str]] = []
        self.deploy_action("PurchaseOrderHeadersV2", action_name, resubmit)

    def action_calls(self, name: str) -> int:
        return self._action_calls[name]

    # -- business flows that fire events -------------------------------------------------------------
    def confirm_purchase_order(self, area: str, po_number: str) -> dict[str, Any] | None:
        po = self.update_record("PurchaseOrderHeadersV2", {"dataAreaId": area, "PurchaseOrderNumber": po_number},
                                via="confirmed in F&O (PurchaseOrderConfirmedBusinessEvent)",
                                DocumentApprovalStatus="Confirmed")
        return self.fire("PurchaseOrderConfirmedBusinessEvent", area, PurchaseOrderNumber=po_number,
                         PurchaseJournal=self._number("PJ-"), VendorAccount=po.get("OrderVendorAccountNumber", ""))

    def post_vendor_invoice(self, area: str, header_reference: str) -> dict[str, Any] | None:
        keys = {"dataAreaId": area, "HeaderReference": header_reference}
        with self._lock:
            key, header = self._find("VendorInvoiceHeaders", keys)
            self._posted.add(key)
            self.history.record(("VendorInvoiceHeaders", key), "posted in F&O (VendorInvoicePostedBusinessEvent)",
                                [("Posted", "No", "Yes")], at=self.clock.now())
        # the payload's field list is UNCONFIRMED (F&O publishes no event schemas)
        return self.fire("VendorInvoicePostedBusinessEvent", area, VendorAccount=header.get("VendorAccount", ""),
                         InvoiceNumber=header.get("InvoiceNumber", ""), InvoiceDate=header.get("InvoiceDate"),
                         Voucher=self._number("APINV-"))

    def reject_purchase_order_workflow(self, area: str, po_number: str) -> dict[str, Any] | None:
        self.update_record("PurchaseOrderHeadersV2", {"dataAreaId": area, "PurchaseOrderNumber": po_number},
                           via="rejected by the approval workflow (PurchaseOrderWorkflowRejectedBusinessEvent)",
                           DocumentApprovalStatus="Rejected")
        # the event id is UNCONFIRMED (workflow events are generated per workflow type)
        return self.fire("PurchaseOrderWorkflowRejectedBusinessEvent", area, PurchaseOrderNumber=po_number)

    # -- business events -------------------------------------------------------------------------------
    def add_endpoint(self, name: str, url: str, headers: dict[str, str] | None = None,
                     verify: bool | str = True) -> None:
        if urlsplit(url).scheme != "https":
            raise ValueError(f"F&O business-event endpoints must be HTTPS: {url}")
        self.endpoints[name] = Endpoint(name, url, dict(headers or {}), verify)

    def activate(self, business_event_id: str, endpoint: str, legal_entity: str = "") -> None:
        if endpoint not in self.endpoints:
            raise ValueError(f"no endpoint {endpoint!r}")
        with self._lock:
            per_entity = [a for a in self.activations if a[0] == business_event_id and a[2] == legal_entity.lower()]
            if len(per_entity) >= 10:   # F&O default: at most 10 endpoints per event and legal entity
                raise ValueError("at most 10 endpoints may subscribe to one event per legal entity")
            self.activations.add((business_event_id, endpoint, legal_entity.lower()))

    def fire(self, business_event_id: str, area: str, **fields: Any) -> dict[str, Any] | None:
        """Fire one event (as F&O does when the transaction commits); None when no endpoint is activated."""
        area = area.lower()
        with self._lock:
            targets = sorted({ep for ev, ep, le in self.activations if ev == business_event_id and le in ("", area)})
            if not targets:
                return None
            self._control += self._random.randint(1, 9)   # "upwardly increasing … there can be gaps"
            now = self.clock.now()
            envelope: dict[str, Any] = {
                "BusinessEventId": business_event_id,
                "BusinessEventLegalEntity": area.upper(),
                "ContextRecordSubject": "",
                "ControlNumber": self._control,
                "EventId": str(uuid.uuid4()).upper(),
                "EventTime": f"/Date({int(now.timestamp() * 1000)})/",
                "EventTimeIso8601": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "InitiatingUserAADObjectId": "{" + str(uuid.uuid4()).upper() + "}",
                "MajorVersion": 0,
                "MinorVersion": 0,
                "ParentContextRecordSubjects": [],
                **{k: _json_value(v) for k, v in fields.items()},
            }
            if self.send_legacy_legal_entity:
                envelope["LegalEntity"] = envelope.pop("BusinessEventLegalEntity")
                envelope.pop("EventTimeIso8601")
            for ep in targets:
                self._queue.append((ep, envelope))
            return dict(envelope)

    def pending_events(self) -> int:
        return len(self._queue)

    def _send(self, http: httpx.Client, endpoint: Endpoint, envelope: dict[str, Any], retries: int = 3) -> bool:
        for attempt in range(retries + 1):
            try:
                status: int | None = http.post(endpoint.url, content=json.dumps(envelope),
                                               headers={"Content-Type": "application/json", **endpoint.headers}
                                               ).status_code
            except httpx.HTTPError:
                status = None
            with self._lock:
                self.deliveries.append((endpoint.url, envelope["ControlNumber"], status))
            if status is not None and 200 <= status < 300:
                return True
            if attempt < retries and self.retry_delay_s:
                time.sleep(self.retry_delay_s)
        return False

    def _client(self, endpoint: Endpoint) -> httpx.Client:
        return httpx.Client(trust_env=False, verify=endpoint.verify, timeout=10.0, transport=self.transport)

    def _deliver(self, items: list[tuple[str, dict[str, Any]]]) -> dict[str, int]:
        summary = {"delivered": 0, "failed": 0}
        clients: dict[str, httpx.Client] = {}
        try:
            for name, envelope in items:
                endpoint = self.endpoints[name]
                http = clients.setdefault(name, self._client(endpoint))
                if self._send(http, endpoint, envelope):
                    summary["delivered"] += 1
                    with self._lock:
                        self._delivered.append((name, envelope))
                else:
                    summary["failed"] += 1
                    with self._lock:
                        self.errors.append((name, envelope))   # the catalog's Errors tab
        finally:
            for c in clients.values():
                c.close()
        return summary

    def deliver_events(self, order: str = "fifo", seed: int | None = None) -> dict[str, int]:
        """POST every queued envelope (one per call) to its endpoint: 3 retries, then the Errors tab."""
        with self._deliver_lock:
            with self._lock:
                items, self._queue = self._queue, []
            if order == "reverse":
                items.reverse()
            elif order == "shuffle":
                random.Random(seed).shuffle(items)
            elif order != "fifo":
                raise ValueError(f"unknown order {order!r}")
            return self._deliver(items)

    def redeliver(self, control_numbers: list[int] | None = None, last: int | None = None) -> dict[str, int]:
        """Send already delivered envelopes again, unchanged (same ControlNumber)."""
        with self._lock:
            items = [it for it in self._delivered if control_numbers is None or it[1]["ControlNumber"] in control_numbers]
        if last is not None:
            items = items[-last:]
        with self._deliver_lock:
            summary = self._deliver(items)
        with self._lock:   # a re-sent envelope is not "delivered" twice in the history
            seen: set[tuple[str, int]] = set()
            self._delivered = [it for it in self._delivered
                               if not ((it[0], it[1]["ControlNumber"]) in seen or seen.add((it[0], it[1]["ControlNumber"])))]
        return summary

    def resend(self, control_number: int) -> bool:
        """The Errors tab's Resend."""
        with self._lock:
            items = [it for it in self.errors if it[1]["ControlNumber"] == control_number]
            self.errors = [it for it in self.errors if it[1]["ControlNumber"] != control_number]
        if not items:
            raise KeyError(control_number)
        with self._deliver_lock:
            return self._deliver(items)["failed"] == 0

    def start_auto_delivery(self, interval_s: float = 1.0) -> None:
        self._pump.start(interval_s)

    def stop_auto_delivery(self) -> None:
        self._pump.stop()

    # -- HTTP ---------------------------------------------------------------------------------------
    def _respond(self, status: int, headers: dict[str, str], payload: Any) -> Response:
        """JSON answers (entity, collection, action value, error) with F&O's OData content type and OData-Version;
        $metadata (a str) keeps its own content type; 204 has no body."""
        if payload is None:
            return Response(status_code=status, headers=headers)
        if isinstance(payload, str):
            return Response(payload, status, headers={k: v for k, v in headers.items() if k != "Content-Type"},
                            media_type=headers.get("Content-Type", "text/plain"))
        if status >= 400 and not self.odata_headers_on_errors:
            return JSONResponse(payload, status, headers)
        return JSONResponse(payload, status, odata_headers(headers), media_type=JSON_CONTENT_TYPE)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return fo_error(status, message, headers, odata=self.odata_headers_on_errors)

    def _rate_limit_response(self, retry_after: str | None) -> Response:
        return self._error(429, "Number of requests exeeded the limit of 6000 over the time window of 300 seconds.",
                        {"Retry-After": retry_after or "1"})

    def _server_error_response(self, status: int, retry_after: str | None) -> Response:
        headers = {"Retry-After": retry_after} if retry_after and status in (502, 503) else {}
        return self._error(status, "The service is temporarily unavailable.", headers)

    def _count(self, request: Request) -> None:
        path = request.url.path
        template = re.sub(r"\([^)]*\)", "({keys})", path)
        count_call(self, request, template)

    def _authorized(self, request: Request) -> bool:
        token = bearer_token(request)
        if not token:
            return False
        if self.entra is not None:
            claims = self.entra.validate(token, self.audience)
            return bool(claims) and (self.tenant is None or claims.get("tid", "").lower() == self.tenant.lower())
        return token in self.tokens

    def _throttled(self) -> Response | None:
        if not self.service_protection:
            return None
        limit, window = self.service_protection
        now = time.monotonic()
        with self._lock:
            self._window = [t for t in self._window if now - t < window]
            if len(self._window) >= limit:
                wait = max(1, int(window - (now - self._window[0])) + 1)
                return self._error(429, f"Number of requests exeeded the limit of {limit} over the time window of "
                                     f"{int(window)} seconds.", {"Retry-After": str(wait)})
            self._window.append(now)
        return None

    async def _dispatch(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "Unauthorized", {"WWW-Authenticate": "Bearer"})
        throttled = self._throttled()
        if throttled is not None:
            return throttled
        rest = unquote(request.path_params.get("rest", ""))
        body = await request.body()
        base = str(request.url).split("/data", 1)[0] + "/data"
        if rest == "$batch":
            if request.method != "POST":
                return self._error(405, "$batch takes POST.")
            return self._batch(base, request.headers.get("content-type", ""), body)
        status, headers, payload = self.handle(request.method, rest, list(request.query_params.multi_items()),
                                               dict(request.headers), body, base)
        return self._respond(status, headers, payload)

    def handle(self, method: str, rest: str, query: list[tuple[str, str]], headers: dict[str, str], body: bytes,
               base: str) -> tuple[int, dict[str, str], Any]:
        """One OData request (also used for the operations inside $batch)."""
        try:
            return self._route(method.upper(), rest.strip("/"), query, {k.lower(): v for k, v in headers.items()},
                               body, base)
        except ODataError as e:
            return e.status, e.headers, error_body(e.code, e.message)

    def _route(self, method: str, rest: str, query: list[tuple[str, str]], headers: dict[str, str], body: bytes,
               base: str) -> tuple[int, dict[str, str], Any]:
        q = dict(query)
        cross = q.get("cross-company", "").lower() == "true"
        if rest in ("", "$metadata"):
            if method != "GET":
                raise ODataError(405, "", "Method not allowed.")
            if rest == "":
                return 200, {}, {"@odata.context": f"{base}/$metadata",
                                 "value": [{"name": s, "kind": "EntitySet", "url": s} for s in self.entities]}
            return 200, {"Content-Type": "application/xml"}, self.metadata_xml()
        m = re.match(r"^(?P<set>[A-Za-z0-9_]+)(?:\((?P<keys>.*?)\))?(?:/(?P<tail>.+))?$", rest)
        if not m or m.group("set") not in self.entities:
            # entity set names are case-sensitive: vendorsv2 is not VendorsV2
            raise ODataError(404, "", f"No HTTP resource was found that matches the request URI '{base}/{rest}'.")
        entity = self.entities[m.group("set")]
        if entity.read_only and method != "GET":
            raise ODataError(self.read_only_write_status, "", f"The entity '{NS}.{entity.type_name}' is read-only: "
                                                             f"{method} is not allowed on '{entity.entity_set}'.",
                             {"Allow": "GET"})
        if m.group("keys") is None:
            if m.group("tail"):
                raise ODataError(404, "", f"No HTTP resource was found that matches '{rest}'.")
            if method == "GET":
                return self._collection(entity, query, headers, base, cross)
            if method == "POST":
                return self._create(entity, body, base, cross)
            raise ODataError(405, "", f"{method} is not allowed on a collection.")
        keys = parse_keys(m.group("keys"))
        missing = [k for k in entity.keys if k not in keys]
        extra = [k for k in keys if k not in entity.keys]
        if missing or extra:
            raise ODataError(400, "", f"The key of {entity.type_name} is ({', '.join(entity.keys)}); "
                                      f"missing {missing}, unknown {extra}.")
        if str(keys["dataAreaId"]).lower() != self.default_company and not cross and self.key_read_needs_cross_company:
            raise ODataError(404, "", f"No {entity.type_name} with key {keys} in company {self.default_company}.")
        tail = m.group("tail")
        if tail:
            if not tail.startswith(f"{NS}."):
                raise ODataError(404, "", f"No HTTP resource was found that matches '{rest}'.")
            if method != "POST":
                raise ODataError(405, "", "Actions take POST.")
            return self._action(entity, keys, tail[len(NS) + 1:], body)
        if method == "GET":
            _, row = self._find(entity.entity_set, keys)
            out = self._shape([dict(row)], entity, q)[0]
            return 200, {"ETag": row["@odata.etag"]}, {
                "@odata.context": f"{base}/$metadata#{entity.entity_set}/$entity", **out}
        if method == "PATCH":
            return self._patch(entity, keys, body, headers)
        if method == "DELETE":
            with self._lock:
                key, row = self._find(entity.entity_set, keys)
                self._check_if_match(headers, row)
                del self._rows[entity.entity_set][key]
            return 204, {}, None
        raise ODataError(405, "", f"{method} is not allowed here.")

    @staticmethod
    def _check_if_match(headers: dict[str, str], row: dict[str, Any]) -> None:
        given = (headers.get("if-match") or "").strip()
        if given and given != "*" and given != row["@odata.etag"]:
            raise ODataError(412, "", "The record has been changed by another user (ETag mismatch).")

    def _patch(self, entity: EntityDef, keys: dict[str, Any], body: bytes,
               headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        changes = _json_body(body)
        with self._lock:
            key, row = self._find(entity.entity_set, keys)
            self._check_if_match(headers, row)
            if entity.entity_set == "VendorInvoiceHeaders" and key in self._posted:
                raise ODataError(400, "", "Update is applicable only before posting the vendor invoice.")
            for name, value in changes.items():
                if name.startswith("@odata."):
                    continue
                if name not in entity.props:
                    raise ODataError(400, "", f"Could not find a property named '{name}' on type "
                                              f"'{NS}.{entity.type_name}'.")
                if name in entity.keys:
                    raise ODataError(400, "", f"The key field '{name}' cannot be changed.")
                typ = entity.props[name]
                if typ.startswith("enum:") and value not in ENUMS[typ[5:]]:
                    raise ODataError(400, "", f"'{value}' is not a valid value of {NS}.{typ[5:]}.")
            before = {k: row.get(k) for k in changes}
            row.update({k: v for k, v in changes.items() if not k.startswith("@odata.")})
            row["@odata.etag"] = self._next_etag()
            self._remember(entity.entity_set, key, "by PATCH (API)", before, row)
        return 204, {}, None

    def _create(self, entity: EntityDef, body: bytes, base: str, cross: bool) -> tuple[int, dict[str, str], Any]:
        data = _json_body(body)
        area = str(data.pop("dataAreaId", self.default_company)).lower()
        if area != self.default_company and not cross:
            raise ODataError(400, "", f"Records of company {area} need cross-company=true.")
        props = {k: v for k, v in data.items() if not k.startswith("@odata.")}
        if entity.entity_set == "VendorInvoiceHeaders":
            props.setdefault("HeaderReference", self._number("VIH-"))
        record = self._insert(entity.entity_set, area, props, via="created by POST (API)")
        return 201, {"ETag": record["@odata.etag"]}, {
            "@odata.context": f"{base}/$metadata#{entity.entity_set}/$entity", **record}

    def _action(self, entity: EntityDef, keys: dict[str, Any], name: str, body: bytes) -> tuple[int, dict, Any]:
        handler = self._actions.get((entity.entity_set, name))
        if handler is None:   # the standard product: no such action
            raise ODataError(404, "", f"No HTTP resource was found that matches the request URI "
                                      f"'{entity.entity_set}(...)/{NS}.{name}'.")
        params = _json_body(body) if body else {}
        with self._lock:
            key, row = self._find(entity.entity_set, keys)
            before = dict(row)
            try:
                value = handler(row, params)
            except ODataError:
                row.clear()
                row.update(before)
                raise
            row["@odata.etag"] = self._next_etag()
            self._action_calls[name] += 1
            comment = params.get("Comment") if isinstance(params, dict) else None
            self._remember(entity.entity_set, key, f"by bound action {name} (API)", before, row,
                           note=f"comment: {comment}" if comment else "")
        if value is None:
            return 204, {}, None
        return 200, {}, {"@odata.context": "$metadata#Edm.String", "value": value}

    def _collection(self, entity: EntityDef, query: list[tuple[str, str]], headers: dict[str, str], base: str,
                    cross: bool) -> tuple[int, dict[str, str], Any]:
        q = dict(query)
        known = {"$filter", "$select", "$top", "$skip", "$orderby", "$expand", "$count", "$skiptoken", "cross-company",
                 "$format"}
        for k in q:
            if k.startswith("$") and k not in known:
                raise ODataError(400, "", f"The query parameter '{k}' is not supported.")
        pred = FOFilter(q["$filter"], entity).parse() if q.get("$filter") else None
        hint = equality_hint(pred) if pred is not None else {}
        hide_posted = entity.entity_set == "VendorInvoiceHeaders" and not self.posted_invoices_readable
        with self._lock:
            # Filter the stored rows, then copy only the matches (a copy of every 100-270-property row per
            # request made a lookup cost grow with the whole table). A lookup by keys (an OR of key groups)
            # runs the full filter only on the rows whose keys it names (the hint): same answers as a scan.
            table = self._rows[entity.entity_set]
            named = _hinted_keys(entity, hint, len(table))
            candidates = table.values() if named is None else [table[k] for k in named if k in table]
            rows = [dict(r) for r in candidates
                    if (cross or r["dataAreaId"] == self.default_company)
                    and (not hint or matches_hint(hint, r))
                    and not (hide_posted and self._key_of(entity, r) in self._posted)
                    and (pred is None or pred(r))]
        rows.sort(key=lambda r: self._key_of(entity, r))
        for part in reversed([p.strip() for p in q.get("$orderby", "").split(",") if p.strip()]):
            bits = part.split()
            if bits[0] not in entity.props:
                raise ODataError(400, "", f"Could not find a property named '{bits[0]}' on type "
                                          f"'{NS}.{entity.type_name}'.")
            rows.sort(key=lambda r, p=bits[0]: _sort_key(r.get(p)), reverse=len(bits) > 1 and bits[1] == "desc")
        count = len(rows)
        try:
            skip = int(q.get("$skip", 0))
            top = int(q["$top"]) if "$top" in q else None
            offset = int(base64.b64decode(q["$skiptoken"]).decode()) if "$skiptoken" in q else 0
        except ValueError:
            raise ODataError(400, "", "Invalid $top, $skip or $skiptoken.") from None
        rows = rows[skip:]
        if top is not None:
            rows = rows[:top]
        page_size = self.max_page_size
        pm = re.search(r"odata\.maxpagesize\s*=\s*(\d+)", headers.get("prefer", ""))
        out_headers: dict[str, str] = {}
        if pm and self.honour_maxpagesize:
            page_size = max(1, min(int(pm.group(1)), self.max_page_size))
            out_headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
        page = rows[offset:offset + page_size]
        body: dict[str, Any] = {"@odata.context": f"{base}/$metadata#{entity.entity_set}"}
        if q.get("$count", "").lower() == "true":
            body["@odata.count"] = count
        body["value"] = self._shape(page, entity, q)
        if offset + page_size < len(rows):
            params = [(k, v) for k, v in query if k != "$skiptoken"]
            params.append(("$skiptoken", base64.b64encode(str(offset + page_size).encode()).decode()))
            body["@odata.nextLink"] = f"{base}/{entity.entity_set}?{urlencode(params)}"
        return 200, out_headers, body

    def _shape(self, rows: list[dict[str, Any]], entity: EntityDef, q: dict[str, str]) -> list[dict[str, Any]]:
        expand = [p.strip() for p in q.get("$expand", "").split(",") if p.strip()]
        for nav in expand:
            if "(" in nav or "/" in nav:
                raise ODataError(400, "", f"$expand supports one level only: '{nav}'.")
            if nav not in entity.navigation:
                raise ODataError(400, "", f"Could not find a navigation property named '{nav}' on type "
                                          f"'{NS}.{entity.type_name}'.")
        select = [s.strip() for s in q.get("$select", "").split(",") if s.strip()]
        for name in select:
            if name not in entity.props and name not in expand:
                raise ODataError(400, "", f"Could not find a property named '{name}' on type "
                                          f"'{NS}.{entity.type_name}'.")
        children_of: dict[str, dict[tuple[str, ...], list[dict[str, Any]]]] = {}
        if expand and rows:
            with self._lock:   # one pass over each expanded set per request, not one per parent row
                for nav in expand:
                    target, join = entity.navigation[nav]
                    wanted = {tuple(str(r.get(k, "")).lower() for k in join) for r in rows}
                    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
                    # Lines are stored under their key (the header's join keys first): the stored key's prefix is
                    # the join key, read without building it again for every line of the set.
                    prefix = self.entities[target].keys[:len(join)] == list(join)
                    for stored_key, c in self._rows[target].items():
                        key = stored_key[:len(join)] if prefix else tuple(str(c.get(k, "")).lower() for k in join)
                        if key in wanted:
                            groups.setdefault(key, []).append(dict(c))
                    children_of[nav] = groups
        out = []
        for r in rows:
            shaped = {"@odata.etag": r["@odata.etag"], **({n: r.get(n) for n in select} if select else
                                                           {k: v for k, v in r.items() if k != "@odata.etag"})}
            for nav in expand:
                target, join = entity.navigation[nav]
                children = children_of[nav].get(tuple(str(r.get(k, "")).lower() for k in join), [])
                shaped[nav] = sorted(children, key=lambda c: self._key_of(self.entities[target], c))
            out.append(shaped)
        return out

    # -- $batch ---------------------------------------------------------------------------------------
    def _batch(self, base: str, content_type: str, body: bytes) -> Response:
        parts = _multipart(content_type, body)
        if parts is None:
            return self._error(400, "A $batch request needs a multipart/mixed body with a boundary.")
        operations = sum(len(p) if isinstance(p, list) else 1 for p in parts)
        if operations > MAX_BATCH_OPERATIONS:
            return self._error(400, f"A batch may hold at most {MAX_BATCH_OPERATIONS} operations.")
        boundary = f"batchresponse_{uuid.uuid4()}"
        chunks: list[bytes] = []
        for part in parts:
            if isinstance(part, list):   # a changeset: all or nothing
                with self._lock:
                    snapshot = (copy.deepcopy(self._rows), set(self._posted), Counter(self._action_calls))
                    results = []
                    for op in part:
                        result = self._run_op(op, base)
                        results.append(result)
                        if result[0] >= 400:
                            self._rows, self._posted, self._action_calls = snapshot
                            results = [result]
                            break
                cs = f"changesetresponse_{uuid.uuid4()}"
                inner = b"".join(_http_part(r, cs) for r in results) + f"--{cs}--\r\n".encode()
                if len(results) == 1 and results[0][0] >= 400:
                    chunks.append(_http_part(results[0], boundary))
                else:
                    chunks.append(f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n\r\n".encode()
                                  + inner)
            else:
                chunks.append(_http_part(self._run_op(part, base), boundary))
        payload = b"".join(chunks) + f"--{boundary}--\r\n".encode()
        return Response(payload, 200, odata_headers(), media_type=f"multipart/mixed; boundary={boundary}")

    def _run_op(self, op: tuple[str, str, dict[str, str], bytes], base: str) -> tuple[int, dict[str, str], Any]:
        method, url, headers, body = op
        split = urlsplit(url)
        path = split.path
        if "/data/" in path:
            path = path.split("/data/", 1)[1]
        return self.handle(method, unquote(path), parse_qsl(split.query, keep_blank_values=True), headers, body, base)

    # -- $metadata ------------------------------------------------------------------------------------
    def metadata_xml(self) -> str:
        out = ['<?xml version="1.0" encoding="utf-8"?>',
               '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">',
               "<edmx:DataServices>", f'<Schema Namespace="{NS}" xmlns="http://docs.oasis-open.org/odata/ns/edm">']
        for enum, members in ENUMS.items():
            out.append(f'<EnumType Name="{enum}">')
            out += [f'<Member Name="{m}" Value="{i}"/>' for i, m in enumerate(members)]
            out.append("</EnumType>")
        for e in self.entities.values():
            out.append(f'<EntityType Name="{e.type_name}"><Key>')
            out += [f'<PropertyRef Name="{k}"/>' for k in e.keys]
            out.append("</Key>")
            for name, typ in e.props.items():
                t = edm_type(typ)
                nullable = ' Nullable="false"' if name in e.keys else ""
                out.append(f'<Property Name="{escape(name)}" Type="{t}"{nullable}/>')
            for nav, (target, _) in e.navigation.items():
                out.append(f'<NavigationProperty Name="{nav}" Type="Collection({NS}.{self.entities[target].type_name})"/>')
            out.append("</EntityType>")
        for (entity_set, name) in sorted(self._actions):
            t = self.entities[entity_set].type_name
            out.append(f'<Action Name="{name}" IsBound="true"><Parameter Name="{t}" Type="{NS}.{t}"/>'
                       f'<Parameter Name="Comment" Type="Edm.String"/></Action>')
        out.append('<EntityContainer Name="Resources">')
        out += [f'<EntitySet Name="{e.entity_set}" EntityType="{NS}.{e.type_name}"/>' for e in self.entities.values()]
        out += ["</EntityContainer>", "</Schema>", "</edmx:DataServices>", "</edmx:Edmx>"]
        return "\n".join(out)


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise ODataError(400, "", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ODataError(400, "", "The request body must be a JSON object.")
    return data


def _multipart(content_type: str, body: bytes) -> list | None:
    """Parse a $batch body: a list of operations (method, url, headers, body) or changesets (lists of them)."""
    if "multipart/mixed" not in content_type or "boundary=" not in content_type:
        return None
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    if not message.is_multipart():
        return None
    out: list = []
    for part in message.iter_parts():
        if part.get_content_type() == "multipart/mixed":
            out.append([_http_request(p.get_payload(decode=True) or b"") for p in part.iter_parts()])
        else:
            out.append(_http_request(part.get_payload(decode=True) or b""))
    return out


def _http_request(raw: bytes) -> tuple[str, str, dict[str, str], bytes]:
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    lines = head.decode().split("\n")
    method, url, *_ = lines[0].split(" ")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip()] = v.strip()
    return method, url, headers, body.strip()


def _http_part(result: tuple[int, dict[str, str], Any], boundary: str) -> bytes:
    status, headers, payload = result
    body = b"" if payload is None else (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
    lines = [f"--{boundary}", "Content-Type: application/http", "Content-Transfer-Encoding: binary", "",
             f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}"]
    if payload is not None:
        lines.append("Content-Type: application/json; odata.metadata=minimal")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body + b"\r\n"


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found", 412: "Precondition Failed",
            405: "Method Not Allowed", 429: "Too Many Requests"}
