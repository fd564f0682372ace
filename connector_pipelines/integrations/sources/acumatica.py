"""Acumatica as a source: windowed reads on LastModifiedDateTime, push notifications as a signal, and
resolutions (an endpoint action such as ReleaseBill, or a field write such as taking an order off hold)
that act only after re-reading the document's state.

Record ids are the entity's key values joined by ``/`` (``Bill/000123``: Type and ReferenceNbr), which is
also the ``{ids}`` path Acumatica reads one record by; the external id is ``acu:{Entity}:{ids}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from connector_pipelines.integrations.definition import (
    EntitySync,
    IntegrationDefinition,
    format_value,
    parse_moment,
)
from connector_pipelines.integrations.sources.base import (
    ChangeSet,
    ResolutionOutcome,
    SourceRecord,
    pushdown_filter,
)
from connector_pipelines.systems.acumatica.client import (
    MODIFIED_FIELD,
    AcumaticaActionError,
    AcumaticaApiError,
    AcumaticaClient,
    AcumaticaValidationError,
    literal,
)
from connector_pipelines.systems.acumatica.models import KEY_FIELDS

PREFIX = "acu"


class AcumaticaSource:
    system = "acumatica"

    def __init__(self, client: AcumaticaClient, company: str) -> None:
        self.client = client
        self.company = company

    # -- keys and links ---------------------------------------------------------------------------
    @staticmethod
    def key_fields(entity: EntitySync) -> tuple[str, ...]:
        fields = KEY_FIELDS.get(entity.entity_set)
        if fields is None:
            raise ValueError(f"Acumatica entity {entity.entity_set!r} has no known key fields "
                             f"(known: {', '.join(sorted(KEY_FIELDS))})")
        return fields

    def record_id(self, entity: EntitySync, row: dict[str, Any]) -> str:
        return "/".join(str(row[k]) for k in self.key_fields(entity))

    def keys(self, entity: EntitySync, record_id: str) -> dict[str, str]:
        fields = self.key_fields(entity)
        values = record_id.split("/", len(fields) - 1)
        if len(values) != len(fields):
            raise ValueError(f"{record_id!r} is not a {entity.entity_set} key ({'/'.join(fields)})")
        return dict(zip(fields, values, strict=True))

    def external_id(self, entity: EntitySync, record_id: str) -> str:
        return f"{PREFIX}:{entity.entity_set}:{record_id}"

    def parse_external_id(self, external_id: str) -> tuple[str, str]:
        system, entity_set, record_id = external_id.split(":", 2)
        if system != PREFIX:
            raise ValueError(f"not an Acumatica key: {external_id}")
        return entity_set, record_id

    def _record(self, entity: EntitySync, row: dict[str, Any]) -> SourceRecord:
        record_id = self.record_id(entity, row)
        try:
            url = self.client.record_url(entity.entity_set, row)
        except ValueError:
            url = None
        return SourceRecord(entity.name, self.external_id(entity, record_id), record_id, row, url,
                            number=str(row[self.key_fields(entity)[-1]]), modified_at=_modified(row))

    def _select(self, entity: EntitySync) -> list[str]:
        """Only what the templates, rules and keys name (a record has ~30 fields; Jira sees a few)."""
        return sorted({*entity.template_fields(), *self.key_fields(entity), MODIFIED_FIELD})

    # -- reads ------------------------------------------------------------------------------------
    def fetch_changed(self, entity: EntitySync, start: datetime, end: datetime) -> list[SourceRecord]:
        # With a declared state every changed document is read (one that stopped being an exception keeps
        # its issue current); otherwise the exception rules are pushed down to Acumatica.
        flt = None if entity.state else pushdown_filter(entity.exception, lambda _f, v: literal(v))
        rows = self.client.modified_between(entity.entity_set, start, end, filter=flt, select=self._select(entity))
        return [self._record(entity, r) for r in rows]

    def fetch_by_ids(self, entity: EntitySync, ids: list[str]) -> list[SourceRecord]:
        rows = self.client.get_many(entity.entity_set, [self.keys(entity, i) for i in ids], select=self._select(entity))
        return [self._record(entity, r) for r in rows]

    def fetch_all(self, entity: EntitySync) -> list[SourceRecord]:
        return [self._record(entity, row) for row in self.client.list(entity.entity_set, select=self._select(entity))]

    def fetch_current_exceptions(self, entity: EntitySync) -> list[SourceRecord]:
        flt = pushdown_filter(entity.exception, lambda _f, v: literal(v))
        rows = self.client.list(entity.entity_set, filter=flt, select=self._select(entity))
        return [r for r in (self._record(entity, row) for row in rows) if entity.is_exception(r.data)]

    def changes_from_notifications(self, entities: list[EntitySync], payloads: list[dict[str, Any]]) -> ChangeSet:
        """Push notifications name rows of a query (``Inserted`` = the row now, ``Deleted`` = the row before;
        an update carries both). Only keys are taken from them: the run re-reads every document."""
        changes = ChangeSet()
        by_query = {e.push_query: e for e in entities if e.push_query}
        for p in payloads:
            query, ident = p.get("Query"), p.get("Id")
            entity = by_query.get(query)
            if entity is None:
                changes.ignore(f"push notification {ident} of query {query!r}: no entity of this integration "
                               "is announced by it")
                continue
            if p.get("CompanyId") not in (None, "", self.company):
                changes.ignore(f"push notification {ident} is for company {p.get('CompanyId')!r}, this "
                               f"integration watches {self.company!r}")
                continue
            mapping = entity.event_keys or {k: k for k in self.key_fields(entity)}
            inserted: set[str] = set()
            for kind, rows in (("Inserted", p.get("Inserted") or []), ("Deleted", p.get("Deleted") or [])):
                for row in rows:
                    values = {field: row.get(src) for field, src in mapping.items()}
                    if any(v in (None, "") for v in values.values()):
                        changes.ignore(f"push notification {ident} ({query}): a row without "
                                       f"{', '.join(mapping.values())}")
                        continue
                    record_id = self.record_id(entity, values)
                    if kind == "Inserted":
                        inserted.add(record_id)
                        changes.add(entity.name, record_id, f"push notification {ident} ({query})")
                    elif record_id not in inserted:
                        # Deleted without Inserted: the row left the query (deleted, or no longer matching it):
                        # re-read it too; the read tells which.
                        changes.add(entity.name, record_id, f"push notification {ident} ({query}, row removed)")
        return changes

    def describe_missing(self, entity: EntitySync, record_id: str) -> str:
        return (f"Acumatica returned no {entity.entity_set} {record_id} on endpoint {self.client.endpoint} "
                "(deleted since the notification, or not visible to this user)")

    # -- write-backs (non-idempotent: read the state first, act only if still due) ----------------
    def resolve(self, entity: EntitySync, record_id: str, note: str | None = None) -> ResolutionOutcome:
        keys = self.keys(entity, record_id)
        current = self.client.get(entity.entity_set, keys)
        label = f"{entity.document_label} {record_id.split('/')[-1]}"
        if current is None:
            return ResolutionOutcome("not_applicable", f"{label} no longer exists in Acumatica; nothing was done")
        check = entity.state_check
        if entity.resolution in ("source_action", "update_fields") and check is not None:
            state = current.get(check.field)
            shown = format_value(state)
            what = entity.action if entity.resolution == "source_action" else \
                "update of " + ", ".join(f"{k} = {format_value(v)}" for k, v in entity.updates.items())
            if state in check.already:
                return ResolutionOutcome("already", f"{label}: {check.field} is already {shown}; nothing to do")
            if state not in check.due:
                return ResolutionOutcome("not_applicable", (
                    f"{label}: {check.field} is {shown!r}, not {' or '.join(map(repr, check.due))}; the {what} was "
                    "not done (fix the document in Acumatica, then move the issue to Done again)"))
            try:
                if entity.resolution == "source_action":
                    self.client.invoke_action(entity.entity_set, entity.action or "", keys)
                else:
                    self.client.put(entity.entity_set, {**keys, **entity.updates}, select=[check.field])
            except AcumaticaValidationError as exc:
                errors = "; ".join(f"{k or 'record'}: {v}" for k, v in exc.fields.items()) or str(exc)
                return ResolutionOutcome("not_applicable", f"{label}: Acumatica refused the {what}: {errors}")
            except AcumaticaActionError as exc:
                if exc.timed_out or exc.status in (408, 429, 502, 503, 504):
                    raise   # still running, or not answered: the retry re-reads the state and finds it done or due
                return ResolutionOutcome("not_applicable", f"{label}: Acumatica refused {what}: "
                                                           f"{exc.exception_message or exc.message or exc}")
            after = self.client.get(entity.entity_set, keys, select=[check.field]) or {}
            return ResolutionOutcome("acted", f"{label}: {what} done in Acumatica ({check.field} was {shown}, "
                                              f"now {format_value(after.get(check.field))})")
        field = check.field if check else "Status"
        return ResolutionOutcome("already", f"{label}: outcome recorded in the connector's ledger "
                                            f"({field} {format_value(current.get(field))})")

    def api_calls(self) -> int:
        return self.client.http.calls


def _modified(row: dict[str, Any]) -> datetime | None:
    """LastModifiedDateTime as a moment (a value without an offset is taken as UTC)."""
    value = row.get(MODIFIED_FIELD)
    if isinstance(value, datetime):
        return value
    try:
        return parse_moment(str(value)) if value else None
    except ValueError:
        return None


def from_resources(integration: IntegrationDefinition, resources: Any) -> AcumaticaSource:
    """The adapter for one run (integrations.sources.ADAPTERS): the resource's client (its OAuth grant lives
    in the store's vault), the definition's company."""
    return AcumaticaSource(resources.acumatica.client(resources.connector_store.vault()), integration.company)


__all__ = ["AcumaticaApiError", "AcumaticaSource", "from_resources"]
