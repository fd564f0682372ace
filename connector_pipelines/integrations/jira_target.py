"""Jira as the target: exactly one issue per source exception, whatever is re-delivered or re-run.

The write path for a batch (DESIGN.md §3):
1. ledger: records already ``done`` with the same fingerprint are skipped;
2. target truth: one JQL search per 50 keys on the external-id custom field (its id discovered from
   the site's field list at connect time) — found -> update, never a second create;
3. an *intent* row is committed before the creates, then bulk create (50 per call);
4. the ledger is marked done / failed per record, with the run id.
A crash between Jira's create answer and step 4 leaves intent rows: the next attempt finds the
issue through step 2 (re-searching once after ``intent_recheck_s`` to ride out search lag).
Only identifiers and the context to act leave the ERP: the mapped fields, never ledger or GL data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from connector_pipelines.core import adf
from connector_pipelines.core.http import ApiError
from connector_pipelines.core.ledger import DONE, INTENT, Ledger, LedgerEntry
from connector_pipelines.integrations.definition import (
    EntitySync,
    IntegrationDefinition,
    format_value,
    render,
    to_number,
)
from connector_pipelines.integrations.sources.base import SourceRecord
from connector_pipelines.systems.jira.client import JiraClient
from connector_pipelines.systems.jira.errors import JiraConfigError

log = logging.getLogger(__name__)

SEARCH_CHUNK = 50


@dataclass
class WriteReport:
    """Counts and links for one batch, shown as Dagster metadata."""

    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    duplicates: int = 0
    links: dict[str, str] = field(default_factory=dict)   # external id -> issue URL
    failures: dict[str, str] = field(default_factory=dict)  # external id -> error

    def merge(self, other: WriteReport) -> WriteReport:
        self.created += other.created
        self.updated += other.updated
        self.skipped += other.skipped
        self.failed += other.failed
        self.duplicates += other.duplicates
        self.links.update(other.links)
        self.failures.update(other.failures)
        return self

    def counts(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "skipped": self.skipped,
                "failed": self.failed, "duplicates_found": self.duplicates}


@dataclass
class _Planned:
    record: SourceRecord
    fields: dict[str, Any]
    fingerprint: str
    context: dict[str, Any]


class JiraIssueWriter:
    def __init__(self, jira: JiraClient, ledger: Ledger, integration: IntegrationDefinition,
                 run_id: str | None, *, intent_recheck_s: float = 2.0) -> None:
        self.jira = jira
        self.ledger = ledger
        self.integration = integration
        self.run_id = run_id
        self.intent_recheck_s = intent_recheck_s
        names = {integration.target.external_id_field}
        for e in integration.entities:
            names |= {f.name for f in e.fields}
        # Discovered per site at connect time; a missing or ambiguous field name fails loudly here.
        self.fields = jira.resolve_fields(sorted(names))
        self.external_id_field = self.fields[integration.target.external_id_field]

    # -- planning ---------------------------------------------------------------------------------
    def desired_fields(self, entity: EntitySync, record: SourceRecord) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "project": {"key": self.integration.project_for(entity)},
            "issuetype": {"name": entity.issue_type},
            "summary": render(entity.summary, record.data)[:255] or f"{entity.document_label} {record.record_id}",
            "description": self.description(entity, record),
            self.external_id_field.id: record.external_id,
        }
        for mapping in entity.fields:
            value = render(mapping.template, record.data)
            fid = self.fields[mapping.name].id
            if mapping.kind == "number":
                fields[fid] = to_number(value) if value else None
            elif mapping.kind == "adf":
                fields[fid] = adf.doc(adf.paragraph(value)) if value else None
            else:
                fields[fid] = value[:255]
        return fields

    def description(self, entity: EntitySync, record: SourceRecord) -> dict[str, Any]:
        rows = [["Field", "Value"]] + [[name, format_value(record.data.get(name)) or "-"] for name in entity.context]
        blocks = [adf.paragraph(adf.text(f"{entity.document_label} needs attention in "
                                         f"{self.integration.capabilities.label} "
                                         f"({self.integration.company}): {entity.description}"))]
        if entity.context:
            blocks.append(adf.table(rows, header=True))
        if record.url:
            blocks.append(adf.paragraph(adf.link("Open the record in the ERP", record.url)))
        blocks.append(adf.paragraph(adf.text("Source key: "), adf.text(record.external_id, code=True)))
        return adf.doc(*blocks)

    def _plan(self, entity: EntitySync, record: SourceRecord) -> _Planned:
        fields = self.desired_fields(entity, record)
        fingerprint = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
        context = {"document": record.data.get("number") or record.record_id, "entity": entity.name}
        return _Planned(record, fields, fingerprint, context)

    # -- the write path -----------------------------------------------------------------------------
    def upsert(self, entity: EntitySync, records: list[SourceRecord]) -> WriteReport:
        report = WriteReport()
        unique = {r.external_id: r for r in records}  # the same record twice in a batch is one record
        planned = {k: self._plan(entity, r) for k, r in unique.items()}
        known = self.ledger.get_many(self.integration.name, planned)

        updates: dict[str, tuple[str, _Planned]] = {}
        to_lookup: dict[str, _Planned] = {}
        for key, p in planned.items():
            entry = known.get(key)
            if entry and entry.state == DONE and entry.target_key:
                if entry.fingerprint == p.fingerprint:
                    report.skipped += 1
                    report.links[key] = self.jira.browse_url(entry.target_key)
                else:
                    updates[key] = (entry.target_key, p)
            else:
                to_lookup[key] = p

        found = self._find_existing(self.integration.project_for(entity), to_lookup, known)
        to_create: dict[str, _Planned] = {}
        for key, p in to_lookup.items():
            issues = found.get(key, [])
            if issues:
                if len(issues) > 1:
                    report.duplicates += len(issues) - 1
                    log.warning("%s: %d issues carry external id %s; updating the oldest", self.integration.name,
                                len(issues), key)
                oldest = min(issues, key=lambda i: int(i["id"]))
                updates[key] = (oldest["key"], p)
            else:
                to_create[key] = p

        self._update(entity, updates, report)
        self._create(entity, to_create, report)
        return report

    def _find_existing(self, project: str, to_lookup: dict[str, _Planned],
                       known: dict[str, LedgerEntry]) -> dict[str, list[dict]]:
        if not to_lookup:
            return {}
        keys = list(to_lookup)
        found = self.jira.find_by_external_ids(self.external_id_field, keys, project, ["summary", "status"])
        # Intent rows mean a create may have happened before a crash: ride out search lag once.
        missing_intents = [k for k in keys if not found.get(k) and known.get(k) and known[k].state == INTENT]
        if missing_intents and self.intent_recheck_s > 0:
            time.sleep(self.intent_recheck_s)
            again = self.jira.find_by_external_ids(self.external_id_field, missing_intents, project,
                                                   ["summary", "status"])
            found.update({k: v for k, v in again.items() if v})
        return found

    def _update(self, entity: EntitySync, updates: dict[str, tuple[str, _Planned]], report: WriteReport) -> None:
        done, failed = [], []
        for key, (issue_key, p) in updates.items():
            fields = {k: v for k, v in p.fields.items() if k not in ("project", "issuetype")}
            try:
                self.jira.edit_issue(issue_key, fields)
            except ApiError as exc:
                failed.append(self._failure(entity, key, p, "update", exc))
                report.failed += 1
                report.failures[key] = str(exc)
                continue
            report.updated += 1
            url = self.jira.browse_url(issue_key)
            report.links[key] = url
            done.append({"source_key": key, "entity": entity.name, "action": "issue", "target_key": issue_key,
                         "target_url": url, "fingerprint": p.fingerprint, "context": p.context})
        self.ledger.mark_done(self.integration.name, done, self.run_id)
        self.ledger.mark_failed(self.integration.name, failed, self.run_id)

    def _create(self, entity: EntitySync, to_create: dict[str, _Planned], report: WriteReport) -> None:
        if not to_create:
            return
        keys = list(to_create)
        self.ledger.record_intents(self.integration.name, [
            {"source_key": k, "entity": entity.name, "action": "issue", "context": to_create[k].context}
            for k in keys], self.run_id)
        try:
            result = self.jira.bulk_create([to_create[k].fields for k in keys])
        except ApiError as exc:  # every element failed (Jira answers 400 only then) or retries ran out
            # Earlier chunks of 50 may have been created before the failing call: keep the rows as
            # *intent* (with the error) so the retry looks them up — search lag included — before creating.
            self.ledger.mark_failed(self.integration.name, [
                self._failure(entity, k, to_create[k], "create", exc) for k in keys], self.run_id, state=INTENT)
            report.failed += len(keys)
            report.failures.update({k: str(exc) for k in keys})
            return
        done, failed = [], []
        for i, key in enumerate(keys):
            created = result.created[i] if i < len(result.created) else None
            p = to_create[key]
            if created is None:
                msg = result.errors.get(i, "Jira did not create the issue")
                failed.append({"source_key": key, "entity": entity.name, "action": "issue", "last_error": msg,
                               "context": p.context})
                report.failed += 1
                report.failures[key] = msg
                continue
            url = self.jira.browse_url(created.key)
            report.created += 1
            report.links[key] = url
            done.append({"source_key": key, "entity": entity.name, "action": "issue", "target_key": created.key,
                         "target_url": url, "fingerprint": p.fingerprint, "context": p.context})
        self.ledger.mark_done(self.integration.name, done, self.run_id)
        self.ledger.mark_failed(self.integration.name, failed, self.run_id)

    @staticmethod
    def _failure(entity: EntitySync, key: str, p: _Planned, what: str, exc: Exception) -> dict[str, Any]:
        return {"source_key": key, "entity": entity.name, "action": "issue", "last_error": f"{what}: {exc}"[:2000],
                "context": p.context}


__all__ = ["JiraConfigError", "JiraIssueWriter", "WriteReport"]
