"""The sync engine between a source adapter and the Jira writer (no Dagster here).

Three entry points, one write path:
- ``sync_window``: a polled time window (partition) of one entity;
- ``sync_notified``: the records a batch of notifications announced;
- ``reconcile``: compare the source's current exceptions with the target's issues.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connector_pipelines.integrations.definition import EntitySync, IntegrationDefinition
from connector_pipelines.integrations.jira_target import JiraIssueWriter, WriteReport
from connector_pipelines.integrations.sources.base import SourceAdapter, SourceRecord
from connector_pipelines.systems.jira.client import JiraClient


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


def _upsert_exceptions(writer: JiraIssueWriter, entity: EntitySync, records: list[SourceRecord]) -> SyncReport:
    exceptions = [r for r in records if entity.is_exception(r.data)]
    report = SyncReport(read=len(records), not_exceptions=len(records) - len(exceptions))
    if exceptions:
        report.write = writer.upsert(entity, exceptions)
    return report


def sync_window(source: SourceAdapter, writer: JiraIssueWriter, entity: EntitySync,
                start: datetime, end: datetime) -> SyncReport:
    return _upsert_exceptions(writer, entity, source.fetch_changed(entity, start, end))


def sync_notified(integration: IntegrationDefinition, source: SourceAdapter, writer: JiraIssueWriter,
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
            report.merge(_upsert_exceptions(writer, entity, records))
            found = {r.record_id for r in records}
            deleted = changes.deleted.get(entity.name, set())
            missing = [i for i in ids if i not in found and i not in deleted]
            if missing:
                report.quarantined.update(_quarantine_missing(writer, source, entity, missing, changes))
        for start, end in windows:
            report.merge(sync_window(source, writer, entity, start, end))
    return reports


def _quarantine_missing(writer: JiraIssueWriter, source: SourceAdapter, entity: EntitySync, missing: list[str],
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
    duplicates: dict[str, list[str]]
    stale: dict[str, str]
    orphaned: dict[str, str]

    @property
    def passed(self) -> bool:
        return not self.missing and not self.duplicates and not self.stale


def reconcile(integration: IntegrationDefinition, source: SourceAdapter, jira: JiraClient,
              entity: EntitySync, external_id_field) -> Reconciliation:
    """Every current exception must have exactly one open issue; an open issue whose record is no
    longer an exception is orphaned (reported, not failed: the person closing it may be on it)."""
    current = {r.external_id: r for r in source.fetch_current_exceptions(entity)}
    done_cat = integration.target.done_status_category
    project = integration.project_for(entity)
    found = jira.find_by_external_ids(external_id_field, list(current), project,
                                      ["status", external_id_field.id]) if current else {}
    missing, duplicates, stale = [], {}, {}
    for key in current:
        issues = found.get(key, [])
        open_ = [i for i in issues if _category(i) != done_cat]
        if len(open_) > 1:
            duplicates[key] = sorted(i["key"] for i in open_)
        elif not open_:
            if issues:
                stale[key] = issues[0]["key"]
            else:
                missing.append(key)
    prefix = source.external_id(entity, "")
    jql = (f'project = "{project}" AND statusCategory != "{done_cat}" '
           f'AND {external_id_field.jql_clause} is not EMPTY')
    orphaned, open_count = {}, 0
    if not entity.exception:
        # Event-driven without a state rule (e.g. "vendor invoice posted"): no current state defines the
        # exceptions, so an open issue is never orphaned by the source's state.
        return Reconciliation(len(current), 0, missing, duplicates, stale, orphaned)
    for issue in jira.search_jql(jql, ["status", external_id_field.id]):
        ext = (issue.get("fields") or {}).get(external_id_field.id) or ""
        if not ext.startswith(prefix):
            continue
        open_count += 1
        if ext not in current:
            orphaned[ext] = issue["key"]
    return Reconciliation(len(current), open_count, missing, duplicates, stale, orphaned)


def _category(issue: dict[str, Any]) -> str:
    status = (issue.get("fields") or {}).get("status") or {}
    return (status.get("statusCategory") or {}).get("key", "")
