"""The return flow: an issue moved to a done status acts back on the source document, once.

A Jira webhook is a signal, never the truth. For each Jira event (from the webhook inbox):
- find the source record through the ledger (issue key -> source key); events for issues this
  integration did not open are ignored;
- a transition *into* a status of the done category triggers the resolution, and so does a person's
  comment starting with ``target.resolution_comment_prefix`` ("Resolution: ...": the rest of the
  comment is the outcome recorded at the source); other events are recorded as ignored;
- before acting, the issue is read again from Jira's API: a transition counts only if the issue's
  status category is done *now*, a comment only if Jira returns that comment with the prefix (its text
  is taken from the API, not from the delivery). Otherwise the event is *refused* and counted — a
  replayed or forged delivery, or an issue moved back since, changes nothing at the source;
- the resolution has its own ledger row ``<source key>#resolve``, written under that key's lease (two
  runs resolving the same issue at once act once): once done, a repeated Done does nothing more;
- the source adapter reads the document's current status and acts only if the action is still due
  (post the draft invoice / unblock the vendor); the outcome is written back as a Jira comment;
- a transient failure (Jira or the source unreachable) leaves the event due for another attempt; a
  permanent one (the source refused the action) is quarantined for a person, with a comment saying why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

from connector_pipelines.core import adf
from connector_pipelines.core.failures import WriteSettings, describe, is_transient
from connector_pipelines.core.http import ApiError
from connector_pipelines.core.leases import Leases, ledger_scope
from connector_pipelines.core.ledger import DONE, Ledger
from connector_pipelines.integrations.definition import IntegrationDefinition
from connector_pipelines.integrations.sources.base import SourceAdapter
from connector_pipelines.systems.jira.client import JiraClient

log = logging.getLogger(__name__)

OUR_PREFIX = "connector_pipelines: "


@dataclass
class ResolutionReport:
    acted: int = 0
    already: int = 0
    not_applicable: int = 0
    ignored: int = 0
    repeated: int = 0
    failed: int = 0
    refused: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)   # issue key -> message
    failures: dict[str, str] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)   # issue key -> why the event was not acted on
    retry: dict[int, str] = field(default_factory=dict)      # event index -> transient error (try again later)
    needs_a_person: dict[str, str] = field(default_factory=dict)  # issue key -> permanent failure

    def counts(self) -> dict[str, int]:
        return {"acted": self.acted, "already_done_at_source": self.already, "needs_a_person": self.not_applicable,
                "ignored_events": self.ignored, "repeated_events": self.repeated, "failed": self.failed,
                "refused_not_confirmed_by_jira": self.refused}


def resolve_key(source_key: str) -> str:
    return f"{source_key}#resolve"


def comment_text(comment: dict[str, Any]) -> str:
    body = comment.get("body")
    return (adf.plain_text(body) if isinstance(body, dict) else str(body or "")).strip()


def resolution_note(text: str, prefix: str | None) -> str | None:
    """The outcome after ``prefix`` when ``text`` starts with it, else None. Our own outcome comments
    start with "connector_pipelines:", so they never match a sane prefix."""
    if not prefix or not text.lower().startswith(prefix.lower()):
        return None
    return text[len(prefix):].strip() or "(no text)"


def resolution_comment(event: dict[str, Any], prefix: str | None) -> str | None:
    """The outcome text of a ``comment_created`` event whose comment starts with ``prefix``, else None."""
    if event.get("webhookEvent") != "comment_created":
        return None
    return resolution_note(comment_text(event.get("comment") or {}), prefix)


def done_transition(event: dict[str, Any], done_category: str = "done") -> bool:
    """True when the event says it moved the issue into a status of the done category."""
    if event.get("webhookEvent") != "jira:issue_updated":
        return False
    items = (event.get("changelog") or {}).get("items") or []
    if not any(i.get("field") == "status" for i in items):
        return False
    return _category(((event.get("issue") or {}).get("fields") or {}).get("status")) == done_category


def _category(status: Any) -> str:
    return ((status or {}).get("statusCategory") or {}).get("key", "") if isinstance(status, dict) else ""


class _Refused(Exception):
    """What Jira says now does not confirm the event."""


class ResolutionProcessor:
    def __init__(self, integration: IntegrationDefinition, source: SourceAdapter, jira: JiraClient,
                 ledger: Ledger, run_id: str | None, *, leases: Leases, settings: WriteSettings | None = None) -> None:
        self.integration = integration
        self.source = source
        self.jira = jira
        self.ledger = ledger
        self.run_id = run_id
        self.leases = leases
        self.settings = settings or WriteSettings.from_env()

    def browse_url(self, key: str) -> str:
        return self.jira.browse_url(key)

    def process(self, events: list[dict[str, Any]]) -> ResolutionReport:
        report = ResolutionReport()
        # Several events for one issue in a batch: the first that Jira confirms is the one that counts; after
        # a transient failure the issue's later events wait for the retry with it.
        outcome_of: dict[str, str] = {}
        target = self.integration.target
        for index, event in enumerate(events):
            issue_key = ((event.get("issue") or {}).get("key")) or ""
            note = resolution_comment(event, target.resolution_comment_prefix)
            if not issue_key or (note is None and not done_transition(event, target.done_status_category)):
                report.ignored += 1
                continue
            owners = [e for e in self.ledger.by_target(self.integration.name, issue_key) if e.action == "issue"]
            if not owners:
                report.ignored += 1
                continue
            earlier = outcome_of.get(issue_key)
            if earlier == "settled":
                report.repeated += 1
                continue
            if earlier == "retry":
                report.retry[index] = report.failures.get(issue_key, "retry")
                continue
            outcome = self._resolve_one(issue_key, owners[0].source_key, owners[0].entity, event, report)
            outcome_of[issue_key] = outcome
            if outcome == "retry":
                report.retry[index] = report.failures.get(issue_key, "retry")
        return report

    # -- one issue --------------------------------------------------------------------------------
    def _resolve_one(self, issue_key: str, source_key: str, entity_name: str, event: dict[str, Any],
                     report: ResolutionReport) -> str:
        key = resolve_key(source_key)
        scope = ledger_scope(self.integration.name)
        if not self.leases.wait_for(scope, key, self.settings.claim_wait_s):
            # another run holds it (or died holding it, until its lease lapses): try again later
            report.failures[issue_key] = "another run is resolving this issue; tried again later"
            return "retry"
        try:
            return self._resolve_claimed(issue_key, source_key, entity_name, event, report)
        finally:
            self.leases.release(scope, [key])

    def _resolve_claimed(self, issue_key: str, source_key: str, entity_name: str, event: dict[str, Any],
                         report: ResolutionReport) -> str:
        name = self.integration.name
        key = resolve_key(source_key)
        previous = self.ledger.get(name, key)
        if previous and previous.state == DONE:
            report.repeated += 1
            return "settled"
        entity = self.integration.entity(entity_name)
        try:
            note = self._confirmed_by_jira(issue_key, event)
        except _Refused as why:
            report.refused += 1
            report.refusals[issue_key] = str(why)
            log.warning("%s: not acting on %s: %s", name, issue_key, why)
            return "refused"
        except (ApiError, httpx.TransportError) as exc:
            return self._failed(issue_key, key, entity_name, entity.resolution, {"issue": issue_key}, exc, report)
        _, record_id = self.source.parse_external_id(source_key)
        context = {"issue": issue_key, "entity": entity_name, "resolution": entity.resolution, "note": note[:500]}
        row = {"source_key": key, "entity": entity_name, "action": entity.resolution}
        self.ledger.record_intents(name, [{**row, "context": context}], self.run_id)
        try:
            outcome = self.source.resolve(entity, record_id, f"{issue_key}: {note}")
        except (ApiError, httpx.TransportError) as exc:
            return self._failed(issue_key, key, entity_name, entity.resolution, context, exc, report)
        setattr(report, outcome.status, getattr(report, outcome.status) + 1)
        report.outcomes[issue_key] = outcome.message
        state_context = {**context, "outcome": outcome.status, "message": outcome.message}
        if outcome.status == "not_applicable":
            self.ledger.quarantine(name, [{**row, "last_error": outcome.message, "context": state_context}],
                                   self.run_id)
        else:
            self.ledger.mark_done(name, [{**row, "target_key": issue_key, "context": state_context}], self.run_id)
        self._comment(issue_key, outcome.message)
        return "settled"

    def _confirmed_by_jira(self, issue_key: str, event: dict[str, Any]) -> str:
        """The person's outcome note, as Jira's API says it now; raises _Refused when Jira does not confirm."""
        target = self.integration.target
        if event.get("webhookEvent") == "comment_created":
            comment_id = str((event.get("comment") or {}).get("id") or "")
            if not comment_id:
                raise _Refused("the comment event names no comment id")
            try:
                comment = self.jira.get_comment(issue_key, comment_id)
            except ApiError as exc:
                if exc.status == 404:
                    raise _Refused(f"Jira has no comment {comment_id} on {issue_key}") from None
                raise
            note = resolution_note(comment_text(comment), target.resolution_comment_prefix)
            if note is None:
                raise _Refused(f"comment {comment_id} on {issue_key} does not start with "
                               f"{target.resolution_comment_prefix!r} in Jira")
            return note
        try:
            issue = self.jira.get_issue(issue_key, ["status"])
        except ApiError as exc:
            if exc.status == 404:
                raise _Refused(f"Jira has no issue {issue_key}") from None
            raise
        status = (issue.get("fields") or {}).get("status") or {}
        if _category(status) != target.done_status_category:
            raise _Refused(f"issue not done in Jira (status {status.get('name', '?')!r} now)")
        return f"resolved in Jira (moved to {status.get('name') or 'done'})"

    def _failed(self, issue_key: str, key: str, entity_name: str, resolution: str, context: dict[str, Any],
                exc: BaseException, report: ResolutionReport) -> str:
        """Transient: the event is due again (the inbox retries it). Permanent: a person must look; the
        issue says why, and the next Done runs the resolution again."""
        msg = f"{resolution} failed: {describe(exc)}"[:2000]
        report.failed += 1
        report.failures[issue_key] = msg
        row = {"source_key": key, "entity": entity_name, "action": resolution, "last_error": msg, "context": context}
        if is_transient(exc):
            self.ledger.mark_failed(self.integration.name, [row], self.run_id)
            return "retry"
        self.ledger.quarantine(self.integration.name, [row], self.run_id)
        report.needs_a_person[issue_key] = msg
        self._comment(issue_key, f"{msg}. Fix the document, then move the issue to Done again.")
        return "settled"

    def _comment(self, issue_key: str, message: str) -> None:
        try:
            self.jira.add_comment(issue_key, adf.doc(adf.paragraph(
                adf.text(OUR_PREFIX, strong=True), adf.text(message))))
        except (ApiError, httpx.TransportError) as exc:  # the source action is done; a missing comment must not undo it
            log.warning("could not comment the outcome on %s: %s", issue_key, exc)
