"""Business Central API v2.0 client (OData v4) over ``core.http.ResilientClient``.

Base URL ``{api_url}/v2.0/{tenantId}/{environment}/api/v2.0`` (API-FACTS §2.1); bearer tokens from a
TokenProvider (Entra client credentials in production). Retries, Retry-After (BC sends none on 429,
so that is exponential backoff), the 401 refresh-once and call counting come from ResilientClient.

Rules this client keeps (API-FACTS §2):
- every collection read sends ``Prefer: odata.maxpagesize`` and follows ``@odata.nextLink`` (an
  unpaged read over 20,000 rows is a 413);
- incremental reads filter ``lastModifiedDateTime gt <start> and lastModifiedDateTime le <end>`` with an
  unquoted ISO-8601 UTC literal;
- PATCH / DELETE always carry ``If-Match``; a 409 ``Request_EntityChanged`` surfaces as ApiError;
- subscriptions live at ``/api/v2.0/subscriptions`` and are keyed ``subscriptions('{id}')``;
- enum values travel by member name, XML-encoded (``"_x0020_"``, ``"In_x0020_Review"``; API-FACTS §2): this
  client hands out and takes the captions (``" "``, ``"In Review"``) and translates with the enum-typed
  properties of ``$metadata`` (read once per client), in records read, in PATCH bodies and in ``literal``.
No Dagster, no sandbox imports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from connector_pipelines.core.http import ResilientClient, RetrySettings, TokenProvider
from connector_pipelines.core.odata import ODataMetadata, decode_member_name, encode_member_name

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 20000
ID_CHUNK = 40

RESOURCE_RE = re.compile(r"^/?api/v2\.0/companies\(([^)]+)\)/(\w+)(?:\(([^)]+)\))?/?$", re.IGNORECASE)


def odata_datetime(value: datetime) -> str:
    """An OData DateTimeOffset literal (unquoted): UTC, ISO-8601, Z. Naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    spec = "microseconds" if value.microsecond % 1000 else "milliseconds"
    return value.isoformat(timespec=spec).replace("+00:00", "Z")


def odata_literal(value: Any) -> str:
    """A plain OData literal: booleans and numbers bare, a datetime as an unquoted DateTimeOffset (a quoted one is
    Edm.String, which BC refuses to compare with a date-time), strings quoted with quotes doubled."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, datetime):
        return odata_datetime(value)
    return "'" + str(value).replace("'", "''") + "'"


def _key(value: str) -> str:
    return quote(str(value).strip("'"), safe="-")


def _select(select: Iterable[str] | str | None) -> str | None:
    if not select:
        return None
    return select if isinstance(select, str) else ",".join(select)


class BusinessCentralClient:
    system = "business_central"

    def __init__(self, http: ResilientClient) -> None:
        self.http = http
        self._metadata: ODataMetadata | None = None

    @classmethod
    def connect(cls, api_url: str, tenant_id: str, environment: str, token_provider: TokenProvider, *,
                transport: httpx.BaseTransport | None = None, retry: RetrySettings | None = None,
                timeout_s: float = 60.0) -> BusinessCentralClient:
        base = f"{api_url.rstrip('/')}/v2.0/{tenant_id}/{environment}/api/v2.0"
        http = ResilientClient("business_central", base, token_provider, timeout_s=timeout_s, retry=retry,
                               transport=transport, headers={"Accept": "application/json"})
        return cls(http)

    def close(self) -> None:
        self.http.close()

    # -- $metadata and enum members ------------------------------------------------------------------
    def metadata(self) -> ODataMetadata:
        """$metadata once per client: the enum-typed properties of each entity set."""
        if self._metadata is None:
            r = self.http.get("$metadata", headers={"Accept": "application/xml"})
            self._metadata = ODataMetadata.parse(r.content)
        return self._metadata

    def _enum_properties(self, entity_set: str) -> dict[str, str]:
        return self.metadata().enum_properties(entity_set)

    def _captions(self, entity_set: str, row: dict[str, Any]) -> dict[str, Any]:
        """A record as read, with enum values turned from member names into captions (in place)."""
        for prop in self._enum_properties(entity_set):
            value = row.get(prop)
            if isinstance(value, str):
                row[prop] = decode_member_name(value)
        return row

    def _member_names(self, entity_set: str, changes: dict[str, Any]) -> dict[str, Any]:
        enums = self._enum_properties(entity_set)
        return {k: encode_member_name(v) if k in enums and isinstance(v, str) else v for k, v in changes.items()}

    def literal(self, entity_set: str, prop: str, value: Any) -> str:
        """The OData literal comparing ``prop`` of ``entity_set`` with ``value`` (a caption, for an enum)."""
        if isinstance(value, str) and prop in self._enum_properties(entity_set):
            value = encode_member_name(value)
        return odata_literal(value)

    # -- companies ---------------------------------------------------------------------------------
    def companies(self) -> list[dict[str, Any]]:
        return list(self._pages("companies", {}))

    def company_id(self, name: str) -> str:
        """The id of the company whose name (or display name) is ``name``; LookupError if none."""
        rows = self.companies()
        for key in ("name", "displayName"):
            for c in rows:
                if c.get(key) == name:
                    return c["id"]
        raise LookupError(f"Business Central company {name!r} not found; have: {[c.get('name') for c in rows]}")

    # -- reads ---------------------------------------------------------------------------------------
    def _pages(self, url: str, params: dict[str, str], page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[dict[str, Any]]:
        headers = {"Prefer": f"odata.maxpagesize={max(1, min(page_size, MAX_PAGE_SIZE))}"}
        next_url: str | None = url
        next_params: dict[str, str] | None = params
        while next_url:
            body = self.http.get(next_url, params=next_params, headers=headers).json()
            yield from body.get("value", [])
            next_url = body.get("@odata.nextLink")
            next_params = None   # the nextLink carries every query option

    def list(self, company_id: str, entity_set: str, *, filter: str | None = None,
             select: Iterable[str] | str | None = None, orderby: str | None = None,
             page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[dict[str, Any]]:
        params: dict[str, str] = {}
        if filter:
            params["$filter"] = filter
        if _select(select):
            params["$select"] = _select(select)
        if orderby:
            params["$orderby"] = orderby
        pages = self._pages(f"companies({_key(company_id)})/{entity_set}", params, page_size)
        return (self._captions(entity_set, row) for row in pages)

    def modified_between(self, company_id: str, entity_set: str, start: datetime, end: datetime, *,
                         filter: str | None = None,
                         select: Iterable[str] | str | None = None) -> Iterator[dict[str, Any]]:
        """Records with start < lastModifiedDateTime <= end (and the extra filter, if any), oldest change first.

        The window is half-open so consecutive windows (end of one = start of the next) neither miss nor
        repeat a record. With ``select``, ``id`` and ``lastModifiedDateTime`` are always included.
        """
        flt = f"lastModifiedDateTime gt {odata_datetime(start)} and lastModifiedDateTime le {odata_datetime(end)}"
        if filter:
            flt = f"{flt} and ({filter})"
        fields = _select(select)
        if fields:
            fields = ",".join(dict.fromkeys(["id", "lastModifiedDateTime",
                                             *[f.strip() for f in fields.split(",") if f.strip()]]))
        return self.list(company_id, entity_set, filter=flt, select=fields, orderby="lastModifiedDateTime")

    def get_many(self, company_id: str, entity_set: str, ids: Iterable[str], *, chunk: int = ID_CHUNK,
                 select: Iterable[str] | str | None = None) -> dict[str, dict[str, Any]]:
        """Records by id, ``chunk`` ids per request (``id eq a or id eq b ...``); missing ids are absent."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        fields = _select(select)
        if fields:
            fields = ",".join(dict.fromkeys(["id", *[f.strip() for f in fields.split(",")]]))
        by_lower = {i.lower(): i for i in wanted}
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), chunk):
            flt = " or ".join(f"id eq {i}" for i in wanted[start:start + chunk])
            for row in self.list(company_id, entity_set, filter=flt, select=fields):
                found[by_lower.get(str(row.get("id", "")).lower(), row.get("id"))] = row
        return found

    def get(self, company_id: str, entity_set: str, record_id: str) -> dict[str, Any] | None:
        r = self.http.get(f"companies({_key(company_id)})/{entity_set}({_key(record_id)})", expected=(404,))
        return None if r.status_code == 404 else self._captions(entity_set, r.json())

    # -- writes --------------------------------------------------------------------------------------
    def patch(self, company_id: str, entity_set: str, record_id: str, changes: dict[str, Any],
              etag: str) -> dict[str, Any]:
        """PATCH with If-Match; enum values in ``changes`` are captions (sent as member names)."""
        r = self.http.patch(f"companies({_key(company_id)})/{entity_set}({_key(record_id)})",
                            json=self._member_names(entity_set, changes), headers={"If-Match": etag or "*"})
        return self._captions(entity_set, r.json()) if r.content else {}

    def post_purchase_invoice(self, company_id: str, invoice_id: str) -> None:
        """Bound action ``Microsoft.NAV.post`` (204). Not idempotent: callers read the status first."""
        self.http.post(f"companies({_key(company_id)})/purchaseInvoices({_key(invoice_id)})/Microsoft.NAV.post",
                       idempotent=False)

    def unblock_vendor(self, company_id: str, vendor_id: str, etag: str) -> dict[str, Any]:
        return self.patch(company_id, "vendors", vendor_id, {"blocked": " "}, etag)

    # -- subscriptions -----------------------------------------------------------------------------
    def create_subscription(self, notification_url: str, resource: str, client_state: str) -> dict[str, Any]:
        """BC validates ``notification_url`` with a handshake before answering 201."""
        body = {"notificationUrl": notification_url, "resource": resource, "clientState": client_state}
        return self.http.post("subscriptions", json=body).json()

    def renew_subscription(self, subscription_id: str, etag: str) -> dict[str, Any]:
        """PATCH with the required If-Match; BC re-runs the handshake and extends expiry by 3 days."""
        return self.http.patch(f"subscriptions('{_key(subscription_id)}')", json={},
                               headers={"If-Match": etag or "*"}).json()

    def delete_subscription(self, subscription_id: str, etag: str) -> None:
        self.http.delete(f"subscriptions('{_key(subscription_id)}')", headers={"If-Match": etag or "*"})

    def list_subscriptions(self) -> list[dict[str, Any]]:
        return list(self._pages("subscriptions", {}))

    @staticmethod
    def parse_resource(resource: str) -> tuple[str, str, str | None]:
        """``/api/v2.0/companies(c)/purchaseInvoices(i)`` -> (c, "purchaseInvoices", i); i is None for a set."""
        m = RESOURCE_RE.match((resource or "").strip())
        if not m:
            raise ValueError(f"not a Business Central v2.0 resource: {resource!r}")
        cid, entity_set, rid = m.groups()
        return cid.strip("'"), entity_set, (rid.strip("'") if rid else None)
