"""The store: what one emulated Jira Cloud site holds (projects, issue types, statuses and the workflow's
transitions, users, custom fields, issues with their comments, links and change history, webhooks), the
system fields' catalogue, and Jira's timestamp formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandboxes.jira.errors import JiraHttpError

DEFAULT_SCOPES = ["read:jira-work", "write:jira-work", "read:jira-user", "manage:jira-webhook", "offline_access"]


STATUS_CATEGORIES = {
    "new": {"id": 2, "key": "new", "colorName": "blue-gray", "name": "To Do"},
    "indeterminate": {"id": 4, "key": "indeterminate", "colorName": "yellow", "name": "In Progress"},
    "done": {"id": 3, "key": "done", "colorName": "green", "name": "Done"},
}
CUSTOM_KINDS = {
    # kind -> (schema.type, searcher-ish behaviour)
    "textfield": "string",
    "textarea": "string",
    "float": "number",
    "select": "option",
    "datetime": "datetime",
}


@dataclass
class Project:
    id: str
    key: str
    name: str
    next_number: int = 1


@dataclass
class IssueType:
    id: str
    name: str
    subtask: bool = False


@dataclass
class Status:
    id: str
    name: str
    category: str   # new / indeterminate / done


@dataclass
class Transition:
    id: str
    name: str
    to_status_id: str


@dataclass
class User:
    account_id: str
    display_name: str
    email: str | None = None
    active: bool = True


@dataclass
class CustomField:
    id: str
    number: int
    name: str
    kind: str
    options: list[str] = field(default_factory=list)


@dataclass
class Comment:
    id: str
    author: str
    body: dict[str, Any]
    created: datetime
    wiki: str | None = None     # the string a REST v2 client sent (v2 reads return it as sent)


@dataclass
class History:
    """One changelog entry: every item one edit or transition changed (the webhook's ``changelog``)."""
    id: str
    author: str
    created: datetime
    items: list[dict[str, Any]]


@dataclass(frozen=True)
class LinkType:
    id: str
    name: str
    inward: str
    outward: str


# Jira Cloud's default issue link types.
DEFAULT_LINK_TYPES = (
    LinkType("10000", "Blocks", "is blocked by", "blocks"),
    LinkType("10001", "Cloners", "is cloned by", "clones"),
    LinkType("10002", "Duplicate", "is duplicated by", "duplicates"),
    LinkType("10003", "Relates", "relates to", "relates to"),
)


@dataclass
class IssueLink:
    id: str
    type: LinkType
    source_id: int      # the request's inwardIssue ("from" issue): it shows the link with the type's outward words
    target_id: int      # the request's outwardIssue: it shows the link with the type's inward words


@dataclass
class Issue:
    id: int
    key: str
    project_key: str
    fields: dict[str, Any]
    created: datetime
    updated: datetime
    indexed_at: float
    comments: list[Comment] = field(default_factory=list)
    links: list[IssueLink] = field(default_factory=list)
    history: list[History] = field(default_factory=list)    # oldest first


@dataclass
class DynamicWebhook:
    id: int
    client_id: str
    url: str
    events: list[str]
    jql_filter: str
    expires: datetime
    field_ids_filter: list[str] | None = None


@dataclass
class AdminWebhook:
    id: int
    url: str
    secret: str | None
    events: list[str]
    jql_filter: str | None = None


@dataclass
class Site:
    cloud_id: str
    name: str
    url: str
    scopes: list[str]
    projects: dict[str, Project] = field(default_factory=dict)
    issue_types: dict[str, IssueType] = field(default_factory=dict)
    statuses: dict[str, Status] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    users: dict[str, User] = field(default_factory=dict)
    custom_fields: dict[str, CustomField] = field(default_factory=dict)
    issues: dict[int, Issue] = field(default_factory=dict)
    webhooks: dict[int, DynamicWebhook] = field(default_factory=dict)
    admin_webhooks: dict[int, AdminWebhook] = field(default_factory=dict)
    link_types: list[LinkType] = field(default_factory=lambda: list(DEFAULT_LINK_TYPES))
    next_issue_id: int = 10000
    next_link_id: int = 10000

    def issue(self, id_or_key: str) -> Issue:
        if id_or_key.isdigit() and int(id_or_key) in self.issues:
            return self.issues[int(id_or_key)]
        for issue in self.issues.values():
            if issue.key.upper() == id_or_key.upper():
                return issue
        raise JiraHttpError(404, ["Issue does not exist or you do not have permission to see it."])

    def status_by_name(self, name: str) -> Status:
        for s in self.statuses.values():
            if s.name.lower() == name.lower() or s.id == name:
                return s
        raise KeyError(name)


_SYSTEM_FIELD_DEFS = [
    # id, name, schema, clauseNames, navigable/orderable/searchable
    ("summary", "Summary", {"type": "string", "system": "summary"}, ["summary"]),
    ("description", "Description", {"type": "string", "system": "description"}, ["description"]),
    ("project", "Project", {"type": "project", "system": "project"}, ["project"]),
    ("issuetype", "Issue Type", {"type": "issuetype", "system": "issuetype"}, ["issuetype", "type"]),
    ("status", "Status", {"type": "status", "system": "status"}, ["status"]),
    ("assignee", "Assignee", {"type": "user", "system": "assignee"}, ["assignee"]),
    ("reporter", "Reporter", {"type": "user", "system": "reporter"}, ["reporter"]),
    ("labels", "Labels", {"type": "array", "items": "string", "system": "labels"}, ["labels"]),
    ("resolution", "Resolution", {"type": "resolution", "system": "resolution"}, ["resolution"]),
    ("created", "Created", {"type": "datetime", "system": "created"}, ["created", "createdDate"]),
    ("updated", "Updated", {"type": "datetime", "system": "updated"}, ["updated", "updatedDate"]),
    ("issuelinks", "Linked Issues", {"type": "array", "items": "issuelinks", "system": "issuelinks"}, ["issueLink"]),
    ("comment", "Comment", {"type": "comments-page", "system": "comment"}, ["comment"]),
]
_RESOLUTIONS = {"Done": "10000", "Won't Do": "10001", "Duplicate": "10002"}


def _jira_time(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+0000"


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)
