"""Acumatica contract-based REST client over ``core.http.ResilientClient``.

Per customer: the instance URL (with its site path, e.g. ``https://erp.example.com/AcumaticaERP``), the
tenant (company), the endpoint name and version (``Default`` / ``24.200.001``: URLs are
``{instance}/entity/{name}/{version}/{Entity}``, API-FACTS §3), and the sign-in: an OAuth token provider
(``AcumaticaTokenProvider``) or a cookie session (``AcumaticaCookieSession``).

Rules this client keeps:
- records are flat dicts: value objects are unwrapped on read and wrapped on write in ``models`` only;
- paging is ``$top``/``$skip`` (Acumatica has no nextLink). Pages overlap by one row and are anchored on
  the rows already seen, so a record that leaves the result between two pages (it was modified out of a
  window, or deleted) neither makes the next page skip a row nor repeats one (``_stable_pages``);
- ``$filter`` literals follow OData (``literal``); httpx URL-encodes the whole option, so a
  ``datetimeoffset'…+00:00'`` literal arrives intact (API-FACTS §3: it must be URL-encoded);
- every request holds one of ``max_concurrent`` slots (the licence caps concurrent API requests); 429 /
  503 are retried with Retry-After by ResilientClient, as are transport errors and the other 5xx of reads.
  Writes (PUT) and actions are not re-sent on a 500 (Acumatica answers its business exceptions with 500
  and an HttpError body; the change may or may not have happened: the caller reads the state first);
- a 401 refreshes the token once (ResilientClient) or signs the cookie session in again once;
- long-running actions answer 202 + Location; the Location is polled (on the instance's own origin only)
  until 204;
- errors carry Acumatica's ``HttpError`` fields (message / exceptionMessage), never a secret, and derive
  from ``core.http.ApiError`` (so ``core.failures`` classifies them) and ``AcumaticaError``.
No Dagster, no sandbox imports.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from connector_pipelines.core.http import ApiError, ResilientClient, RetrySettings, TokenProvider, ssl_context
from connector_pipelines.core.odata import or_chunks
from connector_pipelines.systems.acumatica.auth import (
    AcumaticaCookieSession,
    AcumaticaError,
    http_error_text,
)
from connector_pipelines.systems.acumatica.models import (
    KEY_FIELDS,
    field_errors,
    key_values,
    record_url,
    unwrap,
    wrap,
)

SYSTEM = "acumatica"
DEFAULT_ENDPOINT = "Default"
DEFAULT_VERSION = "24.200.001"
DEFAULT_PAGE_SIZE = 500
DEFAULT_MAX_FILTER_CHARS = 1000   # before URL-encoding; IIS refuses query strings over 2,048 bytes by default
MODIFIED_FIELD = "LastModifiedDateTime"


# -- errors ------------------------------------------------------------------------------------------

class AcumaticaApiError(ApiError, AcumaticaError):
    """Acumatica answered an error: ``status``, ``body`` and the ``HttpError`` fields, never a secret."""

    def __init__(self, method: str, url: str, status: int, body: Any, *, detail: str | None = None) -> None:
        super().__init__(SYSTEM, method, url, status, body)
        fields = body if isinstance(body, dict) else {}
        self.message: str | None = fields.get("message") if isinstance(fields.get("message"), str) else None
        self.exception_message: str | None = fields.get("exceptionMessage")
        self.exception_type: str | None = fields.get("exceptionType")
        self.args = (f"Acumatica {method} {url} -> HTTP {status}: {detail or http_error_text(body)}",)


class AcumaticaEndpointError(AcumaticaApiError):
    """The pinned endpoint name/version is not on the instance; ``available`` lists ``name/version`` it has."""

    def __init__(self, method: str, url: str, status: int, body: Any, *, wanted: str, available: list[str],
                 detail: str) -> None:
        super().__init__(method, url, status, body, detail=detail)
        self.wanted = wanted
        self.available = available
        self.args = (detail,)


class AcumaticaValidationError(AcumaticaApiError):
    """A 422: the record was refused; ``fields`` maps field paths (``Details[0].Qty``) to Acumatica's errors."""

    def __init__(self, method: str, url: str, status: int, body: Any) -> None:
        self.fields = field_errors(body)
        self.record = unwrap(body) if isinstance(body, dict) else None
        detail = "; ".join(f"{k or 'record'}: {v}" for k, v in self.fields.items()) or http_error_text(body)
        super().__init__(method, url, status, body, detail=detail)


class AcumaticaActionError(AcumaticaApiError):
    """An action was refused or failed (``exception_message`` is the vendor's reason), or timed out (status 408)."""

    def __init__(self, method: str, url: str, status: int, body: Any, *, detail: str | None = None,
                 timed_out: bool = False) -> None:
        self.fields = field_errors(body) if isinstance(body, dict) and "message" not in body else {}
        if detail is None and self.fields:
            detail = "; ".join(f"{k or 'record'}: {v}" for k, v in self.fields.items())
        super().__init__(method, url, status, body, detail=detail)
        self.timed_out = timed_out


# -- literals ----------------------------------------------------------------------------------------

def datetimeoffset(value: datetime) -> str:
    """``datetimeoffset'2026-12-03T10:00:00.000+00:00'`` (naive = UTC; sent in UTC, milliseconds)."""
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return f"datetimeoffset'{text}'"


def literal(value: Any) -> str:
    """An OData literal for ``$filter``: ``'O''Brien'``, ``true``/``false``, numbers bare, ``null``,
    datetimes as ``datetimeoffset'…'``, dates as ``datetimeoffset'YYYY-MM-DD'``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, datetime):
        return datetimeoffset(value)
    if isinstance(value, date):
        return f"datetimeoffset'{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


def filter_eq_any(field: str, values: Iterable[Any]) -> str:
    """``(F eq 'a' or F eq 'b')`` (Acumatica has no ``in``); ``values`` de-duplicated, order kept."""
    unique = list(dict.fromkeys(values))
    if not unique:
        raise ValueError(f"filter_eq_any({field!r}) needs at least one value")
    return "(" + " or ".join(f"{field} eq {literal(v)}" for v in unique) + ")"


def _names(fields: Iterable[str] | str | None) -> list[str]:
    if not fields:
        return []
    items = fields.split(",") if isinstance(fields, str) else list(fields)
    return [f.strip() for f in items if f and f.strip()]


def _join(fields: Iterable[str] | str | None, *required: str) -> str | None:
    names = _names(fields)
    if not names:
        return None
    return ",".join(dict.fromkeys([*required, *names]))


# -- the client --------------------------------------------------------------------------------------

class AcumaticaClient:
    system = SYSTEM

    def __init__(self, http: ResilientClient, instance_url: str, *, endpoint_name: str = DEFAULT_ENDPOINT,
                 endpoint_version: str = DEFAULT_VERSION, tenant: str | None = None, max_concurrent: int = 4,
                 page_size: int = DEFAULT_PAGE_SIZE, session: AcumaticaCookieSession | None = None) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.http = http
        self.instance_url = instance_url.rstrip("/")
        self.endpoint_name = endpoint_name
        self.endpoint_version = endpoint_version
        self.tenant = tenant
        self.max_concurrent = max_concurrent
        self.page_size = max(2, page_size)   # pages overlap by one row
        self.session = session
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.stats = {"pages": 0, "backoffs": 0, "polls": 0}
        self._stats_lock = threading.Lock()

    @classmethod
    def connect(cls, instance_url: str, *, endpoint_name: str = DEFAULT_ENDPOINT,
                endpoint_version: str = DEFAULT_VERSION, tenant: str | None = None,
                auth: TokenProvider | AcumaticaCookieSession, max_concurrent: int = 4,
                page_size: int = DEFAULT_PAGE_SIZE, transport: httpx.BaseTransport | None = None,
                verify: bool | str = True, retry: RetrySettings | None = None,
                timeout_s: float = 60.0) -> AcumaticaClient:
        """A client for one instance / tenant / endpoint, signed in with a token provider or a cookie session."""
        instance = instance_url.rstrip("/")
        session: AcumaticaCookieSession | None = None
        token_provider: TokenProvider | None = None
        limits = httpx.Limits(max_connections=max(4, max_concurrent * 2))
        if isinstance(auth, AcumaticaCookieSession):
            session = auth
            if session.company is None:
                session.company = tenant
            inner = transport or httpx.HTTPTransport(verify=ssl_context(verify), limits=limits)
            transport = session.transport(inner)
        elif auth is not None and hasattr(auth, "get_token"):
            token_provider = auth
        else:
            raise TypeError("auth must be an AcumaticaTokenProvider (or another TokenProvider) or an "
                            "AcumaticaCookieSession")
        http = ResilientClient(SYSTEM, instance, token_provider, timeout_s=timeout_s, retry=retry,
                               transport=transport, verify=verify, headers={"Accept": "application/json"},
                               max_connections=max(4, max_concurrent * 2))
        return cls(http, instance, endpoint_name=endpoint_name, endpoint_version=endpoint_version, tenant=tenant,
                   max_concurrent=max_concurrent, page_size=page_size, session=session)

    def __repr__(self) -> str:
        return (f"AcumaticaClient(instance={self.instance_url!r}, endpoint={self.endpoint!r}, "
                f"tenant={self.tenant!r})")

    def close(self) -> None:
        """Close the HTTP client; a cookie session is signed out (its licence slot freed). A token provider is
        left open (it may serve other clients): close it yourself."""
        try:
            if self.session is not None:
                self.session.logout()
        finally:
            self.http.close()

    # -- paths and requests ---------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"{self.endpoint_name}/{self.endpoint_version}"

    @property
    def endpoint_url(self) -> str:
        return f"{self.instance_url}/entity/{self.endpoint}"

    def _path(self, *parts: Any) -> str:
        return "/".join(["entity", quote(self.endpoint_name, safe=""), quote(self.endpoint_version, safe="."),
                         *(quote(str(p), safe="") for p in parts)])

    def _request(self, method: str, url: str, *, expected: tuple[int, ...] = (), **kw: Any) -> httpx.Response:
        with self._slots:
            try:
                return self.http.request(method, url, expected=expected, **kw)
            except AcumaticaError:
                raise
            except ApiError as exc:
                raise AcumaticaApiError(method, url, exc.status, exc.body) from None

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    # -- literals ----------------------------------------------------------------------------------------
    literal = staticmethod(literal)
    filter_eq_any = staticmethod(filter_eq_any)

    def record_url(self, entity: str, record: Mapping[str, Any]) -> str:
        """A link back to the record's screen on this instance (UNCONFIRMED parameter names: models.record_url)."""
        return record_url(self.instance_url, entity, record, tenant=self.tenant)

    # -- endpoint check -----------------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        """Read one Vendor: proves the instance, the sign-in and the pinned endpoint version.

        Returns ``{"instance_url", "endpoint", "tenant", "vendor"}`` (the flat vendor read, or None on an empty
        company). A 404 for the endpoint raises ``AcumaticaEndpointError`` naming the endpoints the instance has.
        """
        url = self._path("Vendor")
        r = self._request("GET", url, params={"$top": "1"}, expected=(404,))
        if r.status_code == 404:
            raise self._endpoint_error(url, r)
        rows = r.json()
        return {"instance_url": self.instance_url, "endpoint": self.endpoint, "tenant": self.tenant,
                "vendor": unwrap(rows[0]) if isinstance(rows, list) and rows else None}

    def endpoints(self) -> dict[str, Any]:
        """``GET {instance}/entity``: the ERP version and the list of endpoints (name, version, href)."""
        return self._request("GET", "entity").json()

    def _endpoint_error(self, url: str, not_found: httpx.Response) -> AcumaticaEndpointError:
        body = _json_or_text(not_found)
        try:
            listing = self.endpoints()
        except AcumaticaApiError as exc:
            detail = (f"endpoint {self.endpoint} is not on this instance ({self.instance_url}), and its endpoint "
                      f"list could not be read either (HTTP {exc.status}): is the instance URL right?")
            return AcumaticaEndpointError("GET", url, 404, body, wanted=self.endpoint, available=[], detail=detail)
        items = listing.get("endpoints", []) if isinstance(listing, dict) else listing
        available = [f"{e.get('name')}/{e.get('version')}" for e in items or [] if isinstance(e, dict)]
        if self.endpoint in available:
            detail = (f"endpoint {self.endpoint} is on this instance but answered 404 for Vendor: "
                      f"{http_error_text(body)}")
        else:
            has = ", ".join(sorted(available, key=_version_key, reverse=True)) or "no endpoints"
            detail = f"endpoint {self.endpoint} is not on this instance; it has {has}"
        return AcumaticaEndpointError("GET", url, 404, body, wanted=self.endpoint, available=available,
                                      detail=detail)

    # -- reads --------------------------------------------------------------------------------------------
    @staticmethod
    def _identity(entity: str, fields: tuple[str, ...] | None = None) -> Any:
        """A flat row's identity: its key field values (case-insensitive), else its ``id``, else its content."""
        keys = fields or KEY_FIELDS.get(entity)

        def identity(row: dict[str, Any]) -> Any:
            if keys and all(row.get(k) is not None for k in keys):
                return tuple(str(row[k]).strip().lower() for k in keys)
            if row.get("id"):
                return ("id", str(row["id"]).lower())
            return json.dumps(row, sort_keys=True, default=str)
        return identity

    def _params(self, entity: str, *, filter: str | None = None, select: Iterable[str] | str | None = None,
                expand: Iterable[str] | str | None = None, custom: Iterable[str] | str | None = None,
                also_select: tuple[str, ...] = ()) -> dict[str, str]:
        params: dict[str, str] = {}
        if filter:
            params["$filter"] = filter
        joined = _join(select, *KEY_FIELDS.get(entity, ()), *also_select)
        if joined:
            params["$select"] = joined
        for option, fields in (("$expand", expand), ("$custom", custom)):
            joined = _join(fields)
            if joined:
                params[option] = joined
        return params

    def _page(self, entity: str, params: dict[str, str], skip: int, top: int) -> list[dict[str, Any]]:
        query = dict(params, **{"$top": str(top)})
        if skip:
            query["$skip"] = str(skip)
        rows = self._request("GET", self._path(entity), params=query).json()
        self._count("pages")
        if not isinstance(rows, list):
            raise AcumaticaApiError("GET", self._path(entity), 200, rows,
                                    detail="expected a JSON array of records")
        return rows

    def _stable_pages(self, entity: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Every record of a ``$top``/``$skip`` listing exactly once, even when records leave it between pages.

        Plain ``$skip`` paging skips a row whenever a row before the next page leaves the result set (modified
        out of the window, deleted): every later row shifts one place left. So each page after the first starts
        at the last row already taken (one row of overlap) and is located by the rows already seen: the rows
        after the last seen row on the page are new. A page holding no seen row means the rows moved left past
        it: back off one page and look again (down to ``$skip=0``). Rows are de-duplicated by key.
        Assumes Acumatica returns a listing in a stable order (by the entity's key fields; UNCONFIRMED).
        A row that *enters* the result before the position already read is not seen by this read (it is for a
        window ending in the past: a change moves a record out of such a window, never into it).
        """
        identity = self._identity(entity)
        top = self.page_size
        seen: set[Any] = set()
        pos = 0
        idle_pages = 0
        while True:
            rows = [unwrap(row) for row in self._page(entity, params, pos, top)]
            ids = [identity(row) for row in rows]
            start = 0
            if seen:
                last_seen = max((i for i, k in enumerate(ids) if k in seen), default=None)
                if last_seen is None and pos > 0:
                    pos = max(0, pos - (top - 1))
                    self._count("backoffs")
                    continue
                start = 0 if last_seen is None else last_seen + 1
            fresh = 0
            for row, key in zip(rows[start:], ids[start:], strict=True):
                if key not in seen:
                    seen.add(key)
                    fresh += 1
                    yield row
            if len(rows) < top:
                return
            idle_pages = 0 if fresh else idle_pages + 1
            if idle_pages > 20:
                raise AcumaticaApiError("GET", self._path(entity), 200, None,
                                        detail="$top/$skip paging makes no progress (is $skip ignored?)")
            pos += len(rows) - 1

    def list(self, entity: str, *, filter: str | None = None, select: Iterable[str] | str | None = None,
             expand: Iterable[str] | str | None = None, custom: Iterable[str] | str | None = None) -> list[dict]:
        """Every record of ``entity`` matching ``filter`` (flat dicts), paged with ``$top``/``$skip`` (page_size)."""
        params = self._params(entity, filter=filter, select=select, expand=expand, custom=custom)
        return list(self._stable_pages(entity, params))

    def modified_between(self, entity: str, start: datetime, end: datetime, *, filter: str | None = None,
                         select: Iterable[str] | str | None = None,
                         modified_field: str = MODIFIED_FIELD) -> list[dict[str, Any]]:
        """Records with ``start <= LastModifiedDateTime < end`` (and ``filter``), each exactly once.

        Consecutive windows (end of one = start of the next) neither miss nor repeat a record. The listing is
        paged with ``$top``/``$skip`` and kept safe against records modified out of the window between pages
        (``_stable_pages``). Results come in the order Acumatica lists them: by the key fields (UNCONFIRMED),
        not by modification time. Use an ``end`` in the past (now minus a little): a record changed during the
        read then leaves the window and is read by the next one. The field is ``LastModifiedDateTime`` on
        Bill, Check, PurchaseOrder and Vendor of Default/24.200.001 (its swagger); with ``select`` the key fields
        and the field are always selected.
        """
        if end <= start:
            raise ValueError("modified_between needs start < end")
        window = (f"{modified_field} ge {datetimeoffset(start)} and {modified_field} lt {datetimeoffset(end)}")
        flt = f"{window} and ({filter})" if filter else window
        params = self._params(entity, filter=flt, select=select, also_select=(modified_field,))
        return list(self._stable_pages(entity, params))

    def get(self, entity: str, keys: Mapping[str, Any], *, select: Iterable[str] | str | None = None,
            expand: Iterable[str] | str | None = None) -> dict[str, Any] | None:
        """One record by its key fields (``GET /{Entity}/{k1}/{k2}``) or by ``{"id": guid}``; None when absent."""
        values = [keys["id"]] if set(keys) == {"id"} else key_values(entity, keys)
        params = self._params(entity, select=select, expand=expand)
        r = self._request("GET", self._path(entity, *values), params=params or None, expected=(404,))
        return None if r.status_code == 404 else unwrap(r.json())

    def get_many(self, entity: str, keys_list: Iterable[Mapping[str, Any]], *,
                 select: Iterable[str] | str | None = None, expand: Iterable[str] | str | None = None,
                 max_filter_chars: int = DEFAULT_MAX_FILTER_CHARS) -> list[dict[str, Any]]:
        """Many records by key in few calls: OR-ed key equalities, chunked to ``max_filter_chars``, the chunks read
        concurrently (up to ``max_concurrent``). Returned in the order asked; missing records are absent.
        Key fields are KEY_FIELDS[entity], or for another entity the fields of the first key given."""
        keys_list = list(keys_list)
        if not keys_list:
            return []
        fields = KEY_FIELDS.get(entity) or tuple(keys_list[0])
        wanted: dict[Any, dict[str, Any]] = {}
        for keys in keys_list:
            missing = [f for f in fields if f not in keys]
            if missing:
                raise ValueError(f"a {entity} key needs {', '.join(fields)}; missing {', '.join(missing)}")
            group = {f: keys[f] for f in fields}
            wanted.setdefault(tuple(str(v).strip().lower() for v in group.values()), group)
        if not wanted:
            return []
        params = self._params(entity, select=select, expand=expand)
        chunks = list(or_chunks(list(wanted.values()), max_filter_chars, literal))
        if len(chunks) == 1:
            results = [list(self._stable_pages(entity, dict(params, **{"$filter": chunks[0]})))]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrent, len(chunks)),
                                    thread_name_prefix="acumatica-get-many") as pool:
                results = list(pool.map(
                    lambda clause: list(self._stable_pages(entity, dict(params, **{"$filter": clause}))), chunks))
        identity = self._identity(entity, fields)
        found = {identity(row): row for rows in results for row in rows}
        return [found[key] for key in wanted if key in found]

    # -- writes -------------------------------------------------------------------------------------------
    def put(self, entity: str, values: Mapping[str, Any], *, select: Iterable[str] | str | None = None,
            expand: Iterable[str] | str | None = None) -> dict[str, Any]:
        """Create or update a record (``PUT /{Entity}``, matched on its key fields); returns the record as stored.

        ``values`` is flat (wrapped here). Detail arrays in ``values`` are expanded in the answer. A 422 raises
        ``AcumaticaValidationError`` with the per-field errors; a 500 is not re-sent (raises AcumaticaApiError).
        """
        detail_lists = [k for k, v in values.items() if isinstance(v, list)]
        params = self._params(entity, select=select, expand=[*_names(expand), *detail_lists])
        url = self._path(entity)
        r = self._request("PUT", url, params=params or None, json=wrap(dict(values)), expected=(422, 500),
                          idempotent=False)
        if r.status_code == 422:
            raise AcumaticaValidationError("PUT", url, 422, _json_or_text(r))
        if r.status_code == 500:
            raise AcumaticaApiError("PUT", url, 500, _json_or_text(r))
        return unwrap(r.json()) if r.content else {}

    def invoke_action(self, entity: str, action: str, keys: Mapping[str, Any],
                      parameters: Mapping[str, Any] | None = None, *, timeout_s: float = 300,
                      poll_interval_s: float = 1.0) -> None:
        """Run an action on one record (``POST /{Entity}/{Action}``) and wait until it is done.

        204 -> done. 202 + Location -> GET the Location while it answers 202 (after 0.1 s, doubling up to every
        ``poll_interval_s``: a quick release is seen quickly, a long one is not polled hard); 204 -> done.
        A refusal or failure raises ``AcumaticaActionError`` with Acumatica's message (exceptionMessage); no answer
        within ``timeout_s`` raises it with ``timed_out=True`` (status 408). Not idempotent and never re-sent on
        a 500: read the record's state before acting.
        """
        url = self._path(entity, action)
        body = {"entity": wrap(dict(keys)), "parameters": wrap(dict(parameters or {}))}
        r = self._action_request("POST", url, json=body, idempotent=False)
        if r.status_code != 202:
            return
        location = r.headers.get("Location")
        if not location:
            raise AcumaticaActionError("POST", url, 202, None, detail="202 Accepted without a Location to poll")
        status_url = self._same_origin(location)
        deadline = time.monotonic() + timeout_s
        wait = min(0.1, poll_interval_s)
        while True:
            if time.monotonic() + wait > deadline:
                raise AcumaticaActionError("GET", status_url, 408, None, timed_out=True,
                                           detail=f"{entity}/{action} still running after {timeout_s:g} s")
            time.sleep(wait)
            wait = min(wait * 2, poll_interval_s)
            self._count("polls")
            r = self._action_request("GET", status_url)
            if r.status_code != 202:
                return

    def _action_request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            r = self._request(method, url, expected=(400, 404, 412, 422, 500), **kw)
        except AcumaticaApiError as exc:
            raise AcumaticaActionError(method, url, exc.status, exc.body) from None
        if r.status_code >= 400:
            raise AcumaticaActionError(method, url, r.status_code, _json_or_text(r))
        return r

    def _same_origin(self, location: str) -> str:
        absolute = urljoin(self.instance_url + "/", location)
        mine, theirs = urlsplit(self.instance_url), urlsplit(absolute)
        if (mine.scheme, mine.netloc.lower()) != (theirs.scheme, theirs.netloc.lower()):
            raise AcumaticaActionError("POST", location, 202, None,
                                       detail=f"the action's status Location points off the instance ({theirs.netloc})")
        return absolute


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


def _version_key(name_version: str) -> tuple:
    name, _, version = name_version.partition("/")
    return (name, tuple(int(p) if p.isdigit() else 0 for p in version.split(".")))
