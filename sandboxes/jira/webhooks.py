"""Dynamic webhooks as an OAuth app registers them: POST, GET, DELETE /webhook and PUT /webhook/refresh,
with the JQL subset their filters accept and their 30-day expiry. Events and delivery are delivery.py."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from starlette.responses import Response

from sandboxes.jira.errors import JiraHttpError, JqlError
from sandboxes.jira.jql import iter_clauses, parse_jql
from sandboxes.jira.model import DynamicWebhook, Site, _ms
from sandboxes.jira.routing import _Ctx

WEBHOOK_TTL = timedelta(days=30)          # "Webhooks registered through the REST API expire after 30 days"
WEBHOOK_EVENTS = ("jira:issue_created", "jira:issue_updated", "jira:issue_deleted", "comment_created",
                  "comment_updated", "comment_deleted", "issue_property_set", "issue_property_deleted")


class WebhooksMixin:
    """The webhook registration endpoints (scope ``manage:jira-webhook``)."""

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
