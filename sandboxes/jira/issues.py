"""Issues: create (POST /issue and /issue/bulk), read (GET /issue/{key}) and edit (PUT /issue/{key}); a
change records a history entry and emits the issue webhooks."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from sandboxes.jira.errors import JiraHttpError
from sandboxes.jira.model import Issue, Site
from sandboxes.jira.routing import _Ctx


class IssuesMixin:
    """Issue mutations (under the lock) and the issue endpoints."""

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
            self._search_touch(site, issue)   # the search's token indexes re-read it
            self._emit(site, "jira:issue_updated", "issue_updated", issue, actor,
                       history=self._record(issue, actor, items))

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
