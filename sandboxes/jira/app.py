"""``JiraSandbox``: one emulated Jira Cloud (any number of sites) put together from the per-concern mixins of
this package. It holds the state (sites, tokens, app secrets, the delivery queue), the clock and the faults,
the handler tables (the routing layer's input), the Starlette ``app``, the Python setup surface and the
people simulation (changes made "in Jira" by a person, which emit webhooks like any other change)."""

from __future__ import annotations

import itertools
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from sandboxes.common import DeliveryPump, FaultMiddleware, Faults, SandboxClock
from sandboxes.jira.adf import adf_validator
from sandboxes.jira.comments import CommentsMixin
from sandboxes.jira.delivery import Delivery, DeliveryMixin
from sandboxes.jira.fields import FieldsMixin
from sandboxes.jira.history import HistoryMixin
from sandboxes.jira.issues import IssuesMixin
from sandboxes.jira.jql import parse_jql
from sandboxes.jira.jql_eval import JqlEvalMixin
from sandboxes.jira.links import LinksMixin
from sandboxes.jira.model import (
    CUSTOM_KINDS,
    DEFAULT_SCOPES,
    AdminWebhook,
    CustomField,
    DynamicWebhook,
    IssueType,
    Project,
    Site,
    Status,
    Transition,
    User,
)
from sandboxes.jira.render import RenderMixin
from sandboxes.jira.routing import Handler, RoutingMixin, _template_regex, jira_spec
from sandboxes.jira.search import SearchMixin
from sandboxes.jira.transitions import TransitionsMixin
from sandboxes.jira.ui import DemoUiMixin
from sandboxes.jira.users import UsersMixin
from sandboxes.jira.webhooks import WebhooksMixin
from sandboxes.openapi import OpenApiValidator

_lock_factory = threading.RLock


class JiraFaults(Faults):
    """Faults plus the webhook-delivery switches; the people pages (/_sandbox, /browse) are never faulted."""

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("applies_to", lambda path: not path.startswith(("/_sandbox", "/browse/")))
        self.duplicate_deliveries: bool = kw.pop("duplicate_deliveries", False)
        self.drop_deliveries_next: int = kw.pop("drop_deliveries_next", 0)
        super().__init__(**kw)


class JiraSandbox(RoutingMixin, RenderMixin, FieldsMixin, IssuesMixin, HistoryMixin, TransitionsMixin,
                  CommentsMixin, LinksMixin, UsersMixin, SearchMixin, WebhooksMixin, JqlEvalMixin,
                  DeliveryMixin, DemoUiMixin):
    """State, clock, faults and the Starlette ``app`` of one emulated Jira Cloud (any number of sites)."""

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
        self.spec = OpenApiValidator(jira_spec(), fast=True)   # fastjsonschema first; jsonschema words refusals
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
            Route("/browse/{key}", self._browse, methods=["GET"]),
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
