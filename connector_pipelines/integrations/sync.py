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

    def merge(self, other: SyncReport) -> SyncReport:
        self.read += other.read
        self.not_exceptions += other.not_exceptions
        self.write.merge(other.write)
        return self

    def counts(self) -> dict[str, int]:
        return {"records_read": self.read, "not_exceptions": self.not_exceptions, **self.write.counts()}


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
                  payloads: list[dict[str, Any]]) -> dict[str, SyncReport]:
    """Fetch the full records the notifications name (few calls: OData filters over many ids)."""
    changes = source.changes_from_notifications(payloads)
    reports: dict[str, SyncReport] = {}
    for entity in integration.entities:
        ids = sorted(changes.ids.get(entity.entity_set, set()))
        windows = [(s, e) for es, s, e in changes.windows if es == entity.entity_set]
        if not ids and not windows:
            continue
        report = reports.setdefault(entity.name, SyncReport())
        if ids:
            report.merge(_upsert_exceptions(writer, entity, source.fetch_by_ids(entity, ids)))
        for start, end in windows:
            report.merge(sync_window(source, writer, entity, start, end))
    return reports


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
    found = jira.find_by_external_ids(external_id_field, list(current), integration.target.project_key,
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
    jql = (f'project = "{integration.target.project_key}" AND statusCategory != "{done_cat}" '
           f'AND {external_id_field.jql_clause} is not EMPTY')
    orphaned, open_count = {}, 0
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
