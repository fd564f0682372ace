"""Jira as a target (integrations.registry): issues in a project, found by the external-id custom field.

``JiraBackend`` is the Jira side of the generic write path (integrations.target.RecordWriter): the issue
fields a record becomes (summary, ADF description with the context table and a link back, mapped custom
fields by *name* — their ids are discovered per site at connect time), one JQL search per 50 keys, bulk
create per 50, edit, comment, and for reconcile/repair the open issues of a project and closing a newer
duplicate (link "Duplicate", a comment, a transition to done). Only identifiers and the context to act
leave the ERP: the mapped fields, never ledger or GL data.
"""

from __future__ import annotations

from typing import Any

from connector_pipelines.core import adf
from connector_pipelines.core.failures import WriteSettings
from connector_pipelines.core.http import ApiError
from connector_pipelines.core.leases import Leases
from connector_pipelines.core.ledger import Ledger
from connector_pipelines.integrations.definition import (
    EntitySync,
    IntegrationDefinition,
    format_value,
    render,
    to_number,
)
from connector_pipelines.integrations.sources.base import SourceRecord
from connector_pipelines.integrations.target import CreateOutcome, RecordWriter, TargetItem, WriteReport
from connector_pipelines.integrations.write_back import (
    OUR_PREFIX,
    RESOLUTION,
    Change,
    Refused,
    Signal,
    WriteBackProcessor,
)
from connector_pipelines.systems.jira.client import BULK_LIMIT, JiraClient
from connector_pipelines.systems.jira.errors import JiraConfigError


class JiraBackend:
    """One Jira site, as the flow machinery writes to it."""

    system = "jira"
    label = "Jira"
    batch_size = BULK_LIMIT

    def __init__(self, jira: JiraClient, integration: IntegrationDefinition) -> None:
        self.jira = jira
        self.integration = integration
        self.done_category = integration.target.done_status_category
        names = {integration.target.external_id_field}
        for e in integration.entities:
            names |= {f.name for f in e.fields}
        # Discovered per site at connect time; a missing or ambiguous field name fails loudly here.
        self.fields = jira.resolve_fields(sorted(names))
        self.external_id_field = self.fields[integration.target.external_id_field]

    # -- what a record becomes ------------------------------------------------------------------------
    def desired(self, entity: EntitySync, record: SourceRecord) -> dict[str, Any]:
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

    # -- finding ----------------------------------------------------------------------------------------
    def _item(self, issue: dict[str, Any]) -> TargetItem:
        fields = issue.get("fields") or {}
        category = ((fields.get("status") or {}).get("statusCategory") or {}).get("key", "")
        return TargetItem(issue["key"], int(issue["id"]), category == self.done_category,
                          fields.get(self.external_id_field.id))

    def find(self, entity: EntitySync, external_ids: list[str]) -> dict[str, list[TargetItem]]:
        found = self.jira.find_by_external_ids(self.external_id_field, external_ids,
                                               self.integration.project_for(entity), ["summary", "status"])
        return {k: [self._item(i) for i in issues] for k, issues in found.items()}

    def read(self, key: str) -> TargetItem | None:
        try:
            return self._item(self.jira.get_issue(key, ["status", self.external_id_field.id]))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def open_items(self, entity: EntitySync, prefix: str) -> dict[str, list[TargetItem]]:
        field = self.external_id_field
        jql = (f'project = "{self.integration.project_for(entity)}" AND statusCategory != "{self.done_category}" '
               f'AND {field.jql_clause} is not EMPTY')
        out: dict[str, list[TargetItem]] = {}
        for issue in self.jira.search_jql(jql, ["status", field.id]):
            item = self._item(issue)
            if (item.external_id or "").startswith(prefix):
                out.setdefault(item.external_id or "", []).append(item)
        return out

    # -- writing ----------------------------------------------------------------------------------------
    def create_many(self, entity: EntitySync, payloads: list[dict[str, Any]]) -> CreateOutcome:
        result = self.jira.bulk_create(payloads)
        return CreateOutcome([c.key if c is not None else None for c in result.created], dict(result.errors),
                             dict(result.error_status))

    def update(self, entity: EntitySync, key: str, payload: dict[str, Any]) -> None:
        self.jira.edit_issue(key, {k: v for k, v in payload.items() if k not in ("project", "issuetype")})

    def comment(self, key: str, text: str) -> None:
        self.jira.add_comment(key, adf.doc(adf.paragraph(adf.text(text))))

    def close_duplicate(self, duplicate: str, keep: str, external_id: str) -> None:
        self.jira.link_issues("Duplicate", duplicate, keep)
        self.jira.add_comment(duplicate, adf.doc(adf.paragraph(
            adf.text("connector_pipelines: ", strong=True),
            adf.text(f"closed as a duplicate of {keep} (both carry ERP record {external_id}); work continues there."))))
        done = [t for t in self.jira.transitions(duplicate)
                if ((t.get("to") or {}).get("statusCategory") or {}).get("key") == self.done_category]
        if not done:
            raise ApiError("jira", "GET", f"/issue/{duplicate}/transitions", 409,
                           {"errorMessages": [f"no transition of {duplicate} leads to a {self.done_category} status"]})
        self.jira.transition(duplicate, done[0]["id"])

    def url(self, key: str) -> str:
        return self.jira.browse_url(key)

    def written_values(self, entity: EntitySync, payload: dict[str, Any]) -> dict[str, Any]:
        return {}   # Jira's return flow is a resolution (Done), not a write-back of fields

    def api_calls(self) -> int:
        return self.jira.http.calls


class JiraIssueWriter(RecordWriter):
    """The generic writer over one Jira site (what bc_jira, d365_jira and acumatica_jira write with)."""

    def __init__(self, jira: JiraClient, ledger: Ledger, integration: IntegrationDefinition,
                 run_id: str | None, *, leases: Leases, settings: WriteSettings | None = None) -> None:
        super().__init__(JiraBackend(jira, integration), ledger, integration, run_id, leases=leases,
                         settings=settings)

    @property
    def jira(self) -> JiraClient:
        return self.backend.jira

    @property
    def fields(self):
        return self.backend.fields

    @property
    def external_id_field(self):
        return self.backend.external_id_field

    def desired_fields(self, entity: EntitySync, record: SourceRecord) -> dict[str, Any]:
        return self.backend.desired(entity, record)

    def description(self, entity: EntitySync, record: SourceRecord) -> dict[str, Any]:
        return self.backend.description(entity, record)


def from_resources(integration: IntegrationDefinition, resources: Any, run_id: str | None) -> JiraIssueWriter:
    """The writer for one run (integrations.registry): the Jira resource's client, the store's ledger and leases."""
    store = resources.connector_store
    jira = resources.jira.client(store.vault())
    return JiraIssueWriter(jira, store.ledger(), integration, run_id, leases=store.leases(),
                           settings=store.write_settings())


# -- write-back: Done / a resolution comment -> the source (integrations.write_back) -------------------------
RESOLUTION_EVENTS = "status transitions, and resolution comments"


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


class JiraTrigger:
    """An issue moved into a status of the done category, or a person's comment starting with the target's
    ``resolution_comment_prefix`` ("Resolution: …": the rest is the outcome recorded at the source), resolves
    the source record once. Before acting the issue is read again: a transition counts only if the issue's
    status category is done *now*, a comment only if Jira returns that comment with the prefix (its text is
    taken from the API, never from the delivery). Every outcome is commented on the issue."""

    system = "jira"
    announce = True
    retry_hint = "Fix the document, then move the issue to Done again."
    writes = RESOLUTION

    def __init__(self, jira: JiraClient, integration: IntegrationDefinition) -> None:
        self.jira = jira
        self.target = integration.target

    def signal(self, event: dict[str, Any]) -> Signal | None:
        issue_key = ((event.get("issue") or {}).get("key")) or ""
        if not issue_key:
            return None
        if resolution_comment(event, self.target.resolution_comment_prefix) is None and not done_transition(
                event, self.target.done_status_category):
            return None
        return Signal(issue_key)

    def confirm(self, entity: EntitySync, signal: Signal, event: dict[str, Any], entry: Any) -> Change:
        """The person's outcome note, as Jira's API says it now; raises Refused when Jira does not confirm."""
        issue_key = signal.target_key
        prefix = self.target.resolution_comment_prefix
        if event.get("webhookEvent") == "comment_created":
            comment_id = str((event.get("comment") or {}).get("id") or "")
            if not comment_id:
                raise Refused("the comment event names no comment id")
            try:
                comment = self.jira.get_comment(issue_key, comment_id)
            except ApiError as exc:
                if exc.status == 404:
                    raise Refused(f"Jira has no comment {comment_id} on {issue_key}") from None
                raise
            note = resolution_note(comment_text(comment), prefix)
            if note is None:
                raise Refused(f"comment {comment_id} on {issue_key} does not start with {prefix!r} in Jira")
            return Change(note=note)
        try:
            issue = self.jira.get_issue(issue_key, ["status"])
        except ApiError as exc:
            if exc.status == 404:
                raise Refused(f"Jira has no issue {issue_key}") from None
            raise
        status = (issue.get("fields") or {}).get("status") or {}
        if _category(status) != self.target.done_status_category:
            raise Refused(f"issue not done in Jira (status {status.get('name', '?')!r} now)")
        return Change(note=f"resolved in Jira (moved to {status.get('name') or 'done'})")

    def comment(self, issue_key: str, text: str) -> None:
        self.jira.add_comment(issue_key, adf.doc(adf.paragraph(adf.text(OUR_PREFIX, strong=True), adf.text(text))))

    def url(self, issue_key: str) -> str:
        return self.jira.browse_url(issue_key)


def resolution_processor(integration: IntegrationDefinition, source: Any, resources: Any,
                         run_id: str | None) -> WriteBackProcessor:
    """Done in Jira (or a resolution comment) -> the source acts once (integrations.write_back)."""
    store = resources.connector_store
    trigger = JiraTrigger(resources.jira.client(store.vault()), integration)
    return WriteBackProcessor(integration, source, trigger, store.ledger(), run_id, leases=store.leases(),
                              settings=store.write_settings())


def inbox_row_filter(integration: IntegrationDefinition):
    """Jira rows this pair can act on: a status transition, or a resolution comment, of an issue in one of
    its projects. Other events (other comments — including the echo of our own outcome comments — and field
    edits) stay in the inbox as audit but launch no run."""
    project_keys = integration.project_keys()
    comment_prefix = integration.target.resolution_comment_prefix

    def belongs(row) -> bool:
        event = row.payload.get("event", row.payload)
        kind = event.get("webhookEvent")
        if kind == "jira:issue_updated":
            if not any(i.get("field") == "status" for i in (event.get("changelog") or {}).get("items") or []):
                return False
        elif resolution_comment(event, comment_prefix) is None:
            return False
        issue = event.get("issue") or {}
        project = ((issue.get("fields") or {}).get("project") or {}).get("key")
        if project:
            return project in project_keys
        return any(str(issue.get("key", "")).startswith(f"{k}-") for k in project_keys)

    return belongs


def ensure_webhook(integration: IntegrationDefinition, resources: Any) -> dict[str, Any]:
    """Register the Jira dynamic webhook once and refresh it before its 30-day expiry."""
    from connector_pipelines.integrations.webhooks import ensure_jira_webhook

    store = resources.connector_store
    return ensure_jira_webhook(integration, resources.jira, store.vault(), store.engine())


__all__ = ["JiraBackend", "JiraConfigError", "JiraIssueWriter", "JiraTrigger", "WriteReport", "from_resources"]
