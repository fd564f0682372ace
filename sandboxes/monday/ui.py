"""The people pages of the monday.com sandbox (no auth: loopback demo only).

- ``GET /_sandbox/``: every board's items with their column texts, each linked to its item page; each status column
  has a select and a button, so a person can change an item's status (fires webhooks like any change in monday's UI).
- ``GET /boards/{board_id}/pulses/{item_id}``: one item as monday's item URL shows it (the link the product writes:
  ``<account url>/boards/<board>/pulses/<item>``): its columns (links live), its updates — the ones the connector
  posted included — and its activity log (created, column changes old → new, by the API or a person).
  ``/pulses/{item_id}`` redirects there; ``/boards/{board_id}`` lists the board.
- ``POST /_sandbox/change_status`` (form or JSON: item_id, column_id, label, user_id?, redirect?: "1" or a local path).
- ``POST /_sandbox/change_column`` (JSON: item_id, column_id, value (a write shape), user_id?).
- ``GET /_sandbox/items?board_id=``: the Python API's ``items`` as JSON.
- ``POST /_sandbox/deliver``: deliver due webhooks now.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from sandboxes.monday.columns import linked_ids
from sandboxes.monday.errors import MondayError
from sandboxes.pages import esc, history_html, link, page, table


async def _form(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        return dict(json.loads(raw or b"{}"))
    return {k: v[-1] for k, v in parse_qs(raw.decode()).items()}


def _back(target: Any) -> str:
    target = str(target or "")
    return target if target.startswith("/") and not target.startswith("//") else "/_sandbox/"


def routes(sb: Any) -> list[Route]:
    def item_href(it: Any) -> str:
        return f"/boards/{it.board_id}/pulses/{it.id}"

    def cell(board: Any, it: Any, col: Any, back: str) -> str:
        text = esc(sb.store.text(board, it, col))
        stored = it.values.get(col.id)
        if col.type == "link" and isinstance(stored, dict) and stored.get("url"):
            text = link(stored["url"], stored.get("text") or stored["url"])
        if col.type == "board_relation" and stored:
            linked = [sb.store.items.get(i) for i in linked_ids(stored)]
            text = ", ".join(link(item_href(x), x.name) for x in linked if x is not None)
        if col.type == "status":
            options = "".join(f"<option value='{esc(lbl)}'>{esc(lbl)}</option>"
                              for _, lbl in sorted(col.settings["labels"].items(), key=lambda kv: int(kv[0])))
            text += (f" <form method='post' action='/_sandbox/change_status'>"
                     f"<input type='hidden' name='item_id' value='{esc(it.id)}'>"
                     f"<input type='hidden' name='column_id' value='{esc(col.id)}'>"
                     f"<input type='hidden' name='redirect' value='{esc(back)}'>"
                     f"<select name='label'>{options}</select>"
                     f"<button type='submit'>Set</button></form>")
        return text

    def board_table(board: Any, back: str | None = None) -> str:
        cols = [c for c in board.columns.values() if c.type != "name" and not c.archived]
        rows = []
        for iid in board.item_ids:
            it = sb.store.items[iid]
            if it.state != "active":
                continue
            rows.append([f"{link(item_href(it), it.name)} <small>({esc(it.id)})</small>",
                         esc(board.groups[it.group_id].title), str(len(it.updates)),
                         *(cell(board, it, c, back or item_href(it)) for c in cols)])
        return (f"<h2>{link(f'/boards/{board.id}', board.name)} <small>(board {esc(board.id)})</small></h2>"
                + table(["Item", "Group", "Updates", *(c.title for c in cols)], rows))

    async def index(request: Request) -> Response:
        with sb._lock:
            parts = [board_table(b, "/_sandbox/") for b in sb.store.boards.values()]
        return page("monday.com sandbox", "<p>Open an item to read its columns, the updates the connector posted and "
                                          "its activity log.</p>", *parts)

    async def board_page(request: Request) -> Response:
        board_id = request.path_params["board_id"]
        with sb._lock:
            board = sb.store.boards.get(board_id)
            if board is None:
                return page("Board not found", f"<p>No board {esc(board_id)}.</p>", status=404,
                            nav={"All boards": "/_sandbox/"})
            return page(f"{board.name} · monday.com sandbox", board_table(board, f"/boards/{board.id}"),
                        nav={"All boards": "/_sandbox/"})

    async def item_page(request: Request) -> Response:
        board_id, item_id = request.path_params["board_id"], request.path_params["item_id"]
        nav = {"All boards": "/_sandbox/", "Board": f"/boards/{board_id}"}
        with sb._lock:
            it = sb.store.items.get(item_id)
            if it is None or it.board_id != board_id or it.state == "deleted":
                return page("Item not found", f"<p>No item {esc(item_id)} on board {esc(board_id)}.</p>",
                            status=404, nav=nav)
            board = sb.store.boards[board_id]
            here = item_href(it)
            rows = [["State", esc(it.state)], ["Group", esc(board.groups[it.group_id].title)],
                    ["Created", esc(it.created_at)], ["Updated", esc(it.updated_at)]]
            rows += [[esc(c.title), cell(board, it, c, here)] for c in board.columns.values()
                     if c.type != "name" and not c.archived]
            updates = "".join(f"<div class='comment'><span class='when'>user {esc(u.creator_id)} · "
                              f"{esc(u.created_at)}</span><p>{esc(u.body)}</p></div>" for u in it.updates)
            body = [f"<p>Board {link(f'/boards/{board.id}', board.name)}</p>", table(["Column", "Value"], rows),
                    f"<h3>Updates ({len(it.updates)})</h3>", updates or "<p>No updates.</p>",
                    "<h3>Activity log</h3>", history_html(sb.activity.of(it.id))]
            return page(f"{it.name} · monday.com sandbox", *body, nav=nav)

    async def pulse(request: Request) -> Response:
        it = sb.store.items.get(request.path_params["item_id"])
        if it is None:
            return page("Item not found", f"<p>No item {esc(request.path_params['item_id'])}.</p>", status=404,
                        nav={"All boards": "/_sandbox/"})
        return RedirectResponse(f"/boards/{it.board_id}/pulses/{it.id}", status_code=302)

    async def change_status(request: Request) -> Response:
        form = await _form(request)
        try:
            sb.change_column_as_user(str(form["item_id"]), str(form["column_id"]), {"label": form["label"]},
                                     user_id=str(form.get("user_id") or "77"))
        except (KeyError, ValueError, MondayError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        if form.get("redirect"):
            return RedirectResponse(_back(form["redirect"]), status_code=303)
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

    return [Route("/_sandbox/", index, methods=["GET"]),
            Route("/_sandbox/change_status", change_status, methods=["POST"]),
            Route("/_sandbox/change_column", change_column, methods=["POST"]),
            Route("/_sandbox/items", items, methods=["GET"]),
            Route("/_sandbox/deliver", deliver, methods=["POST"]),
            Route("/boards/{board_id}", board_page, methods=["GET"]),
            Route("/boards/{board_id}/pulses/{item_id}", item_page, methods=["GET"]),
            Route("/pulses/{item_id}", pulse, methods=["GET"])]
