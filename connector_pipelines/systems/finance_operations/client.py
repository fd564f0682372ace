"""Dynamics 365 Finance & Operations OData v4 client over ``core.http.ResilientClient``.

Service root ``{environment_url}/data`` (API-FACTS §1.1); bearer tokens from Entra ID client
credentials with scope ``https://{environment host}/.default`` (no ``/data``: §0). Retries on
429 / 5xx honouring Retry-After (F&O's service protection sends it: §1.3), the 401 refresh-once and
call counting come from ResilientClient.

Rules this client keeps:
- entity-set names are case-sensitive and a key path names every key field, ``dataAreaId`` included;
- reads of documents by key always send ``cross-company=true`` (a request otherwise sees only the
  service account's default company) and name the company in the filter;
- F&O refuses the ``in`` operator: many documents are read as an OR of key groups, chunked so the
  ``$filter`` stays short; collection reads follow ``@odata.nextLink``;
- enums are compared as ``Microsoft.Dynamics.DataEntities.<Enum>'<Value>'`` (types from $metadata);
- PATCH carries ``If-Match`` when the caller has the ``@odata.etag``; bound actions are
  ``POST <key path>/Microsoft.Dynamics.DataEntities.<Action>``.
No Dagster, no sandbox imports.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from connector_pipelines.core.http import ResilientClient, RetrySettings, TokenProvider
from connector_pipelines.core.odata import or_chunks
from connector_pipelines.systems.finance_operations.models import ODataMetadata

NAMESPACE = "Microsoft.Dynamics.DataEntities"
DEFAULT_MAX_FILTER_CHARS = 1500


def _join(fields: Iterable[str] | str | None) -> str | None:
    if not fields:
        return None
    return fields if isinstance(fields, str) else ",".join(dict.fromkeys(fields))


def _shape(params: dict[str, str], select: Iterable[str] | str | None,
           expand: Iterable[str] | str | None) -> dict[str, str]:
    """``params`` plus ``$select`` / ``$expand`` where given (names de-duplicated, order kept)."""
    for option, fields in (("$select", select), ("$expand", expand)):
        joined = _join(fields)
        if joined:
            params[option] = joined
    return params


class FinanceOperationsClient:
    system = "finance_operations"

    def __init__(self, http: ResilientClient, environment_url: str) -> None:
        self.http = http
        self.environment_url = environment_url.rstrip("/")
        self._metadata: ODataMetadata | None = None

    @classmethod
    def connect(cls, environment_url: str, token_provider: TokenProvider, *, retry: RetrySettings | None = None,
                timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> FinanceOperationsClient:
        base = f"{environment_url.rstrip('/')}/data"
        http = ResilientClient("finance_operations", base, token_provider, timeout_s=timeout, retry=retry,
                               transport=transport, headers={"Accept": "application/json",
                                                             "OData-Version": "4.0", "OData-MaxVersion": "4.0"})
        return cls(http, environment_url)

    def close(self) -> None:
        self.http.close()

    # -- literals and paths ----------------------------------------------------------------------------
    @staticmethod
    def scope_for(environment_url: str) -> str:
        host = urlsplit(environment_url if "://" in environment_url else f"https://{environment_url}").netloc
        return f"https://{host}/.default"

    @staticmethod
    def literal(value: Any, enum_type: str | None = None) -> str:
        if enum_type:
            full = enum_type if "." in enum_type else f"{NAMESPACE}.{enum_type}"
            return f"{full}'{str(value).replace(chr(39), chr(39) * 2)}'"
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | Decimal):
            return str(value)
        if isinstance(value, datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
            return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return "'" + str(value).replace("'", "''") + "'"

    @classmethod
    def key_path(cls, entity_set: str, keys: dict[str, Any]) -> str:
        if not keys:
            raise ValueError(f"a key path into {entity_set} needs its key fields")
        inner = ",".join(f"{k}={cls.literal(v)}" for k, v in keys.items())
        return f"{entity_set}({quote(inner, safe=chr(39) + '=,-._~')})"

    # -- metadata -------------------------------------------------------------------------------------
    def metadata(self) -> ODataMetadata:
        """$metadata once per client: keys, property and enum types, navigation, bound actions."""
        if self._metadata is None:
            r = self.http.get("$metadata", headers={"Accept": "application/xml"})
            self._metadata = ODataMetadata.parse(r.content)
        return self._metadata

    # -- reads ----------------------------------------------------------------------------------------
    def _pages(self, url: str, params: dict[str, str] | None) -> Iterator[dict[str, Any]]:
        next_url: str | None = url
        while next_url:
            body = self.http.get(next_url, params=params).json()
            yield from body.get("value", [])
            next_url = body.get("@odata.nextLink")
            params = None   # the nextLink carries every query option

    def list(self, entity_set: str, *, filter: str | None = None, select: Iterable[str] | None = None,
             expand: Iterable[str] | None = None, orderby: str | None = None, top: int | None = None,
             cross_company: bool = False) -> Iterator[dict[str, Any]]:
        params = _shape({"$filter": filter} if filter else {}, select, expand)
        if orderby:
            params["$orderby"] = orderby
        if top is not None:
            params["$top"] = str(top)
        if cross_company:
            params["cross-company"] = "true"
        return self._pages(entity_set, params)

    def get(self, entity_set: str, keys: dict[str, Any], *, select: Iterable[str] | None = None,
            expand: Iterable[str] | None = None) -> dict[str, Any] | None:
        params = _shape({"cross-company": "true"}, select, expand)
        r = self.http.get(self.key_path(entity_set, keys), params=params, expected=(404,))
        return None if r.status_code == 404 else r.json()

    def get_many(self, entity_set: str, keys: list[dict[str, Any]], *, select: Iterable[str] | None = None,
                 expand: Iterable[str] | None = None,
                 max_filter_chars: int = DEFAULT_MAX_FILTER_CHARS) -> list[dict[str, Any]]:
        """Many documents in as few calls as the filter length allows (F&O has no ``in``).

        Keys are grouped per company: ``dataAreaId eq 'usmf' and (K eq 'a' or K eq 'b' …)`` for one key
        field, ``… and ((K1 eq 'a' and K2 eq 'b') or …)`` for several. Missing documents are simply absent.
        """
        by_area: dict[str, list[dict[str, Any]]] = {}
        seen: set[tuple] = set()
        for key in keys:
            ident = tuple(sorted((k, str(v).lower()) for k, v in key.items()))
            if ident in seen:
                continue
            seen.add(ident)
            area = str(key.get("dataAreaId", ""))
            by_area.setdefault(area, []).append({k: v for k, v in key.items() if k != "dataAreaId"})
        rows: list[dict[str, Any]] = []
        for area, groups in by_area.items():
            prefix = f"dataAreaId eq {self.literal(area)} and " if area else ""
            for clause in or_chunks(groups, max_filter_chars - len(prefix) - 2, self.literal):
                rows.extend(self.list(entity_set, filter=f"{prefix}({clause})", select=select, expand=expand,
                                      cross_company=True))
        return rows

    # -- writes ---------------------------------------------------------------------------------------
    def patch(self, entity_set: str, keys: dict[str, Any], changes: dict[str, Any], etag: str | None = None) -> None:
        headers = {"If-Match": etag} if etag else {}
        self.http.patch(self.key_path(entity_set, keys), json=changes, params={"cross-company": "true"},
                        headers=headers)

    def invoke_action(self, entity_set: str, keys: dict[str, Any], action: str,
                      parameters: dict[str, Any] | None = None) -> Any:
        """A bound OData action (X++ ``[SysODataActionAttribute]``). Not idempotent: read the state first."""
        name = action if action.startswith(f"{NAMESPACE}.") else f"{NAMESPACE}.{action}"
        r = self.http.post(f"{self.key_path(entity_set, keys)}/{name}", json=parameters or {},
                           params={"cross-company": "true"}, idempotent=False)
        if not r.content:
            return None
        body = r.json()
        return body.get("value", body) if isinstance(body, dict) else body
