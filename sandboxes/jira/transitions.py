"""The workflow: the transitions available from an issue's status, and performing one (status, resolution,
fields on the transition screen), GET and POST /issue/{key}/transitions."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from sandboxes.jira.errors import JiraHttpError
from sandboxes.jira.model import _RESOLUTIONS, Issue, Site, Transition
from sandboxes.jira.routing import _Ctx


class TransitionsMixin:
    """Workflow transitions (every status reachable from every other)."""

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
        self._search_touch(site, issue)   # the search's token indexes re-read it
        self._emit(site, "jira:issue_updated", "issue_generic", issue, actor, history=self._record(issue, actor, items))

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
