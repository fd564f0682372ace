"""Write-back (DESIGN.md §6), written once for every target: a change a person made on a target record acts
on the source record behind it, once, after both sides were read again.

    trigger (a change on the target, re-read through its API) -> state check at the system of record -> action

A target system brings only its ``Trigger`` (integrations.jira_target: an issue moved to Done or a resolution
comment; integrations.monday_target: a write-back column changed on an item). Everything else is here. For
each event of a batch (from the webhook inbox — a signal, never the truth):
- the trigger names the target record the event is about (None: not a change this pair acts on: ignored);
- the ledger maps that record to its source record (records the connector did not create are ignored);
- under the lease of the ledger row the write-back writes (one writer per key: two runs act once), the
  trigger reads the target record again through its API and says what the change is *now*:
  - a **resolution** (Done, or a resolution comment; its note is taken from the API): it has its own ledger
    row ``<source key>#resolve``; once done, a repeated Done does nothing more;
  - **changed fields**: each write-back column compared with what the connector last wrote there (the
    record's ledger context ``written``, read under the record's lease): equal = the connector's own write
    coming back (an *echo*, counted, never written back); different = a person's change;
  - a **refusal**: the API does not confirm the event (a replayed or forged delivery, an issue moved back
    since): nothing happens at the source, the refusal is counted and named;
- the source adapter reads its record again and acts only if the action is still due (post the draft
  invoice, unblock the vendor, PATCH fields with If-Match): ``acted``, ``already`` (done there already) or
  ``not_applicable`` (the source cannot take it: posted, read-only — answered on the target record);
- the outcome is written on the target record (a comment / an update) — every outcome where the trigger
  announces them, a refusal by the source always;
- a transient failure (either side unreachable) leaves the event due for another attempt; a permanent one
  is quarantined for a person (ledger row ``<source key>#resolve`` or ``#write_back``), with a note on the
  target record saying why and what to do next.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from connector_pipelines.core.failures import WriteSettings, describe, is_transient
from connector_pipelines.core.http import ApiError
from connector_pipelines.core.leases import Leases, ledger_scope
from connector_pipelines.core.ledger import DONE, Ledger, LedgerEntry
from connector_pipelines.integrations.definition import EntitySync, IntegrationDefinition
from connector_pipelines.integrations.sources.base import SourceAdapter

log = logging.getLogger(__name__)

OUR_PREFIX = "connector_pipelines: "
RECORD_ACTION = "issue"          # the ledger action of a target record written by the flow (integrations.target)
RESOLUTION = "resolution"        # Trigger.writes: a one-time action at the source (post, unblock, release…)
FIELDS = "fields"                # Trigger.writes: field values written to the source record, as often as changed


def resolve_key(source_key: str) -> str:
    return f"{source_key}#resolve"


def write_back_key(source_key: str) -> str:
    return f"{source_key}#write_back"


@dataclass(frozen=True)
class Signal:
    """What an event claims: the target record it is about, and the entity when the target knows it (a Monday
    board is one entity's; a Jira project holds several, the ledger says which)."""

    target_key: str
    entity: str | None = None


@dataclass
class Change:
    """What the target's API says the change is now: a resolution's note, or the source fields to write (with
    the target columns' values to remember as written once the source took them)."""

    note: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    written: dict[str, Any] = field(default_factory=dict)


class Refused(Exception):
    """What the target's API says now does not confirm the event."""


class Trigger(Protocol):
    """One target system's side of write-back (registered through integrations.registry.target_module)."""

    system: str                 # e.g. "jira": names the report's refusal count
    writes: str                 # RESOLUTION or FIELDS
    announce: bool              # comment every outcome (True) or only what the source refused (False)
    retry_hint: str             # after a permanent failure: what a person does once the document is fixed

    def signal(self, event: dict[str, Any]) -> Signal | None:
        """The target record ``event`` is about, or None when this pair does not act on such an event."""
        ...

    def confirm(self, entity: EntitySync, signal: Signal, event: dict[str, Any],
                entry: LedgerEntry) -> Change | None:
        """The change as the target's API says it is now (``entry``: the record's ledger row, read under its
        lease). None: nothing to write (the connector's own write coming back). Raises ``Refused``."""
        ...

    def comment(self, target_key: str, text: str) -> None: ...

    def url(self, target_key: str) -> str: ...


@dataclass
class WriteBackReport:
    system: str = "target"
    acted: int = 0
    already: int = 0
    not_applicable: int = 0
    ignored: int = 0
    echoes: int = 0
    repeated: int = 0
    failed: int = 0
    refused: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)   # target key -> message
    failures: dict[str, str] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)   # target key -> why the event was not acted on
    retry: dict[int, str] = field(default_factory=dict)      # event index -> transient error (try again later)
    needs_a_person: dict[str, str] = field(default_factory=dict)  # target key -> permanent failure
    about: dict[str, tuple[str, str]] = field(default_factory=dict)  # target key -> (entity, source record key)

    def counts(self) -> dict[str, int]:
        return {"acted": self.acted, "already_done_at_source": self.already, "needs_a_person": self.not_applicable,
                "ignored_events": self.ignored, "own_writes_echoed": self.echoes, "repeated_events": self.repeated,
                "failed": self.failed, f"refused_not_confirmed_by_{self.system}": self.refused}


class WriteBackProcessor:
    """A batch of target events -> the source records behind them (see the module docstring)."""

    def __init__(self, integration: IntegrationDefinition, source: SourceAdapter, trigger: Trigger, ledger: Ledger,
                 run_id: str | None, *, leases: Leases, settings: WriteSettings | None = None) -> None:
        self.integration = integration
        self.source = source
        self.trigger = trigger
        self.ledger = ledger
        self.run_id = run_id
        self.leases = leases
        self.settings = settings or WriteSettings.from_env()

    def browse_url(self, key: str) -> str:
        return self.trigger.url(key)

    def process(self, events: list[dict[str, Any]]) -> WriteBackReport:
        report = WriteBackReport(system=self.trigger.system)
        # Several events for one record in a batch: the first the target confirms is the one that counts (the
        # re-read sees the latest state anyway); after a transient failure the record's later events wait for
        # the retry with it.
        outcome_of: dict[str, str] = {}
        for index, event in enumerate(events):
            signal = self.trigger.signal(event)
            if signal is None:
                report.ignored += 1
                continue
            owners = [e for e in self.ledger.by_target(self.integration.name, signal.target_key)
                      if e.action == RECORD_ACTION and signal.entity in (None, e.entity)]
            if not owners:
                report.ignored += 1          # a record the connector did not create
                continue
            earlier = outcome_of.get(signal.target_key)
            if earlier == "settled":
                report.repeated += 1
                continue
            if earlier == "retry":
                report.retry[index] = report.failures.get(signal.target_key, "retry")
                continue
            outcome = self._one(signal, owners[0], event, report)
            outcome_of[signal.target_key] = outcome
            if outcome == "retry":
                report.retry[index] = report.failures.get(signal.target_key, "retry")
        return report

    # -- one target record ----------------------------------------------------------------------------
    def _one(self, signal: Signal, owner: LedgerEntry, event: dict[str, Any], report: WriteBackReport) -> str:
        # A resolution writes its own row; changed fields update the record's row (its ``written``), which the
        # flow's writer also writes: the same lease serialises them.
        lease = resolve_key(owner.source_key) if self.trigger.writes == RESOLUTION else owner.source_key
        scope = ledger_scope(self.integration.name)
        if not self.leases.wait_for(scope, lease, self.settings.claim_wait_s):
            # another run holds it (or died holding it, until its lease lapses): try again later
            report.failures[signal.target_key] = f"another run is writing {owner.source_key}; tried again later"
            return "retry"
        try:
            return self._claimed(signal, owner, event, report)
        finally:
            self.leases.release(scope, [lease])

    def _claimed(self, signal: Signal, owner: LedgerEntry, event: dict[str, Any], report: WriteBackReport) -> str:
        name = self.integration.name
        target_key = signal.target_key
        resolution = self.trigger.writes == RESOLUTION
        key = resolve_key(owner.source_key) if resolution else write_back_key(owner.source_key)
        entry = self.ledger.get(name, owner.source_key) or owner        # read under the lease: current
        if resolution:
            previous = self.ledger.get(name, key)
            if previous and previous.state == DONE:
                report.repeated += 1
                return "settled"
        entity = self.integration.entity(entry.entity)
        report.about[target_key] = (entity.name, owner.source_key)
        action = entity.resolution if resolution else "write_back"
        row = {"source_key": key, "entity": entity.name, "action": action}
        try:
            change = self.trigger.confirm(entity, signal, event, entry)
        except Refused as why:
            report.refused += 1
            report.refusals[target_key] = str(why)
            log.warning("%s: not acting on %s: %s", name, target_key, why)
            return "refused"
        except (ApiError, httpx.TransportError) as exc:
            return self._failed(target_key, row, {"target": target_key}, exc, report)
        if change is None:
            report.echoes += 1               # the connector's own write coming back: never written back
            return "settled"
        _, record_id = self.source.parse_external_id(owner.source_key)
        context: dict[str, Any] = {"target": target_key, "entity": entity.name, "action": action}
        if resolution:
            context["note"] = change.note[:500]
        else:
            context["fields"] = sorted(change.fields)
        self.ledger.record_intents(name, [{**row, "context": context}], self.run_id)
        try:
            if resolution:
                outcome = self.source.resolve(entity, record_id, f"{target_key}: {change.note}")
            else:
                outcome = self.source.write_fields(entity, record_id, change.fields)
        except (ApiError, httpx.TransportError) as exc:
            return self._failed(target_key, row, context, exc, report)
        setattr(report, outcome.status, getattr(report, outcome.status) + 1)
        report.outcomes[target_key] = outcome.message
        state_context = {**context, "outcome": outcome.status, "message": outcome.message}
        if outcome.status == "not_applicable":
            self.ledger.quarantine(name, [{**row, "last_error": outcome.message, "context": state_context}],
                                   self.run_id)
        else:
            self.ledger.mark_done(name, [{**row, "target_key": target_key, "context": state_context}], self.run_id)
            if not resolution and outcome.status == "acted":
                written = (entry.context or {}).get("written") or {}
                self.ledger.remember(name, [{"source_key": entry.source_key, "entity": entry.entity,
                                             "action": entry.action,
                                             "context": {**(entry.context or {}),
                                                         "written": {**written, **change.written}}}])
        if self.trigger.announce or outcome.status == "not_applicable":
            self._comment(target_key, outcome.message)
        return "settled"

    def _failed(self, target_key: str, row: dict[str, Any], context: dict[str, Any], exc: BaseException,
                report: WriteBackReport) -> str:
        """Transient: the event is due again (the inbox retries it). Permanent: a person must look; the target
        record says why and what to do."""
        msg = f"{row['action']} failed: {describe(exc)}"[:2000]
        report.failed += 1
        report.failures[target_key] = msg
        failure = {**row, "last_error": msg, "context": context}
        if is_transient(exc):
            self.ledger.mark_failed(self.integration.name, [failure], self.run_id)
            return "retry"
        self.ledger.quarantine(self.integration.name, [failure], self.run_id)
        report.needs_a_person[target_key] = msg
        self._comment(target_key, f"{msg}. {self.trigger.retry_hint}")
        return "settled"

    def _comment(self, target_key: str, message: str) -> None:
        try:
            self.trigger.comment(target_key, message)
        except Exception as exc:  # noqa: BLE001 - the source action is done; a missing comment must not undo it
            log.warning("could not write the outcome on %s: %s", target_key, exc)


__all__ = ["FIELDS", "RESOLUTION", "Change", "Refused", "Signal", "Trigger", "WriteBackProcessor",
           "WriteBackReport", "resolve_key", "write_back_key"]
