"""Business Central as a source: OData reads, subscription notifications, post / unblock write-backs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

from connector_pipelines.integrations.definition import EntitySync, ExceptionRule, IntegrationDefinition
from connector_pipelines.integrations.sources.base import (
    ChangeSet,
    ResolutionOutcome,
    SourceRecord,
    pushdown_filter,
)
from connector_pipelines.systems.business_central.client import BusinessCentralClient, odata_literal

# Statuses in which a draft purchase invoice can still be posted (captions: the client translates member names).
POSTABLE_INVOICE_STATUSES = ("Draft", "In Review")
UNBLOCKED = " "
__all__ = ["BusinessCentralSource", "odata_filter", "odata_literal"]


def odata_filter(rules: list[ExceptionRule],
                 literal: Callable[[str, Any], str] = lambda _field, value: odata_literal(value)) -> str | None:
    """Push the exception rules that OData can express down to BC (``literal`` spells enum members as BC does)."""
    return pushdown_filter(rules, literal)


class BusinessCentralSource:
    system = "business_central"

    def __init__(self, client: BusinessCentralClient, company: str, web_client_url: str | None = None) -> None:
        self.client = client
        self.company = company
        self._company_id: str | None = None
        self.web_client_url = web_client_url

    @property
    def company_id(self) -> str:
        if self._company_id is None:
            self._company_id = self.client.company_id(self.company)
        return self._company_id

    # -- keys and links ---------------------------------------------------------------------------
    def external_id(self, entity: EntitySync, record_id: str) -> str:
        return f"bc:{entity.entity_set}:{record_id}"

    def parse_external_id(self, external_id: str) -> tuple[str, str]:
        system, entity_set, record_id = external_id.split(":", 2)
        if system != "bc":
            raise ValueError(f"not a Business Central key: {external_id}")
        return entity_set, record_id

    def record_url(self, entity: EntitySync, record: dict[str, Any]) -> str | None:
        """A link back to the record in the BC web client (page by number), when its URL is configured."""
        if not self.web_client_url:
            return None
        pages = {"vendors": 26, "purchaseInvoices": 51, "purchaseOrders": 50}
        page = pages.get(entity.entity_set)
        number = record.get("number")
        if page is None or not number:
            return None
        flt = quote(f"'No.' IS '{number}'")
        return f"{self.web_client_url.rstrip('/')}/?company={quote(self.company)}&page={page}&filter={flt}"

    def _records(self, entity: EntitySync, rows: list[dict[str, Any]]) -> list[SourceRecord]:
        return [SourceRecord(entity.name, self.external_id(entity, r["id"]), r["id"], r, self.record_url(entity, r),
                             modified_at=_parse_dt(r.get("lastModifiedDateTime"))) for r in rows]

    # -- reads ------------------------------------------------------------------------------------
    def fetch_changed(self, entity: EntitySync, start: datetime, end: datetime) -> list[SourceRecord]:
        rows = list(self.client.modified_between(self.company_id, entity.entity_set, start, end))
        return self._records(entity, rows)

    def fetch_by_ids(self, entity: EntitySync, ids: list[str]) -> list[SourceRecord]:
        found = self.client.get_many(self.company_id, entity.entity_set, ids)
        return self._records(entity, [found[i] for i in ids if i in found])

    def fetch_all(self, entity: EntitySync) -> list[SourceRecord]:
        return self._records(entity, list(self.client.list(self.company_id, entity.entity_set)))

    def fetch_current_exceptions(self, entity: EntitySync) -> list[SourceRecord]:
        flt = odata_filter(entity.exception, lambda field, value: self.client.literal(entity.entity_set, field, value))
        rows = list(self.client.list(self.company_id, entity.entity_set, filter=flt))
        return [r for r in self._records(entity, rows) if entity.is_exception(r.data)]

    def changes_from_notifications(self, entities: list[EntitySync], payloads: list[dict[str, Any]]) -> ChangeSet:
        """BC notifications carry no data: only which resource changed (or a collection filter)."""
        changes = ChangeSet()
        by_set: dict[str, list[str]] = {}
        for e in entities:
            by_set.setdefault(e.entity_set, []).append(e.name)
        for p in payloads:
            resource = unquote(p.get("resource", ""))
            try:
                company_id, entity_set, record_id = BusinessCentralClient.parse_resource(resource.split("?", 1)[0])
            except ValueError:
                changes.ignore(f"not a BC resource: {resource[:120]}")
                continue
            if company_id.lower() != self.company_id.lower():
                changes.ignore(f"another company: {company_id}")
                continue
            names = by_set.get(entity_set, [])
            if not names:
                changes.ignore(f"no entity of this integration reads {entity_set}")
                continue
            change = p.get("changeType", "updated")
            if change == "collection" or record_id is None:
                # Too many changes for one notification: re-read the window BC names in its filter.
                since = _collection_since(resource)
                until = _parse_dt(p.get("lastModifiedDateTime")) or datetime.now(since.tzinfo if since else None)
                if since is not None:
                    changes.windows.extend((name, since, until) for name in names)
                else:
                    changes.ignore(f"collection notification without a lastModifiedDateTime bound: {resource[:120]}")
                continue
            for name in names:
                if change == "deleted":
                    changes.deleted.setdefault(name, set()).add(record_id)
                else:
                    changes.add(name, record_id, f"{change} notification {p.get('lastModifiedDateTime', '')}".strip())
        return changes

    def describe_missing(self, entity: EntitySync, record_id: str) -> str:
        return (f"Business Central returned no {entity.entity_set} record with id {record_id} in company "
                f"{self.company!r} (deleted since the notification?)")

    # -- write-backs (non-idempotent: read the status first, act only if still due) ---------------
    def resolve(self, entity: EntitySync, record_id: str, note: str | None = None) -> ResolutionOutcome:
        current = self.client.get(self.company_id, entity.entity_set, record_id)
        if current is None:
            return ResolutionOutcome("not_applicable", f"{entity.document_label} {record_id} no longer exists in Business Central")
        label = f"{entity.document_label} {current.get('number', record_id)}"
        if entity.resolution == "post_purchase_invoice":
            status = current.get("status")
            if status in POSTABLE_INVOICE_STATUSES:
                self.client.post_purchase_invoice(self.company_id, record_id)
                return ResolutionOutcome("acted", f"{label} posted in Business Central (was {status})")
            if status in ("Open", "Paid"):
                return ResolutionOutcome("already", f"{label} is already posted (status {status}); nothing to do")
            return ResolutionOutcome("not_applicable", f"{label} has status {status!r}; it cannot be posted")
        if entity.resolution == "unblock_vendor":
            blocked = current.get("blocked")
            if blocked in (UNBLOCKED, "", None):
                return ResolutionOutcome("already", f"{label} is not blocked; nothing to do")
            self.client.unblock_vendor(self.company_id, record_id, current["@odata.etag"])
            return ResolutionOutcome("acted", f"{label} unblocked in Business Central (was blocked: {blocked})")
        return ResolutionOutcome("already", f"{label}: outcome recorded (status {current.get('status', '')})")

    def api_calls(self) -> int:
        return self.client.http.calls


def _parse_dt(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _collection_since(resource: str) -> datetime | None:
    """The lower bound in a collection notification's $filter (BC's docs spell the property two ways)."""
    if "?" not in resource:
        return None
    query = unquote(resource.split("?", 1)[1])
    for prop in ("lastModifiedDateTime", "lastDateTimeModified"):
        marker = f"{prop} gt "
        if marker in query:
            token = query.split(marker, 1)[1].split()[0].split("&", 1)[0].strip("')")
            return _parse_dt(token)
    return None


def from_resources(integration: IntegrationDefinition, resources: Any) -> BusinessCentralSource:
    """The adapter for one run (integrations.sources.ADAPTERS): the resource's client, the definition's company."""
    resource = resources.business_central
    return BusinessCentralSource(resource.client(), integration.company, resource.web_client_url)
