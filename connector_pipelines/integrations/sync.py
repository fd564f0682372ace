"""The sync engine between a source adapter and the Jira writer (no Dagster here).

Entry points, one write path:
- ``sync_window``: a polled time window (partition) of one entity;
- ``sync_notified``: the records a batch of notifications announced;
- ``retry_records``: ledger rows whose automatic retry is due (transient failures, deferred creates);
- ``reconcile``: compare the source's current exceptions with the target's issues;
- ``repair``: open the missing issues and close the newer of duplicated ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from connector_pipelines.core.db import utcnow
from connector_pipelines.core.failures import WriteSettings
from connector_pipelines.core.http import ApiError
from connector_pipelines.core.ledger import FAILED, QUARANTINED, LedgerEntry
from connector_pipelines.integrations.definition import EntitySync, IntegrationDefinition, render
from connector_pipelines.integrations.documents import Document, Finding, of_entry, of_record, when
from connector_pipelines.integrations.sources.base import SourceAdapter, SourceRecord
from connector_pipelines.integrations.target import RecordWriter, TargetBackend, TargetItem, WriteReport


@dataclass
class SyncReport:
    read: int = 0
    not_exceptions: int = 0
    write: WriteReport = field(default_factory=WriteReport)
    quarantined: dict[str, str] = field(default_factory=dict)   # external id -> why (announced, not readable)
    ignored: int = 0
    ignored_reasons: list[str] = field(default_factory=list)

    def merge(self, other: SyncReport) -> SyncReport:
        self.read += other.read
        self.not_exceptions += other.not_exceptions
        self.write.merge(other.write)
        self.quarantined.update(other.quarantined)
        self.ignored += other.ignored
        self.ignored_reasons.extend(other.ignored_reasons[:50 - len(self.ignored_reasons)])
        return self

    def counts(self) -> dict[str, int]:
        return {"records_read": self.read, "not_exceptions": self.not_exceptions, **self.write.counts(),
                "quarantined": len(self.quarantined), "ignored_notifications": self.ignored}

    @property
    def needs_a_person(self) -> dict[str, str]:
        return self.write.needs_a_person


def _link(source: SourceAdapter, writer: RecordWriter, entity: EntitySync,
          records: list[SourceRecord]) -> list[SourceRecord]:
    """Relation fields (``relates_to``): each record's related source record, as the target record the ledger
    has for it (None until that one is written: a later run fills the link in, the fingerprint changes)."""
    relations = [f for f in entity.fields if f.relates_to]
    if not relations or not records:
        return records
    integration = writer.integration
    wanted = {(r.external_id, f.name): source.external_id(integration.entity(f.relates_to), render(f.template, r.data))
              for r in records for f in relations}
    known = writer.ledger.get_many(integration.name, set(wanted.values()))
    target = {k: e.target_key for k, e in known.items() if e.target_key}
    return [replace(r, links={f.name: target.get(wanted[(r.external_id, f.name)]) for f in relations})
            for r in records]


def _upsert_exceptions(source: SourceAdapter, writer: RecordWriter, entity: EntitySync,
                       records: list[SourceRecord]) -> SyncReport:
    """Open or update an issue per exception (relation fields linked first); for entities with a ``state``,
    records that stopped being exceptions keep their issue current (fields and one comment per change of state)."""
    records = _link(source, writer, entity, records)
    exceptions = [r for r in records if entity.is_exception(r.data)]
    report = SyncReport(read=len(records), not_exceptions=len(records) - len(exceptions))
    if exceptions:
        report.write = writer.upsert(entity, exceptions)
    if entity.state and len(exceptions) < len(records):
        report.write.merge(writer.follow(entity, [r for r in records if not entity.is_exception(r.data)]))
    return report


def sync_window(source: SourceAdapter, writer: RecordWriter, entity: EntitySync,
                start: datetime, end: datetime) -> SyncReport:
    return _upsert_exceptions(source, writer, entity, source.fetch_changed(entity, start, end))


def sync_all(source: SourceAdapter, writer: RecordWriter, entity: EntitySync) -> SyncReport:
    """A mirror's scheduled full read: every record of the set, written through the same path (unchanged
    records cost one ledger read and no target call)."""
    return _upsert_exceptions(source, writer, entity, source.fetch_all(entity))


def sync_notified(integration: IntegrationDefinition, source: SourceAdapter, writer: RecordWriter,
                  payloads: list[dict[str, Any]], entities: list[EntitySync] | None = None) -> dict[str, SyncReport]:
    """Fetch the full records the notifications name (few calls: OData filters over many ids).

    A record a notification announced but the source cannot return is *quarantined* in the ledger
    with the reason (and what announced it); the rest of the batch proceeds. Deleted records are not.
    """
    entities = entities if entities is not None else integration.entities
    changes = source.changes_from_notifications(entities, payloads)
    reports: dict[str, SyncReport] = {}
    if changes.ignored:
        first = reports.setdefault(entities[0].name, SyncReport()) if entities else SyncReport()
        first.ignored += changes.ignored
        first.ignored_reasons.extend(changes.ignored_reasons)
    for entity in entities:
        ids = sorted(changes.ids.get(entity.name, set()))
        windows = [(s, e) for name, s, e in changes.windows if name == entity.name]
        if not ids and not windows:
            continue
        report = reports.setdefault(entity.name, SyncReport())
        if ids:
            records = source.fetch_by_ids(entity, ids)
            report.merge(_upsert_exceptions(source, writer, entity, records))
            found = {r.record_id for r in records}
            deleted = changes.deleted.get(entity.name, set())
            missing = [i for i in ids if i not in found and i not in deleted]
            if missing:
                report.quarantined.update(_quarantine_missing(writer, source, entity, missing, changes))
        for start, end in windows:
            report.merge(sync_window(source, writer, entity, start, end))
    return reports


def retry_records(integration: IntegrationDefinition, source: SourceAdapter, writer: RecordWriter,
                  entries: list[LedgerEntry], *, keep_unreadable: bool = False) -> dict[str, SyncReport]:
    """Retry ledger rows whose ``retry_after`` passed, or that a person re-drives once the cause is fixed:
    re-read their records (few calls), write those still exceptions through the normal path, and settle the
    rest (an uncertain create is verified in Jira first). ``keep_unreadable`` (a re-drive): a record the source
    still does not return stays quarantined with the reason, instead of being settled as gone."""
    reports: dict[str, SyncReport] = {}
    by_entity: dict[str, list[LedgerEntry]] = {}
    for e in entries:
        by_entity.setdefault(e.entity, []).append(e)
    for name, group in by_entity.items():
        try:
            entity = integration.entity(name)
        except KeyError:
            continue    # an entity removed from defs.yaml: its rows stay as they are, listed by the ledger CLI
        report = reports.setdefault(name, SyncReport())
        keys = [e.source_key for e in group]
        records = source.fetch_by_ids(entity, [source.parse_external_id(k)[1] for k in keys])
        report.merge(_upsert_exceptions(source, writer, entity, records))
        written = {r.external_id for r in records if entity.is_exception(r.data)}
        readable = {r.external_id for r in records}
        rest = [k for k in keys if k not in written]
        unreadable = [k for k in rest if k not in readable]
        if keep_unreadable and unreadable:
            reasons = {k: f"{source.describe_missing(entity, source.parse_external_id(k)[1])} (re-driven)"
                       for k in unreadable}
            kept = writer.keep_quarantined(entity, reasons)
            report.quarantined.update({k: reasons[k] for k in kept})
            unreadable = []
        for why, subset in (("no longer an exception", [k for k in rest if k in readable]),
                            ("no longer readable at the source", unreadable)):
            if subset:
                report.write.merge(writer.settle(entity, subset, why))
    return reports


def _quarantine_missing(writer: RecordWriter, source: SourceAdapter, entity: EntitySync, missing: list[str],
                        changes: Any) -> dict[str, str]:
    """Ledger rows in state ``quarantined`` with a reason a person can act on; a later event (or a
    re-run after the record is fixed) finds the record and opens the issue as usual."""
    reasons: dict[str, str] = {}
    rows = []
    for record_id in missing:
        key = source.external_id(entity, record_id)
        origin = ", ".join(changes.announced_by.get(record_id, [])[:5])
        reason = source.describe_missing(entity, record_id) + (f"; announced by {origin}" if origin else "")
        reasons[key] = reason
        rows.append({"source_key": key, "entity": entity.name, "action": "issue", "last_error": reason[:2000],
                     "context": {"record": record_id, "announced_by": origin}})
    writer.ledger.quarantine(writer.integration.name, rows, writer.run_id)
    return reasons


@dataclass
class Reconciliation:
    exceptions: int
    open_issues: int
    missing: list[str]
    duplicates: dict[str, list[str]]          # external id -> its open issues, oldest first
    stale: dict[str, str]
    orphaned: dict[str, str]
    unverifiable: str | None = None          # why completeness cannot be checked (event-only, no catch-up read)
    records: dict[str, SourceRecord] = field(default_factory=dict)   # the current exceptions, by external id
    # exceptions without a target record that the source changed within the settle time: the run their change
    # started (a webhook batch, the next poll) is still writing them — listed, not failed, not repaired
    in_flight: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.missing and not self.duplicates and not self.stale and not self.unverifiable


def _changed_recently(record: SourceRecord | None, now: datetime, settle_s: float) -> bool:
    """Changed at the source less than ``settle_s`` ago. A time ahead of ours by more than a minute (a source
    clock or time zone we cannot trust) is not taken as recent: it must not hide a record for hours."""
    if record is None or record.modified_at is None or settle_s <= 0:
        return False
    moment = record.modified_at if record.modified_at.tzinfo else record.modified_at.replace(tzinfo=UTC)
    age = (now - moment).total_seconds()
    return -60 <= age < settle_s


def reconcile(integration: IntegrationDefinition, source: SourceAdapter, target: TargetBackend,
              entity: EntitySync, ledger=None, *, settle_s: float | None = None,
              now: datetime | None = None) -> Reconciliation:
    """Every current exception must have exactly one open target record (event-only entities: one record of
    any status for every document the catch-up read finds); an open record whose source record is no longer
    an exception is orphaned (reported, not failed: the person closing it may be on it). Duplicates are
    found among all open records of the entity, whatever the source says now.

    Search lags: an exception that search does not show but the ledger has a target record for is read by
    key (a consistent read) before it is called missing.

    Changes in flight: a document created or changed moments before this read has no target record *yet* —
    its webhook run (seconds behind) or the next poll writes it. An exception without a target record that the
    source changed less than ``settle_s`` ago (``CONNECTOR_RECONCILE_SETTLE_S``, the poll interval by default)
    is listed as in flight, not missing — unless its write already failed for good (the ledger says it needs a
    person); one written while this check ran (its ledger row is newer than the read) is not an orphan. Sources
    without a modified time (F&O) settle nothing."""
    started = utcnow()
    now = now or datetime.now(UTC)
    settle_s = WriteSettings.from_env().reconcile_settle_s if settle_s is None else settle_s
    prefix = source.external_id(entity, "")
    unverifiable = None
    if entity.mirror:
        current = {r.external_id: r for r in source.fetch_all(entity)}
    elif entity.event_only and not (entity.catch_up and entity.catch_up.readable):
        unverifiable = (entity.catch_up.unavailable if entity.catch_up else None) or "no catch-up read declared"
        current: dict[str, SourceRecord] = {}
    else:
        current = {r.external_id: r for r in source.fetch_current_exceptions(entity)}
    found = target.find(entity, list(current)) if current else {}
    if ledger is not None:
        _read_lagging(target, ledger, integration, current, found)

    open_by_key = target.open_items(entity, prefix)
    duplicates = {k: [i.key for i in sorted(v, key=lambda i: i.order)] for k, v in open_by_key.items() if len(v) > 1}

    missing, stale, in_flight = [], {}, []
    for key in current:
        items = found.get(key, [])
        open_ = [i for i in items if not i.done]
        if entity.event_only:
            if not items:
                missing.append(key)
        elif not open_:
            if items:
                stale[key] = items[0].key
            else:
                missing.append(key)
    recent = [k for k in missing if _changed_recently(current.get(k), now, settle_s)]
    stuck = {k for k, e in ledger.get_many(integration.name, recent).items()   # failed for good: not in flight
             if e.state == QUARANTINED or (e.state == FAILED and e.retry_after is None)} if recent and ledger else set()
    for key in recent:
        if key not in stuck:
            missing.remove(key)
            in_flight.append(key)
    # Event-driven without a state rule (e.g. "vendor invoice posted"): no current state defines the
    # exceptions, so an open record is never orphaned by the source's state.
    orphaned = {} if entity.event_only and not entity.mirror else {
        k: v[0].key for k, v in open_by_key.items() if k not in current}
    if orphaned and ledger is not None:
        # written after the source was read (a document created meanwhile): not an orphan, in flight
        for key, entry in ledger.get_many(integration.name, orphaned).items():
            if entry.updated_at is not None and entry.updated_at >= started:
                orphaned.pop(key)
    open_issues = sum(len(v) for v in open_by_key.values())
    return Reconciliation(len(current), open_issues, missing, duplicates, stale, orphaned, unverifiable, current,
                          in_flight)


def findings(integration: IntegrationDefinition, target: TargetBackend, entity: EntitySync, rec: Reconciliation,
             ledger=None) -> list[Finding]:
    """What a reconciliation found, each record named in the entity's words with its ERP and target links:
    missing (with what the ledger knows of its write), duplicated, done in the target while still an exception
    (stale), orphaned (open, no longer an exception), and in flight (listed only)."""
    label = target.label
    keys = [*rec.missing, *rec.duplicates, *rec.stale, *rec.orphaned, *rec.in_flight]
    entries = ledger.get_many(integration.name, keys) if ledger is not None and keys else {}

    def doc(key: str) -> Document:
        record = rec.records.get(key)
        return of_record(entity, record) if record is not None else of_entry(entity, entries.get(key), key)

    def why_missing(key: str) -> str:
        entry = entries.get(key)
        if entry is None:
            return f"never written: no {label} record and no ledger row"
        if entry.state in ("failed", "quarantined"):
            retry = f"retried after {when(entry.retry_after)}" if entry.retry_after else "needs a person"
            return f"{entry.state} ({retry}): {entry.last_error or ''}"[:300]
        return f"ledger says {entry.state}" + (f" as {entry.target_key}" if entry.target_key else "")

    out = [Finding("missing", doc(k), [], why_missing(k)) for k in rec.missing]
    out += [Finding("duplicate", doc(k), [(i, target.url(i)) for i in v],
                    f"{len(v)} open {label} records; the repair keeps the oldest") for k, v in rec.duplicates.items()]
    out += [Finding(f"done in {label}", doc(k), [(i, target.url(i))],
                    "still an exception at the source; reopen, or finish it there") for k, i in rec.stale.items()]
    out += [Finding("orphaned", doc(k), [(i, target.url(i))], "open, but no longer an exception at the source")
            for k, i in rec.orphaned.items()]
    for k in rec.in_flight:
        record = rec.records.get(k)
        age = f" {when(record.modified_at)}" if record is not None and record.modified_at else ""
        out.append(Finding("in flight", doc(k), [], f"changed at the source{age}; the run it started writes it"))
    return out


def _read_lagging(target: TargetBackend, ledger, integration: IntegrationDefinition,
                  current: dict[str, SourceRecord], found: dict[str, list[TargetItem]]) -> None:
    """Keys the search did not show but the ledger has a target record for: read it by key (not the lagging index)."""
    unseen = [k for k in current if not found.get(k)]
    for key, entry in ledger.get_many(integration.name, unseen).items():
        if not entry.target_key:
            continue
        item = target.read(entry.target_key)
        if item is not None and item.external_id == key:
            found[key] = [item]


@dataclass
class RepairReport:
    opened: WriteReport = field(default_factory=WriteReport)
    closed_duplicates: dict[str, str] = field(default_factory=dict)   # closed issue -> the one kept
    failures: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"missing_opened": self.opened.created + self.opened.updated,
                "duplicates_closed": len(self.closed_duplicates), "repair_failures": len(self.failures)}


def repair(integration: IntegrationDefinition, source: SourceAdapter, writer: RecordWriter, entity: EntitySync,
           rec: Reconciliation) -> RepairReport:
    """Open the issues reconciliation found missing (the records re-read and written through the normal
    path, so the ledger claim and the target search apply), and close each newer duplicate: the ledger
    is pointed at the oldest issue first, then the newer one is linked to it as a duplicate, commented
    and moved to done (its Done webhook then finds no ledger row and acts on nothing)."""
    report = RepairReport()
    if rec.missing:
        ids = [rec.records[k].record_id for k in rec.missing if k in rec.records]
        records = [r for r in source.fetch_by_ids(entity, ids) if entity.event_only or entity.is_exception(r.data)]
        report.opened = writer.upsert(entity, _link(source, writer, entity, records))
    name, target = integration.name, writer.backend
    for key, issue_keys in rec.duplicates.items():
        keep, newer = issue_keys[0], issue_keys[1:]
        entry = writer.ledger.get(name, key)
        if entry is not None and entry.target_key != keep:
            writer.ledger.mark_done(name, [{"source_key": key, "entity": entity.name, "action": "issue",
                                            "target_key": keep, "target_url": target.url(keep),
                                            "context": entry.context | {"repointed_from": entry.target_key}}],
                                    writer.run_id)
        for dup in newer:
            try:
                target.close_duplicate(dup, keep, key)
                report.closed_duplicates[dup] = keep
            except ApiError as exc:
                report.failures[dup] = str(exc)
    return report
