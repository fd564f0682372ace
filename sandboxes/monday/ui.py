"""``/_sandbox/``: the people page of the monday.com sandbox (no auth: loopback demo only).

- ``GET /_sandbox/``: every board's items with their column texts; each status column has a select and a button,
  so a person can change an item's status (fires webhooks like any change in monday's UI).
- ``POST /_sandbox/change_status`` (form or JSON: item_id, column_id, label, user_id?, redirect?).
- ``POST /_sandbox/change_column`` (JSON: item_id, column_id, value (a write shape), user_id?).
- ``GET /_sandbox/items?board_id=``: the Python API's ``items`` as JSON.
- ``POST /_sandbox/deliver``: deliver due webhooks now.
"""

from __future__ import annotations

import asyncio
import html
import json
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from sandboxes.monday.errors import MondayError

STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
         "td,th{border:1px solid #ccc;padding:4px 8px}form{display:inline}")


async def _form(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        return dict(json.loads(raw or b"{}"))
    return {k: v[-1] for k, v in parse_qs(raw.decode()).items()}


def routes(sb: Any) -> list[Route]:
    async def page(request: Request) -> Response:
        e = html.escape
        parts = [("<!doctype html><html><head><meta charset='utf-8'><title>monday.com sandbox</title>"
                  f"<style>{STYLE}</style></head><body><h1>monday.com sandbox</h1>")]
        with sb._lock:
            for board in sb.store.boards.values():
                cols = [c for c in board.columns.values() if c.type != "name" and not c.archived]
                parts.append(f"<h2>{e(board.name)} <small>(board {e(board.id)})</small></h2><table><tr><th>Item</th>"
                             f"<th>Group</th>" + "".join(f"<th>{e(c.title)}</th>" for c in cols) + "</tr>")
                for iid in board.item_ids:
                    it = sb.store.items[iid]
                    if it.state != "active":
                        continue
                    cells = []
                    for c in cols:
                        text = e(sb.store.text(board, it, c))
                        if c.type == "status":
                            options = "".join(f"<option value='{e(lbl)}'>{e(lbl)}</option>"
                                              for _, lbl in sorted(c.settings["labels"].items(),
                                                                   key=lambda kv: int(kv[0])))
                            text += (f" <form method='post' action='/_sandbox/change_status'>"
                                     f"<input type='hidden' name='item_id' value='{e(it.id)}'>"
                                     f"<input type='hidden' name='column_id' value='{e(c.id)}'>"
                                     f"<input type='hidden' name='redirect' value='1'>"
                                     f"<select name='label'>{options}</select>"
                                     f"<button type='submit'>Set</button></form>")
                        cells.append(f"<td>{text}</td>")
                    parts.append(f"<tr><td>{e(it.name)} <small>({e(it.id)})</small></td>"
                                 f"<td>{e(board.groups[it.group_id].title)}</td>{''.join(cells)}</tr>")
                parts.append("</table>")
        parts.append("</body></html>")
        return HTMLResponse("".join(parts))

    async def change_status(request: Request) -> Response:
        form = await _form(request)
        try:
            sb.change_column_as_user(str(form["item_id"]), str(form["column_id"]), {"label": form["label"]},
                                     user_id=str(form.get("user_id") or "77"))
        except (KeyError, ValueError, MondayError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        if form.get("redirect"):
            return RedirectResponse("/_sandbox/", status_code=303)
        return JSONResponse({"ok": True})

    async def change_column(request: Request) -> Response:
        form = await _form(request)
        try:
            sb.change_column_as_user(str(form["item_id"]), str(form["column_id"]), form.get("value"),
                                     user_id=str(form.get("user_id") or "77"))
        except (KeyError, ValueError, MondayError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse({"ok": True})

    async def items(request: Request) -> Response:
        board_id = request.query_params.get("board_id")
        ids = [board_id] if board_id else list(sb.store.boards)
        return JSONResponse({b: sb.items(b) for b in ids if b in sb.store.boards})

    async def deliver(request: Request) -> Response:
        summary = await asyncio.get_running_loop().run_in_executor(None, sb.deliver_webhooks)
        return JSONResponse(summary)

    return [Route("/_sandbox/", page, methods=["GET"]),
            Route("/_sandbox/change_status", change_status, methods=["POST"]),
            Route("/_sandbox/change_column", change_column, methods=["POST"]),
            Route("/_sandbox/items", items, methods=["GET"]),
            Route("/_sandbox/deliver", deliver, methods=["POST"])]
