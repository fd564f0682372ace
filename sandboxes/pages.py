"""The sandboxes' people pages: what a person sees of each emulated system in a browser (no auth: loopback demo only).

- ``RecordHistory``: every change a sandbox makes to a record — when, how (``via``: "created in Business Central",
  "PATCH (API)", "bound action Microsoft.NAV.post", …) and which fields went from what to what — so a page can show
  a document's state *and* how it got there ("status Draft → Open · bound action Microsoft.NAV.post").
- ``page``/``table``/``history_html``: the small HTML the pages share.
- ``PagesFirst``: an ASGI dispatcher that serves the pages beside an API app, outside its faults, latency,
  licence limits and call counters (a person reading a page is not an API call).
"""

from __future__ import annotations

import html
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Receive, Scope, Send

STYLE = ("body{font-family:sans-serif;margin:2em;color:#172b4d}table{border-collapse:collapse;margin:.5em 0 1.5em}"
         "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}th{background:#f4f5f7}"
         "tr.hit{background:#fffae6}ol.history{margin:0;padding-left:1.2em}ol.history li{margin:.15em 0}"
         ".when{color:#6b778c;font-size:90%}.via{font-weight:bold}form{display:inline}"
         ".comment{border-left:3px solid #dfe1e6;margin:.6em 0;padding:.2em .8em}nav a{margin-right:1em}")
HISTORY_LIMIT = 50          # entries kept per record (the oldest, "created", is always kept)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def page(title: str, *parts: str, status: int = 200, nav: Mapping[str, str] | None = None) -> HTMLResponse:
    """A whole page: ``parts`` are HTML fragments (already escaped); ``nav`` is label -> href."""
    links = "".join(f"<a href='{esc(href)}'>{esc(label)}</a>" for label, href in (nav or {}).items())
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>" + (f"<nav>{links}</nav>" if links else "") + f"<h1>{esc(title)}</h1>")
    return HTMLResponse(head + "".join(parts) + "</body></html>", status_code=status)


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], *, hit: Callable[[int], bool] | None = None) -> str:
    """A table of HTML cells (already escaped); ``hit(i)`` marks row i."""
    out = ["<table><tr>", *(f"<th>{esc(h)}</th>" for h in headers), "</tr>"]
    for i, row in enumerate(rows):
        cls = " class='hit'" if hit and hit(i) else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def link(href: str, text: Any) -> str:
    return f"<a href='{esc(href)}'>{esc(text)}</a>"


def show(value: Any) -> str:
    """A field value as a person reads it: a blank enum (BC's " ") is shown as '" "', None and "" as '—'."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str) and not value.strip():
        return repr(value).replace("'", '"')
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Change:
    at: datetime
    via: str                                        # how: "PATCH (API)", "bound action …", "in F&O (a person)"
    changes: tuple[tuple[str, Any, Any], ...] = ()  # (field, before, after)
    note: str = ""

    def describe(self) -> str:
        """'status Draft → Open · bound action Microsoft.NAV.post' (plain text)."""
        parts = [f"{f} {show(a)} → {show(b)}" for f, a, b in self.changes]
        what = ", ".join(parts)
        return " · ".join(p for p in (what, self.via, self.note) if p)


class RecordHistory:
    """Per record key: its changes, oldest first (the first entry and the last HISTORY_LIMIT - 1 kept)."""

    def __init__(self, limit: int = HISTORY_LIMIT) -> None:
        self.limit = limit
        self._first: dict[Any, Change] = {}
        self._rest: dict[Any, deque[Change]] = defaultdict(lambda: deque(maxlen=self.limit - 1))
        self._lock = threading.Lock()

    def record(self, key: Any, via: str, changes: Iterable[tuple[str, Any, Any]] = (), *, note: str = "",
               at: datetime | None = None) -> None:
        entry = Change(at or datetime.now(UTC), via, tuple(changes), note)
        with self._lock:
            if key not in self._first:
                self._first[key] = entry
            else:
                self._rest[key].append(entry)

    def of(self, key: Any) -> list[Change]:
        with self._lock:
            first = self._first.get(key)
            return ([first] if first else []) + list(self._rest.get(key, ()))

    def forget(self, key: Any) -> None:
        with self._lock:
            self._first.pop(key, None)
            self._rest.pop(key, None)

    @staticmethod
    def diff(before: Mapping[str, Any], after: Mapping[str, Any], *, skip: Iterable[str] = (),
             keys: Iterable[str] | None = None) -> list[tuple[str, Any, Any]]:
        """The fields whose value changed, among ``keys`` (default: both records' fields; ``before``'s when it holds
        only what a change touched); ``skip``: bookkeeping such as etags and timestamps."""
        skipped = set(skip)
        names = dict.fromkeys([*before, *after]) if keys is None else keys
        return [(k, before.get(k), after.get(k)) for k in names
                if k not in skipped and not k.startswith("@") and before.get(k) != after.get(k)
                and not isinstance(after.get(k), (list, dict))]


def history_html(entries: list[Change]) -> str:
    if not entries:
        return "<span class='when'>no recorded changes</span>"
    items = []
    for e in entries:
        what = ", ".join(f"{esc(f)} <b>{esc(show(a))}</b> → <b>{esc(show(b))}</b>" for f, a, b in e.changes)
        when = e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        items.append(f"<li><span class='when'>{when}</span> {what}{' · ' if what else ''}"
                     f"<span class='via'>{esc(e.via)}</span>{(' · ' + esc(e.note)) if e.note else ''}</li>")
    return "<ol class='history'>" + "".join(items) + "</ol>"


class PagesFirst:
    """ASGI: requests for which ``is_page(path)`` holds go to ``pages``; everything else to ``api`` (with its faults,
    latency, limits and call counters)."""

    def __init__(self, api: ASGIApp, pages: ASGIApp, is_page: Callable[[str], bool]) -> None:
        self.api = api
        self.pages = pages
        self.is_page = is_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD", "POST") and self.is_page(scope["path"]):
            await self.pages(scope, receive, send)
            return
        await self.api(scope, receive, send)
