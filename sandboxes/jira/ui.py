"""``/_sandbox/``: a demo page of the sites' issues, and people-simulation over HTTP (transition, comment,
deliver webhooks). No auth: loopback demo only."""

from __future__ import annotations

import html
import json
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from sandboxes.jira.errors import JiraHttpError


class DemoUiMixin:
    """The ``/_sandbox`` routes."""

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
