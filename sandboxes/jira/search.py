"""Search: GET and POST /search/jql (enhanced search), with its page caps, ``nextPageToken`` paging, the
indexing lag (``search_lag_s``) and ``reconcileIssues``, ``expand=names,changelog``."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta
from typing import Any

from starlette.responses import Response

from sandboxes.jira.errors import JiraHttpError
from sandboxes.jira.jql import BoolOp, Clause, _text_query, parse_jql, text_tokens
from sandboxes.jira.routing import _Ctx

PAGE_TOKEN_TTL = timedelta(days=7)        # "This token will expire in 7 days"


class SearchMixin:
    """The enhanced-search endpoints."""

    search_page_cap = 100            # per page when fields beyond id/key are requested
    search_id_page_cap = 5000        # "up to 5,000 when only id/key are requested"

    def _h_search(self, ctx: _Ctx) -> Response:
        if ctx.request.method == "POST":
            b = ctx.body or {}
            jql = b.get("jql") or ""
            token = b.get("nextPageToken")
            max_results = b.get("maxResults", 50)
            fields = [p.strip() for f in (b.get("fields") or []) for p in f.split(",") if p.strip()] or None
            reconcile = list(b.get("reconcileIssues") or [])
            expand = b.get("expand") or ""
        else:
            jql = ctx.q("jql") or ""
            token = ctx.q("nextPageToken")
            max_results = int(ctx.q("maxResults") or 50)
            fields = ctx.q_list("fields") or None
            reconcile = [int(x) for x in ctx.q_list("reconcileIssues")]
            expand = ctx.q("expand") or ""
        if len(reconcile) > 50:
            raise JiraHttpError(400, ["The number of issues to reconcile must not exceed 50."])
        query = parse_jql(jql)
        if query.where is None:
            raise JiraHttpError(400, [("Unbounded JQL queries are not allowed here. "
                                      "Please add a search restriction to your query.")])
        if len(query.order_by) > 7:
            raise JiraHttpError(400, ["The ORDER BY clause may contain at most 7 fields."])
        predicate = self._compile_jql(ctx.site, query)
        now_ts = self.clock.timestamp()
        recon = set(reconcile)
        candidates = self._text_candidates(ctx.site, query.where)
        pool = (ctx.site.issues.values() if candidates is None
                else [ctx.site.issues[n] for n in sorted(candidates) if n in ctx.site.issues])
        matched = [i for i in pool if (i.id in recon or now_ts - i.indexed_at >= self.search_lag_s) and predicate(i)]
        matched = self._order(ctx.site, matched, query.order_by)
        digest = hashlib.sha256(jql.encode()).hexdigest()[:16]
        offset = 0
        if token:
            offset = self._decode_page_token(token, digest)
        id_only = fields is None or set(fields) <= {"id", "key"}
        page = max(1, min(max_results if max_results > 0 else 50,
                          self.search_id_page_cap if id_only else self.search_page_cap))
        chunk = matched[offset:offset + page]
        expands = {"changelog"} & set(expand.split(","))  # names come once for the page, below
        body: dict[str, Any] = {"issues": [self._render_issue(ctx.site, i, fields or ["id"], ctx.base,
                                                              expand=expands) for i in chunk]}
        for issue_json, issue in zip(body["issues"], chunk, strict=True):
            if fields and "key" in fields:
                issue_json["key"] = issue.key
        is_last = offset + page >= len(matched)
        body["isLast"] = is_last
        if not is_last:
            body["nextPageToken"] = self._encode_page_token(offset + page, digest)
        if "names" in expand.split(","):
            fids = self._select_fields(ctx.site, fields or ["id"])
            body["names"] = {f: self._field_name(ctx.site, f) for f in fids}
        return self._ok(ctx, 200, body)

    # -- a token index for ``textfield ~ "phrase"`` clauses -----------------------------------------------
    # Only narrows which issues the full predicate is evaluated on (a superset of the matches), so answers
    # are the same as a scan; a lookup by external ids costs the same over 100 or 100,000 issues.
    def _text_candidates(self, site: Any, node: Any, fresh: dict[str, Any] | None = None) -> set[int] | None:
        """Issue ids that may match ``node``, or None when the index cannot say (scan every issue).
        ``fresh``: the field indexes already brought up to date for this search (once per field, not per clause)."""
        fresh = {} if fresh is None else fresh
        if isinstance(node, BoolOp):
            parts = [self._text_candidates(site, p, fresh) for p in node.parts]
            if node.op == "and":
                known = [p for p in parts if p is not None]
                return min(known, key=len) if known else None
            if any(p is None for p in parts):
                return None
            return set().union(*parts)
        if not isinstance(node, Clause) or node.op != "~" or len(node.values) != 1 or node.values[0] is None:
            return None
        resolved = self._resolve_jql_field(site, node.field)
        if len(resolved) != 1 or resolved[0][0] != "textfield":
            return None
        phrases, terms = _text_query(node.values[0])
        tokens = {t for toks in phrases for t in toks} | {t for toks, prefix in terms if not prefix for t in toks}
        if not tokens or any(prefix for _toks, prefix in terms):
            return None
        fid = resolved[0][1]
        index = fresh[fid] if fid in fresh else fresh.setdefault(fid, self._token_index(site, fid))
        return set(min((index.get(t, set()) for t in tokens), key=len))

    def _token_index(self, site: Any, fid: str) -> dict[str, set[int]]:
        """token -> ids of issues whose ``fid`` text has it, brought up to date with the issues created since
        the last search (ids from the previous ``next_issue_id`` on) and those edited or transitioned
        (``_search_touch``, called where ``indexed_at`` moves): no pass over every issue per search."""
        indexes = self.__dict__.setdefault("_search_token_indexes", {})
        state = indexes.get((id(site), fid))
        issues = site.issues
        if state is None:
            state = indexes[(id(site), fid)] = {"seen": {}, "index": {}, "dirty": set(), "next": site.next_issue_id}
            state["dirty"].update(issues)
        seen, index, dirty = state["seen"], state["index"], state["dirty"]
        dirty.update(range(state["next"], site.next_issue_id))
        state["next"] = site.next_issue_id
        for n in dirty:
            old = seen.pop(n, None)
            if old is not None:
                self._index_value(index, n, old, remove=True)
            issue = issues.get(n)
            if issue is not None:
                seen[n] = self._text_of(site, issue, "textfield", fid)
                self._index_value(index, n, seen[n])
        dirty.clear()
        if len(seen) != len(issues):   # an issue appeared or went some other way: index them all again
            del indexes[(id(site), fid)]
            return self._token_index(site, fid)
        return index

    def _search_touch(self, site: Any, issue: Any) -> None:
        """An issue's fields changed: every token index of its site re-reads it at the next search."""
        for (site_id, _fid), state in self.__dict__.get("_search_token_indexes", {}).items():
            if site_id == id(site):
                state["dirty"].add(issue.id)

    @staticmethod
    def _index_value(index: dict[str, set[int]], n: int, text: str | None, remove: bool = False) -> None:
        if not text:
            return
        for t in set(text_tokens(text)):
            if remove:
                index.get(t, set()).discard(n)
            else:
                index.setdefault(t, set()).add(n)

    def _encode_page_token(self, offset: int, digest: str) -> str:
        raw = json.dumps({"o": offset, "q": digest, "t": int(self.clock.timestamp())}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _decode_page_token(self, token: str, digest: str) -> int:
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            offset, q, t = int(data["o"]), data["q"], float(data["t"])
        except (ValueError, KeyError, TypeError):
            raise JiraHttpError(400, ["The provided next page token is invalid."]) from None
        if q != digest:
            raise JiraHttpError(400, ["The provided next page token does not match the JQL query."])
        if self.clock.timestamp() - t > PAGE_TOKEN_TTL.total_seconds():
            raise JiraHttpError(400, ["The provided next page token has expired."])
        return offset
