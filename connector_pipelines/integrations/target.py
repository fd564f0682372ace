"""The target side of every flow, written once (DESIGN.md §6): exactly one target record per source
record, whatever is re-delivered, re-run, run twice at once, or killed half-way.

``RecordWriter`` owns the generic write path; a ``TargetBackend`` (Jira issues, Monday items, …: one per
target system, registered in integrations.registry) only speaks its system's API. The write path for a
batch (DESIGN.md §3):
0. claim: every record key is leased to one writer at a time (core.leases). A key another live writer
   holds is waited for (``claim_wait_s``), then left to that writer; a dead writer's lease expires and
   is taken over. Nothing here reads-then-writes the ledger without holding the key's lease;
1. ledger (read under the claim): records already ``done`` with the same fingerprint are skipped (an
   unchanged record costs no target call);
2. target truth: the backend finds records by external key in batches (JQL on the external-id field,
   ``items_page_by_column_values``, …) — found -> update, never a second create;
3. an *intent* row is committed before each batch create, then the ledger is marked done per batch with
   the keys the target answered.
A create whose answer was lost (a crash after the target answered, a timeout, a 5xx) leaves an *uncertain*
intent: search indexes lag, so "not found" proves nothing until ``verify_after`` (the moment the create
could last have happened + ``search_lag_bound_s``). Until then the record is *deferred* — left as an
intent with ``retry_after = verify_after`` for the ledger retry sensor — never re-created and never slept
on. Transient failures get ``retry_after`` from the retry budget; permanent ones wait for a person.
Entities with a declared ``state`` get one comment per change of state, recorded with the update.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx

from connector_pipelines.core.db import utcnow
from connector_pipelines.core.failures import WriteSettings, describe, is_transient
from connector_pipelines.core.http import ApiError
from connector_pipelines.core.leases import Leases, ledger_scope
from connector_pipelines.core.ledger import DONE, FAILED, INTENT, Ledger, LedgerEntry
from connector_pipelines.integrations.definition import EntitySync, IntegrationDefinition, render
from connector_pipelines.integrations.documents import words_of
from connector_pipelines.integrations.sources.base import SourceRecord

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TargetItem:
    """A record in the target, as the flow machinery sees it: its key (issue key, item id), an ``order`` (the
    oldest has the smallest), whether it is closed (done / archived) and the external key it carries."""

    key: str
    order: int
    done: bool = False
    external_id: str | None = None


@dataclass
class CreateOutcome:
    """A batch create's answer, aligned with its input: the new record's key, or None with an error."""

    created: list[str | None] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    error_status: dict[int, int] = field(default_factory=dict)


class TargetBackend(Protocol):
    """One target system's API, as the generic writer, reconcile and repair use it."""

    system: str
    label: str
    batch_size: int            # records per batch create

    def desired(self, entity: EntitySync, record: SourceRecord) -> dict[str, Any]:
        """The target record's fields for a source record (codecs applied); part of its fingerprint."""
        ...

    def find(self, entity: EntitySync, external_ids: list[str]) -> dict[str, list[TargetItem]]:
        """The target records carrying each external key, in any state (few calls: batches of keys)."""
        ...

    def read(self, key: str) -> TargetItem | None:
        """One record by its key, from a consistent read (not a lagging search index)."""
        ...

    def open_items(self, entity: EntitySync, prefix: str) -> dict[str, list[TargetItem]]:
        """Every open (not done) record of the entity whose external key starts with ``prefix``."""
        ...

    def create_many(self, entity: EntitySync, payloads: list[dict[str, Any]]) -> CreateOutcome: ...

    def update(self, entity: EntitySync, key: str, payload: dict[str, Any]) -> None: ...

    def comment(self, key: str, text: str) -> None: ...

    def close_duplicate(self, duplicate: str, keep: str, external_id: str) -> None:
        """Close a newer duplicate in favour of the oldest (linked / noted so a person sees why)."""
        ...

    def url(self, key: str) -> str: ...

    def written_values(self, entity: EntitySync, payload: dict[str, Any]) -> dict[str, Any]:
        """The values ``payload`` writes to the entity's write-back fields (what echo suppression compares)."""
        ...

    def api_calls(self) -> int: ...


@dataclass
class WriteReport:
    """Counts and links for one batch, shown as Dagster metadata."""

    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    duplicates: int = 0
    state_comments: int = 0
    links: dict[str, str] = field(default_factory=dict)   # external id -> issue URL
    failures: dict[str, str] = field(default_factory=dict)  # external id -> error
    # external id -> when it is tried again (transient failures, deferred uncertain creates)
    retry_at: dict[str, datetime] = field(default_factory=dict)
    deferred: dict[str, datetime] = field(default_factory=dict)   # uncertain create: verified after this time
    left_to_others: dict[str, str] = field(default_factory=dict)  # external id -> the writer holding it

    def merge(self, other: WriteReport) -> WriteReport:
        self.created += other.created
        self.updated += other.updated
        self.skipped += other.skipped
        self.failed += other.failed
        self.duplicates += other.duplicates
        self.state_comments += other.state_comments
        self.links.update(other.links)
        self.failures.update(other.failures)
        self.retry_at.update(other.retry_at)
        self.deferred.update(other.deferred)
        self.left_to_others.update(other.left_to_others)
        return self

    @property
    def needs_a_person(self) -> dict[str, str]:
        """Failures no automatic retry will fix (permanent errors, or the retry budget is spent)."""
        return {k: v for k, v in self.failures.items() if k not in self.retry_at}

    def counts(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "skipped": self.skipped,
                "failed": self.failed, "failed_will_retry": len([k for k in self.failures if k in self.retry_at]),
                "deferred_search_lag": len(self.deferred), "left_to_other_run": len(self.left_to_others),
                "duplicates_found": self.duplicates, "state_change_comments": self.state_comments}


@dataclass
class _Planned:
    record: SourceRecord
    fields: dict[str, Any]
    fingerprint: str
    context: dict[str, Any]


class RecordWriter:
    def __init__(self, backend: TargetBackend, ledger: Ledger, integration: IntegrationDefinition,
                 run_id: str | None, *, leases: Leases, settings: WriteSettings | None = None) -> None:
        self.backend = backend
        self.ledger = ledger
        self.integration = integration
        self.run_id = run_id
        self.leases = leases
        self.settings = settings or WriteSettings.from_env()

    @property
    def claim_scope(self) -> str:
        return ledger_scope(self.integration.name)

    def api_calls(self) -> int:
        """Requests this writer's target client has sent (run metadata, benchmarks)."""
        return self.backend.api_calls()

    def browse_url(self, key: str) -> str:
        return self.backend.url(key)

    # -- planning ---------------------------------------------------------------------------------
    def _plan(self, entity: EntitySync, record: SourceRecord) -> _Planned:
        fields = self.backend.desired(entity, record)
        # The record's words (number, rendered summary, ERP link) name it wherever the UI lists it later.
        context = {**words_of(entity, record), "entity": entity.name}
        hashed: Any = fields
        if entity.state:
            # The state is part of what was written: a change of state alone is a change to write (and comment).
            context["state"] = render(entity.state, record.data)
            hashed = [fields, context["state"]]
        if entity.write_back:
            # What the connector writes to the fields a person may change: a change equal to it is our own echo.
            context["written"] = self.backend.written_values(entity, fields)
        fingerprint = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()
        return _Planned(record, fields, fingerprint, context)

    # -- the write path -----------------------------------------------------------------------------
    def upsert(self, entity: EntitySync, records: list[SourceRecord]) -> WriteReport:
        """Open or update one issue per record; each record key is written under its lease."""
        report = WriteReport()
        unique = {r.external_id: r for r in records}  # the same record twice in a batch is one record
        planned = {k: self._plan(entity, r) for k, r in unique.items()}
        self._claimed(list(planned), report, lambda keys: self._upsert_claimed(
            entity, {k: planned[k] for k in keys}, report))
        return report

    def _claimed(self, keys: list[str], report: WriteReport, work) -> None:
        """Run ``work(keys)`` on the keys this writer holds, releasing them after; wait for keys other
        writers hold (they usually finish within seconds) and leave the rest to them."""
        remaining = set(keys)
        deadline = time.monotonic() + self.settings.claim_wait_s
        while remaining:
            got = self.leases.acquire(self.claim_scope, remaining)
            taken = {t.previous_owner for t in got.values() if t is not None}
            if taken:
                log.warning("%s: took over records from writer(s) whose lease expired (died?): %s",
                            self.integration.name, ", ".join(sorted(taken)))
            if got:
                try:
                    work(sorted(got))
                finally:
                    self.leases.release(self.claim_scope, got)
                remaining -= set(got)
            if not remaining or time.monotonic() >= deadline:
                break
            time.sleep(random.uniform(0.15, 0.4))
        if remaining:
            holders = self.leases.held_by_others(self.claim_scope, remaining)
            for key in sorted(remaining):
                owner = holders.get(key, ("another writer",))[0]
                report.left_to_others[key] = owner
            log.info("%s: %d record(s) left to the writer(s) holding them", self.integration.name, len(remaining))

    def _upsert_claimed(self, entity: EntitySync, planned: dict[str, _Planned], report: WriteReport) -> None:
        known = self.ledger.get_many(self.integration.name, planned)   # read under the claim: current
        now = utcnow()
        updates: dict[str, tuple[str, _Planned]] = {}
        to_lookup: dict[str, _Planned] = {}
        for key, p in planned.items():
            entry = known.get(key)
            if entry and entry.state == DONE and entry.target_key:
                if entry.fingerprint == p.fingerprint:
                    report.skipped += 1
                    report.links[key] = self.backend.url(entry.target_key)
                else:
                    updates[key] = (entry.target_key, p)
            else:
                to_lookup[key] = p

        found = self.backend.find(entity, list(to_lookup)) if to_lookup else {}
        to_create: dict[str, _Planned] = {}
        deferred: dict[str, datetime] = {}
        for key, p in to_lookup.items():
            issues = found.get(key, [])
            if issues:
                updates[key] = (self._adopt(key, issues, report), p)
                continue
            verify_after = self._verify_after(known.get(key), now)
            if verify_after is not None and now < verify_after:
                deferred[key] = verify_after      # an earlier create may exist but be invisible to search yet
            else:
                to_create[key] = p

        attempts = {k: e.attempts for k, e in known.items()}
        self._update(entity, updates, report, attempts, _states(known))
        self._create(entity, to_create, report, attempts)
        self._defer(entity, {k: (to_lookup[k], t) for k, t in deferred.items()}, report)

    def _verify_after(self, entry: LedgerEntry | None, now: datetime) -> datetime | None:
        """For an uncertain intent: when a "not found" becomes trustworthy. An intent found now was left
        by a writer that is gone (its lease expired or it failed): any create it made happened before
        now, so a search after now + the lag bound sees it."""
        if entry is None or entry.state != INTENT:
            return None
        return entry.verify_after or now + timedelta(seconds=self.settings.search_lag_bound_s)

    def _adopt(self, key: str, issues: list[TargetItem], report: WriteReport) -> str:
        if len(issues) > 1:
            report.duplicates += len(issues) - 1
            log.warning("%s: %d issues carry external id %s; updating the oldest (the reconcile check lists them "
                        "and the repair job closes the newer ones)", self.integration.name, len(issues), key)
        return min(issues, key=lambda i: i.order).key

    def _row(self, entity: EntitySync, key: str, p: _Planned, **values: Any) -> dict[str, Any]:
        return {"source_key": key, "entity": entity.name, "action": "issue", "context": p.context, **values}

    def _fail(self, entity: EntitySync, key: str, p: _Planned, what: str, exc: BaseException, entry_attempts: int,
              report: WriteReport, verify_after: datetime | None = None) -> dict[str, Any]:
        """A failed write: transient ones get a retry time from the budget, permanent ones wait for a person."""
        msg = f"{what}: {describe(exc)}"[:2000]
        retry_at = None
        if verify_after is not None:          # the create may have happened: verify before anything else
            retry_at = verify_after
        elif is_transient(exc):
            retry_at = self.settings.retry.next_at(entry_attempts, utcnow())
        report.failed += 1
        report.failures[key] = msg
        if retry_at is not None:
            report.retry_at[key] = retry_at
        row = self._row(entity, key, p, last_error=msg, retry_after=retry_at)
        if verify_after is not None:
            row["verify_after"] = verify_after
        return row

    def _update(self, entity: EntitySync, updates: dict[str, tuple[str, _Planned]], report: WriteReport,
                attempts: dict[str, int], previous_states: dict[str, str] | None = None,
                note: str = "") -> None:
        """``attempts``: the ledger's attempt count per key before this write; ``previous_states``: the
        document state the ledger last recorded per key (entities with a ``state``): a change gets one
        comment, recorded with the update, so re-reading the same state comments nothing."""
        if not updates:
            return
        done, failed = [], []
        for key, (issue_key, p) in updates.items():
            before, after = (previous_states or {}).get(key), p.context.get("state")
            try:
                self.backend.update(entity, issue_key, p.fields)
                if before is not None and after is not None and before != after:
                    self.backend.comment(issue_key, (
                        f"{entity.document_label} {p.context['document']} changed in "
                        f"{self.integration.capabilities.label}: {before or '-'} → {after or '-'}{note}"))
                    report.state_comments += 1
            except (ApiError, httpx.TransportError) as exc:
                row = self._fail(entity, key, p, "update", exc, attempts.get(key, 0) + 1, report)
                if before is not None:   # the change is not written yet: its retry still comments it
                    row["context"] = {**p.context, "state": before}
                failed.append(row)
                continue
            report.updated += 1
            url = self.backend.url(issue_key)
            report.links[key] = url
            done.append(self._row(entity, key, p, target_key=issue_key, target_url=url, fingerprint=p.fingerprint))
        self.ledger.mark_done(self.integration.name, done, self.run_id)
        self.ledger.mark_failed(self.integration.name, failed, self.run_id, count_attempt=True)

    def _create(self, entity: EntitySync, to_create: dict[str, _Planned], report: WriteReport,
                attempts: dict[str, int]) -> None:
        keys = list(to_create)
        size = self.backend.batch_size
        for start in range(0, len(keys), size):
            self._create_chunk(entity, {k: to_create[k] for k in keys[start:start + size]}, report, attempts)

    def _create_chunk(self, entity: EntitySync, chunk: dict[str, _Planned], report: WriteReport,
                      attempts: dict[str, int]) -> None:
        """Intent rows, one batch create, then done/failed rows: the window in which a crash leaves an
        uncertain intent is one call long."""
        keys = list(chunk)
        self.ledger.record_intents(self.integration.name, [self._row(entity, k, chunk[k]) for k in keys], self.run_id)
        attempts = {k: attempts.get(k, 0) + 1 for k in keys}   # the intent counted this attempt
        try:
            result = self.backend.create_many(entity, [chunk[k].fields for k in keys])
        except (ApiError, httpx.TransportError) as exc:
            # A refusal of the whole request (a 4xx: nothing was created) is definite; after a timeout or
            # a 5xx the issues may exist: keep the intents, verify after the search lag before re-creating.
            uncertain = not isinstance(exc, ApiError) or is_transient(exc)
            verify_after = utcnow() + timedelta(seconds=self.settings.search_lag_bound_s) if uncertain else None
            rows = [self._fail(entity, k, chunk[k], "create", exc, attempts.get(k, 1), report,
                               verify_after=verify_after) for k in keys]
            self.ledger.mark_failed(self.integration.name, rows, self.run_id, state=INTENT if uncertain else FAILED)
            return
        done, failed = [], []
        for i, key in enumerate(keys):
            created = result.created[i] if i < len(result.created) else None
            p = chunk[key]
            if created is None:
                msg = result.errors.get(i, f"{self.backend.label} did not create the record")
                status = result.error_status.get(i)
                exc = ApiError(self.backend.system, "POST", "create", status or 400, {"errorMessages": [msg]})
                failed.append(self._fail(entity, key, p, "create", exc, attempts.get(key, 1), report))
                continue
            url = self.backend.url(created)
            report.created += 1
            report.links[key] = url
            done.append(self._row(entity, key, p, target_key=created, target_url=url, fingerprint=p.fingerprint))
        self.ledger.mark_done(self.integration.name, done, self.run_id)
        self.ledger.mark_failed(self.integration.name, failed, self.run_id)

    def _defer(self, entity: EntitySync, deferred: dict[str, tuple[_Planned, datetime]], report: WriteReport) -> None:
        if not deferred:
            return
        rows = []
        for key, (p, verify_after) in deferred.items():
            report.deferred[key] = verify_after
            report.retry_at[key] = verify_after
            rows.append(self._row(entity, key, p, retry_after=verify_after, verify_after=verify_after,
                                  last_error=f"deferred: an earlier create may exist; searched again after "
                                             f"{verify_after.isoformat(timespec='seconds')}Z (search lag bound)"))
        self.ledger.defer(self.integration.name, rows, self.run_id)

    # -- records that need no issue any more ------------------------------------------------------
    def follow(self, entity: EntitySync, records: list[SourceRecord]) -> WriteReport:
        """Records that are no longer exceptions but have an issue (entities with a ``state``): the issue's
        fields are brought up to date and the change of state is commented once; nothing is created.
        Records without an issue cost one ledger read and no Jira call."""
        report = WriteReport()
        if not entity.state or not records:
            return report
        unique = {r.external_id: r for r in records}
        with_issue = {k: e for k, e in self.ledger.get_many(self.integration.name, unique).items()
                      if e.state == DONE and e.target_key}
        planned = {k: self._plan(entity, unique[k]) for k in with_issue}
        planned = {k: p for k, p in planned.items() if p.fingerprint != with_issue[k].fingerprint}
        if not planned:
            return report

        def work(claimed: list[str]) -> None:
            known = self.ledger.get_many(self.integration.name, claimed)   # current, under the claim
            updates = {k: (known[k].target_key, planned[k]) for k in claimed
                       if known.get(k) and known[k].state == DONE and known[k].target_key
                       and known[k].fingerprint != planned[k].fingerprint}
            self._update(entity, updates, report, {k: e.attempts for k, e in known.items()}, _states(known),
                         note=" (no longer an exception)")

        self._claimed(list(planned), report, work)
        return report

    def settle(self, entity: EntitySync, keys: list[str], why: str) -> WriteReport:
        """Ledger rows of records that are no longer exceptions (or gone): an uncertain intent is first
        verified in Jira (an issue found is recorded, so reconciliation and resolution know it); the
        rest are closed as done without an issue. Deferred again while the search lag bound runs."""
        report = WriteReport()

        def work(claimed: list[str]) -> None:
            known = self.ledger.get_many(self.integration.name, claimed)
            now = utcnow()
            intents = [k for k in claimed if known.get(k) and known[k].state == INTENT]
            found = self.backend.find(entity, intents) if intents else {}
            done, deferred = [], []
            for key in claimed:
                entry = known.get(key)
                context = (entry.context if entry else {}) | {"settled": why}
                row = {"source_key": key, "entity": entity.name, "action": "issue", "context": context}
                if found.get(key):
                    issue = self._adopt(key, found[key], report)
                    done.append({**row, "target_key": issue, "target_url": self.backend.url(issue)})
                    report.links[key] = self.backend.url(issue)
                    continue
                verify_after = self._verify_after(entry, now)
                if verify_after is not None and now < verify_after:
                    report.deferred[key] = verify_after
                    report.retry_at[key] = verify_after
                    deferred.append({**row, "retry_after": verify_after, "verify_after": verify_after,
                                     "last_error": f"deferred: verifying an earlier create ({why})"})
                else:
                    report.skipped += 1
                    done.append(row)
            self.ledger.mark_done(self.integration.name, done, self.run_id)
            self.ledger.defer(self.integration.name, deferred, self.run_id)

        self._claimed(keys, report, work)
        return report


    def keep_quarantined(self, entity: EntitySync, reasons: dict[str, str]) -> list[str]:
        """Records a re-drive found still unreadable at the source: quarantined again with the reason, under
        their lease (a record another run wrote meanwhile is left as it is). Returns the keys kept."""
        kept: list[str] = []

        def work(claimed: list[str]) -> None:
            known = self.ledger.get_many(self.integration.name, claimed)
            rows = [{"source_key": k, "entity": entity.name, "action": "issue", "last_error": reasons[k][:2000]}
                    for k in claimed if not (known.get(k) and known[k].state == DONE)]
            self.ledger.quarantine(self.integration.name, rows, self.run_id)
            kept.extend(r["source_key"] for r in rows)

        self._claimed(list(reasons), WriteReport(), work)
        return kept


def _states(entries: dict[str, LedgerEntry]) -> dict[str, str]:
    """The document state each ledger row last recorded (rows written without a ``state`` have none)."""
    return {k: e.context["state"] for k, e in entries.items() if isinstance(e.context, dict) and "state" in e.context}


__all__ = ["CreateOutcome", "RecordWriter", "TargetBackend", "TargetItem", "WriteReport"]
