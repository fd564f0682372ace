"""The source-side contract every ERP adapter implements (Business Central, F&O; Acumatica next).

An adapter turns entity definitions into API calls of one system client. It knows nothing of
Dagster or of the target; the sync engine and the Dagster factories only talk to this protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from connector_pipelines.integrations.definition import EntitySync, ExceptionRule


def pushdown_filter(rules: list[ExceptionRule], literal: Callable[[str, Any], str]) -> str | None:
    """The exception rules an OData-style ``$filter`` can express, for the server to apply (the rest — and
    all of them again — run client-side). ``literal(field, value)`` renders a value the way the source's
    API spells it (BC enum member names, F&O typed enum literals, Acumatica strings); ``in`` becomes an
    OR of ``eq`` (neither F&O nor Acumatica takes the ``in`` operator), ``not_in`` an AND of ``ne``."""
    clauses = []
    for r in rules:
        if r.op in ("eq", "ne"):
            clauses.append(f"{r.field} {r.op} {literal(r.field, r.value)}")
        elif r.op == "in" and r.value:
            clauses.append("(" + " or ".join(f"{r.field} eq {literal(r.field, v)}" for v in r.value) + ")")
        elif r.op == "not_in" and r.value:
            clauses.append("(" + " and ".join(f"{r.field} ne {literal(r.field, v)}" for v in r.value) + ")")
    return " and ".join(clauses) or None


@dataclass(frozen=True)
class SourceRecord:
    """One source document, with the key it is known by everywhere (ledger, Jira external-id field)."""

    entity: str
    external_id: str
    record_id: str
    data: dict[str, Any]
    url: str | None = None
    number: str | None = None     # what a person calls the document (default: the record's ``number`` field)
    links: dict[str, str | None] = field(default_factory=dict)   # relation field -> the related target record
    # when the source last changed the record, where its API says (BC, Acumatica; None: F&O has no common field):
    # reconciliation leaves a record changed moments ago to the run already writing it
    modified_at: datetime | None = None


@dataclass
class ChangeSet:
    """What a batch of notifications announced: record ids per entity (by entity *name*: two entities
    may read the same entity set), plus windows to re-poll, and what announced each record."""

    ids: dict[str, set[str]] = field(default_factory=dict)
    windows: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    deleted: dict[str, set[str]] = field(default_factory=dict)
    ignored: int = 0
    ignored_reasons: list[str] = field(default_factory=list)
    announced_by: dict[str, list[str]] = field(default_factory=dict)   # record id -> e.g. "ControlNumber 5637…"

    def add(self, entity: str, record_id: str, origin: str | None = None) -> None:
        self.ids.setdefault(entity, set()).add(record_id)
        if origin:
            self.announced_by.setdefault(record_id, []).append(origin)

    def ignore(self, reason: str) -> None:
        self.ignored += 1
        if len(self.ignored_reasons) < 50:
            self.ignored_reasons.append(reason)


@dataclass(frozen=True)
class ResolutionOutcome:
    """What acting on the source did: ``acted`` (we changed it), ``already`` (nothing left to do),
    ``not_applicable`` (the document is in a state where the action is wrong; a person must look)."""

    status: str
    message: str


class SourceAdapter(Protocol):
    system: str

    def external_id(self, entity: EntitySync, record_id: str) -> str: ...

    def parse_external_id(self, external_id: str) -> tuple[str, str]:
        """external id -> (entity_set, record_id)"""
        ...

    def fetch_changed(self, entity: EntitySync, start: datetime, end: datetime) -> list[SourceRecord]: ...

    def fetch_by_ids(self, entity: EntitySync, ids: list[str]) -> list[SourceRecord]: ...

    def fetch_current_exceptions(self, entity: EntitySync) -> list[SourceRecord]: ...

    def fetch_all(self, entity: EntitySync) -> list[SourceRecord]:
        """Every record of the set in the integration's company / legal entity (a mirror's scheduled full read)."""
        ...

    def changes_from_notifications(self, entities: list[EntitySync], payloads: list[dict[str, Any]]) -> ChangeSet:
        """Which records of ``entities`` the stored webhook payloads announce (ids keyed by entity name)."""
        ...

    def resolve(self, entity: EntitySync, record_id: str, note: str | None = None) -> ResolutionOutcome:
        """Act on the document once (after reading its current state); ``note`` = the person's outcome."""
        ...

    def write_fields(self, entity: EntitySync, record_id: str, values: dict[str, Any]) -> ResolutionOutcome:
        """Write a person's values to the record (a write-back), if it can still take them: ``acted``,
        ``already`` (it holds them), ``not_applicable`` (refused: the message says why)."""
        ...

    def describe_missing(self, entity: EntitySync, record_id: str) -> str:
        """Why an announced record could not be read (quarantine reason)."""
        ...

    def api_calls(self) -> int: ...
