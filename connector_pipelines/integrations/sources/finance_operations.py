"""Dynamics 365 F&O as a source: business events announce documents, OData reads them, and the
return flow advances the document's workflow or records the outcome on it.

- A business event is a stub (API-FACTS §1.4): it names the document (``event_keys`` map the
  entity's fields to the event's fields) and its legal entity; the full record is read over OData,
  many documents per call (``get_many``: an OR of key groups, since F&O refuses ``in``).
- External id: ``fo:<entity name>:<dataAreaId>:<key value>[:<key value>…]`` (values URL-quoted). The
  entity *name*, not the entity set, so "PO confirmed" and "PO rejected in workflow" are two issues.
- Events of other legal entities, of event types no entity declares, or missing a key field are
  ignored (counted, with the reason). A document the event names but OData cannot return is
  quarantined by the sync engine with ``describe_missing``'s reason.
- Write-backs read the current record first. F&O has no public API that completes or resubmits a
  workflow work item; the closest documented mechanism is a bound OData action on the data entity
  (``[SysODataActionAttribute]``, FO-docs odata.md "Actions"), which the customer's F&O team deploys
  (docs/finance_operations.md). ``resolution: source_action`` calls it only while ``state_check`` says the step is
  due; ``record_outcome`` PATCHes a writable text field (``outcome_field``) when one is configured.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote

from connector_pipelines.core.http import ApiError
from connector_pipelines.integrations.definition import EntitySync, ExceptionRule, IntegrationDefinition
from connector_pipelines.integrations.sources.base import (
    ChangeSet,
    ResolutionOutcome,
    SourceRecord,
    pushdown_filter,
)
from connector_pipelines.systems.finance_operations.client import FinanceOperationsClient
from connector_pipelines.systems.finance_operations.models import BusinessEvent

PREFIX = "fo"
NOTE_LIMIT = 1000


class FinanceOperationsSource:
    system = "finance_operations"

    def __init__(self, client: FinanceOperationsClient, legal_entity: str, environment_url: str | None = None) -> None:
        self.client = client
        self.legal_entity = legal_entity.lower()
        self.environment_url = (environment_url or "").rstrip("/")

    # -- keys and links ---------------------------------------------------------------------------
    def external_id(self, entity: EntitySync, record_id: str) -> str:
        return f"{PREFIX}:{entity.name}:{record_id}"

    def parse_external_id(self, external_id: str) -> tuple[str, str]:
        system, entity_name, record_id = external_id.split(":", 2)
        if system != PREFIX:
            raise ValueError(f"not an F&O key: {external_id}")
        return entity_name, record_id

    @staticmethod
    def record_id(entity: EntitySync, data_area_id: str, values: dict[str, Any]) -> str:
        parts = [data_area_id.lower()] + [quote(str(values[f]), safe="") for f in entity.event_keys]
        return ":".join(parts)

    @staticmethod
    def key_values(entity: EntitySync, record_id: str) -> dict[str, Any]:
        area, *values = record_id.split(":")
        if len(values) != len(entity.event_keys):
            raise ValueError(f"record id {record_id!r} does not fit the keys of {entity.name}: {list(entity.event_keys)}")
        return {"dataAreaId": area, **{f: unquote(v) for f, v in zip(entity.event_keys, values, strict=True)}}

    def record_url(self, entity: EntitySync, data_area_id: str) -> str | None:
        """The F&O web client on the document's form in its legal entity (``cmp`` + ``mi`` are the
        documented URL parameters; a link to one record needs F&O's own URL generator)."""
        if not (self.environment_url and entity.menu_item):
            return None
        return f"{self.environment_url}/?cmp={quote(data_area_id)}&mi={quote(entity.menu_item)}"

    def _record(self, entity: EntitySync, row: dict[str, Any]) -> SourceRecord:
        data = dict(row)
        if entity.lines:
            lines = data.pop(entity.lines.navigation, None) or []
            data["LineCount"] = len(lines)
            data["LinesTotal"] = float(sum(Decimal(str(line.get(entity.lines.amount_field) or 0)) for line in lines))
        area = str(row.get("dataAreaId", self.legal_entity))
        record_id = self.record_id(entity, area, row)
        return SourceRecord(entity.name, self.external_id(entity, record_id), record_id, data,
                            self.record_url(entity, area))

    def _expand(self, entity: EntitySync) -> list[str] | None:
        return [entity.lines.navigation] if entity.lines else None

    # -- reads ------------------------------------------------------------------------------------
    def fetch_changed(self, entity: EntitySync, start, end) -> list[SourceRecord]:
        raise NotImplementedError("F&O data entities carry no common modified timestamp: windows replay the "
                                  "business events received in them (see IntegrationPairComponent)")

    def fetch_by_ids(self, entity: EntitySync, ids: list[str]) -> list[SourceRecord]:
        keys = [self.key_values(entity, i) for i in ids]
        rows = self.client.get_many(entity.entity_set, keys, expand=self._expand(entity))
        wanted = set(ids)
        records = [self._record(entity, r) for r in rows if all(f in r for f in entity.event_keys)]
        return [r for r in records if r.record_id in wanted]

    def fetch_all(self, entity: EntitySync) -> list[SourceRecord]:
        """Every record of the set in the legal entity, paged by F&O's nextLink (a mirror's scheduled read)."""
        rows = self.client.list(entity.entity_set, filter=f"dataAreaId eq {FinanceOperationsClient.literal(self.legal_entity)}",
                                expand=self._expand(entity), cross_company=True)
        return [self._record(entity, row) for row in rows]

    def fetch_current_exceptions(self, entity: EntitySync) -> list[SourceRecord]:
        """The documents that should have an issue now: those in the exception state, or, for an entity
        announced only by events, those its ``catch_up`` read finds (state rules and/or a recent date
        window) — what a lost event would otherwise leave unnoticed."""
        clauses = [f"dataAreaId eq {FinanceOperationsClient.literal(self.legal_entity)}"]
        if entity.exception:
            rules, keep = entity.exception, entity.is_exception
        elif entity.catch_up and entity.catch_up.readable:
            catch_up = entity.catch_up
            rules, keep = catch_up.rules, catch_up.matches
            if catch_up.recent:
                clauses.append(f"{catch_up.recent.field} ge {FinanceOperationsClient.literal(catch_up.since())}")
        else:
            return []   # event-only without a catch-up read: reconciliation says it cannot verify
        pushed = self.odata_filter(entity.entity_set, rules)
        if pushed:
            clauses.append(pushed)
        rows = self.client.list(entity.entity_set, filter=" and ".join(clauses), expand=self._expand(entity),
                                cross_company=True)
        return [r for r in (self._record(entity, row) for row in rows) if keep(r.data)]

    def odata_filter(self, entity_set: str, rules: list[ExceptionRule]) -> str | None:
        """The rules OData can express, with enum literals typed from $metadata (F&O compares enums
        only as ``Microsoft.Dynamics.DataEntities.<Enum>'<Value>'``, and only with eq/ne)."""
        metadata = self.client.metadata()
        return pushdown_filter(rules, lambda field, value: FinanceOperationsClient.literal(
            value, metadata.enum_type(entity_set, field)))

    def changes_from_notifications(self, entities: list[EntitySync], payloads: list[dict[str, Any]]) -> ChangeSet:
        changes = ChangeSet()
        by_event = {e.business_event: e for e in entities if e.business_event}
        for payload in payloads:
            try:
                event = BusinessEvent.parse(payload)
            except ValueError as exc:
                changes.ignore(f"not a business event: {exc}")
                continue
            entity = by_event.get(event.business_event_id)
            if entity is None:
                changes.ignore(f"{event.business_event_id} (ControlNumber {event.control_number}) is not mapped "
                               "by this integration")
                continue
            if event.data_area_id != self.legal_entity:
                changes.ignore(f"{event.business_event_id} (ControlNumber {event.control_number}) is for legal "
                               f"entity {event.data_area_id!r}, this integration watches {self.legal_entity!r}")
                continue
            missing = [src for src in entity.event_keys.values() if event.fields.get(src) in (None, "")]
            if missing:
                changes.ignore(f"{event.business_event_id} (ControlNumber {event.control_number}) lacks "
                               f"{', '.join(missing)}")
                continue
            values = {field: event.fields[src] for field, src in entity.event_keys.items()}
            changes.add(entity.name, self.record_id(entity, event.data_area_id, values),
                        f"{event.business_event_id} ControlNumber {event.control_number}")
        return changes

    def describe_missing(self, entity: EntitySync, record_id: str) -> str:
        keys = self.key_values(entity, record_id)
        shown = ", ".join(f"{k}={v!r}" for k, v in keys.items())
        return (f"F&O OData returned no {entity.entity_set} record for {shown} (the event named a document "
                "this service account cannot read, or one deleted since)")

    # -- write-backs (non-idempotent: read the state first, act only if still due) ----------------
    def _current(self, entity: EntitySync, record_id: str) -> dict[str, Any] | None:
        rows = self.client.get_many(entity.entity_set, [self.key_values(entity, record_id)])
        return rows[0] if rows else None

    def _entity_keys(self, entity: EntitySync, row: dict[str, Any]) -> dict[str, Any]:
        info = self.client.metadata().entity_sets[entity.entity_set]
        return {k: row[k] for k in info.keys}

    def resolve(self, entity: EntitySync, record_id: str, note: str | None = None) -> ResolutionOutcome:
        current = self._current(entity, record_id)
        number = " / ".join(str(v) for k, v in self.key_values(entity, record_id).items() if k != "dataAreaId")
        label = f"{entity.document_label} {number} ({record_id.split(':', 1)[0]})"
        if current is None:
            return ResolutionOutcome("not_applicable", f"{label} is no longer readable in F&O; nothing was changed")
        note = (note or "resolved in Jira")[:NOTE_LIMIT]
        keys = self._entity_keys(entity, current)
        if entity.resolution == "source_action" and entity.state_check and entity.action:
            check = entity.state_check
            state = current.get(check.field)
            if state in check.already:
                return ResolutionOutcome("already", f"{label}: {check.field} is {state}; the workflow already moved on")
            if state not in check.due:
                return ResolutionOutcome("not_applicable", f"{label}: {check.field} is {state!r}, not one of "
                                                           f"{check.due}; {entity.action} was not called")
            try:
                self.client.invoke_action(entity.entity_set, keys, entity.action, {"Comment": note})
            except ApiError as exc:
                if exc.status == 404:
                    return ResolutionOutcome("not_applicable", (
                        f"{label}: the OData action {entity.action} is not deployed on {entity.entity_set} "
                        "in this F&O environment (a customer extension; see docs/finance_operations.md)"))
                if exc.status == 400:
                    return ResolutionOutcome("not_applicable", f"{label}: F&O refused {entity.action}: {exc}")
                raise
            return ResolutionOutcome("acted", f"{label}: {entity.action} called in F&O "
                                              f"({check.field} was {state})")
        if entity.resolution == "record_outcome":
            if not entity.outcome_field:
                return ResolutionOutcome("already", f"{label}: outcome recorded in the connector's ledger "
                                                    "(this document has no writable field for it in F&O)")
            try:
                self.client.patch(entity.entity_set, keys, {entity.outcome_field: note[:255]},
                                  current.get("@odata.etag"))
            except ApiError as exc:
                if exc.status == 400:
                    return ResolutionOutcome("not_applicable", f"{label}: F&O refused the update of "
                                                               f"{entity.outcome_field}: {exc}")
                raise
            return ResolutionOutcome("acted", f"{label}: outcome recorded in F&O ({entity.outcome_field})")
        return ResolutionOutcome("not_applicable", f"{label}: resolution {entity.resolution!r} is not an F&O action")

    def write_fields(self, entity: EntitySync, record_id: str, values: dict[str, Any]) -> ResolutionOutcome:
        """PATCH the record's fields with If-Match on the ETag just read; F&O's refusal (a posted invoice: "Update
        is applicable only before posting", a read-only field) is returned, not raised."""
        current = self._current(entity, record_id)
        label = f"{entity.document_label} {record_id.split(':', 1)[-1]}"
        if current is None:
            return ResolutionOutcome("not_applicable", f"{label} is no longer readable in F&O; nothing was written")
        changes = {k: v for k, v in values.items() if current.get(k) != v}
        if not changes:
            return ResolutionOutcome("already", f"{label} already has " + ", ".join(f"{k} = {v}" for k, v in values.items()))
        try:
            self.client.patch(entity.entity_set, self._entity_keys(entity, current), changes, current.get("@odata.etag"))
        except ApiError as exc:
            if exc.status in (400, 403, 404):
                return ResolutionOutcome("not_applicable", f"F&O refused the change of {', '.join(changes)} on "
                                                           f"{label}: {exc}")
            raise
        return ResolutionOutcome("acted", f"{label}: " + ", ".join(f"{k} = {v}" for k, v in changes.items())
                                 + " written to F&O")

    def api_calls(self) -> int:
        return self.client.http.calls


def from_resources(integration: IntegrationDefinition, resources: Any) -> FinanceOperationsSource:
    """The adapter for one run (integrations.sources.ADAPTERS): the resource's client, the definition's legal entity."""
    resource = resources.finance_operations
    return FinanceOperationsSource(resource.client(), integration.company, resource.environment_url)
