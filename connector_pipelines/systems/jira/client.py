"""Jira Cloud platform REST v3 client for an OAuth 2.0 (3LO) app.

Base URL ``{api_base}/ex/jira/{cloudId}`` (api_base is https://api.atlassian.com in production), bearer
tokens from a TokenProvider; retries, Retry-After, 401 refresh-once and call counting come from
core.http.ResilientClient (``RateLimit-Reason`` is carried on ApiError). No Dagster, no sandbox imports.

Rules this client keeps (API-FACTS §4):
- search only through ``/search/jql`` with ``nextPageToken`` (there is no ``total``); ``fields`` must be
  asked for, the default is ``id`` only;
- custom fields are found by exact name per site at connect time, never hard-coded, never guessed
  when two fields share a name;
- external-id lookups use ``cf[n] ~ "\\"value\\""`` (a token match that can over-match) and then
  filter client-side for exact equality;
- bulk create in chunks of 50; a 400 whose body lists per-element errors is a partial (here: total)
  failure of that chunk, not an exception, so earlier chunks' issues are never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx

from connector_pipelines.core.http import ApiError, ResilientClient, RetrySettings, TokenProvider
from connector_pipelines.systems.jira.errors import JiraConfigError, JiraWebhookError
from connector_pipelines.systems.jira.models import BulkCreateResult, CreatedIssue, JiraField

log = logging.getLogger(__name__)

API = "/rest/api/3"
BULK_LIMIT = 50
JQL_LOOKUP_CHUNK = 50
RECONCILE_LIMIT = 50


def jql_string(value: str) -> str:
    """A JQL string literal: double quotes, with backslash, quote and control characters escaped."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f'"{escaped}"'


def parse_expiration(value: Any) -> datetime:
    """``expirationDate`` as epoch-ms (the schema) or a string like 2019-06-01T12:42:30.000+0000 (the example)."""
    if isinstance(value, bool):
        raise ValueError(f"unexpected expirationDate {value!r}")  # noqa: TRY004 - one error type for bad values
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str):
        v = value.strip()
        if v.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(v) / 1000, UTC)
        if v.endswith("Z"):
            v = v[:-1] + "+00:00"
        if len(v) >= 5 and v[-5] in "+-" and v[-3] != ":":
            v = v[:-2] + ":" + v[-2:]
        dt = datetime.fromisoformat(v)
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    raise ValueError(f"unexpected expirationDate {value!r}")


def _summarise_element_errors(err: dict[str, Any]) -> str:
    ec = err.get("elementErrors") or {}
    parts = list(ec.get("errorMessages") or [])
    parts += [f"{k}: {v}" for k, v in (ec.get("errors") or {}).items()]
    return "; ".join(parts) or f"HTTP {err.get('status', '?')}"


class JiraClient:
    def __init__(self, http: ResilientClient, site_url: str) -> None:
        self.http = http
        self.site_url = site_url.rstrip("/")

    @classmethod
    def connect(cls, api_base: str, cloud_id: str, site_url: str, token_provider: TokenProvider, *,
                transport: httpx.BaseTransport | None = None, retry: RetrySettings | None = None,
                timeout_s: float = 30.0) -> JiraClient:
        http = ResilientClient("jira", f"{api_base.rstrip('/')}/ex/jira/{cloud_id}", token_provider,
                               timeout_s=timeout_s, retry=retry, transport=transport,
                               reason_header="RateLimit-Reason", headers={"Accept": "application/json"})
        return cls(http, site_url)

    def close(self) -> None:
        self.http.close()

    # -- fields ---------------------------------------------------------------------------------
    def fields(self) -> list[JiraField]:
        return [JiraField.from_api(f) for f in self.http.get(f"{API}/field").json()]

    def resolve_fields(self, names: list[str]) -> dict[str, JiraField]:
        """Fields by exact name. Raises JiraConfigError naming every missing name and every name that
        two or more fields share (with their ids), instead of guessing."""
        by_name: dict[str, list[JiraField]] = {}
        for f in self.fields():
            by_name.setdefault(f.name, []).append(f)
        missing = [n for n in dict.fromkeys(names) if n not in by_name]
        ambiguous = {n: [f.id for f in by_name[n]] for n in dict.fromkeys(names)
                     if n in by_name and len(by_name[n]) > 1}
        if missing or ambiguous:
            parts = []
            if missing:
                parts.append("no Jira field named " + ", ".join(repr(n) for n in missing))
            if ambiguous:
                parts.append("several Jira fields share the name " + ", ".join(
                    f"{n!r} ({', '.join(ids)})" for n, ids in ambiguous.items())
                    + "; rename one of them in Jira")
            raise JiraConfigError(f"Jira site {self.site_url}: " + "; ".join(parts), missing=missing,
                                  ambiguous=ambiguous)
        return {n: by_name[n][0] for n in names}

    # -- search ---------------------------------------------------------------------------------
    def search_jql(self, jql: str, fields: list[str] | None = None, *, page_size: int = 100,
                   reconcile_issue_ids: list[int] | None = None) -> Iterator[dict]:
        """Every issue matching ``jql`` (POST /search/jql, following nextPageToken). ``fields`` None
        means Jira's default (``id`` only)."""
        if reconcile_issue_ids and len(reconcile_issue_ids) > RECONCILE_LIMIT:
            raise ValueError(f"reconcileIssues takes at most {RECONCILE_LIMIT} ids")
        body: dict[str, Any] = {"jql": jql, "maxResults": page_size}
        if fields is not None:
            body["fields"] = list(fields)
        if reconcile_issue_ids:
            body["reconcileIssues"] = [int(i) for i in reconcile_issue_ids]
        seen_tokens: set[str] = set()
        while True:
            page = self.http.post(f"{API}/search/jql", json=body).json()
            yield from page.get("issues") or []
            token = page.get("nextPageToken")
            if page.get("isLast", not token) or not token:
                return
            if token in seen_tokens:  # a server bug would otherwise loop forever
                raise ApiError("jira", "POST", f"{API}/search/jql", 200, {"errorMessages": [
                    "nextPageToken repeated; stopping"]})
            seen_tokens.add(token)
            body["nextPageToken"] = token

    @staticmethod
    def jql_text_any(clause_name: str, values: list[str]) -> str:
        """``(cf[n] ~ "\\"v1\\"" OR cf[n] ~ "\\"v2\\"")``: one phrase query per value, escaped twice
        (for the text-search phrase, then for the JQL string literal)."""
        if not values:
            raise ValueError("jql_text_any needs at least one value")
        clauses = []
        for v in values:
            phrase = '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            clauses.append(f"{clause_name} ~ {jql_string(phrase)}")
        return "(" + " OR ".join(clauses) + ")"

    def find_by_external_ids(self, field: JiraField, external_ids: list[str], project_key: str,
                             fields: list[str]) -> dict[str, list[dict]]:
        """Issues of ``project_key`` whose ``field`` equals each external id exactly.

        One JQL search per 50 ids; ``~`` is a token match (it can over-match, e.g. "BC-1" finds
        "BC-1-A"), so results are filtered here for exact equality. Every requested id is a key of the
        answer (an empty list when no issue carries it)."""
        ids = list(dict.fromkeys(external_ids))
        found: dict[str, list[dict]] = {i: [] for i in ids}
        want_fields = list(dict.fromkeys([*fields, field.id]))
        clause = field.jql_clause
        searchable = [i for i in ids if any(ch.isalnum() for ch in i)]
        for start in range(0, len(searchable), JQL_LOOKUP_CHUNK):
            chunk = searchable[start:start + JQL_LOOKUP_CHUNK]
            wanted = set(chunk)
            jql = f"project = {jql_string(project_key)} AND {self.jql_text_any(clause, chunk)}"
            for issue in self.search_jql(jql, want_fields):
                value = (issue.get("fields") or {}).get(field.id)
                if isinstance(value, str) and value in wanted:
                    found[value].append(issue)
        return found

    # -- issues ---------------------------------------------------------------------------------
    def create_issue(self, fields: dict) -> CreatedIssue:
        r = self.http.post(f"{API}/issue", json={"fields": fields})
        return CreatedIssue.model_validate(r.json())

    def bulk_create(self, issues: list[dict]) -> BulkCreateResult:
        """Create in chunks of 50. ``created[i]`` is the issue made from ``issues[i]`` or None;
        ``errors[i]`` says why one failed. A chunk whose every element failed (Jira: 400 with per-element
        errors) is reported the same way; any other HTTP failure raises ApiError."""
        result = BulkCreateResult(created=[None] * len(issues))
        for start in range(0, len(issues), BULK_LIMIT):
            chunk = issues[start:start + BULK_LIMIT]
            r = self.http.post(f"{API}/issue/bulk", json={"issueUpdates": [{"fields": f} for f in chunk]},
                               expected=(400,))
            body = r.json() if r.content else {}
            element_errors = body.get("errors") if isinstance(body, dict) else None
            if r.status_code == 400 and not (isinstance(element_errors, list) and any(
                    isinstance(e.get("failedElementNumber"), int) for e in element_errors)):
                # refused as a whole (not per element): nothing was created
                raise ApiError("jira", "POST", f"{API}/issue/bulk", 400, body, r.headers.get("RateLimit-Reason"))
            failed: dict[int, str] = {}
            for err in body.get("errors") or []:
                n = err.get("failedElementNumber")
                if isinstance(n, int) and 0 <= n < len(chunk):
                    failed[n] = _summarise_element_errors(err)
            ok_positions = [n for n in range(len(chunk)) if n not in failed]
            created = [CreatedIssue.model_validate(c) for c in body.get("issues") or []]
            if len(created) != len(ok_positions):
                log.warning("jira bulk create: %d issues created for %d elements without errors",
                            len(created), len(ok_positions))
            for n, issue in zip(ok_positions, created, strict=False):
                result.created[start + n] = issue
            for n, msg in failed.items():
                result.errors[start + n] = msg
            for n in ok_positions[len(created):]:
                result.errors[start + n] = "Jira reported neither an issue nor an error for this element"
        return result

    def edit_issue(self, key: str, fields: dict) -> None:
        self.http.put(f"{API}/issue/{key}", json={"fields": fields})

    def get_issue(self, key: str, fields: list[str] | None = None) -> dict:
        params = {"fields": ",".join(fields)} if fields else None
        return self.http.get(f"{API}/issue/{key}", params=params).json()

    def transitions(self, key: str) -> list[dict]:
        return list(self.http.get(f"{API}/issue/{key}/transitions").json().get("transitions") or [])

    def transition(self, key: str, transition_id: str, fields: dict | None = None) -> None:
        body: dict[str, Any] = {"transition": {"id": str(transition_id)}}
        if fields:
            body["fields"] = fields
        self.http.post(f"{API}/issue/{key}/transitions", json=body)

    def add_comment(self, key: str, body_adf: dict) -> dict:
        return self.http.post(f"{API}/issue/{key}/comment", json={"body": body_adf}).json()

    def get_comment(self, key: str, comment_id: str) -> dict:
        return self.http.get(f"{API}/issue/{key}/comment/{comment_id}").json()

    def issue_link_types(self) -> list[dict]:
        return list(self.http.get(f"{API}/issueLinkType").json().get("issueLinkTypes") or [])

    def link_issues(self, link_type_name: str, inward_key: str, outward_key: str) -> None:
        """Link two issues (201, no body; an existing identical link is answered the same). Jira shows the
        link on ``inward_key`` with the type's outward words: ("Blocks", "A-1", "B-2") is "A-1 blocks B-2"."""
        self.http.post(f"{API}/issueLink", json={"type": {"name": link_type_name},
                                                 "inwardIssue": {"key": inward_key},
                                                 "outwardIssue": {"key": outward_key}})

    # -- users ----------------------------------------------------------------------------------
    def get_user(self, account_id: str) -> dict:
        return self.http.get(f"{API}/user", params={"accountId": account_id}).json()

    def myself(self) -> dict:
        return self.http.get(f"{API}/myself").json()

    # -- dynamic webhooks -----------------------------------------------------------------------
    def register_webhook(self, url: str, events: list[str], jql_filter: str) -> int:
        body = {"url": url, "webhooks": [{"events": list(events), "jqlFilter": jql_filter}]}
        try:
            answer = self.http.post(f"{API}/webhook", json=body).json()
        except ApiError as exc:
            if exc.status == 400 and isinstance(exc.body, dict):
                msgs = list(exc.body.get("errorMessages") or [])
                msgs += [f"{k}: {v}" for k, v in (exc.body.get("errors") or {}).items()]
                raise JiraWebhookError("Jira refused the webhook registration", msgs) from exc
            raise
        results = answer.get("webhookRegistrationResult") or []
        if not results:
            raise JiraWebhookError("Jira returned no registration result")
        first = results[0]
        if "createdWebhookId" in first:
            return int(first["createdWebhookId"])
        raise JiraWebhookError("Jira refused the webhook registration", list(first.get("errors") or []))

    def list_webhooks(self) -> list[dict]:
        out: list[dict] = []
        start = 0
        while True:
            page = self.http.get(f"{API}/webhook", params={"startAt": start, "maxResults": 100}).json()
            values = page.get("values") or []
            out += values
            if page.get("isLast", True) or not values:
                return out
            start += len(values)

    def refresh_webhooks(self, ids: list[int]) -> datetime:
        r = self.http.put(f"{API}/webhook/refresh", json={"webhookIds": [int(i) for i in ids]})
        return parse_expiration(r.json()["expirationDate"])

    def delete_webhooks(self, ids: list[int]) -> None:
        self.http.delete(f"{API}/webhook", json={"webhookIds": [int(i) for i in ids]})

    # -- links ----------------------------------------------------------------------------------
    def browse_url(self, key: str) -> str:
        return f"{self.site_url}/browse/{key}"


__all__ = ["JiraClient", "jql_string", "parse_expiration"]
