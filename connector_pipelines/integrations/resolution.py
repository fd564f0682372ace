"""The return flow: an issue moved to a done status acts back on the source document, once.

For each Jira event (from the webhook inbox):
- find the source record through the ledger (issue key -> source key); events for issues this
  integration did not open are ignored;
- a transition *into* a status of the done category triggers the resolution, and so does a person's
  comment starting with ``target.resolution_comment_prefix`` ("Resolution: ...": the rest of the
  comment is the outcome recorded at the source); other events are recorded as ignored;
- the resolution has its own ledger row ``<source key>#resolve``: once done, a repeated Done
  webhook does nothing more;
- the source adapter reads the document's current status and acts only if the action is still due
  (post the draft invoice / unblock the vendor); the outcome is written back as a Jira comment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from connector_pipelines.core import adf
from connector_pipelines.core.http import ApiError
from connector_pipelines.core.ledger import DONE, Ledger
from connector_pipelines.integrations.definition import IntegrationDefinition
from connector_pipelines.integrations.sources.base import SourceAdapter
from connector_pipelines.systems.jira.client import JiraClient

log = logging.getLogger(__name__)


@dataclass
class ResolutionReport:
    acted: int = 0
    already: int = 0
    not_applicable: int = 0
    ignored: int = 0
    repeated: int = 0
    failed: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)   # issue key -> message
    failures: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"acted": self.acted, "already_done_at_source": self.already, "needs_a_person": self.not_applicable,
                "ignored_events": self.ignored, "repeated_events": self.repeated, "failed": self.failed}


def resolve_key(source_key: str) -> str:
    return f"{source_key}#resolve"


def resolution_comment(event: dict[str, Any], prefix: str | None) -> str | None:
    """The outcome text of a ``comment_created`` event whose comment starts with ``prefix``, else None.

    Our own outcome comments start with "connector_pipelines:", so they never match a sane prefix.
    """
    if not prefix or event.get("webhookEvent") != "comment_created":
        return None
    body = (event.get("comment") or {}).get("body")
    text = (adf.plain_text(body) if isinstance(body, dict) else str(body or "")).strip()
    if not text.lower().startswith(prefix.lower()):
        return None
    return text[len(prefix):].strip() or "(no text)"


def done_transition(event: dict[str, Any], done_category: str = "done") -> bool:
    """True when the event moved the issue into a status of the done category."""
    if event.get("webhookEvent") != "jira:issue_updated":
        return False
    items = (event.get("changelog") or {}).get("items") or []
    if not any(i.get("field") == "status" for i in items):
        return False
    status = ((event.get("issue") or {}).get("fields") or {}).get("status") or {}
    return (status.get("statusCategory") or {}).get("key") == done_category


class ResolutionProcessor:
    def __init__(self, integration: IntegrationDefinition, source: SourceAdapter, jira: JiraClient | None,
                 ledger: Ledger, run_id: str | None) -> None:
        self.integration = integration
        self.source = source
        self.jira = jira
        self.ledger = ledger
        self.run_id = run_id

    def process(self, events: list[dict[str, Any]]) -> ResolutionReport:
        report = ResolutionReport()
        # Several events for one issue in a batch: the first done transition is the one that counts.
        seen: set[str] = set()
        target = self.integration.target
        for event in events:
            issue_key = ((event.get("issue") or {}).get("key")) or ""
            note = resolution_comment(event, target.resolution_comment_prefix)
            if not issue_key or (note is None and not done_transition(event, target.done_status_category)):
                report.ignored += 1
                continue
            owners = [e for e in self.ledger.by_target(self.integration.name, issue_key) if e.action == "issue"]
            if not owners:
                report.ignored += 1
                continue
            if issue_key in seen:
                report.repeated += 1
                continue
            seen.add(issue_key)
            self._resolve_one(issue_key, owners[0].source_key, owners[0].entity, report,
                              note or f"resolved in Jira (moved to {_status_name(event)})")
        return report

    def _resolve_one(self, issue_key: str, source_key: str, entity_name: str, report: ResolutionReport,
                     note: str) -> None:
        name = self.integration.name
        key = resolve_key(source_key)
        previous = self.ledger.get(name, key)
        if previous and previous.state == DONE:
            report.repeated += 1
            return
        entity = self.integration.entity(entity_name)
        _, record_id = self.source.parse_external_id(source_key)
        context = {"issue": issue_key, "entity": entity_name, "resolution": entity.resolution, "note": note[:500]}
        self.ledger.record_intents(name, [{"source_key": key, "entity": entity_name, "action": entity.resolution,
                                           "context": context}], self.run_id)
        try:
            outcome = self.source.resolve(entity, record_id, f"{issue_key}: {note}")
        except ApiError as exc:
            msg = f"{entity.resolution} failed: {exc}"[:2000]
            self.ledger.mark_failed(name, [{"source_key": key, "entity": entity_name, "action": entity.resolution,
                                            "last_error": msg, "context": context}], self.run_id)
            report.failed += 1
            report.failures[issue_key] = msg
            return
        setattr(report, outcome.status, getattr(report, outcome.status) + 1)
        report.outcomes[issue_key] = outcome.message
        state_context = {**context, "outcome": outcome.status, "message": outcome.message}
        if outcome.status == "not_applicable":
            self.ledger.quarantine(name, [{"source_key": key, "entity": entity_name, "action": entity.resolution,
                                           "last_error": outcome.message, "context": state_context}], self.run_id)
        else:
            self.ledger.mark_done(name, [{"source_key": key, "entity": entity_name, "action": entity.resolution,
                                          "target_key": issue_key, "context": state_context}], self.run_id)
        self._comment(issue_key, outcome.message)

    def _comment(self, issue_key: str, message: str) -> None:
        if self.jira is None:
            return
        try:
            self.jira.add_comment(issue_key, adf.doc(adf.paragraph(
                adf.text("connector_pipelines: ", strong=True), adf.text(message))))
        except ApiError as exc:  # the source action is done; a missing comment must not undo or repeat it
            log.warning("could not comment the outcome on %s: %s", issue_key, exc)


def _status_name(event: dict[str, Any]) -> str:
    status = ((event.get("issue") or {}).get("fields") or {}).get("status") or {}
    return status.get("name") or "done"
