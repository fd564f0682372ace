"""Issues as JSON: the ``fields`` selection (``*all``, ids, ``-id``), each field's value (system and custom),
status objects, and ``expand=names,changelog`` on an issue."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sandboxes.jira.adf import adf_text
from sandboxes.jira.model import _RESOLUTIONS, _SYSTEM_FIELD_DEFS, STATUS_CATEGORIES, Issue, Site, _jira_time


class RenderMixin:
    """Renders stored issues the way GET /issue and search answer them."""

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

    def _field_name(self, site: Site, fid: str) -> str:
        for f in _SYSTEM_FIELD_DEFS:
            if f[0] == fid:
                return f[1]
        return site.custom_fields[fid].name if fid in site.custom_fields else fid
