"""A Jira Cloud (platform REST v3) sandbox, as an OAuth 2.0 (3LO) app reaches it through api.atlassian.com.

Routes: ``/ex/jira/{cloudId}/rest/api/3/...`` and ``GET /oauth/token/accessible-resources``; a demo UI and
people-simulation endpoints live under ``/_sandbox/``. Every Jira request is validated against Atlassian's
OpenAPI document (specs/jira-cloud-platform-swagger-v3.v3.json) and rich-text fields against the ADF JSON
schema (specs/adf-schema-full.json); a request the spec rejects gets Jira's ErrorCollection with 400.
Facts followed: ../shared/API-FACTS.md §4. Behaviour resting on an UNCONFIRMED fact says so where it is built.

Python surface (tests and the demo drive these directly):
    sandbox = JiraSandbox()
    sandbox.add_site("cloud-1", "acme", "https://acme.atlassian.net")
    sandbox.add_project("cloud-1", "OPS", "Operations")
    cf = sandbox.add_custom_field("cloud-1", "ERP External ID", "textfield")   # -> "customfield_10030"
    sandbox.register_app("client-id", "client-secret")
    sandbox.add_token("tok", client_id="client-id", account_id="acc-1")
    sandbox.transition_as_user("cloud-1", "OPS-1", "Done")      # emits jira:issue_updated
    sandbox.deliver_pending()                                  # posts queued webhooks (httpx)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import html
import itertools
import json
import logging
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import parse_qs

import fastjsonschema
import httpx
import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from sandboxes.common import (
    DeliveryPump,
    FaultMiddleware,
    Faults,
    SandboxClock,
    bearer_token,
    count_call,
)
from sandboxes.openapi import (
    OpenApiValidator,
    RequestValidationError,
    ResponseValidationError,
)
from sandboxes.specs import load_json_spec

log = logging.getLogger(__name__)

JIRA_SPEC = "jira-cloud-platform-swagger-v3.v3.json"
ADF_SPEC = "adf-schema-full.json"
CF_PREFIX = "com.atlassian.jira.plugin.system.customfieldtypes:"
WEBHOOK_TTL = timedelta(days=30)          # "Webhooks registered through the REST API expire after 30 days"
PAGE_TOKEN_TTL = timedelta(days=7)        # "This token will expire in 7 days"
ADF_MESSAGE = "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
DEFAULT_SCOPES = ["read:jira-work", "write:jira-work", "read:jira-user", "manage:jira-webhook", "offline_access"]
WEBHOOK_EVENTS = ("jira:issue_created", "jira:issue_updated", "jira:issue_deleted", "comment_created",
                  "comment_updated", "comment_deleted", "issue_property_set", "issue_property_deleted")

_lock_factory = threading.RLock


# ================================================================================================
# Errors
# ================================================================================================
class JiraHttpError(Exception):
    """Answered as Jira's ErrorCollection ``{"errorMessages": [...], "errors": {...}}``."""

    def __init__(self, status: int, messages: Iterable[str] = (), errors: dict[str, str] | None = None):
        self.status = status
        self.messages = list(messages)
        self.errors = dict(errors or {})
        super().__init__(f"{status}: {self.messages} {self.errors}")

    def body(self) -> dict[str, Any]:
        return {"errorMessages": self.messages, "errors": self.errors}


class JqlError(JiraHttpError):
    def __init__(self, message: str):
        super().__init__(400, [message])


# ================================================================================================
# JQL: tokenizer, recursive-descent parser, evaluation against a site
# ================================================================================================
@dataclass(frozen=True)
class Tok:
    kind: str     # WORD, STRING, OP, LPAREN, RPAREN, COMMA, EOF
    text: str
    pos: int


_JQL_KEYWORDS = {"and", "or", "not", "in", "is", "empty", "null", "order", "by", "asc", "desc"}
_WORD_RE = re.compile(r"cf\[\d+\]|[A-Za-z0-9_.\-@:*/+]+(?:\(\s*\))?", re.IGNORECASE)


def tokenize_jql(text: str) -> list[Tok]:
    toks: list[Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c in "\"'":
            quote, j, buf = c, i + 1, []
            while j < n and text[j] != quote:
                if text[j] == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    buf.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt) if nxt in "ntr\"'\\ " else "\\" + nxt)
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            if j >= n:
                raise JqlError(f"Error in the JQL Query: The quoted string '{text[i:]}' has not been completed. "
                               f"(line 1, character {i + 1})")
            toks.append(Tok("STRING", "".join(buf), i))
            i = j + 1
            continue
        two = text[i:i + 2]
        if two in ("!=", "!~", ">=", "<=", "&&", "||"):
            kind = "WORD" if two in ("&&", "||") else "OP"
            toks.append(Tok(kind, {"&&": "and", "||": "or"}.get(two, two), i))
            i += 2
            continue
        if c in "=~<>":
            toks.append(Tok("OP", c, i))
            i += 1
            continue
        if c == "!":
            toks.append(Tok("WORD", "not", i))
            i += 1
            continue
        if c == "(":
            toks.append(Tok("LPAREN", c, i))
            i += 1
            continue
        if c == ")":
            toks.append(Tok("RPAREN", c, i))
            i += 1
            continue
        if c == ",":
            toks.append(Tok("COMMA", c, i))
            i += 1
            continue
        m = _WORD_RE.match(text, i)
        if not m:
            raise JqlError(f"Error in the JQL Query: The character '{c}' is a reserved JQL character. You must "
                           f"enclose it in a string or use the escape '\\u{ord(c):04x}' instead. "
                           f"(line 1, character {i + 1})")
        toks.append(Tok("WORD", m.group(0), i))
        i = m.end()
    toks.append(Tok("EOF", "", n))
    return toks


@dataclass
class Clause:
    field: str
    op: str                     # =, !=, ~, !~, <, >, <=, >=, in, not in, is, is not
    values: list[str | None]    # None is EMPTY / NULL
    quoted_field: bool = False


@dataclass
class BoolOp:
    op: str                     # and / or
    parts: list[Any]


@dataclass
class NotOp:
    part: Any


@dataclass
class JqlQuery:
    where: Any | None
    order_by: list[tuple[str, str]]


class JqlParser:
    def __init__(self, text: str):
        self.text = text
        self.toks = tokenize_jql(text)
        self.i = 0

    def peek(self) -> Tok:
        return self.toks[self.i]

    def next(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def is_kw(self, word: str, tok: Tok | None = None) -> bool:
        tok = tok or self.peek()
        return tok.kind == "WORD" and tok.text.lower() == word

    def error(self, expected: str) -> JqlError:
        t = self.peek()
        got = "the end of the query" if t.kind == "EOF" else f"'{t.text}'"
        return JqlError(f"Error in the JQL Query: Expecting {expected} but got {got}. "
                        f"(line 1, character {t.pos + 1})")

    def parse(self) -> JqlQuery:
        where = None
        if not (self.is_kw("order") or self.peek().kind == "EOF"):
            where = self.parse_or()
        order: list[tuple[str, str]] = []
        if self.is_kw("order"):
            self.next()
            if not self.is_kw("by"):
                raise self.error("'by'")
            self.next()
            while True:
                t = self.next()
                if t.kind not in ("WORD", "STRING") or (t.kind == "WORD" and t.text.lower() in _JQL_KEYWORDS):
                    self.i -= 1
                    raise self.error("a field name")
                direction = "asc"
                if self.is_kw("asc") or self.is_kw("desc"):
                    direction = self.next().text.lower()
                order.append((t.text, direction))
                if self.peek().kind == "COMMA":
                    self.next()
                    continue
                break
        if self.peek().kind != "EOF":
            raise self.error("either 'OR' or 'AND'" if where is not None else "a field name")
        return JqlQuery(where, order)

    def parse_or(self) -> Any:
        parts = [self.parse_and()]
        while self.is_kw("or"):
            self.next()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else BoolOp("or", parts)

    def parse_and(self) -> Any:
        parts = [self.parse_not()]
        while self.is_kw("and"):
            self.next()
            parts.append(self.parse_not())
        return parts[0] if len(parts) == 1 else BoolOp("and", parts)

    def parse_not(self) -> Any:
        if self.is_kw("not"):
            self.next()
            return NotOp(self.parse_not())
        if self.peek().kind == "LPAREN":
            self.next()
            inner = self.parse_or()
            if self.peek().kind != "RPAREN":
                raise self.error("')'")
            self.next()
            return inner
        return self.parse_clause()

    def parse_value(self) -> str | None:
        t = self.next()
        if t.kind == "STRING":
            return t.text
        if t.kind == "WORD" and t.text.lower() in ("empty", "null"):
            return None
        if t.kind == "WORD" and t.text.lower() not in _JQL_KEYWORDS:
            return t.text
        self.i -= 1
        raise self.error("either a value, list or function")

    def parse_clause(self) -> Clause:
        t = self.next()
        if t.kind not in ("WORD", "STRING") or (t.kind == "WORD" and t.text.lower() in _JQL_KEYWORDS):
            self.i -= 1
            raise self.error("a field name")
        fname, quoted = t.text, t.kind == "STRING"
        op_tok = self.peek()
        if op_tok.kind == "OP":
            self.next()
            return Clause(fname, op_tok.text, [self.parse_value()], quoted)
        if self.is_kw("in") or (self.is_kw("not") and self.is_kw("in", self.toks[self.i + 1])):
            op = "in"
            if self.is_kw("not"):
                self.next()
                op = "not in"
            self.next()
            if self.peek().kind != "LPAREN":
                raise self.error("'('")
            self.next()
            values = [self.parse_value()]
            while self.peek().kind == "COMMA":
                self.next()
                values.append(self.parse_value())
            if self.peek().kind != "RPAREN":
                raise self.error("')'")
            self.next()
            return Clause(fname, op, values, quoted)
        if self.is_kw("is"):
            self.next()
            op = "is"
            if self.is_kw("not"):
                self.next()
                op = "is not"
            v = self.next()
            if not (v.kind == "WORD" and v.text.lower() in ("empty", "null")):
                self.i -= 1
                raise self.error("'EMPTY' or 'NULL'")
            return Clause(fname, op, [None], quoted)
        raise self.error("operator")


def parse_jql(text: str) -> JqlQuery:
    return JqlParser(text).parse()


def iter_clauses(node: Any) -> Iterable[Clause]:
    if isinstance(node, Clause):
        yield node
    elif isinstance(node, BoolOp):
        for p in node.parts:
            yield from iter_clauses(p)
    elif isinstance(node, NotOp):
        yield from iter_clauses(node.part)


def text_tokens(text: str) -> list[str]:
    """Jira-like text-field tokens: alphanumeric runs, lower case."""
    return re.findall(r"[a-z0-9]+", text.lower())


@functools.lru_cache(maxsize=200_000)
def _field_tokens(field_text: str) -> tuple[tuple[str, ...], frozenset[str]]:
    tokens = tuple(text_tokens(field_text))
    return tokens, frozenset(tokens)


@functools.lru_cache(maxsize=20_000)
def _text_query(query: str) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[tuple[str, ...], bool], ...]]:
    """A ``~`` query parsed once: its phrases' tokens, and its terms' tokens with the prefix flag."""
    q = query.strip()
    phrases = tuple(tuple(text_tokens(re.sub(r"\\(.)", r"\1", ph)))
                    for ph in re.findall(r'"((?:\\.|[^"\\])*)"', q))
    rest = re.sub(r'"((?:\\.|[^"\\])*)"', " ", q)
    terms = tuple((tuple(text_tokens(re.sub(r"\\(.)", r"\1", term))), term.endswith("*"))
                  for term in rest.split() if term.upper() not in ("AND", "OR"))
    return phrases, terms


def text_matches(field_text: str, query: str) -> bool:
    """``field ~ query``: every query term's tokens appear among the field's tokens (a token match, not a
    substring match, so it can over-match: "BC-1" matches "BC-1-A"). A quoted phrase needs its tokens
    consecutive; a trailing ``*`` makes a prefix term. (Tokens and parsed queries are cached: the
    sandbox evaluates one clause against every issue of a site.)"""
    hay, hay_set = _field_tokens(field_text)
    phrases, terms = _text_query(query)
    for toks in phrases:
        if not toks:
            continue
        if not all(t in hay_set for t in toks):
            return False
        n = len(toks)
        if not any(hay[i:i + n] == toks for i in range(len(hay) - n + 1)):
            return False
    for toks, prefix in terms:
        for k, tok in enumerate(toks):
            if prefix and k == len(toks) - 1:
                if not any(h.startswith(tok) for h in hay):
                    return False
            elif tok not in hay_set:
                return False
    return True


def adf_text(node: Any) -> str:
    """All text in an ADF document (for text search and webhook payloads)."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict):
        parts = [node["text"]] if isinstance(node.get("text"), str) else []
        parts += [adf_text(c) for c in node.get("content") or []]
        sep = "\n" if node.get("type") in ("doc",) else " " if node.get("type") in ("tableRow",) else ""
        return sep.join(p for p in parts if p)
    return ""


# ================================================================================================
# Site model
# ================================================================================================
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


@dataclass
class Delivery:
    identifier: str
    cloud_id: str
    url: str
    body: bytes
    event: str
    client_id: str | None = None          # dynamic (JWT-signed) delivery
    secret: str | None = None             # admin webhook secret (HMAC-signed)
    matched_webhook_ids: list[int] = field(default_factory=list)
    attempts: int = 0
    done: bool = False
    last_status: int | str | None = None


class JiraFaults(Faults):
    """Faults plus the webhook-delivery switches; /_sandbox paths are never faulted."""

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("applies_to", lambda path: not path.startswith("/_sandbox"))
        self.duplicate_deliveries: bool = kw.pop("duplicate_deliveries", False)
        self.drop_deliveries_next: int = kw.pop("drop_deliveries_next", 0)
        super().__init__(**kw)


def _jira_time(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+0000"


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)



_RELATIVE_RE = re.compile(r"^([-+]?)(\d+)([wdhm])$", re.IGNORECASE)
_SYSTEM_JQL_FIELDS = {
    "project": "project", "issuetype": "issuetype", "type": "issuetype", "status": "status",
    "statuscategory": "statusCategory", "key": "key", "issuekey": "key", "id": "key",
    "summary": "summary", "description": "description", "text": "text", "assignee": "assignee",
    "reporter": "reporter", "created": "created", "createddate": "created", "updated": "updated",
    "updateddate": "updated", "labels": "labels", "resolution": "resolution",
}
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
_SETTABLE_SYSTEM = {"summary", "description", "project", "issuetype", "assignee", "reporter", "labels"}
_RESOLUTIONS = {"Done": "10000", "Won't Do": "10001", "Duplicate": "10002"}


def _parse_jql_date(value: str, now: datetime) -> datetime:
    v = value.strip()
    m = _RELATIVE_RE.match(v)
    if m:
        sign = -1 if m.group(1) == "-" else 1
        unit = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}[m.group(3).lower()]
        return now + sign * timedelta(**{unit: int(m.group(2))})
    if v.isdigit():
        return datetime.fromtimestamp(int(v) / 1000, UTC)
    for fmt in ("%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y-%m-%d", "%Y/%m/%d"):
        try:
            return datetime.strptime(v, fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    try:
        dt = datetime.fromisoformat(v.replace("+0000", "+00:00"))
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    except ValueError:
        raise JqlError(f"Date value '{value}' is invalid. Valid formats include: 'yyyy/MM/dd HH:mm', "
                       f"'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a period format e.g. '-5d', '4w 2d'.")


# ================================================================================================
# The sandbox
# ================================================================================================
Handler = Callable[["_Ctx"], Response]


@dataclass
class _Ctx:
    request: Request
    site: Site
    claims: dict[str, Any]
    path: str                       # /rest/api/3/...
    template: str
    path_params: dict[str, str]
    query: dict[str, list[str]]
    body: Any
    base: str                       # {scheme}://{host}/ex/jira/{cloudId}

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def q_list(self, name: str) -> list[str]:
        return [part.strip() for v in self.query.get(name, []) for part in v.split(",") if part.strip()]

    @property
    def account_id(self) -> str:
        return str(self.claims.get("account_id") or "")

    @property
    def client_id(self) -> str:
        return str(self.claims.get("client_id") or "")


def jira_spec() -> dict[str, Any]:
    """Jira-OAS with ChangeDetails' from/to/fromString/toString nullable: the schema types them as plain
    strings, but the spec's own examples for getChangeLogs and getChangeLogsByIds answer ``"from": null``
    (a field set from empty). UNCONFIRMED there: a null fromString/toString (the examples show "")."""
    raw = load_json_spec(JIRA_SPEC)
    schemas = dict(raw["components"]["schemas"])
    change = schemas["ChangeDetails"] = dict(schemas["ChangeDetails"])
    change["properties"] = {k: dict(v, nullable=True) if k in ("from", "to", "fromString", "toString") else v
                            for k, v in change["properties"].items()}
    return {**raw, "components": {**raw["components"], "schemas": schemas}}


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")


def text_adf(text: str) -> dict[str, Any]:
    """Plain text as ADF: a paragraph per blank-line-separated block, a hardBreak per line break."""
    blocks = [b for b in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").strip("\n")) if b.strip()]
    content = []
    for block in blocks:
        nodes: list[dict[str, Any]] = []
        for line in block.split("\n"):
            if nodes:
                nodes.append({"type": "hardBreak"})
            if line:
                nodes.append({"type": "text", "text": line})
        content.append({"type": "paragraph", "content": nodes})
    return {"type": "doc", "version": 1, "content": content}


@functools.lru_cache(maxsize=1)
def adf_validator() -> Callable[[Any], Any]:
    """The official ADF JSON schema (draft-04), compiled once per process.

    fastjsonschema, not jsonschema, because a table-bearing description costs ~1.3 s in jsonschema's
    interpreter (the schema is a wide anyOf of $refs) and ~0.5 ms compiled: the same verdicts.
    """
    return fastjsonschema.compile(load_json_spec(ADF_SPEC))


class JiraSandbox:
    """State, clock, faults and the Starlette ``app`` of one emulated Jira Cloud (any number of sites)."""

    # UNCONFIRMED: the exact 401 body from api.atlassian.com for a missing/expired bearer token. The gateway
    # answers in its own shape (not Jira's ErrorCollection); this one is what 3LO callers commonly report.
    unauthorized_body: ClassVar[dict[str, Any]] = {"code": 401, "message": "Unauthorized"}
    search_page_cap = 100            # per page when fields beyond id/key are requested
    search_id_page_cap = 5000        # "up to 5,000 when only id/key are requested"
    max_delivery_attempts = 5
    # UNCONFIRMED in API-FACTS: which callback statuses Jira retries. Atlassian's webhook page lists
    # 408, 409, 425, 429 and 5xx as retried; transport errors are retried too.
    retry_delivery_statuses = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
    # expand=changelog gives "the most recent 100 histories" and no paging (pycontribs/jira#911 [3rd]); search's
    # expand is reported lower by some. UNCONFIRMED: the exact caps, here configurable.
    changelog_expand_cap = 100
    changelog_page_cap = 100         # GET /changelog maxResults (default 100). UNCONFIRMED: that 100 is also the cap

    def __init__(
        self,
        *,
        token_validator: Callable[[str], dict[str, Any] | None] | None = None,
        clock: SandboxClock | None = None,
        faults: JiraFaults | None = None,
        validate_responses: bool = False,
        search_lag_s: float = 0.0,
        delivery_transport: httpx.BaseTransport | None = None,
        rate_limit: int = 100,
    ) -> None:
        self.clock = clock or SandboxClock()
        self.faults = faults or JiraFaults()
        self.validate_responses = validate_responses
        self.search_lag_s = search_lag_s
        self.rate_limit = rate_limit
        self.sites: dict[str, Site] = {}
        self.app_secrets: dict[str, str] = {}
        self._tokens: dict[str, dict[str, Any]] = {}
        self.token_validator = token_validator or self._tokens.get
        self.calls: Counter[tuple[str, str]] = Counter()
        self.calls_total = 0
        self.response_errors: list[str] = []
        self.delivery_log: list[tuple[str, str, int | str]] = []
        self._deliveries: dict[str, Delivery] = {}
        self._pending: list[str] = []
        self._lock = _lock_factory()
        self._ids = itertools.count(1)
        self._webhook_ids = itertools.count(1)
        self._cf_numbers = itertools.count(10030)
        self._delivery_transport = delivery_transport
        self._delivery_client: httpx.Client | None = None
        self._pump = DeliveryPump("jira-sandbox-webhooks", lambda: self.deliver_pending())
        self.spec = OpenApiValidator(jira_spec())
        self.adf_validator = adf_validator()
        self._handlers: dict[tuple[str, str], Handler] = {
            ("get", "/rest/api/3/field"): self._h_fields,
            ("get", "/rest/api/3/search/jql"): self._h_search,
            ("post", "/rest/api/3/search/jql"): self._h_search,
            ("post", "/rest/api/3/issue"): self._h_create_issue,
            ("post", "/rest/api/3/issue/bulk"): self._h_bulk_create,
            ("get", "/rest/api/3/issue/{issueIdOrKey}"): self._h_get_issue,
            ("put", "/rest/api/3/issue/{issueIdOrKey}"): self._h_edit_issue,
            ("get", "/rest/api/3/issue/{issueIdOrKey}/transitions"): self._h_get_transitions,
            ("post", "/rest/api/3/issue/{issueIdOrKey}/transitions"): self._h_do_transition,
            ("get", "/rest/api/3/issue/{issueIdOrKey}/comment"): self._h_get_comments,
            ("post", "/rest/api/3/issue/{issueIdOrKey}/comment"): self._h_add_comment,
            ("get", "/rest/api/3/issue/{issueIdOrKey}/comment/{id}"): self._h_get_comment,
            ("get", "/rest/api/3/issue/{issueIdOrKey}/changelog"): self._h_get_changelog,
            ("post", "/rest/api/3/issue/{issueIdOrKey}/changelog/list"): self._h_changelog_by_ids,
            ("get", "/rest/api/3/issueLinkType"): self._h_link_types,
            ("post", "/rest/api/3/issueLink"): self._h_link_issues,
            ("get", "/rest/api/3/user"): self._h_user,
            ("get", "/rest/api/3/myself"): self._h_myself,
            ("get", "/rest/api/3/serverInfo"): self._h_server_info,
            ("post", "/rest/api/3/webhook"): self._h_register_webhooks,
            ("get", "/rest/api/3/webhook"): self._h_list_webhooks,
            ("delete", "/rest/api/3/webhook"): self._h_delete_webhooks,
            ("put", "/rest/api/3/webhook/refresh"): self._h_refresh_webhooks,
        }
        # REST v2 (no spec in shared/specs: shapes checked by hand in the handlers)
        self._v2_routes: list[tuple[str, str, re.Pattern[str], Handler]] = [
            (m, t, _template_regex(t), h) for m, t, h in (
                ("get", "/rest/api/2/issue/{issueIdOrKey}/comment", self._h2_get_comments),
                ("post", "/rest/api/2/issue/{issueIdOrKey}/comment", self._h2_add_comment),
                ("get", "/rest/api/2/issue/{issueIdOrKey}/comment/{id}", self._h2_get_comment))]
        routes = [
            Route("/oauth/token/accessible-resources", self._accessible_resources, methods=["GET"]),
            Route("/ex/jira/{cloud_id}/{rest:path}", self._dispatch,
                  methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
            Route("/_sandbox/", self._ui, methods=["GET"]),
            Route("/_sandbox/issues", self._ui_issues, methods=["GET"]),
            Route("/_sandbox/transition", self._ui_transition, methods=["POST"]),
            Route("/_sandbox/comment", self._ui_comment, methods=["POST"]),
            Route("/_sandbox/deliver", self._ui_deliver, methods=["POST"]),
        ]
        self.app = FaultMiddleware(Starlette(routes=routes), self.faults, self._rate_limit_response,
                                   self._server_error_response, count=self._count)

    # ------------------------------------------------------------------------------------------
    # Setup
    # ------------------------------------------------------------------------------------------
    def add_site(self, cloud_id: str, name: str, url: str, *, scopes: list[str] | None = None,
                 issue_types: Iterable[str] = ("Task", "Bug")) -> Site:
        with self._lock:
            site = Site(cloud_id, name, url.rstrip("/"), list(scopes or DEFAULT_SCOPES))
            for i, it in enumerate(issue_types):
                site.issue_types[str(10001 + i)] = IssueType(str(10001 + i), it)
            for s in (Status("10000", "To Do", "new"), Status("10001", "In Progress", "indeterminate"),
                      Status("10002", "Done", "done")):
                site.statuses[s.id] = s
            site.transitions = [Transition("11", "To Do", "10000"), Transition("21", "In Progress", "10001"),
                                Transition("31", "Done", "10002")]
            self.sites[cloud_id] = site
            return site

    def add_project(self, cloud_id: str, key: str, name: str | None = None) -> Project:
        with self._lock:
            site = self.sites[cloud_id]
            project = Project(str(10000 + len(site.projects)), key.upper(), name or key)
            site.projects[project.key] = project
            return project

    def add_issue_type(self, cloud_id: str, name: str) -> IssueType:
        with self._lock:
            site = self.sites[cloud_id]
            it = IssueType(str(10001 + len(site.issue_types)), name)
            site.issue_types[it.id] = it
            return it

    def add_user(self, cloud_id: str, account_id: str, display_name: str, email: str | None = None,
                 active: bool = True) -> User:
        with self._lock:
            user = User(account_id, display_name, email, active)
            self.sites[cloud_id].users[account_id] = user
            return user

    def add_custom_field(self, cloud_id: str, name: str, kind: str, *, options: Iterable[str] = (),
                         number: int | None = None) -> str:
        """Add a custom field; ids come from one sandbox-wide counter, so they differ per site."""
        if kind not in CUSTOM_KINDS:
            raise ValueError(f"kind must be one of {sorted(CUSTOM_KINDS)}")
        with self._lock:
            site = self.sites[cloud_id]
            n = number if number is not None else next(self._cf_numbers)
            fid = f"customfield_{n}"
            if fid in site.custom_fields:
                raise ValueError(f"{fid} exists on {cloud_id}")
            site.custom_fields[fid] = CustomField(fid, n, name, kind, list(options))
            return fid

    def add_token(self, token: str, *, client_id: str = "sandbox-app", account_id: str = "sandbox-user",
                  scopes: list[str] | None = None, cloud_ids: list[str] | None = None) -> None:
        """A static bearer token for the default validator (standalone use, without the auth sandbox)."""
        claims: dict[str, Any] = {"client_id": client_id, "account_id": account_id,
                                  "scopes": list(scopes or DEFAULT_SCOPES)}
        if cloud_ids is not None:
            claims["cloud_ids"] = list(cloud_ids)
        self._tokens[token] = claims

    def revoke_token(self, token: str) -> None:
        self._tokens.pop(token, None)

    def register_app(self, client_id: str, client_secret: str) -> None:
        """The OAuth app's client secret: dynamic webhook JWTs are signed with it."""
        self.app_secrets[client_id] = client_secret

    def add_admin_webhook(self, cloud_id: str, url: str, secret: str | None, events: Iterable[str],
                          jql_filter: str | None = None) -> int:
        with self._lock:
            site = self.sites[cloud_id]
            if jql_filter:
                self._compile_jql(site, parse_jql(jql_filter))  # full JQL; raises on a bad filter
            wid = next(self._webhook_ids)
            site.admin_webhooks[wid] = AdminWebhook(wid, url, secret, list(events), jql_filter)
            return wid

    def issues(self, cloud_id: str) -> list[dict[str, Any]]:
        """Stored issues of a site, rendered like GET /issue (all fields)."""
        with self._lock:
            site = self.sites[cloud_id]
            return [self._render_issue(site, i, None, site.url) for i in sorted(site.issues.values(),
                                                                               key=lambda x: x.id)]

    def dynamic_webhooks(self, cloud_id: str, include_expired: bool = False) -> list[DynamicWebhook]:
        with self._lock:
            now = self.clock.now()
            return [w for w in self.sites[cloud_id].webhooks.values() if include_expired or w.expires > now]

    # ------------------------------------------------------------------------------------------
    # People in Jira (emit webhooks)
    # ------------------------------------------------------------------------------------------
    def _actor(self, site: Site, account_id: str | None) -> str:
        if account_id:
            return account_id
        return next(iter(site.users), "sandbox-user")

    def create_issue_as_user(self, cloud_id: str, fields: dict[str, Any], account_id: str | None = None) -> dict:
        """Create an issue as a person would (validated like POST /issue); returns {id, key}."""
        with self._lock:
            site = self.sites[cloud_id]
            issue = self._create(site, fields, self._actor(site, account_id))
            return {"id": str(issue.id), "key": issue.key}

    def transition_as_user(self, cloud_id: str, key: str, status_name: str, account_id: str | None = None) -> None:
        with self._lock:
            site = self.sites[cloud_id]
            issue = site.issue(key)
            try:
                status = site.status_by_name(status_name)
            except KeyError:
                raise ValueError(f"no status {status_name!r} on {cloud_id}") from None
            tr = next(t for t in site.transitions if t.to_status_id == status.id)
            self._transition(site, issue, tr.id, {}, self._actor(site, account_id))

    def comment_as_user(self, cloud_id: str, key: str, text: str, account_id: str | None = None) -> dict:
        with self._lock:
            site = self.sites[cloud_id]
            body = {"type": "doc", "version": 1,
                    "content": [{"type": "paragraph", "content": [{"type": "text", "text": text}]}]}
            comment = self._comment(site, site.issue(key), body, self._actor(site, account_id))
            return self._render_comment(site, site.issue(key), comment, site.url)

    # ------------------------------------------------------------------------------------------
    # Faults, counting
    # ------------------------------------------------------------------------------------------
    def _rate_limit_response(self, retry_after: str | None) -> Response:
        seconds = 1.0
        try:
            seconds = float(retry_after) if retry_after else 1.0
        except ValueError:
            pass
        reset = (self.clock.now() + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        headers = {"RateLimit-Reason": "jira-burst-based", "X-RateLimit-Limit": str(self.rate_limit),
                   "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
        if retry_after:
            headers["Retry-After"] = retry_after
        return JSONResponse({"errorMessages": ["Rate limit exceeded."], "errors": {}}, 429, headers)

    def _server_error_response(self, status: int, retry_after: str | None) -> Response:
        headers = {"Retry-After": retry_after} if retry_after and status == 503 else {}
        return JSONResponse({"errorMessages": ["Service Unavailable"], "errors": {}}, status, headers)

    def _count(self, request: Request) -> None:
        path = request.url.path
        template = path
        m = re.match(r"^/ex/jira/[^/]+(/.*)$", path)
        if m:
            v2 = self._find_v2(request.method.lower(), m.group(1))
            op = None if v2 else self.spec.find_operation(request.method, m.group(1))
            template = "/ex/jira/{cloudId}" + (v2[0] if v2 else op.template if op else m.group(1))
        count_call(self, request, template)

    def _find_v2(self, method: str, path: str) -> tuple[str, dict[str, str], Handler] | None:
        path = path.rstrip("/")
        for m, template, regex, handler in self._v2_routes:
            match = regex.match(path)
            if m == method and match:
                return template, match.groupdict(), handler
        return None

    # ------------------------------------------------------------------------------------------
    # HTTP plumbing
    # ------------------------------------------------------------------------------------------
    def _claims(self, request: Request) -> dict[str, Any] | None:
        token = bearer_token(request)
        return self.token_validator(token) if token else None

    def _unauthorized(self) -> Response:
        return JSONResponse(self.unauthorized_body, 401, {"WWW-Authenticate": 'Bearer realm="api.atlassian.com"'})

    def _site_ids_for(self, claims: dict[str, Any]) -> list[str]:
        allowed = claims.get("cloud_ids")
        return [c for c in self.sites if allowed is None or c in allowed]

    async def _accessible_resources(self, request: Request) -> Response:
        claims = self._claims(request)
        if claims is None:
            return self._unauthorized()
        with self._lock:
            scopes = list(claims.get("scopes") or DEFAULT_SCOPES)
            out = [{"id": s.cloud_id, "name": s.name, "url": s.url,
                    "scopes": [sc for sc in scopes if sc != "offline_access"],
                    "avatarUrl": "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/rocket.png"}
                   for s in (self.sites[c] for c in self._site_ids_for(claims))]
        return JSONResponse(out)

    async def _dispatch(self, request: Request) -> Response:
        cloud_id = request.path_params["cloud_id"]
        path = "/" + request.path_params["rest"]
        method = request.method.lower()
        claims = self._claims(request)
        if claims is None:
            return self._unauthorized()
        raw = await request.body()
        with self._lock:
            site = self.sites.get(cloud_id)
            if site is None or cloud_id not in self._site_ids_for(claims):
                # UNCONFIRMED: the gateway's exact answer for a cloudId the token may not use.
                return JSONResponse({"errorMessages": ["Site not found or not accessible with this token."],
                                     "errors": {}}, 404)
            if path.rstrip("/") in ("/rest/api/3/search", "/rest/api/2/search"):
                return JSONResponse({"errorMessages": [
                    ("The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
                    "A full migration guideline is available at "
                    "https://developer.atlassian.com/changelog/#CHANGE-2046")], "errors": {}}, 410)
            v2 = self._find_v2(method, path) if path.startswith("/rest/api/2/") else None
            if v2 is not None:
                template, path_params, handler = v2
            else:
                # REST v2 serves the v3 paths beside them: a v2 path is judged by its v3 twin.
                probe = re.sub(r"^/rest/api/2/", "/rest/api/3/", path)
                op = self.spec.find_operation(method, probe)
                if op is None:
                    status = 405 if self.spec.path_exists(probe) else 404
                    return JSONResponse({"errorMessages": [f"null for uri: {request.url}"], "errors": {}}, status)
                template, path_params = op.template, op.path_params
                if probe != path or (op.method, op.template) not in self._handlers:
                    shown = op.template if probe == path else op.template.replace("/rest/api/3/", "/rest/api/2/", 1)
                    return JSONResponse({"errorMessages": [
                        f"The Jira sandbox does not implement {method.upper()} {shown}."], "errors": {}}, 501)
                handler = self._handlers[(op.method, op.template)]
            query: dict[str, list[str]] = {}
            for k, v in request.query_params.multi_items():
                query.setdefault(k, []).append(v)
            body: Any = None
            has_body = bool(raw.strip())
            if has_body:
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    return JSONResponse({"errorMessages": [f"Unexpected character: {exc}"], "errors": {}}, 400)
            if v2 is None:
                try:
                    self.spec.validate_request(method, path, query, body, has_body=has_body)
                except RequestValidationError as exc:
                    return self._respond(method, path, 400,
                                         JiraHttpError(400, exc.messages, exc.field_errors).body())
            base = str(request.base_url).rstrip("/") + f"/ex/jira/{cloud_id}"
            ctx = _Ctx(request, site, claims, path, template, path_params, query, body, base)
            try:
                return handler(ctx)
            except JiraHttpError as exc:
                return self._respond(method, path, exc.status, exc.body())

    def _respond(self, method: str, path: str, status: int, body: Any = None,
                 headers: dict[str, str] | None = None) -> Response:
        if status == 204 or (body is None and status in (201, 202)):
            return Response(status_code=status, headers=headers)
        if self.validate_responses and not path.startswith("/rest/api/2/"):  # no v2 spec: see the _h2_ handlers
            op = self.spec.find_operation(method, path)
            documented = op is not None and (str(status) in op.spec.get("responses", {}))
            if documented or status < 400:
                try:
                    self.spec.validate_response(method, path, status, body)
                except ResponseValidationError as exc:
                    self.response_errors.append(str(exc))
                    raise
        return JSONResponse(body, status, headers)

    def _ok(self, ctx: _Ctx, status: int, body: Any = None) -> Response:
        return self._respond(ctx.request.method.lower(), ctx.path, status, body)

    # ------------------------------------------------------------------------------------------
    # Rendering
    # ------------------------------------------------------------------------------------------
    def _user_json(self, site: Site, account_id: str | None, base: str, api: int = 3) -> dict[str, Any] | None:
        if not account_id:
            return None
        user = site.users.get(account_id) or User(account_id, account_id)
        out = {"self": f"{base}/rest/api/{api}/user?accountId={account_id}", "accountId": account_id,
               "displayName": user.display_name, "active": user.active, "accountType": "atlassian",
               "timeZone": "Etc/UTC",
               "avatarUrls": {k: f"https://avatar-management.example/{account_id}/{k}"
                              for k in ("16x16", "24x24", "32x32", "48x48")}}
        if user.email:
            out["emailAddress"] = user.email
        return out

    def _status_json(self, site: Site, status_id: str, base: str) -> dict[str, Any]:
        s = site.statuses[status_id]
        cat = dict(STATUS_CATEGORIES[s.category])
        cat["self"] = f"{base}/rest/api/3/statuscategory/{cat['id']}"
        return {"self": f"{base}/rest/api/3/status/{s.id}", "description": "", "iconUrl": f"{site.url}/images/"
                "icons/statuses/generic.png", "name": s.name, "id": s.id, "statusCategory": cat}

    def _field_value(self, site: Site, issue: Issue, fid: str, base: str, *, webhook: bool = False) -> Any:
        if fid == "summary":
            return issue.fields.get("summary")
        if fid == "description":
            v = issue.fields.get("description")
            return adf_text(v) if (webhook and v is not None) else v
        if fid == "project":
            p = site.projects[issue.project_key]
            return {"self": f"{base}/rest/api/3/project/{p.id}", "id": p.id, "key": p.key, "name": p.name,
                    "projectTypeKey": "software", "simplified": False}
        if fid == "issuetype":
            it = site.issue_types[issue.fields["issuetype"]]
            return {"self": f"{base}/rest/api/3/issuetype/{it.id}", "id": it.id, "name": it.name,
                    "description": "", "subtask": it.subtask, "hierarchyLevel": 0,
                    "iconUrl": f"{site.url}/images/icons/issuetypes/task.png"}
        if fid == "status":
            return self._status_json(site, issue.fields["status"], base)
        if fid in ("assignee", "reporter"):
            return self._user_json(site, issue.fields.get(fid), base)
        if fid == "labels":
            return list(issue.fields.get("labels") or [])
        if fid == "resolution":
            name = issue.fields.get("resolution")
            if not name:
                return None
            return {"self": f"{base}/rest/api/3/resolution/{_RESOLUTIONS[name]}", "id": _RESOLUTIONS[name],
                    "name": name, "description": ""}
        if fid == "created":
            return _jira_time(issue.created)
        if fid == "updated":
            return _jira_time(issue.updated)
        if fid == "issuelinks":
            return [self._render_link(site, issue, link, base) for link in issue.links]
        if fid == "comment":
            comments = [self._render_comment(site, issue, c, base) for c in issue.comments]
            return {"comments": comments, "maxResults": len(comments), "total": len(comments), "startAt": 0,
                    "self": f"{base}/rest/api/3/issue/{issue.id}/comment"}
        cf = site.custom_fields.get(fid)
        if cf is None:
            return None
        v = issue.fields.get(fid)
        if v is None:
            return None
        if cf.kind == "select":
            return {"self": f"{base}/rest/api/3/customFieldOption/{10100 + cf.options.index(v)}",
                    "value": v, "id": str(10100 + cf.options.index(v))}
        if cf.kind == "textarea" and webhook:
            return adf_text(v)
        return v

    def _all_field_ids(self, site: Site) -> list[str]:
        return [f[0] for f in _SYSTEM_FIELD_DEFS] + list(site.custom_fields)

    def _select_fields(self, site: Site, requested: list[str] | None) -> list[str]:
        """Jira's ``fields`` list: ``*all``/``*navigable``, ids, ``-id`` exclusions; unknown ids ignored."""
        if requested is None:
            return self._all_field_ids(site)
        chosen: list[str] = []
        excluded = {r[1:] for r in requested if r.startswith("-")}
        for r in requested:
            if r in ("*all", "*navigable"):
                chosen += self._all_field_ids(site)
            elif not r.startswith("-") and r in self._all_field_ids(site):
                chosen.append(r)
        return [f for f in dict.fromkeys(chosen) if f not in excluded]

    def _render_issue(self, site: Site, issue: Issue, requested: list[str] | None, base: str,
                      *, expand: Iterable[str] = ()) -> dict[str, Any]:
        out: dict[str, Any]
        if requested is not None and set(requested) <= {"id"}:
            out = {"id": str(issue.id)}
        else:
            fids = self._select_fields(site, requested)
            out = {"expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
                   "id": str(issue.id), "self": f"{base}/rest/api/3/issue/{issue.id}", "key": issue.key,
                   "fields": {f: self._field_value(site, issue, f, base) for f in fids}}
            if "names" in expand:
                out["names"] = {f: self._field_name(site, f) for f in fids}
        if "changelog" in expand:
            # "a list of recent updates to an issue, sorted by date, starting from the most recent" (Jira-OAS)
            recent = issue.history[::-1][:self.changelog_expand_cap]
            out["changelog"] = {"startAt": 0, "maxResults": len(recent), "total": len(issue.history),
                                "histories": [self._render_history(site, h, base) for h in recent]}
        return out

    def _render_history(self, site: Site, h: History, base: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": h.id, "created": _jira_time(h.created), "items": [dict(i) for i in h.items]}
        author = self._user_json(site, h.author, base)
        if author is not None:
            out["author"] = author
        return out

    def _field_name(self, site: Site, fid: str) -> str:
        for f in _SYSTEM_FIELD_DEFS:
            if f[0] == fid:
                return f[1]
        return site.custom_fields[fid].name if fid in site.custom_fields else fid

    def _render_comment(self, site: Site, issue: Issue, c: Comment, base: str, api: int = 3) -> dict[str, Any]:
        """Comment JSON; REST v2 gives ``body`` as a string: what a v2 client sent, else the ADF's text.
        UNCONFIRMED: Jira renders ADF as wiki markup for v2; here marks and node types are dropped."""
        author = self._user_json(site, c.author, base, api)
        body: Any = c.body if api == 3 else c.wiki if c.wiki is not None else adf_text(c.body)
        return {"self": f"{base}/rest/api/{api}/issue/{issue.id}/comment/{c.id}", "id": c.id, "author": author,
                "body": body, "updateAuthor": author, "created": _jira_time(c.created),
                "updated": _jira_time(c.created), "jsdPublic": True}

    @staticmethod
    def _link_type_json(lt: LinkType, base: str) -> dict[str, Any]:
        return {"id": lt.id, "name": lt.name, "inward": lt.inward, "outward": lt.outward,
                "self": f"{base}/rest/api/3/issueLinkType/{lt.id}"}

    def _render_link(self, site: Site, issue: Issue, link: IssueLink, base: str) -> dict[str, Any]:
        """One entry of ``fields.issuelinks``: only the other end, under the key that labels it."""
        outbound = link.source_id == issue.id
        other = site.issues[link.target_id if outbound else link.source_id]
        return {"id": link.id, "self": f"{base}/rest/api/3/issueLink/{link.id}",
                "type": self._link_type_json(link.type, base),
                "outwardIssue" if outbound else "inwardIssue": {
                    "id": str(other.id), "key": other.key, "self": f"{base}/rest/api/3/issue/{other.id}",
                    "fields": {"summary": other.fields.get("summary"),
                               "status": self._status_json(site, other.fields["status"], base),
                               "issuetype": self._field_value(site, other, "issuetype", base)}}}

    # ------------------------------------------------------------------------------------------
    # Field validation (create / edit / transition)
    # ------------------------------------------------------------------------------------------
    def _is_adf(self, value: Any) -> bool:
        if not isinstance(value, dict):
            return False
        try:
            self.adf_validator(value)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def _validate_fields(self, site: Site, fields: dict[str, Any], *, creating: bool,
                         allow_resolution: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
        clean: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for fid, value in fields.items():
            if fid == "resolution" and allow_resolution:
                name = value.get("name") if isinstance(value, dict) else None
                if name not in _RESOLUTIONS:
                    errors[fid] = "Could not find valid 'id' or 'name' in resolution object."
                else:
                    clean[fid] = name
                continue
            if fid in _SETTABLE_SYSTEM:
                if fid == "project" and not creating:
                    errors[fid] = f"Field '{fid}' cannot be set. It is not on the appropriate screen, or unknown."
                    continue
                self._validate_system(site, fid, value, clean, errors)
                continue
            cf = site.custom_fields.get(fid)
            if cf is None:
                errors[fid] = f"Field '{fid}' cannot be set. It is not on the appropriate screen, or unknown."
                continue
            if value is None:
                clean[fid] = None
                continue
            if cf.kind == "textfield":
                if not isinstance(value, str):
                    errors[fid] = "Operation value must be a string"
                elif len(value) > 255:
                    errors[fid] = "The entered text is too long. It exceeds the allowed limit of 255 characters."
                else:
                    clean[fid] = value
            elif cf.kind == "textarea":
                if not self._is_adf(value):
                    errors[fid] = ADF_MESSAGE
                else:
                    clean[fid] = value
            elif cf.kind == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    errors[fid] = "Operation value must be a number"
                else:
                    clean[fid] = float(value)
            elif cf.kind == "select":
                opt = value.get("value") if isinstance(value, dict) else None
                if isinstance(value, dict) and "id" in value and opt is None:
                    idx = int(value["id"]) - 10100 if str(value["id"]).isdigit() else -1
                    opt = cf.options[idx] if 0 <= idx < len(cf.options) else None
                if opt not in cf.options:
                    errors[fid] = f"Option value '{opt}' is not valid"
                else:
                    clean[fid] = opt
            elif cf.kind == "datetime":
                try:
                    if not isinstance(value, str):
                        raise ValueError  # noqa: TRY004 - caught just below as "not a date-time"
                    datetime.fromisoformat(value.replace("+0000", "+00:00"))
                    clean[fid] = value
                except ValueError:
                    errors[fid] = "Invalid date format. Please enter the date in the format \"yyyy-MM-dd'T'HH:mm:ss.SSSZ\"."
        if creating:
            if "project" not in fields:
                errors.setdefault("project", "Specify a valid project ID or key")
            if "issuetype" not in fields:
                errors.setdefault("issuetype", "Specify an issue type")
            if "summary" not in fields:
                errors.setdefault("summary", "You must specify a summary of the issue.")
        return clean, errors

    def _validate_system(self, site: Site, fid: str, value: Any, clean: dict[str, Any],
                         errors: dict[str, str]) -> None:
        if fid == "summary":
            if not isinstance(value, str) or not value.strip():
                errors[fid] = "You must specify a summary of the issue."
            elif len(value) > 255:
                errors[fid] = "Summary must be less than 255 characters."
            elif "\n" in value or "\r" in value:
                errors[fid] = "The summary is invalid because it contains newline characters."
            else:
                clean[fid] = value
        elif fid == "description":
            if value is not None and not self._is_adf(value):
                errors[fid] = ADF_MESSAGE
            else:
                clean[fid] = value
        elif fid == "project":
            key = value.get("key") if isinstance(value, dict) else None
            pid = value.get("id") if isinstance(value, dict) else None
            project = site.projects.get(str(key).upper()) if key else next(
                (p for p in site.projects.values() if p.id == str(pid)), None)
            if project is None:
                errors[fid] = "Specify a valid project ID or key"
            else:
                clean[fid] = project.key
        elif fid == "issuetype":
            it = None
            if isinstance(value, dict):
                if "id" in value:
                    it = site.issue_types.get(str(value["id"]))
                elif "name" in value:
                    it = next((t for t in site.issue_types.values() if t.name == value["name"]), None)
            if it is None:
                errors[fid] = "Specify a valid issue type"
            else:
                clean[fid] = it.id
        elif fid in ("assignee", "reporter"):
            if value is None:
                clean[fid] = None
                return
            acc = value.get("accountId") or value.get("id") if isinstance(value, dict) else None
            if acc not in site.users:
                errors[fid] = "Specified user does not exist or you do not have required permissions"
            else:
                clean[fid] = acc
        elif fid == "labels":
            if not isinstance(value, list) or not all(isinstance(v, str) and " " not in v for v in value):
                errors[fid] = "The label contains spaces or is not a list of strings."
            else:
                clean[fid] = list(value)

    def _apply_update_ops(self, fields: dict[str, Any], update: Any) -> dict[str, str]:
        """IssueUpdateDetails.update: only ``set`` (and labels add/remove) are emulated."""
        errors: dict[str, str] = {}
        if not update:
            return errors
        for fid, ops in update.items():
            for op in ops:
                if "set" in op:
                    fields[fid] = op["set"]
                elif fid == "labels" and ("add" in op or "remove" in op):
                    fields.setdefault("__labels_ops__", []).append(op)
                else:
                    errors[fid] = f"The sandbox supports only 'set' operations on {fid}."
        return errors

    # ------------------------------------------------------------------------------------------
    # Mutations (under the lock)
    # ------------------------------------------------------------------------------------------
    def _create(self, site: Site, fields: dict[str, Any], actor: str) -> Issue:
        clean, errors = self._validate_fields(site, fields, creating=True)
        if errors:
            raise JiraHttpError(400, [], errors)
        project = site.projects[clean.pop("project")]
        now = self.clock.now()
        issue_id = site.next_issue_id
        site.next_issue_id += 1
        key = f"{project.key}-{project.next_number}"
        project.next_number += 1
        stored = {"status": "10000", "reporter": actor if actor in site.users else None, "labels": [],
                  "resolution": None, "assignee": None, "description": None}
        stored.update(clean)
        issue = Issue(issue_id, key, project.key, stored, now, now, self.clock.timestamp())
        site.issues[issue_id] = issue
        self._emit(site, "jira:issue_created", "issue_created", issue, actor)
        return issue

    def _edit(self, site: Site, issue: Issue, fields: dict[str, Any], actor: str) -> None:
        clean, errors = self._validate_fields(site, fields, creating=False)
        if errors:
            raise JiraHttpError(400, [], errors)
        items = []
        for fid, value in clean.items():
            old = issue.fields.get(fid)
            if old != value:
                items.append(self._change_item(site, fid, old, value))
                issue.fields[fid] = value
        if items:
            issue.updated = self.clock.now()
            issue.indexed_at = self.clock.timestamp()
            self._emit(site, "jira:issue_updated", "issue_updated", issue, actor,
                       history=self._record(issue, actor, items))

    def _record(self, issue: Issue, actor: str, items: list[dict[str, Any]]) -> History:
        """One history entry per edit or transition; its webhook's ``changelog`` is the same id and items."""
        h = History(str(next(self._ids) + 20000), actor, issue.updated, items)
        issue.history.append(h)
        return h

    def _change_item(self, site: Site, fid: str, old: Any, new: Any) -> dict[str, Any]:
        def as_string(v: Any) -> str | None:
            if v is None:
                return None
            if isinstance(v, dict):
                return adf_text(v)
            if isinstance(v, list):
                return " ".join(map(str, v))
            if fid == "issuetype":
                return site.issue_types[v].name
            return str(v)
        cf = site.custom_fields.get(fid)
        return {"field": cf.name if cf else fid, "fieldtype": "custom" if cf else "jira", "fieldId": fid,
                "from": None, "fromString": as_string(old), "to": None, "toString": as_string(new)}

    def _available_transitions(self, site: Site, issue: Issue) -> list[Transition]:
        return [t for t in site.transitions if t.to_status_id != issue.fields["status"]]

    def _transition(self, site: Site, issue: Issue, transition_id: str, fields: dict[str, Any], actor: str) -> None:
        tr = next((t for t in self._available_transitions(site, issue) if t.id == str(transition_id)), None)
        if tr is None:
            raise JiraHttpError(400, [f"Transition id '{transition_id}' is not valid for this issue."])
        clean, errors = self._validate_fields(site, fields or {}, creating=False, allow_resolution=True)
        if errors:
            raise JiraHttpError(400, [], errors)
        old_status = site.statuses[issue.fields["status"]]
        new_status = site.statuses[tr.to_status_id]
        items = [{"field": "status", "fieldtype": "jira", "fieldId": "status", "from": old_status.id,
                  "fromString": old_status.name, "to": new_status.id, "toString": new_status.name}]
        issue.fields["status"] = new_status.id
        resolution = clean.pop("resolution", None)
        if new_status.category == "done":
            resolution = resolution or "Done"
        if resolution != issue.fields.get("resolution"):
            items.append({"field": "resolution", "fieldtype": "jira", "fieldId": "resolution",
                          "from": _RESOLUTIONS.get(issue.fields.get("resolution") or ""),
                          "fromString": issue.fields.get("resolution"),
                          "to": _RESOLUTIONS.get(resolution or ""), "toString": resolution})
            issue.fields["resolution"] = resolution
        for fid, value in clean.items():
            if issue.fields.get(fid) != value:
                items.append(self._change_item(site, fid, issue.fields.get(fid), value))
                issue.fields[fid] = value
        issue.updated = self.clock.now()
        issue.indexed_at = self.clock.timestamp()
        self._emit(site, "jira:issue_updated", "issue_generic", issue, actor, history=self._record(issue, actor, items))

    def _comment(self, site: Site, issue: Issue, body: Any, actor: str, *, wiki: str | None = None) -> Comment:
        if body is None:
            raise JiraHttpError(400, [], {"comment": "Comment body can not be empty!"})
        if not self._is_adf(body):
            raise JiraHttpError(400, [], {"comment": ADF_MESSAGE})
        comment = Comment(str(next(self._ids) + 10000), actor, body, self.clock.now(), wiki)
        issue.comments.append(comment)
        issue.updated = comment.created
        self._emit(site, "comment_created", None, issue, actor, comment=comment)
        return comment

    # ------------------------------------------------------------------------------------------
    # Handlers
    # ------------------------------------------------------------------------------------------
    def _h_fields(self, ctx: _Ctx) -> Response:
        site = ctx.site
        out = []
        for fid, name, schema, clauses in _SYSTEM_FIELD_DEFS:
            out.append({"id": fid, "key": fid, "name": name, "custom": False, "orderable": True,
                        "navigable": True, "searchable": True, "clauseNames": clauses, "schema": schema})
        for cf in site.custom_fields.values():
            schema = {"type": CUSTOM_KINDS[cf.kind], "custom": CF_PREFIX + cf.kind, "customId": cf.number}
            out.append({"id": cf.id, "key": cf.id, "name": cf.name, "custom": True, "orderable": True,
                        "navigable": True, "searchable": True, "clauseNames": [f"cf[{cf.number}]", cf.name],
                        "schema": schema, "untranslatedName": cf.name})
        # FieldDetails has additionalProperties: false; untranslatedName is not in this spec's copy.
        for f in out:
            f.pop("untranslatedName", None)
        return self._ok(ctx, 200, out)

    def _h_search(self, ctx: _Ctx) -> Response:
        if ctx.request.method == "POST":
            b = ctx.body or {}
            jql = b.get("jql") or ""
            token = b.get("nextPageToken")
            max_results = b.get("maxResults", 50)
            fields = [p.strip() for f in (b.get("fields") or []) for p in f.split(",") if p.strip()] or None
            reconcile = list(b.get("reconcileIssues") or [])
            expand = b.get("expand") or ""
        else:
            jql = ctx.q("jql") or ""
            token = ctx.q("nextPageToken")
            max_results = int(ctx.q("maxResults") or 50)
            fields = ctx.q_list("fields") or None
            reconcile = [int(x) for x in ctx.q_list("reconcileIssues")]
            expand = ctx.q("expand") or ""
        if len(reconcile) > 50:
            raise JiraHttpError(400, ["The number of issues to reconcile must not exceed 50."])
        query = parse_jql(jql)
        if query.where is None:
            raise JiraHttpError(400, [("Unbounded JQL queries are not allowed here. "
                                      "Please add a search restriction to your query.")])
        if len(query.order_by) > 7:
            raise JiraHttpError(400, ["The ORDER BY clause may contain at most 7 fields."])
        predicate = self._compile_jql(ctx.site, query)
        now_ts = self.clock.timestamp()
        recon = set(reconcile)
        matched = [i for i in ctx.site.issues.values()
                   if (i.id in recon or now_ts - i.indexed_at >= self.search_lag_s) and predicate(i)]
        matched = self._order(ctx.site, matched, query.order_by)
        digest = hashlib.sha256(jql.encode()).hexdigest()[:16]
        offset = 0
        if token:
            offset = self._decode_page_token(token, digest)
        id_only = fields is None or set(fields) <= {"id", "key"}
        page = max(1, min(max_results if max_results > 0 else 50,
                          self.search_id_page_cap if id_only else self.search_page_cap))
        chunk = matched[offset:offset + page]
        expands = {"changelog"} & set(expand.split(","))  # names come once for the page, below
        body: dict[str, Any] = {"issues": [self._render_issue(ctx.site, i, fields or ["id"], ctx.base,
                                                              expand=expands) for i in chunk]}
        for issue_json, issue in zip(body["issues"], chunk, strict=True):
            if fields and "key" in fields:
                issue_json["key"] = issue.key
        is_last = offset + page >= len(matched)
        body["isLast"] = is_last
        if not is_last:
            body["nextPageToken"] = self._encode_page_token(offset + page, digest)
        if "names" in expand.split(","):
            fids = self._select_fields(ctx.site, fields or ["id"])
            body["names"] = {f: self._field_name(ctx.site, f) for f in fids}
        return self._ok(ctx, 200, body)

    def _encode_page_token(self, offset: int, digest: str) -> str:
        raw = json.dumps({"o": offset, "q": digest, "t": int(self.clock.timestamp())}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _decode_page_token(self, token: str, digest: str) -> int:
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            offset, q, t = int(data["o"]), data["q"], float(data["t"])
        except (ValueError, KeyError, TypeError):
            raise JiraHttpError(400, ["The provided next page token is invalid."]) from None
        if q != digest:
            raise JiraHttpError(400, ["The provided next page token does not match the JQL query."])
        if self.clock.timestamp() - t > PAGE_TOKEN_TTL.total_seconds():
            raise JiraHttpError(400, ["The provided next page token has expired."])
        return offset

    def _h_create_issue(self, ctx: _Ctx) -> Response:
        body = ctx.body or {}
        fields = dict(body.get("fields") or {})
        errors = self._apply_update_ops(fields, body.get("update"))
        if errors:
            raise JiraHttpError(400, [], errors)
        issue = self._create(ctx.site, fields, ctx.account_id)
        return self._ok(ctx, 201, {"id": str(issue.id), "key": issue.key,
                                   "self": f"{ctx.base}/rest/api/3/issue/{issue.id}"})

    def _h_bulk_create(self, ctx: _Ctx) -> Response:
        updates = (ctx.body or {}).get("issueUpdates") or []
        # The spec documents 400 as CreatedIssues, so request-level refusals come as one element error
        # without failedElementNumber. UNCONFIRMED: Jira's exact wording for these two cases.
        for refused, message in ((len(updates) > 50, "Too many issues to create. The maximum is 50."),
                                 (not updates, "No issues to create.")):
            if refused:
                return self._ok(ctx, 400, {"issues": [], "errors": [
                    {"status": 400, "elementErrors": {"errorMessages": [message], "errors": {}}}]})
        created, errors = [], []
        for n, upd in enumerate(updates):
            try:
                fields = dict(upd.get("fields") or {})
                errs = self._apply_update_ops(fields, upd.get("update"))
                if errs:
                    raise JiraHttpError(400, [], errs)
                issue = self._create(ctx.site, fields, ctx.account_id)
                created.append({"id": str(issue.id), "key": issue.key,
                                "self": f"{ctx.base}/rest/api/3/issue/{issue.id}"})
            except JiraHttpError as exc:
                errors.append({"status": exc.status, "elementErrors": exc.body(), "failedElementNumber": n})
        return self._ok(ctx, 201 if created else 400, {"issues": created, "errors": errors})

    def _h_get_issue(self, ctx: _Ctx) -> Response:
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        fields = ctx.q_list("fields") or None
        return self._ok(ctx, 200, self._render_issue(ctx.site, issue, fields, ctx.base, expand=ctx.q_list("expand")))

    def _h_edit_issue(self, ctx: _Ctx) -> Response:
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        body = ctx.body or {}
        fields = dict(body.get("fields") or {})
        errors = self._apply_update_ops(fields, body.get("update"))
        if errors:
            raise JiraHttpError(400, [], errors)
        label_ops = fields.pop("__labels_ops__", [])
        if label_ops:
            labels = list(issue.fields.get("labels") or [])
            for op in label_ops:
                if "add" in op and op["add"] not in labels:
                    labels.append(op["add"])
                if "remove" in op and op["remove"] in labels:
                    labels.remove(op["remove"])
            fields["labels"] = labels
        self._edit(ctx.site, issue, fields, ctx.account_id)
        if (ctx.q("returnIssue") or "").lower() == "true":
            return self._ok(ctx, 200, self._render_issue(ctx.site, issue, None, ctx.base,
                                                         expand=ctx.q_list("expand")))
        return self._ok(ctx, 204)

    def _h_get_transitions(self, ctx: _Ctx) -> Response:
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        out = []
        for t in self._available_transitions(ctx.site, issue):
            out.append({"id": t.id, "name": t.name, "to": self._status_json(ctx.site, t.to_status_id, ctx.base),
                        "hasScreen": False, "isGlobal": True, "isInitial": False, "isAvailable": True,
                        "isConditional": False, "isLooped": False})
        return self._ok(ctx, 200, {"expand": "transitions", "transitions": out})

    def _h_do_transition(self, ctx: _Ctx) -> Response:
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        body = ctx.body or {}
        tid = (body.get("transition") or {}).get("id")
        if not tid:
            raise JiraHttpError(400, ["Missing 'transition' identifier"])
        self._transition(ctx.site, issue, str(tid), dict(body.get("fields") or {}), ctx.account_id)
        return self._ok(ctx, 204)

    def _comment_page(self, ctx: _Ctx, api: int = 3) -> dict[str, Any]:
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        start = int(ctx.q("startAt") or 0)
        size = int(ctx.q("maxResults") or 100)
        ordered = issue.comments[::-1] if ctx.q("orderBy") == "-created" else issue.comments
        return {"startAt": start, "maxResults": size, "total": len(ordered),
                "comments": [self._render_comment(ctx.site, issue, c, ctx.base, api)
                             for c in ordered[start:start + size]]}

    def _find_comment(self, ctx: _Ctx) -> tuple[Issue, Comment]:
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        cid = ctx.path_params["id"]
        comment = next((c for c in issue.comments if c.id == cid), None)
        if comment is None:  # a comment of another issue is not found through this one either
            raise JiraHttpError(404, [f"Can not find a comment for the id: {cid}."])
        return issue, comment

    def _h_get_comments(self, ctx: _Ctx) -> Response:
        return self._ok(ctx, 200, self._comment_page(ctx))

    def _h_add_comment(self, ctx: _Ctx) -> Response:
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        comment = self._comment(ctx.site, issue, (ctx.body or {}).get("body"), ctx.account_id)
        return self._ok(ctx, 201, self._render_comment(ctx.site, issue, comment, ctx.base))

    def _h_get_comment(self, ctx: _Ctx) -> Response:
        issue, comment = self._find_comment(ctx)
        return self._ok(ctx, 200, self._render_comment(ctx.site, issue, comment, ctx.base))

    # -- REST v2 comments: body is a string (wiki markup); the rest mirrors v3 ---------------------
    @staticmethod
    def _v2_query(ctx: _Ctx) -> None:
        """v2's comment query parameters, checked as v3's spec checks its twins (same names and types)."""
        errors = {}
        for name in ("startAt", "maxResults"):
            try:
                int(ctx.q(name) or 0)
            except ValueError:
                errors[name] = f"The value '{ctx.q(name)}' is not a valid integer for the '{name}' parameter."
        order = ctx.q("orderBy")
        if order not in (None, "created", "-created", "+created"):
            errors["orderBy"] = f"The value '{order}' of 'orderBy' is not one of ['created', '-created', '+created']."
        if errors:
            raise JiraHttpError(400, [], errors)

    def _h2_get_comments(self, ctx: _Ctx) -> Response:
        self._v2_query(ctx)
        return self._ok(ctx, 200, self._comment_page(ctx, api=2))

    def _h2_get_comment(self, ctx: _Ctx) -> Response:
        issue, comment = self._find_comment(ctx)
        return self._ok(ctx, 200, self._render_comment(ctx.site, issue, comment, ctx.base, api=2))

    def _h2_add_comment(self, ctx: _Ctx) -> Response:
        """POST /rest/api/2/issue/{key}/comment ``{"body": "<wiki markup>", "visibility"?, "properties"?}``.
        Jira binds it to CommentJsonBean with Jackson: an object ``body`` (v3's ADF) is refused with
        Jackson's message (atlassian/atlascode#1597, gioboa/jira-plugin#154 [3rd]). UNCONFIRMED: the
        "[Source: ...]" detail of that message, that numbers and booleans pass as text (Jackson's scalar
        coercion), that a blank string is "empty", the messages for a non-object request or visibility."""
        bean = "com.atlassian.jira.issue.fields.rest.json.beans.CommentJsonBean"
        if ctx.body is None:
            raise JiraHttpError(400, ["No content to map due to end-of-input"])
        if isinstance(ctx.body, str):  # lesstif/php-jira-rest-client#272 [3rd]
            message = (f"Can not instantiate value of type [simple type, class {bean}] from JSON String; "
                       "no single-String constructor/factory method")
            raise JiraHttpError(400, [message])
        if not isinstance(ctx.body, dict):
            token = "START_ARRAY" if isinstance(ctx.body, list) else "VALUE_NUMBER_INT"
            raise JiraHttpError(400, [f"Can not deserialize instance of {bean} out of {token} token"])
        text = ctx.body.get("body")
        if isinstance(text, (dict, list)):
            token = "START_OBJECT" if isinstance(text, dict) else "START_ARRAY"
            message = (f"Can not deserialize instance of java.lang.String out of {token} token\n at [Source: "
                       f"org.apache.catalina.connector.CoyoteInputStream; line: 1, column: 2] (through reference "
                       f"chain: {bean}[\"body\"])")
            raise JiraHttpError(400, [message])
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])  # the body binds first, then the issue is looked up
        if isinstance(text, bool):
            text = str(text).lower()
        elif text is not None:
            text = str(text)
        if text is None or not text.strip():
            raise JiraHttpError(400, [], {"comment": "Comment body can not be empty!"})
        vis = ctx.body.get("visibility")
        if vis is not None and not (isinstance(vis, dict) and vis.get("type") in ("group", "role")):
            raise JiraHttpError(400, [], {"visibility": "Visibility type must be 'group' or 'role'."})
        comment = self._comment(ctx.site, issue, text_adf(text), ctx.account_id, wiki=text)
        return self._ok(ctx, 201, self._render_comment(ctx.site, issue, comment, ctx.base, api=2))

    # -- changelog -----------------------------------------------------------------------------
    def _h_get_changelog(self, ctx: _Ctx) -> Response:
        """PageBeanChangelog, "sorted by date, starting from the oldest" (Jira-OAS getChangeLogs)."""
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        start = max(0, int(ctx.q("startAt") or 0))
        size = max(1, min(int(ctx.q("maxResults") or 100), self.changelog_page_cap))
        url = f"{ctx.base}/rest/api/3/issue/{issue.key}/changelog"
        total = len(issue.history)
        body: dict[str, Any] = {
            "self": f"{url}?startAt={start}&maxResults={size}", "maxResults": size, "startAt": start,
            "total": total, "isLast": start + size >= total,
            "values": [self._render_history(ctx.site, h, ctx.base) for h in issue.history[start:start + size]]}
        if not body["isLast"]:
            body["nextPage"] = f"{url}?startAt={start + size}&maxResults={size}"
        return self._ok(ctx, 200, body)

    def _h_changelog_by_ids(self, ctx: _Ctx) -> Response:
        """PageOfChangelogs of the issue's histories among ``changelogIds``, oldest first. UNCONFIRMED:
        that ids of other issues and unknown ids are skipped silently, and maxResults = what was found."""
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        wanted = {str(i) for i in ctx.body["changelogIds"]}
        found = [self._render_history(ctx.site, h, ctx.base) for h in issue.history if h.id in wanted]
        return self._ok(ctx, 200, {"startAt": 0, "maxResults": len(found), "total": len(found), "histories": found})

    # -- issue links ---------------------------------------------------------------------------
    def _h_link_types(self, ctx: _Ctx) -> Response:
        return self._ok(ctx, 200, {"issueLinkTypes": [self._link_type_json(lt, ctx.base)
                                                      for lt in ctx.site.link_types]})

    def _h_link_issues(self, ctx: _Ctx) -> Response:
        """POST /issueLink -> 201, empty body. The inwardIssue is Jira's "from" issue: it shows the link with
        the type's outward words ("A blocks B" for inwardIssue A, outwardIssue B) and gets the optional
        comment (the spec's "from (outward) issue"; Atlassian's JRJC sends fromIssueKey as inwardIssue).
        A link that already exists is answered 201 again, and its comment is still added (spec).
        No webhook: API-FACTS §4.4 lists no link event for dynamic webhooks, and Jira's admin-webhook
        issuelink_created is not emulated; only the optional comment emits comment_created."""
        site, body = ctx.site, ctx.body
        source = self._linked_issue(site, body["inwardIssue"])
        target = self._linked_issue(site, body["outwardIssue"])
        ref = body["type"]
        # The name wording is Atlassian's (JRJC tests); UNCONFIRMED: the id wording, and the answer to a type
        # with neither id nor name.
        if ref.get("id") is not None:
            lt = next((t for t in site.link_types if t.id == str(ref["id"])), None)
            missing = f"No issue link type with id '{ref['id']}' found."
        else:
            lt = next((t for t in site.link_types if t.name == ref.get("name")), None)
            missing = f"No issue link type with name '{ref.get('name', 'null')}' found."
        if lt is None:
            raise JiraHttpError(404, [missing])
        if source.id == target.id:  # UNCONFIRMED: that Jira refuses a self-link with 400, and the wording
            raise JiraHttpError(400, ["You cannot link an issue to itself."])
        if body.get("comment") is not None:  # a bad comment fails the request before the link is made
            self._comment(site, source, body["comment"].get("body"), ctx.account_id)
        if not any(lk.type == lt and lk.source_id == source.id and lk.target_id == target.id for lk in source.links):
            link = IssueLink(str(site.next_link_id), lt, source.id, target.id)
            site.next_link_id += 1
            source.links.append(link)
            target.links.append(link)
        return self._ok(ctx, 201)

    @staticmethod
    def _linked_issue(site: Site, ref: dict[str, Any]) -> Issue:
        """A LinkedIssue reference: ``id`` wins over ``key``."""
        return site.issue(str(ref["id"]) if ref.get("id") is not None else str(ref.get("key") or ""))

    def _user_bean(self, ctx: _Ctx, account_id: str) -> dict[str, Any]:
        u = self._user_json(ctx.site, account_id, ctx.base) or {}
        u.update({"locale": "en_US", "groups": {"size": 1, "items": []},
                  "applicationRoles": {"size": 1, "items": []}, "expand": "groups,applicationRoles"})
        return u

    def _h_user(self, ctx: _Ctx) -> Response:
        account_id = ctx.q("accountId")
        if not account_id:
            raise JiraHttpError(400, ["The accountId query parameter needs to be provided."])
        if account_id not in ctx.site.users:
            raise JiraHttpError(404, ["Specified user does not exist or you do not have required permissions"])
        return self._ok(ctx, 200, self._user_bean(ctx, account_id))

    def _h_myself(self, ctx: _Ctx) -> Response:
        return self._ok(ctx, 200, self._user_bean(ctx, ctx.account_id))

    def _h_server_info(self, ctx: _Ctx) -> Response:
        now = self.clock.now()
        return self._ok(ctx, 200, {
            "baseUrl": ctx.site.url, "displayUrl": ctx.site.url, "version": "1001.0.0-SNAPSHOT",
            "versionNumbers": [1001, 0, 0], "deploymentType": "Cloud", "buildNumber": 100280,
            "buildDate": "2025-12-01T00:00:00.000+0000", "serverTime": _jira_time(now),
            "scmInfo": "sandbox", "serverTitle": "Jira", "serverTimeZone": "Etc/UTC"})

    # -- webhooks ------------------------------------------------------------------------------
    _WEBHOOK_JQL_FIELDS: ClassVar[set[str]] = {"project", "issuetype", "type", "status", "issuekey", "key", "assignee", "reporter"}
    _WEBHOOK_JQL_OPS: ClassVar[set[str]] = {"=", "!=", "in", "not in"}

    def _webhook_filter_errors(self, site: Site, jql: str) -> list[str]:
        """Dynamic webhooks accept only part of JQL (API-FACTS §4.4). Wording of the errors follows the
        spec's example ("The clause watchCount is unsupported"); the operator wording is UNCONFIRMED."""
        try:
            query = parse_jql(jql)
        except JqlError as exc:
            return exc.messages
        if query.order_by:
            return ["The ORDER BY clause is unsupported"]
        errors = []
        for clause in iter_clauses(query.where):
            if clause.field.lower() not in self._WEBHOOK_JQL_FIELDS:
                errors.append(f"The clause {clause.field} is unsupported")
            elif clause.op not in self._WEBHOOK_JQL_OPS:
                errors.append(f"The operator '{clause.op.upper()}' is unsupported")
        if not errors:
            try:
                self._compile_jql(site, query)
            except JqlError as exc:
                errors += exc.messages
        return errors

    def _require_webhook_scope(self, ctx: _Ctx) -> None:
        scopes = ctx.claims.get("scopes")
        if scopes is not None and "manage:jira-webhook" not in scopes:
            raise JiraHttpError(403, [("Only Connect and OAuth 2.0 apps with the manage:jira-webhook scope can "
                                      "use this operation.")])
        if not ctx.client_id:
            raise JiraHttpError(403, ["Only Connect and OAuth 2.0 apps can use this operation."])

    def _h_register_webhooks(self, ctx: _Ctx) -> Response:
        self._require_webhook_scope(ctx)
        body = ctx.body
        now = self.clock.now()
        mine = [w for w in ctx.site.webhooks.values() if w.client_id == ctx.client_id and w.expires > now]
        if mine and any(w.url != body["url"] for w in mine):
            # "Only a single URL per app is allowed to be registered." (spec). UNCONFIRMED: the answer's shape.
            raise JiraHttpError(400, ["Only a single URL per app is allowed to be registered."])
        results = []
        for wh in body["webhooks"]:
            jql = wh.get("jqlFilter")
            errors = []
            if not wh.get("events"):
                errors.append("At least one event is required.")
            if not jql:
                errors.append("The JQL filter is required.")
            else:
                errors += self._webhook_filter_errors(ctx.site, jql)
            if errors:
                results.append({"errors": errors})
                continue
            wid = next(self._webhook_ids)
            ctx.site.webhooks[wid] = DynamicWebhook(wid, ctx.client_id, body["url"], list(wh["events"]), jql,
                                                    now + WEBHOOK_TTL, wh.get("fieldIdsFilter"))
            results.append({"createdWebhookId": wid})
        return self._ok(ctx, 200, {"webhookRegistrationResult": results})

    def _h_list_webhooks(self, ctx: _Ctx) -> Response:
        self._require_webhook_scope(ctx)
        start = int(ctx.q("startAt") or 0)
        size = max(1, min(int(ctx.q("maxResults") or 100), 100))
        now = self.clock.now()
        mine = sorted((w for w in ctx.site.webhooks.values() if w.client_id == ctx.client_id and w.expires > now),
                      key=lambda w: w.id)
        page = mine[start:start + size]
        values = []
        for w in page:
            v = {"id": w.id, "url": w.url, "jqlFilter": w.jql_filter, "events": w.events,
                 "expirationDate": _ms(w.expires)}
            if w.field_ids_filter:
                v["fieldIdsFilter"] = w.field_ids_filter
            values.append(v)
        return self._ok(ctx, 200, {"startAt": start, "maxResults": size, "total": len(mine),
                                   "isLast": start + size >= len(mine), "values": values})

    def _h_delete_webhooks(self, ctx: _Ctx) -> Response:
        self._require_webhook_scope(ctx)
        ids = (ctx.body or {}).get("webhookIds")
        if not ids:
            raise JiraHttpError(400, [], {"webhookIds": "webhookIds must not be empty"})
        for wid in ids:
            w = ctx.site.webhooks.get(wid)
            if w is not None and w.client_id == ctx.client_id:
                del ctx.site.webhooks[wid]
        return self._ok(ctx, 202)

    def _h_refresh_webhooks(self, ctx: _Ctx) -> Response:
        self._require_webhook_scope(ctx)
        ids = (ctx.body or {}).get("webhookIds")
        if not ids:
            raise JiraHttpError(400, [], {"webhookIds": "webhookIds must not be empty"})
        expires = self.clock.now() + WEBHOOK_TTL
        for wid in ids:  # unknown ids and other apps' ids are ignored
            w = ctx.site.webhooks.get(wid)
            if w is not None and w.client_id == ctx.client_id and w.expires > self.clock.now():
                w.expires = expires
        # The schema types expirationDate as int64 epoch-ms (the spec's example shows a string).
        return self._ok(ctx, 200, {"expirationDate": _ms(expires)})

    # ------------------------------------------------------------------------------------------
    # JQL evaluation
    # ------------------------------------------------------------------------------------------
    def _resolve_jql_field(self, site: Site, name: str) -> list[tuple[str, str]]:
        """[(kind, field id)]: kind is a system field name or a custom field kind."""
        low = name.lower()
        m = re.fullmatch(r"cf\[(\d+)\]", low)
        if m:
            fid = f"customfield_{m.group(1)}"
            if fid in site.custom_fields:
                return [(site.custom_fields[fid].kind, fid)]
        elif low in _SYSTEM_JQL_FIELDS:
            return [(_SYSTEM_JQL_FIELDS[low], _SYSTEM_JQL_FIELDS[low])]
        else:
            found = [(cf.kind, cf.id) for cf in site.custom_fields.values() if cf.name.lower() == low]
            if found:
                return found
        raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")

    def _compile_jql(self, site: Site, query: JqlQuery) -> Callable[[Issue], bool]:
        for name, _dir in query.order_by:
            self._resolve_jql_field(site, name)
        if query.where is None:
            return lambda issue: True
        return self._compile_node(site, query.where)

    def _compile_node(self, site: Site, node: Any) -> Callable[[Issue], bool]:
        if isinstance(node, BoolOp):
            parts = [self._compile_node(site, p) for p in node.parts]
            if node.op == "and":
                return lambda i: all(p(i) for p in parts)
            return lambda i: any(p(i) for p in parts)
        if isinstance(node, NotOp):
            inner = self._compile_node(site, node.part)
            return lambda i: not inner(i)
        preds = [self._compile_clause(site, node, kind, fid) for kind, fid in self._resolve_jql_field(site, node.field)]
        return lambda i: any(p(i) for p in preds)

    def _compile_clause(self, site: Site, c: Clause, kind: str, fid: str) -> Callable[[Issue], bool]:
        op = c.op
        label = c.field

        def unsupported() -> JqlError:
            return JqlError(f"The operator '{op.upper()}' is not supported by the '{label}' field.")

        def lookup(values: list[str | None], resolve: Callable[[str], str | None], what: str) -> set[str | None]:
            out: set[str | None] = set()
            for v in values:
                if v is None:
                    out.add(None)
                    continue
                r = resolve(v)
                if r is None:
                    raise JqlError(f"The value '{v}' does not exist for the field '{what}'.")
                out.add(r)
            return out

        # -- equality-style fields: (getter, resolver) --------------------------------------------
        getter: Callable[[Issue], Any]
        resolver: Callable[[str], Any]
        if kind == "project":
            getter = lambda i: i.project_key
            resolver = lambda v: next((p.key for p in site.projects.values()
                                       if v.upper() == p.key or v == p.id or v.lower() == p.name.lower()), None)
        elif kind == "issuetype":
            getter = lambda i: i.fields["issuetype"]
            resolver = lambda v: next((t.id for t in site.issue_types.values()
                                       if v == t.id or v.lower() == t.name.lower()), None)
        elif kind == "status":
            getter = lambda i: i.fields["status"]
            resolver = lambda v: next((s.id for s in site.statuses.values()
                                       if v == s.id or v.lower() == s.name.lower()), None)
        elif kind == "statusCategory":
            getter = lambda i: site.statuses[i.fields["status"]].category
            resolver = lambda v: next((k for k, c in STATUS_CATEGORIES.items()
                                       if v.lower() in (k, c["name"].lower(), str(c["id"]))), None)
        elif kind == "key":
            getter = lambda i: i.id

            def resolver(v: str) -> Any:
                if v.isdigit():
                    return int(v)
                try:
                    return site.issue(v).id
                except JiraHttpError:
                    raise JqlError(f"An issue with key '{v}' does not exist for field '{label}'.") from None
        elif kind in ("assignee", "reporter"):
            getter = lambda i: i.fields.get(kind)
            resolver = lambda v: v if v in site.users else None
        elif kind == "resolution":
            getter = lambda i: i.fields.get("resolution")
            resolver = lambda v: (next((r for r in _RESOLUTIONS if r.lower() == v.lower()), None)
                                  if v.lower() != "unresolved" else "__none__")
        elif kind == "labels":
            getter = lambda i: i.fields.get("labels") or None
            resolver = lambda v: v
        elif kind == "select":
            cf = site.custom_fields[fid]
            getter = lambda i: i.fields.get(fid)
            resolver = lambda v: v if v in cf.options else None
        elif kind in ("summary", "description", "text", "textfield", "textarea"):
            return self._compile_text_clause(site, c, kind, fid, unsupported)
        elif kind in ("float", "created", "updated", "datetime"):
            return self._compile_ordered_clause(site, c, kind, fid, unsupported)
        else:  # pragma: no cover - every kind is handled above
            raise unsupported()

        if op in ("is", "is not"):
            empty = lambda i: getter(i) in (None, [], "")
            return empty if op == "is" else (lambda i: not empty(i))
        if op not in ("=", "!=", "in", "not in"):
            raise unsupported()
        wanted = lookup(c.values, resolver, label)
        if kind == "resolution" and "__none__" in wanted:
            wanted = (wanted - {"__none__"}) | {None}

        def match(i: Issue) -> bool:
            v = getter(i)
            if isinstance(v, list):
                return any(x in wanted for x in v)
            return v in wanted

        if op in ("=", "in"):
            return match
        return lambda i: getter(i) not in (None, []) and not match(i)

    def _text_of(self, site: Site, issue: Issue, kind: str, fid: str) -> str | None:
        if kind == "text":
            parts = [issue.fields.get("summary") or "", adf_text(issue.fields.get("description") or "")]
            parts += [adf_text(issue.fields.get(cf.id) or "") if cf.kind == "textarea" else
                      str(issue.fields.get(cf.id) or "") for cf in site.custom_fields.values()
                      if cf.kind in ("textfield", "textarea")]
            return " ".join(parts)
        v = issue.fields.get(fid)
        if v is None:
            return None
        return adf_text(v) if isinstance(v, dict) else str(v)

    def _compile_text_clause(self, site: Site, c: Clause, kind: str, fid: str,
                             unsupported: Callable[[], JqlError]) -> Callable[[Issue], bool]:
        op = c.op
        text = lambda i: self._text_of(site, i, kind, fid)
        if op in ("is", "is not") and kind != "text":
            return (lambda i: not text(i)) if op == "is" else (lambda i: bool(text(i)))
        if op in ("~", "!~"):
            q = c.values[0]
            if q is None:
                raise JqlError(f"The operator '{op}' does not support the value EMPTY.")
            if op == "~":
                return lambda i: bool(text(i)) and text_matches(text(i), q)
            return lambda i: bool(text(i)) and not text_matches(text(i), q)
        # Exact equality exists for single-line custom text fields in this sandbox (the brief's cf[n] = "x").
        if kind == "textfield" and op in ("=", "!=", "in", "not in"):
            wanted = set(c.values)
            if op in ("=", "in"):
                return lambda i: text(i) in wanted
            return lambda i: text(i) is not None and text(i) not in wanted
        raise unsupported()

    def _compile_ordered_clause(self, site: Site, c: Clause, kind: str, fid: str,
                                unsupported: Callable[[], JqlError]) -> Callable[[Issue], bool]:
        op = c.op
        now = self.clock.now()
        if kind == "float":
            getter = lambda i: i.fields.get(fid)

            def conv(v: str) -> float:
                try:
                    return float(v)
                except ValueError:
                    raise JqlError(f"The value '{v}' is not a valid number for the field '{c.field}'.") from None
        else:
            if kind in ("created", "updated"):
                getter = lambda i: getattr(i, kind)
            else:
                def getter(i: Issue) -> datetime | None:
                    v = i.fields.get(fid)
                    return _parse_jql_date(v, now) if v else None
            conv = lambda v: _parse_jql_date(v, now)
        if op in ("is", "is not"):
            return (lambda i: getter(i) is None) if op == "is" else (lambda i: getter(i) is not None)
        if op in ("~", "!~"):
            raise unsupported()
        values = [conv(v) for v in c.values if v is not None]
        if not values:
            raise JqlError(f"The operator '{op}' does not support the value EMPTY.")
        cmp = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
               ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}
        if op in ("in", "not in"):
            s = set(values)
            return (lambda i: getter(i) in s) if op == "in" else (lambda i: getter(i) is not None and getter(i) not in s)
        f = cmp[op]
        return lambda i: getter(i) is not None and f(getter(i), values[0])

    def _order(self, site: Site, issues: list[Issue], order_by: list[tuple[str, str]]) -> list[Issue]:
        out = sorted(issues, key=lambda i: i.id)  # no ORDER BY: oldest first (Jira leaves it unspecified)
        for name, direction in reversed(order_by):
            kind, fid = self._resolve_jql_field(site, name)[0]

            def key(i: Issue, kind: str = kind, fid: str = fid) -> Any:
                if kind == "key":
                    proj, num = i.key.rsplit("-", 1)
                    return (proj, int(num))
                if kind in ("created", "updated"):
                    return getattr(i, kind)
                if kind == "status":
                    return site.statuses[i.fields["status"]].name
                if kind == "statusCategory":
                    return STATUS_CATEGORIES[site.statuses[i.fields["status"]].category]["id"]
                if kind == "project":
                    return i.project_key
                if kind == "issuetype":
                    return site.issue_types[i.fields["issuetype"]].name
                v = i.fields.get(fid)
                return adf_text(v) if isinstance(v, dict) else v

            present = [i for i in out if key(i) is not None]
            missing = [i for i in out if key(i) is None]
            present.sort(key=key, reverse=direction == "desc")
            out = present + missing
        return out

    # ------------------------------------------------------------------------------------------
    # Webhook events and delivery
    # ------------------------------------------------------------------------------------------
    def _issue_payload(self, site: Site, issue: Issue) -> dict[str, Any]:
        base = site.url  # Jira's webhook payloads link to the site (REST v2 form), not to api.atlassian.com
        fields = {f: self._field_value(site, issue, f, base, webhook=True) for f in
                  ("summary", "status", "issuetype", "project", "description", "assignee", "reporter",
                   "labels", "resolution", "created", "updated")}
        fields.update({cf: self._field_value(site, issue, cf, base, webhook=True) for cf in site.custom_fields})
        return {"id": str(issue.id), "self": f"{site.url}/rest/api/2/issue/{issue.id}", "key": issue.key,
                "fields": fields}

    def _emit(self, site: Site, event: str, type_name: str | None, issue: Issue, actor: str,
              *, history: History | None = None, comment: Comment | None = None) -> None:
        now = self.clock.now()
        payload: dict[str, Any] = {"timestamp": _ms(now), "webhookEvent": event}
        if type_name:
            payload["issue_event_type_name"] = type_name
        user = site.users.get(actor)
        payload["user"] = {"self": f"{site.url}/rest/api/2/user?accountId={actor}", "accountId": actor,
                           "displayName": user.display_name if user else actor, "active": True,
                           "accountType": "atlassian", "timeZone": "Etc/UTC"}
        payload["issue"] = self._issue_payload(site, issue)
        changelog = history.items if history is not None else None
        if history is not None:
            payload["changelog"] = {"id": history.id, "items": changelog}
        if comment is not None:
            payload["comment"] = self._render_comment(site, issue, comment, site.url)
        # dynamic webhooks: one delivery per app (its single URL), listing the matched webhook ids.
        # UNCONFIRMED: the matchedWebhookIds field and one-delivery-per-app grouping.
        by_app: dict[str, list[DynamicWebhook]] = {}
        for w in site.webhooks.values():
            if w.expires <= now or event not in w.events:
                continue
            if not self._compile_jql(site, parse_jql(w.jql_filter))(issue):
                continue
            if event == "jira:issue_updated" and w.field_ids_filter and changelog and not any(
                    item.get("fieldId") in w.field_ids_filter for item in changelog):
                continue
            by_app.setdefault(w.client_id, []).append(w)
        for client_id, hooks in by_app.items():
            body = dict(payload, matchedWebhookIds=[w.id for w in hooks])
            self._enqueue(Delivery(str(uuid.uuid4()), site.cloud_id, hooks[0].url, json.dumps(body).encode(),
                                   event, client_id=client_id, matched_webhook_ids=[w.id for w in hooks]))
        for a in site.admin_webhooks.values():
            if event not in a.events:
                continue
            if a.jql_filter and not self._compile_jql(site, parse_jql(a.jql_filter))(issue):
                continue
            self._enqueue(Delivery(str(uuid.uuid4()), site.cloud_id, a.url, json.dumps(payload).encode(), event,
                                   secret=a.secret))

    def _enqueue(self, d: Delivery) -> None:
        self._deliveries[d.identifier] = d
        self._pending.append(d.identifier)

    @property
    def pending_deliveries(self) -> list[Delivery]:
        with self._lock:
            return [self._deliveries[i] for i in self._pending]

    def delivery_headers(self, d: Delivery, retry: int) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Atlassian-Webhook-Identifier": d.identifier,
                   "X-Atlassian-Webhook-Retry": str(retry), "X-Atlassian-Webhook-Flow": "Primary",
                   "User-Agent": "Atlassian Webhook HTTP Client"}
        if d.client_id is not None:
            secret = self.app_secrets.get(d.client_id)
            if secret is not None:
                # UNCONFIRMED (API-FACTS §8): the claim set of the JWT on OAuth-app webhooks. Only the
                # signature (HS256 with the app's client secret) is sourced; iss/iat/exp are this sandbox's.
                iat = int(self.clock.timestamp())
                token = jwt.encode({"iss": d.client_id, "iat": iat, "exp": iat + 300}, secret, algorithm="HS256")
                headers["Authorization"] = f"Bearer {token}"
        elif d.secret is not None:
            digest = hmac.new(d.secret.encode(), d.body, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature"] = f"sha256={digest}"
        return headers

    def _http(self) -> httpx.Client:
        if self._delivery_client is None:
            self._delivery_client = httpx.Client(transport=self._delivery_transport, timeout=10.0, trust_env=False)
        return self._delivery_client

    def _post(self, d: Delivery, retry: int) -> int | str:
        with self._lock:
            if self.faults.drop_deliveries_next > 0:
                self.faults.drop_deliveries_next -= 1
                self.delivery_log.append((d.url, d.identifier, "dropped"))
                return "dropped"
        headers = self.delivery_headers(d, retry)
        status: int | str
        copies = 2 if self.faults.duplicate_deliveries else 1
        for _ in range(copies):
            try:
                status = self._http().post(d.url, content=d.body, headers=headers).status_code
            except httpx.HTTPError as exc:
                status = f"error: {type(exc).__name__}"
            with self._lock:
                self.delivery_log.append((d.url, d.identifier, status))
        return status

    def deliver_pending(self) -> int:
        """Post every queued delivery once (synchronously); failed ones stay queued for a later call
        (up to ``max_delivery_attempts``). Returns how many were delivered with a 2xx."""
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
        delivered = 0
        requeue = []
        for ident in batch:
            d = self._deliveries[ident]
            status = self._post(d, d.attempts)
            d.attempts += 1
            d.last_status = status
            if status == "dropped" or (isinstance(status, int) and 200 <= status < 300):
                d.done = True
                delivered += status != "dropped"
                continue
            retryable = not isinstance(status, int) or status in self.retry_delivery_statuses
            if retryable and d.attempts < self.max_delivery_attempts:
                requeue.append(ident)
        with self._lock:
            self._pending[:0] = requeue
        return delivered

    def redeliver(self, identifier: str) -> int | str:
        """Send a delivery again now: same identifier and body, retry count +1."""
        d = self._deliveries[identifier]
        status = self._post(d, d.attempts)
        d.attempts += 1
        d.last_status = status
        return status

    def start_auto_delivery(self, interval_s: float = 0.5) -> None:
        self._pump.start(interval_s)

    def stop_auto_delivery(self) -> None:
        self._pump.stop()

    def close(self) -> None:
        self.stop_auto_delivery()
        if self._delivery_client is not None:
            self._delivery_client.close()
            self._delivery_client = None

    # ------------------------------------------------------------------------------------------
    # /_sandbox: demo UI and people simulation over HTTP (no auth: loopback demo only)
    # ------------------------------------------------------------------------------------------
    @staticmethod
    async def _form(request: Request) -> dict[str, str]:
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            data = json.loads(raw or b"{}")
            return {k: str(v) for k, v in data.items()}
        return {k: v[-1] for k, v in parse_qs(raw.decode()).items()}

    async def _ui(self, request: Request) -> Response:
        with self._lock:
            parts = [("<!doctype html><html><head><meta charset='utf-8'><title>Jira sandbox</title>"
                     "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
                     "td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body><h1>Jira sandbox</h1>")]
            for site in self.sites.values():
                parts.append(f"<h2>{html.escape(site.name)} <small>({html.escape(site.url)}, cloudId "
                             f"{html.escape(site.cloud_id)})</small></h2>")
                parts.append("<table><tr><th>Key</th><th>Summary</th><th>Status</th><th></th></tr>")
                for issue in sorted(site.issues.values(), key=lambda i: i.id):
                    status = site.statuses[issue.fields["status"]]
                    button = ""
                    if status.category != "done":
                        button = (f"<form method='post' action='/_sandbox/transition'>"
                                  f"<input type='hidden' name='cloud_id' value='{html.escape(site.cloud_id)}'>"
                                  f"<input type='hidden' name='key' value='{html.escape(issue.key)}'>"
                                  f"<input type='hidden' name='status' value='Done'>"
                                  f"<input type='hidden' name='redirect' value='1'>"
                                  f"<button type='submit'>Move to Done</button></form>")
                    parts.append(f"<tr><td>{html.escape(issue.key)}</td>"
                                 f"<td>{html.escape(issue.fields.get('summary') or '')}</td>"
                                 f"<td>{html.escape(status.name)}</td><td>{button}</td></tr>")
                parts.append("</table>")
            parts.append("</body></html>")
        return HTMLResponse("".join(parts))

    async def _ui_issues(self, request: Request) -> Response:
        cloud_id = request.query_params.get("cloud_id")
        with self._lock:
            ids = [cloud_id] if cloud_id else list(self.sites)
            return JSONResponse({c: self.issues(c) for c in ids if c in self.sites})

    async def _ui_transition(self, request: Request) -> Response:
        form = await self._form(request)
        try:
            self.transition_as_user(form["cloud_id"], form["key"], form.get("status", "Done"),
                                     account_id=form.get("account_id"))
        except (KeyError, ValueError, StopIteration, JiraHttpError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        if form.get("redirect"):
            return RedirectResponse("/_sandbox/", status_code=303)
        return JSONResponse({"ok": True})

    async def _ui_comment(self, request: Request) -> Response:
        form = await self._form(request)
        try:
            comment = self.comment_as_user(form["cloud_id"], form["key"], form["text"],
                                           account_id=form.get("account_id"))
        except (KeyError, ValueError, JiraHttpError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(comment, 201)

    async def _ui_deliver(self, request: Request) -> Response:
        import asyncio

        delivered = await asyncio.get_running_loop().run_in_executor(None, self.deliver_pending)
        return JSONResponse({"delivered": delivered})


__all__ = [
    "Delivery",
    "JiraFaults",
    "JiraHttpError",
    "JiraSandbox",
    "JqlError",
    "adf_text",
    "parse_jql",
    "text_adf",
    "text_matches",
    "text_tokens",
    "tokenize_jql",
]
