"""Acumatica contract-based REST API sandbox (API-FACTS §3): a local emulator of one Acumatica instance.

Mount ``AcumaticaSandbox(...).app`` at the instance root. Routes:
- ``/entity/Default/{version}/{Entity}...``: the ``Default`` endpoint in each of ``endpoint_versions`` (all served
  from the vendor's 24.200.001 definition, ``specs/acumatica/Default_24.200.001.openapi.json``); any other
  endpoint name or version -> 404. ``GET .../swagger.json`` answers that definition (the documented export URL).
  Entities emulated: Bill (AP301000), Check (AP302000, vendor payments), PurchaseOrder (PO301000), Vendor
  (AP303000); other entities of the spec -> 501 HttpError "not emulated".
- ``GET /entity``: the endpoints of the instance, ``{"version": {...}, "endpoints": [{"name", "version", "href"}]}``.
  UNCONFIRMED: this shape (and that it needs no sign-in).
- ``/entity/auth/login``, ``/entity/auth/logout``, ``/identity/...``: see ``auth.py``.

Every request under an endpoint is validated against the OpenAPI document (query parameters, JSON body); what it
rejects gets an ``HttpError`` body (400 where the operation documents 400, else 500). One leniency: ``{"value":
null}`` is taken (it clears the field) although the generated schemas type ``value`` as non-null: the contract's
fields are .NET nullables and Acumatica's own Postman examples send it. Every JSON response is
validated too: against the documented schema for its status, or against ``HttpError`` for the error statuses the
spec leaves out (404, 429, 501); a mismatch raises ``ResponseValidationError`` (a sandbox bug). List responses are
validated record by record, each serialized record once per version and shape (cached).

Queries: ``$filter`` (``filter.py``), ``$select`` (top-level fields; ``Detail/Field`` narrows an expanded detail),
``$expand`` (detail arrays and linked entities appear only when expanded), ``$top``/``$skip`` (no nextLink).
Results come in the order of the entity's key fields. UNCONFIRMED: that ordering. ``$custom`` is accepted and
ignored: every record answers ``"custom": {}`` (the sandbox has no custom fields). Records carry ``id``,
``rowNumber`` (1.. within the answer), ``note``, ``custom`` and ``_links`` (``self``, ``files:put``).

Writes: ``PUT /{Entity}`` creates or updates (matched by ``id``, then by the key fields; ``If-None-Match: *`` /
``If-Match: *`` -> 412 as the spec describes) and answers 200 with the entity; rules refused -> 422 with the entity
and per-field ``error``. ``DELETE /{Entity}/{keys}`` or ``/{Entity}/{id}`` -> 204 (404 when absent; 500 for a
released document). Document rules: ``documents.py``.

Actions: ``POST /{Entity}/{Action}`` with ``{"entity": {...}, "parameters": {...}}``. The action must be one the
spec names for the entity (Bill: ReleaseBill, ReleaseRetainage, ReverseBill; Check: ReleaseCheck, VoidCheck;
Vendor: CreateContactFromVendor) or one of the screen actions ``Approve``/``Reject`` through the spec's
``/{Entity}/{actionName}`` route; any other name -> 404 HttpError. UNCONFIRMED: the status and wording for an
unknown action. The record must exist (else 500 "No entity satisfies the condition.", UNCONFIRMED).
- Long-running actions (the named ones): with ``action_polls = n > 0`` the POST answers 202 + ``Location:
  .../{Entity}/{Action}/status/{guid}``; that GET answers 202 n times, then 204 (Location: the record) or, when the
  action failed, 500 with an HttpError whose exceptionMessage says why (a release from the wrong status: "Document
  Status is invalid for processing.", UNCONFIRMED wording). With ``action_polls = 0`` the POST answers 204 (or the
  500) itself. ReleaseRetainage, ReverseBill, VoidCheck, CreateContactFromVendor fail as "not emulated".
- ``Approve``/``Reject`` run at once: 204 + Location of the record, or 500 when the record is not Pending Approval.

Licence limits (``limits``): ``requests_per_minute`` (a sliding minute on the sandbox clock) and
``max_concurrent`` (requests in flight, latency included) -> 429 + Retry-After and an HttpError body; both off
(None) by default; they count requests under ``/entity`` (sign-in included), not ``/identity``. UNCONFIRMED:
Acumatica's body and Retry-After for these, and that excess concurrent requests are refused rather than queued. ``faults`` (common.Faults) adds
latency, forced 429 and 5xx.

People pages (outside limits and faults): ``/Main?ScreenId=AP301000&RefNbr=…`` (a screen's URL, the link the product
writes for a record; ``OrderNbr`` for PO301000, ``AcctCD`` for AP303000; ``CompanyID`` must name the tenant) and
``/_sandbox/``: documents with their state (Status, Hold) and history (created, PUT, actions, a person's changes).
"""

from __future__ import annotations

import json
import math
import re
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sandboxes import pages
from sandboxes.acumatica.auth import AuthServer
from sandboxes.acumatica.documents import Rules
from sandboxes.acumatica.filter import compile_filter
from sandboxes.acumatica.model import (
    ENDPOINT_NAME,
    ENTITIES,
    NUMBER_FIELD,
    SPEC_FILE,
    AcumaticaError,
    EntityError,
    ModClock,
    Projection,
    Table,
    ValueError422,
    entity_actions,
    flat_row,
    format_datetime,
    shape,
    spec,
    to_python,
    unwrap,
    wrap,
)
from sandboxes.acumatica.push import Destination, PushQueue
from sandboxes.common import DeliveryPump, FaultMiddleware, Faults, SandboxClock
from sandboxes.openapi import OpenApiValidator, RequestValidationError, ResponseValidationError
from sandboxes.specs import load_json_spec

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SYNC_ACTIONS = {"Approve", "Reject"}       # screen actions through /{Entity}/{actionName} (UNCONFIRMED names)
HTTP_ERROR = "/components/schemas/HttpError"
NOT_LOGGED_IN = "You are not logged in."   # UNCONFIRMED wording of the 401 body
# People pages: a screen URL's document number parameter (UNCONFIRMED names: the screens' primary key fields), the
# columns each screen's table shows, the fields a new record's history starts with, and what a change leaves out.
SCREEN_NUMBER_PARAMS = ("RefNbr", "OrderNbr", "AcctCD")
PAGE_COLUMNS = {"Bill": ("Type", "ReferenceNbr", "Status", "Hold", "Vendor", "VendorRef", "Amount", "Balance",
                         "Description", "Date"),
                "Check": ("Type", "ReferenceNbr", "Status", "Hold", "Vendor", "PaymentAmount", "PaymentMethod",
                          "ApplicationDate"),
                "PurchaseOrder": ("Type", "OrderNbr", "Status", "Hold", "VendorID", "OrderTotal", "ControlTotal",
                                  "Date"),
                "Vendor": ("VendorID", "VendorName", "Status")}
HISTORY_FIELDS = ("Status", "Hold")
HISTORY_SKIP = ("LastModifiedDateTime", "CreatedDateTime", "id", "rowNumber", "note")
PAGE_TITLES = {"Bill": "Bills and adjustments", "Check": "Checks and payments", "PurchaseOrder": "Purchase orders",
               "Vendor": "Vendors"}


@dataclass
class Limits:
    """Licence limits (None = off)."""

    requests_per_minute: int | None = None
    max_concurrent: int | None = None


_VALIDATOR: OpenApiValidator | None = None
_VALIDATOR_LOCK = threading.Lock()


def validator() -> OpenApiValidator:
    """One validator for the 24.200.001 document per process (compiled schemas are cached inside)."""
    global _VALIDATOR
    with _VALIDATOR_LOCK:
        if _VALIDATOR is None:
            _VALIDATOR = OpenApiValidator(load_json_spec(SPEC_FILE), fast=True)
        return _VALIDATOR


def _error_response(exc: AcumaticaError) -> JSONResponse:
    return JSONResponse(exc.body, exc.status, exc.headers)


class _LimitsMiddleware:
    """Outermost: counts calls, then applies the licence limits (around latency and faults)."""

    def __init__(self, app: ASGIApp, sandbox: AcumaticaSandbox):
        self.app = app
        self.sb = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sb = self.sb
        path = scope["path"]
        with sb._lock:
            sb._calls += 1
            sb.calls_by_path[path] += 1
        if not path.startswith("/entity"):
            await self.app(scope, receive, send)
            return
        refused = sb._admit()
        if refused is not None:
            await refused(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            with sb._lock:
                sb._in_flight -= 1


class AcumaticaSandbox:
    """One Acumatica instance (one tenant) with the Default endpoint in ``endpoint_versions``."""

    def __init__(self, tenant: str = "Company", endpoint_versions: tuple[str, ...] = ("24.200.001",)):
        self.tenant = tenant
        self.endpoint_versions = tuple(endpoint_versions)
        self.clock = SandboxClock()
        self.faults = Faults()
        self.limits = Limits()
        self.action_polls = 1
        self.on_page: Callable[[str, int], None] | None = None
        self.calls_by_path: Counter[str] = Counter()
        self.validate_responses = True
        self._calls = 0
        self._in_flight = 0
        self._limit_429 = 0
        self._window: deque[float] = deque()
        self._lock = threading.RLock()
        self._auth = AuthServer(tenant, self.clock)
        self._mod = ModClock(self.clock)
        self._rules = Rules(self._mod)
        self._tables = {name: Table(name) for name in ENTITIES}
        self._push = PushQueue(tenant, self.clock)
        self._pump = DeliveryPump("acumatica-push", self.deliver_notifications)
        self._actions: Counter[tuple[str, str]] = Counter()
        self._operations: dict[str, dict[str, Any]] = {}
        self._wire_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.spec = validator()
        self._named_actions = {e: entity_actions(e) for e in ENTITIES}
        self.history = pages.RecordHistory()   # record id -> its changes (the people pages show them)
        self._spec_entities = {p.strip("/").split("/")[0] for p in spec()["paths"]}
        self.app = self._build_app()

    # ---------------------------------------------------------------------------------------------------
    # settings the tests drive
    # ---------------------------------------------------------------------------------------------------
    @property
    def access_token_ttl_s(self) -> float:
        return self._auth.access_token_ttl_s

    @access_token_ttl_s.setter
    def access_token_ttl_s(self, value: float) -> None:
        self._auth.access_token_ttl_s = value

    @property
    def refreshes(self) -> int:
        return self._auth.refreshes

    @property
    def authorize_user(self) -> str | None:
        return self._auth.authorize_user

    @authorize_user.setter
    def authorize_user(self, value: str | None) -> None:
        self._auth.authorize_user = value

    @property
    def approval_required(self) -> set[str]:
        return self._rules.approval_required

    @approval_required.setter
    def approval_required(self, value: set[str]) -> None:
        self._rules.approval_required = set(value)

    @property
    def validate_totals(self) -> bool:
        return self._rules.validate_totals

    @validate_totals.setter
    def validate_totals(self, value: bool) -> None:
        self._rules.validate_totals = value

    @property
    def redeliver(self) -> int:
        return self._push.redeliver

    @redeliver.setter
    def redeliver(self, value: int) -> None:
        self._push.redeliver = value

    @property
    def reorder(self) -> bool:
        return self._push.reorder

    @reorder.setter
    def reorder(self, value: bool) -> None:
        self._push.reorder = value

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def served_429(self) -> int:
        return self._limit_429 + self.faults.served_429

    @property
    def notification_deliveries(self) -> list[dict[str, Any]]:
        """Every push POST made: url, body, status (None: no answer)."""
        return list(self._push.deliveries)

    @property
    def dropped_notifications(self) -> int:
        return self._push.dropped_total

    # ---------------------------------------------------------------------------------------------------
    # auth admin
    # ---------------------------------------------------------------------------------------------------
    def register_connected_app(self, client_guid: str, secret: str, redirect_uris: list[str] | tuple[str, ...] = ()
                               ) -> str:
        return self._auth.register_app(client_guid, secret, redirect_uris)

    def add_user(self, username: str, password: str) -> None:
        self._auth.add_user(username, password)

    def expire_access_tokens(self) -> None:
        self._auth.expire_all()

    # ---------------------------------------------------------------------------------------------------
    # seeding API (a person working in the UI)
    # ---------------------------------------------------------------------------------------------------
    def _coerce(self, entity: str, fields: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        shapes = shape(entity)
        for name, value in fields.items():
            fs = shapes.get(name)
            if name in ("id", "note"):
                out[name] = value
            elif fs is None:
                raise ValueError(f"{entity} has no field {name!r} in the endpoint")
            elif fs.kind == "value":
                out[name] = to_python(value, fs.type or "string")
            elif fs.kind == "detail":
                sub = shape(fs.schema or "")
                out[name] = [{k: (to_python(v, sub[k].type or "string") if k in sub and sub[k].kind == "value"
                                  else v) for k, v in row.items()} for row in value]
            else:
                out[name] = dict(value)
        return out

    def _seed(self, entity: str, existing: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            table = self._tables[entity]
            rec = self._rules.save(table, existing, changes)
            self._store(table, existing, rec, via="created in Acumatica" if existing is None else "changed in Acumatica")
            return _flat(rec)

    def add_vendor(self, **fields: Any) -> dict[str, Any]:
        fields.setdefault("VendorName", fields.get("VendorID") or "Vendor")
        return self._seed("Vendor", None, self._coerce("Vendor", fields))

    def add_bill(self, *, vendor: str, amount: float, lines: list[float] | None = None, tax_total: float = 0.0,
                 hold: bool = True, **fields: Any) -> dict[str, Any]:
        lines = [amount] if lines is None else lines
        details = [{"Amount": float(x), "ExtendedCost": float(x), "Qty": 1.0, "UnitCost": float(x),
                    "Description": f"Line {i + 1}"} for i, x in enumerate(lines)]
        base = {"Type": "Bill", "Vendor": vendor, "Amount": float(amount), "TaxTotal": float(tax_total),
                "Hold": hold, "Date": self.clock.now().date().isoformat(), "CurrencyID": "USD", "Details": details}
        base.update(fields)
        return self._seed("Bill", None, self._coerce("Bill", base))

    def add_check(self, *, vendor: str, amount: float, hold: bool = True, **fields: Any) -> dict[str, Any]:
        base = {"Type": "Payment", "Vendor": vendor, "PaymentAmount": float(amount), "Hold": hold,
                "PaymentMethod": "CHECK", "CashAccount": "10200", "CurrencyID": "USD",
                "ApplicationDate": self.clock.now().date().isoformat(), "UnappliedBalance": float(amount)}
        base.update(fields)
        return self._seed("Check", None, self._coerce("Check", base))

    def add_purchase_order(self, *, vendor: str, lines: list[float], control_total: float | None = None,
                           hold: bool = True, **fields: Any) -> dict[str, Any]:
        details = [{"OrderQty": 1.0, "UnitCost": float(x), "ExtendedCost": float(x), "LineNbr": i + 1,
                    "LineType": "Non-Stock"} for i, x in enumerate(lines)]
        base: dict[str, Any] = {"Type": "Normal", "VendorID": vendor, "Hold": hold, "CurrencyID": "USD",
                                "Date": self.clock.now().date().isoformat(), "Details": details}
        if control_total is not None:
            base["ControlTotal"] = float(control_total)
        base.update(fields)
        return self._seed("PurchaseOrder", None, self._coerce("PurchaseOrder", base))

    def _find(self, entity: str, keys: tuple[str, ...] | str) -> dict[str, Any]:
        rec = self._tables[entity].find(keys)
        if rec is None:
            raise KeyError(f"{entity} {keys!r} not found")
        return rec

    def update_document(self, entity: str, keys: tuple[str, ...] | str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            return self._seed(entity, self._find(entity, keys), self._coerce(entity, fields))

    def _transition(self, entity: str, keys: tuple[str, ...] | str, how: Callable[[dict[str, Any]], dict[str, Any]],
                    via: str) -> dict[str, Any]:
        with self._lock:
            table = self._tables[entity]
            old = self._find(entity, keys)
            new = how(old)
            self._store(table, old, new, via=via)
            return _flat(new)

    def approve(self, entity: str, keys: tuple[str, ...] | str) -> dict[str, Any]:
        return self._transition(entity, keys, lambda r: self._rules.approve(entity, r, True), "approved in Acumatica")

    def reject(self, entity: str, keys: tuple[str, ...] | str) -> dict[str, Any]:
        return self._transition(entity, keys, lambda r: self._rules.approve(entity, r, False), "rejected in Acumatica")

    def release(self, entity: str, keys: tuple[str, ...] | str) -> dict[str, Any]:
        return self._transition(entity, keys, lambda r: self._rules.release(entity, r), "released in Acumatica")

    def delete_document(self, entity: str, keys: tuple[str, ...] | str) -> None:
        with self._lock:
            rec = self._find(entity, keys)
            self._delete(entity, rec)

    def get_document(self, entity: str, keys: tuple[str, ...] | str) -> dict[str, Any]:
        with self._lock:
            return _flat(self._find(entity, keys))

    def documents(self, entity: str) -> list[dict[str, Any]]:
        with self._lock:
            return [_flat(r) for r in self._tables[entity].rows()]

    def action_calls(self, entity: str, action: str) -> int:
        return self._actions[(entity, action)]

    # ---------------------------------------------------------------------------------------------------
    # push notifications
    # ---------------------------------------------------------------------------------------------------
    def add_push_destination(self, name: str, url: str, *, query: str, entity: str, fields: list[str],
                             header_name: str | None = None, header_value: str | None = None,
                             verify: bool | str = True) -> None:
        if entity not in ENTITIES:
            raise ValueError(f"entity {entity!r} is not emulated")
        unknown = [f for f in fields if f not in shape(entity) and f != "id"]
        if unknown:
            raise ValueError(f"{entity} has no fields {unknown}")
        self._push.add(Destination(name, url, query, entity, list(fields), header_name, header_value, verify))

    def deliver_notifications(self) -> dict[str, int]:
        return self._push.deliver()

    def pending_notifications(self) -> int:
        return self._push.pending()

    def start_auto_delivery(self, interval_s: float = 1.0) -> None:
        self._pump.start(interval_s)

    def stop_auto_delivery(self) -> None:
        self._pump.stop()

    # ---------------------------------------------------------------------------------------------------
    # store
    # ---------------------------------------------------------------------------------------------------
    def _store(self, table: Table, old: dict[str, Any] | None, new: dict[str, Any], *, via: str) -> None:
        if old is not None:
            table.remove(old)
        table.insert(new)
        if old is None or old is not new:
            self._push.record_change(table.entity, old, new, flat_row)
            state = [f for f in HISTORY_FIELDS if f in new] if old is None else ()
            changes = [(f, None, new.get(f)) for f in state] if old is None else \
                pages.RecordHistory.diff(old, new, skip=HISTORY_SKIP)
            if old is None or changes:
                self.history.record(str(new["id"]).lower(), via, changes, at=self.clock.now())

    def _delete(self, entity: str, rec: dict[str, Any]) -> None:
        if not self._rules.deletable(entity, rec):
            raise AcumaticaError(500, "An error has occurred.", "The released document cannot be deleted.",
                                 "PX.Data.PXException")
        self._tables[entity].remove(rec)
        self._push.record_change(entity, rec, None, flat_row)
        self.history.forget(str(rec["id"]).lower())

    # ---------------------------------------------------------------------------------------------------
    # limits
    # ---------------------------------------------------------------------------------------------------
    def _admit(self) -> Response | None:
        """Take a request in (in-flight +1) or answer the 429 (licence limits)."""
        with self._lock:
            lim = self.limits
            if lim.max_concurrent is not None and self._in_flight >= lim.max_concurrent:
                self._limit_429 += 1
                return self._limit_response("1", "The maximum number of concurrent API requests allowed by the "
                                                 "license has been exceeded.")
            if lim.requests_per_minute is not None:
                now = self.clock.timestamp()
                while self._window and self._window[0] <= now - 60:
                    self._window.popleft()
                if len(self._window) >= lim.requests_per_minute:
                    self._limit_429 += 1
                    wait = max(1, math.ceil(self._window[0] + 60 - now))
                    return self._limit_response(str(wait), "The maximum number of API requests per minute "
                                                           "allowed by the license has been exceeded.")
                self._window.append(now)
            self._in_flight += 1
            return None

    @staticmethod
    def _limit_response(retry_after: str | None, text: str) -> Response:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return JSONResponse({"message": "Too Many Requests", "exceptionMessage": text,
                             "exceptionType": "PX.Api.ApiLimitExceededException", "stackTrace": None}, 429, headers)

    def _rate_limit_response(self, retry_after: str | None) -> Response:
        return self._limit_response(retry_after, "The request was throttled.")

    @staticmethod
    def _server_error_response(status: int, retry_after: str | None) -> Response:
        headers = {"Retry-After": retry_after} if retry_after and status in (502, 503) else {}
        return JSONResponse({"message": "An error has occurred.", "exceptionMessage": "The service is unavailable.",
                             "exceptionType": "System.Exception", "stackTrace": None}, status, headers)

    # ---------------------------------------------------------------------------------------------------
    # HTTP
    # ---------------------------------------------------------------------------------------------------
    def _build_app(self) -> ASGIApp:
        auth = self._auth
        routes = [
            Route("/entity", self._endpoints, methods=["GET"]),
            Route("/entity/auth/login", self._login, methods=["POST"]),
            Route("/entity/auth/logout", auth.logout, methods=["POST"]),
            Route("/identity/connect/token", auth.token, methods=["POST"]),
            Route("/identity/connect/authorize", auth.authorize, methods=["GET"]),
            Route("/identity/.well-known/openid-configuration", auth.discovery, methods=["GET"]),
            Route("/entity/{endpoint}/{version}/{rest:path}", self._dispatch,
                  methods=["GET", "PUT", "POST", "DELETE", "PATCH"]),
        ]
        inner = FaultMiddleware(Starlette(routes=routes), self.faults, self._rate_limit_response,
                                self._server_error_response)
        web = Starlette(routes=[Route("/Main", self._web_page, methods=["GET"]),
                                Route("/_sandbox/", self._web_page, methods=["GET"])])
        return pages.PagesFirst(_LimitsMiddleware(inner, self), web, lambda path: path in ("/Main", "/_sandbox/"))

    # -- people pages ------------------------------------------------------------------------------------
    async def _web_page(self, request: Request) -> Response:
        """``/Main?ScreenId=…&RefNbr=…`` (one screen's document) or every document of every screen."""
        esc, q = pages.esc, request.query_params
        title = f"Acumatica · {self.tenant}"
        nav = {"All documents": "/_sandbox/"}
        if q.get("CompanyID") and q["CompanyID"].lower() != self.tenant.lower():
            return pages.page(title, f"<p>No tenant {esc(q['CompanyID'])} on this instance.</p>", status=404, nav=nav)
        entities = list(ENTITIES)
        number = None
        if q.get("ScreenId"):
            entities = [e for e, d in ENTITIES.items() if d["screen"] == q["ScreenId"].upper()]
            if not entities:
                return pages.page(title, f"<p>Screen {esc(q['ScreenId'])} is not emulated.</p>", status=404, nav=nav)
            number = next((q[p] for p in SCREEN_NUMBER_PARAMS if q.get(p)), None)
        parts, found = [], 0
        with self._lock:
            for entity in entities:
                rows = [r for r in self._tables[entity].rows()
                        if number is None or str(r.get(NUMBER_FIELD[entity]) or "").lower() == number.lower()]
                found += len(rows)
                parts.append(self._web_table(entity, rows))
        if number is not None and not found:
            return pages.page(title, f"<p>No {esc(entities[0])} {esc(number)}.</p>", status=404, nav=nav)
        return pages.page(title, *parts, nav=nav)

    def _web_table(self, entity: str, rows: list[dict[str, Any]], limit: int = 500) -> str:
        cols = PAGE_COLUMNS[entity]
        screen = ENTITIES[entity]["screen"]
        param = {"Bill": "RefNbr", "Check": "RefNbr", "PurchaseOrder": "OrderNbr", "Vendor": "AcctCD"}[entity]
        out = []
        for r in rows[:limit]:
            flat = _flat(r)
            number = flat.get(NUMBER_FIELD[entity])
            href = f"/Main?{urlencode({'CompanyID': self.tenant, 'ScreenId': screen, param: number})}"
            cells = [pages.link(href, number)] + [pages.esc(pages.show(flat.get(c))) for c in cols
                                                  if c != NUMBER_FIELD[entity]]
            cells.append(pages.history_html(self.history.of(str(r["id"]).lower())))
            out.append(cells)
        more = f"<p>… and {len(rows) - limit} more.</p>" if len(rows) > limit else ""
        heads = [NUMBER_FIELD[entity], *(c for c in cols if c != NUMBER_FIELD[entity]), "History"]
        return f"<h3>{PAGE_TITLES[entity]} ({len(rows)}) <small>{screen}</small></h3>" + pages.table(heads, out) + more

    async def _login(self, request: Request) -> Response:
        return await self._auth.login(request, self._plain_error)

    @staticmethod
    def _plain_error(status: int, message: str, exception_message: str) -> Response:
        return _error_response(AcumaticaError(status, message, exception_message, "PX.Data.PXException"))

    async def _endpoints(self, request: Request) -> Response:
        root = request.scope.get("root_path", "")
        return JSONResponse({
            "version": {"acumaticaBuildVersion": "24.200.0001", "databaseVersion": "24.200.0001"},
            "endpoints": [{"name": ENDPOINT_NAME, "version": v, "href": f"{root}/entity/{ENDPOINT_NAME}/{v}/"}
                          for v in self.endpoint_versions],
        })

    async def _dispatch(self, request: Request) -> Response:
        endpoint, version = request.path_params["endpoint"], request.path_params["version"]
        rest = request.path_params["rest"].strip("/")
        if endpoint != ENDPOINT_NAME or version not in self.endpoint_versions:
            return self._respond(None, 404, AcumaticaError(
                404, f"No endpoint {endpoint}/{version} is defined on this instance.").body)
        if self._auth.principal(request) is None:
            return self._respond(None, 401, {"message": NOT_LOGGED_IN})
        raw = await request.body()
        try:
            return self._handle(request, version, rest, raw)
        except AcumaticaError as exc:
            return self._respond(getattr(exc, "op_path", None), exc.status, exc.body, exc.headers,
                                 method=request.method)
        except EntityError as exc:
            body = wrap(exc.entity, exc.rec, None, None, errors=exc.errors)
            return self._respond(getattr(exc, "op_path", None), 422, body, method=request.method)

    def _handle(self, request: Request, version: str, rest: str, raw: bytes) -> Response:
        method = request.method.upper()
        segments = [unquote(s) for s in rest.split("/")] if rest else []
        if segments == ["swagger.json"] and method == "GET":
            return JSONResponse(spec())
        if not segments:
            raise AcumaticaError(404, "The requested resource was not found.")
        entity = segments[0]
        if entity not in self._spec_entities:
            raise AcumaticaError(404, f"No entity named '{entity}' is defined in the {ENDPOINT_NAME}/{version} "
                                      f"endpoint.")
        if entity not in ENTITIES:
            raise AcumaticaError(501, f"The sandbox does not emulate the {entity} entity.")
        base = f"{request.scope.get('root_path', '')}/entity/{ENDPOINT_NAME}/{version}/{entity}"
        query: dict[str, list[str]] = {}
        for k, v in request.query_params.multi_items():
            query.setdefault(k, []).append(v)
        n = len(segments)
        if n == 4 and segments[2] == "status" and method == "GET":
            return self._action_status(entity, segments[1], segments[3], base)
        if n == 1 and method == "GET":
            op_path = f"/{entity}"
            self._validate(method, op_path, query, raw)
            return self._list(entity, query, base, op_path)
        if n == 1 and method == "PUT":
            op_path = f"/{entity}"
            body = self._validate(method, op_path, query, raw)
            return self._put(request, entity, query, body, base, op_path)
        if n == 2 and method == "POST":
            action = segments[1]
            named = action in self._named_actions[entity]
            op_path = f"/{entity}/{action}" if named else f"/{entity}/{{actionName}}"
            if not named and action not in SYNC_ACTIONS:
                raise AcumaticaError(404, f"The action {action} is not defined for the {entity} entity.")
            body = self._validate(method, f"/{entity}/{action}", query, raw, op_path)
            return self._action(entity, action, body, base, op_path)
        if n == 2 and segments[1] == "$adHocSchema" and method == "GET":
            self._validate(method, f"/{entity}/$adHocSchema", query, raw)
            return self._respond(f"/{entity}/$adHocSchema", 200, {"custom": {}}, method="GET")
        if n >= 2 and method in ("GET", "DELETE") and segments[1] not in ("$adHocSchema",):
            op_path = f"/{entity}/{{ids}}"
            self._validate(method, f"/{entity}/_", query, raw, op_path)
            ref: tuple[str, ...] | str = segments[1] if n == 2 and GUID_RE.match(segments[1]) else tuple(segments[1:])
            with self._lock:
                rec = self._tables[entity].find(ref)
                if rec is None:
                    raise AcumaticaError(404, "No entity satisfies the condition.")
                if method == "DELETE":
                    self._delete(entity, rec)
                    return Response(status_code=204)
                proj = self._projection(entity, query)
                body = self._wire(entity, rec, proj, base)
            return self._respond(op_path, 200, {**body, "rowNumber": 1}, method=method)
        if n >= 3 and segments[-2] == "files" and method == "PUT":
            raise AcumaticaError(501, "The sandbox does not emulate file attachments.")
        raise AcumaticaError(405 if method not in ("GET", "PUT", "POST", "DELETE") else 404,
                             f"No operation {method} /{rest} in the {ENDPOINT_NAME}/{version} endpoint.")

    # -- validation --------------------------------------------------------------------------------------
    def _validate(self, method: str, path: str, query: dict[str, list[str]], raw: bytes,
                  op_path: str | None = None) -> Any:
        body: Any = None
        has_body = bool(raw.strip())
        op = self.spec.find_operation(method, path)
        documented = set(op.spec.get("responses", {})) if op is not None else set()
        status = 400 if "400" in documented else 500
        if has_body:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                err = AcumaticaError(status, "The request is invalid.", f"Error parsing the request body: {exc}",
                                     "Newtonsoft.Json.JsonReaderException")
                err.op_path = op_path or path  # type: ignore[attr-defined]
                raise err from None
        try:
            self.spec.validate_request(method, path, query, _without_null_values(body), has_body=has_body)
        except RequestValidationError as exc:
            model_state = {k: [v] for k, v in exc.field_errors.items()}
            if exc.messages:
                model_state["body"] = exc.messages
            err = AcumaticaError(status, "The request is invalid.", str(exc), "System.ArgumentException",
                                 model_state)
            err.op_path = op_path or path  # type: ignore[attr-defined]
            raise err from None
        return body

    def _respond(self, op_path: str | None, status: int, body: Any, headers: dict[str, str] | None = None, *,
                 method: str = "GET", validated: bool = False) -> Response:
        if body is None or status == 204:
            return Response(status_code=status, headers=headers)
        if self.validate_responses and not validated:
            op = self.spec.find_operation(method, op_path) if op_path else None
            if op is not None and str(status) in op.spec.get("responses", {}):
                self.spec.validate_response(method, op_path or "", status, body)
            else:
                errors = self.spec.schema_errors(HTTP_ERROR, body)
                if errors:
                    raise ResponseValidationError(f"{method} {op_path} -> {status}: " + "; ".join(errors))
        return JSONResponse(body, status, headers)

    # -- queries -----------------------------------------------------------------------------------------
    def _projection(self, entity: str, query: dict[str, list[str]]) -> Projection:
        shapes = shape(entity)
        expand: set[str] = set()
        for item in _csv(query.get("$expand")):
            head = item.split("/")[0]
            fs = shapes.get(head)
            if fs is None or fs.kind == "value":
                raise AcumaticaError(500, "An error has occurred.",
                                     f"The entity {entity} has no detail or linked entity named '{head}'.",
                                     "PX.Api.ContractBased.InvalidEntityException")
            expand.add(head)
        select: set[str] | None = None
        sub: dict[str, set[str]] = {}
        items = _csv(query.get("$select"))
        if items:
            select = set()
            for item in items:
                head, _, rest = item.partition("/")
                if head not in shapes:
                    raise AcumaticaError(500, "An error has occurred.",
                                         f"The entity {entity} has no field named '{head}'.",
                                         "PX.Api.ContractBased.InvalidEntityException")
                select.add(head)
                if rest:
                    sub.setdefault(head, set()).add(rest.split("/")[0])
        return Projection(frozenset(select) if select is not None else None, frozenset(expand),
                          {k: frozenset(v) for k, v in sub.items()})

    def _wire(self, entity: str, rec: dict[str, Any], proj: Projection, base: str) -> dict[str, Any]:
        """The serialized record (cached per record version and shape; validated once when made)."""
        key = (entity, rec["id"], rec.get("LastModifiedDateTime"), base, proj.key())
        wire = self._wire_cache.get(key)
        if wire is None:
            wire = wrap(entity, rec, proj, base)
            if self.validate_responses:
                errors = self.spec.schema_errors(f"/components/schemas/{entity}", wire)
                if errors:
                    raise ResponseValidationError(f"{entity} record {rec['id']}: " + "; ".join(errors))
            if len(self._wire_cache) > 50_000:
                self._wire_cache.clear()
            self._wire_cache[key] = wire
        return wire

    def _list(self, entity: str, query: dict[str, list[str]], base: str, op_path: str) -> Response:
        proj = self._projection(entity, query)
        flt = (query.get("$filter") or [""])[-1].strip()
        pred = compile_filter(flt, entity) if flt else None
        skip = int((query.get("$skip") or ["0"])[-1])
        top_raw = query.get("$top")
        top = int(top_raw[-1]) if top_raw else None
        if skip < 0 or (top is not None and top < 0):
            raise AcumaticaError(500, "An error has occurred.", "$top and $skip must not be negative.",
                                 "System.ArgumentOutOfRangeException")
        out: list[dict[str, Any]] = []
        with self._lock:
            rows = self._tables[entity].rows()
            if pred is not None:
                rows = [r for r in rows if pred(r)]
            end = None if top is None else skip + top
            for i, rec in enumerate(rows[skip:end]):
                wire = self._wire(entity, rec, proj, base)
                out.append({**wire, "rowNumber": i + 1})
        response = self._respond(op_path, 200, out, method="GET", validated=True)
        if self.on_page is not None:
            self.on_page(entity, skip)
        return response

    # -- writes ------------------------------------------------------------------------------------------
    def _put(self, request: Request, entity: str, query: dict[str, list[str]], body: Any, base: str,
             op_path: str) -> Response:
        try:
            return self._put_entity(request, entity, query, body, base, op_path)
        except EntityError as exc:
            exc.op_path = op_path  # type: ignore[attr-defined]
            raise

    def _put_entity(self, request: Request, entity: str, query: dict[str, list[str]], body: Any, base: str,
                    op_path: str) -> Response:
        proj = self._projection(entity, query)
        try:
            changes = unwrap(entity, body)
        except ValueError422 as exc:
            raise EntityError(entity, {"id": body.get("id") or str(uuid.uuid4())}, exc.errors) from None
        with self._lock:
            table = self._tables[entity]
            existing = None
            if changes.get("id"):
                existing = table.by_id.get(str(changes["id"]).lower())
            if existing is None and all(changes.get(k) for k in table.key_fields):
                existing = table.find(tuple(str(changes[k]) for k in table.key_fields))
            flt = (query.get("$filter") or [""])[-1].strip()
            if existing is None and flt:
                pred = compile_filter(flt, entity)
                existing = next((r for r in table.rows() if pred(r)), None)
            if request.headers.get("if-none-match") == "*" and existing is not None:
                raise AcumaticaError(412, "The entity already exists.",
                                     "An entity with these keys already exists and cannot be inserted.",
                                     "PX.Api.ContractBased.PreconditionFailedException")
            if request.headers.get("if-match") == "*" and existing is None:
                raise AcumaticaError(412, "The entity does not exist.",
                                     "No entity with these keys exists to be updated.",
                                     "PX.Api.ContractBased.PreconditionFailedException")
            rec = self._rules.save(table, existing, changes)
            self._store(table, existing, rec, via="by PUT (API)")
            wire = self._wire(entity, rec, proj, base)
        return self._respond(op_path, 200, {**wire, "rowNumber": 1}, method="PUT")

    # -- actions -----------------------------------------------------------------------------------------
    def _action(self, entity: str, action: str, body: Any, base: str, op_path: str) -> Response:
        with self._lock:
            self._actions[(entity, action)] += 1
        target = body.get("entity") or {}
        try:
            changes = unwrap(entity, target)
        except ValueError422:
            changes = {}
        with self._lock:
            table = self._tables[entity]
            rec = table.by_id.get(str(changes.get("id", "")).lower()) if changes.get("id") else None
            if rec is None and all(changes.get(k) for k in table.key_fields):
                rec = table.find(tuple(str(changes[k]) for k in table.key_fields))
            if rec is None:
                err = AcumaticaError(500, "An error has occurred.", "No entity satisfies the condition.",
                                     "PX.Api.ContractBased.NoEntitySatisfiesTheConditionException")
                err.op_path = op_path  # type: ignore[attr-defined]
                raise err
            failure: str | None = None
            try:
                if action in SYNC_ACTIONS:
                    new = self._rules.approve(entity, rec, action == "Approve")
                elif action in ("ReleaseBill", "ReleaseCheck"):
                    new = self._rules.release(entity, rec)
                else:
                    raise ValueError(f"The sandbox does not emulate the {action} action.")
                self._store(table, rec, new, via=f"by action {action} (API)")
                rec = new
            except ValueError as exc:
                failure = str(exc).split(": ", 1)[-1] if action in SYNC_ACTIONS else str(exc)
            location = f"{base}/{rec['id']}"
            if action in SYNC_ACTIONS or self.action_polls <= 0:
                if failure is not None:
                    err = AcumaticaError(500, "An error has occurred.", failure, "PX.Data.PXException")
                    err.op_path = op_path  # type: ignore[attr-defined]
                    raise err
                return Response(status_code=204, headers={"Location": location})
            op_id = str(uuid.uuid4())
            self._operations[op_id] = {"entity": entity, "action": action, "polls": self.action_polls,
                                       "failure": failure, "location": location}
        return Response(status_code=202, headers={"Location": f"{base}/{action}/status/{op_id}"})

    def _action_status(self, entity: str, action: str, op_id: str, base: str) -> Response:
        with self._lock:
            op = self._operations.get(op_id.lower())
            if op is None or op["entity"] != entity or op["action"] != action:
                raise AcumaticaError(404, "The operation was not found.")
            if op["polls"] > 0:
                op["polls"] -= 1
                return Response(status_code=202, headers={"Location": f"{base}/{action}/status/{op_id}"})
            if op["failure"] is not None:
                raise AcumaticaError(500, "An error has occurred.", op["failure"], "PX.Data.PXException")
            return Response(status_code=204, headers={"Location": op["location"]})


def _without_null_values(node: Any) -> Any:
    """The body as validated: ``{"value": null}`` -> ``{}``. The generated schemas type ``value`` as non-null, but the
    contract's fields are .NET nullables and Acumatica's own examples send ``{"value": null}`` (it clears the field)."""
    if isinstance(node, dict):
        return {k: _without_null_values(v) for k, v in node.items() if not (k == "value" and v is None)}
    if isinstance(node, list):
        return [_without_null_values(v) for v in node]
    return node


def _csv(values: list[str] | None) -> list[str]:
    if not values:
        return []
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def _flat(rec: dict[str, Any]) -> dict[str, Any]:
    """A stored record as plain values (date-times as ISO strings); a copy the caller may keep."""
    def conv(v: Any) -> Any:
        if isinstance(v, datetime):
            return format_datetime(v)
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(rec)

