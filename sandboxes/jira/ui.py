"""People pages and people-simulation over HTTP (no auth: loopback demo only).

- ``GET /_sandbox/``: every site's issues, each linked to its browse page, with its status, comment count and a
  "Move to Done" button.
- ``GET /browse/{key}``: the issue as a person sees it at ``<site url>/browse/<KEY>`` (the link the product writes
  into its ledger and run output): summary, status, fields by name, description (its links live), comments — the
  ones the connector wrote back included — and the change history; a Done button and a comment box. When the
  sandbox serves several sites, the site is the one whose URL is this server's (else any site holding the key;
  ``?site=<cloudId>`` chooses).
- ``POST /_sandbox/transition`` / ``comment`` (form or JSON; ``redirect``: "1" for the people page, or a path such
  as ``/browse/FIN-1`` to go back to), ``POST /_sandbox/deliver``, ``GET /_sandbox/issues`` (JSON).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from sandboxes.jira.errors import JiraHttpError
from sandboxes.jira.model import Issue, Site
from sandboxes.pages import esc, link, page, table

_MARKS = {"strong": "b", "em": "i", "code": "code", "strike": "s", "underline": "u"}
_BLOCKS = {"paragraph": "p", "bulletList": "ul", "orderedList": "ol", "listItem": "li", "blockquote": "blockquote",
           "codeBlock": "pre", "table": "table", "tableRow": "tr", "tableCell": "td", "tableHeader": "th"}


def adf_html(node: Any) -> str:
    """An Atlassian Document Format node as HTML (text, marks with live links, paragraphs, lists, headings…)."""
    if isinstance(node, str):
        return esc(node)
    if isinstance(node, list):
        return "".join(adf_html(n) for n in node)
    if not isinstance(node, dict):
        return ""
    kind = node.get("type")
    if kind == "text":
        out = esc(node.get("text", ""))
        for mark in node.get("marks") or []:
            if mark.get("type") == "link":
                href = str((mark.get("attrs") or {}).get("href", ""))
                out = f"<a href='{esc(href)}'>{out}</a>"
            elif mark.get("type") in _MARKS:
                tag = _MARKS[mark["type"]]
                out = f"<{tag}>{out}</{tag}>"
        return out
    if kind == "hardBreak":
        return "<br>"
    if kind == "rule":
        return "<hr>"
    inner = adf_html(node.get("content") or [])
    if kind == "heading":
        level = min(6, max(1, int((node.get("attrs") or {}).get("level", 3))))
        return f"<h{level}>{inner}</h{level}>"
    if kind in _BLOCKS:
        tag = _BLOCKS[kind]
        return f"<{tag}>{inner}</{tag}>"
    return inner


def _safe_redirect(target: str | None) -> str:
    """Where a form goes back to: "1" = the people page; a local path (never another host)."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/_sandbox/"


class DemoUiMixin:
    """The ``/_sandbox`` routes and ``/browse/{key}``."""

    @staticmethod
    async def _form(request: Request) -> dict[str, str]:
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            data = json.loads(raw or b"{}")
            return {k: str(v) for k, v in data.items()}
        return {k: v[-1] for k, v in parse_qs(raw.decode()).items()}

    # -- pages ---------------------------------------------------------------------------------------
    def _done_button(self, site: Site, issue: Issue, back: str) -> str:
        if site.statuses[issue.fields["status"]].category == "done":
            return ""
        return (f"<form method='post' action='/_sandbox/transition'>"
                f"<input type='hidden' name='cloud_id' value='{esc(site.cloud_id)}'>"
                f"<input type='hidden' name='key' value='{esc(issue.key)}'>"
                f"<input type='hidden' name='status' value='Done'>"
                f"<input type='hidden' name='redirect' value='{esc(back)}'>"
                f"<button type='submit'>Move to Done</button></form>")

    def _browse_href(self, site: Site, issue: Issue) -> str:
        suffix = f"?site={quote(site.cloud_id)}" if len(self.sites) > 1 else ""
        return f"/browse/{quote(issue.key)}{suffix}"

    async def _ui(self, request: Request) -> Response:
        parts = []
        with self._lock:
            for site in self.sites.values():
                parts.append(f"<h2>{esc(site.name)} <small>({esc(site.url)}, cloudId {esc(site.cloud_id)})</small></h2>")
                rows = []
                for issue in sorted(site.issues.values(), key=lambda i: i.id):
                    status = site.statuses[issue.fields["status"]]
                    rows.append([link(self._browse_href(site, issue), issue.key),
                                 esc(issue.fields.get("summary") or ""), esc(status.name),
                                 str(len(issue.comments)), self._done_button(site, issue, "1")])
                parts.append(table(["Key", "Summary", "Status", "Comments", ""], rows))
        return page("Jira sandbox", "<p>Open an issue to read its fields and the comments the connector wrote back; "
                                    "moving it to Done resolves it (the connector acts in the ERP).</p>", *parts)

    def _site_for(self, request: Request, key: str) -> tuple[Site, Issue] | None:
        """The issue ``key`` on the site this URL belongs to (else the first site holding it)."""
        wanted = request.query_params.get("site")
        here = str(request.base_url).rstrip("/").lower()
        sites = list(self.sites.values())
        if wanted:
            sites = [s for s in sites if s.cloud_id == wanted]
        sites.sort(key=lambda s: s.url.rstrip("/").lower() != here)
        for site in sites:
            try:
                return site, site.issue(key)
            except JiraHttpError:
                continue
        return None

    def _field_text(self, site: Site, issue: Issue, fid: str) -> str:
        value = issue.fields.get(fid)
        if fid == "issuetype":
            return esc(site.issue_types[value].name) if value in site.issue_types else esc(value)
        if fid in ("assignee", "reporter"):
            user = site.users.get(value) if value else None
            return esc(user.display_name if user else value) if value else "—"
        if fid == "labels":
            return esc(", ".join(value or [])) or "—"
        if isinstance(value, dict) and value.get("type") == "doc":
            return adf_html(value)
        return "—" if value in (None, "") else esc(value)

    async def _browse(self, request: Request) -> Response:
        key = request.path_params["key"]
        with self._lock:
            found = self._site_for(request, key)
            if found is None:
                return page("Issue not found", f"<p>No issue {esc(key)} on this Jira sandbox.</p>",
                            link("/_sandbox/", "All issues"), status=404)
            site, issue = found
            status = site.statuses[issue.fields["status"]]
            project = site.projects.get(issue.project_key)
            here = self._browse_href(site, issue)
            rows = [["Status", f"<b>{esc(status.name)}</b>"],
                    ["Resolution", esc(issue.fields.get("resolution") or "Unresolved")],
                    ["Project", esc(f"{project.key} {project.name}" if project else issue.project_key)],
                    ["Type", self._field_text(site, issue, "issuetype")],
                    ["Assignee", self._field_text(site, issue, "assignee")],
                    ["Reporter", self._field_text(site, issue, "reporter")],
                    ["Labels", self._field_text(site, issue, "labels")],
                    ["Created", esc(issue.created.strftime("%Y-%m-%d %H:%M:%S UTC"))],
                    ["Updated", esc(issue.updated.strftime("%Y-%m-%d %H:%M:%S UTC"))]]
            rows += [[esc(cf.name), self._field_text(site, issue, cf.id)] for cf in site.custom_fields.values()
                     if issue.fields.get(cf.id) not in (None, "")]
            comments = []
            for c in issue.comments:
                user = site.users.get(c.author)
                comments.append(f"<div class='comment'><span class='when'>{esc(user.display_name if user else c.author)}"
                                f" · {esc(c.created.strftime('%Y-%m-%d %H:%M:%S UTC'))}</span>{adf_html(c.body)}</div>")
            history = []
            for h in issue.history:
                what = ", ".join(f"{esc(i.get('field'))} {esc(i.get('fromString') or '—')} → "
                                 f"<b>{esc(i.get('toString') or '—')}</b>" for i in h.items)
                user = site.users.get(h.author)
                history.append(f"<li><span class='when'>{esc(h.created.strftime('%Y-%m-%d %H:%M:%S UTC'))}</span> "
                               f"{what} · {esc(user.display_name if user else h.author)}</li>")
            links = []
            for lk in issue.links:
                other_id = lk.target_id if lk.source_id == issue.id else lk.source_id
                other = site.issues.get(other_id)
                words = lk.type.outward if lk.source_id == issue.id else lk.type.inward
                if other is not None:
                    links.append(f"<li>{esc(words)} {link(self._browse_href(site, other), other.key)}</li>")
            body = [f"<h2>{esc(issue.fields.get('summary') or '')}</h2>",
                    self._done_button(site, issue, here),
                    table(["Field", "Value"], rows),
                    "<h3>Description</h3>", adf_html(issue.fields.get("description")) or "<p>—</p>",
                    *(["<h3>Links</h3><ul>", *links, "</ul>"] if links else []),
                    f"<h3>Comments ({len(issue.comments)})</h3>", "".join(comments) or "<p>No comments.</p>",
                    (f"<form method='post' action='/_sandbox/comment'>"
                    f"<input type='hidden' name='cloud_id' value='{esc(site.cloud_id)}'>"
                    f"<input type='hidden' name='key' value='{esc(issue.key)}'>"
                    f"<input type='hidden' name='redirect' value='{esc(here)}'>"
                    f"<input name='text' size='60' placeholder='Add a comment (\"Resolution: …\" resolves)'> "
                    f"<button type='submit'>Comment</button></form>"),
                    "<h3>History</h3>", ("<ol class='history'>" + "".join(history) + "</ol>") if history
                    else "<p>No changes.</p>"]
        return page(f"{issue.key} · {site.name}", *body, nav={"All issues": "/_sandbox/"})

    # -- people simulation ---------------------------------------------------------------------------
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
            return RedirectResponse(_safe_redirect(form["redirect"]), status_code=303)
        return JSONResponse({"ok": True})

    async def _ui_comment(self, request: Request) -> Response:
        form = await self._form(request)
        try:
            comment = self.comment_as_user(form["cloud_id"], form["key"], form["text"],
                                           account_id=form.get("account_id"))
        except (KeyError, ValueError, JiraHttpError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        if form.get("redirect"):
            return RedirectResponse(_safe_redirect(form["redirect"]), status_code=303)
        return JSONResponse(comment, 201)

    async def _ui_deliver(self, request: Request) -> Response:
        import asyncio

        delivered = await asyncio.get_running_loop().run_in_executor(None, self.deliver_pending)
        return JSONResponse({"delivered": delivered})
