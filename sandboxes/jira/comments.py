"""Comments, stored once as ADF: REST v3 reads and writes ADF bodies; REST v2 writes a string (wiki markup,
checked the way Jira's Jackson binding does) and reads back a string."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from sandboxes.jira.adf import ADF_MESSAGE, adf_text, text_adf
from sandboxes.jira.errors import JiraHttpError
from sandboxes.jira.model import Comment, Issue, Site, _jira_time
from sandboxes.jira.routing import _Ctx


class CommentsMixin:
    """Adding, rendering and listing comments (v3 and v2)."""

    def _comment(self, site: Site, issue: Issue, body: Any, actor: str, *, wiki: str | None = None) -> Comment:
        if body is None:
            raise JiraHttpError(400, [], {"comment": "Comment body can not be empty!"})
        if not self._is_adf(body):
            raise JiraHttpError(400, [], {"comment": ADF_MESSAGE})
        comment = Comment(str(next(self._ids) + 10000), actor, body, self.clock.now(), wiki)
        issue.comments.append(comment)
        issue.updated = comment.created
        self._emit(site, "comment_created", None, issue, actor, comment=comment)
        return comment

    def _render_comment(self, site: Site, issue: Issue, c: Comment, base: str, api: int = 3) -> dict[str, Any]:
        """Comment JSON; REST v2 gives ``body`` as a string: what a v2 client sent, else the ADF's text.
        UNCONFIRMED: Jira renders ADF as wiki markup for v2; here marks and node types are dropped."""
        author = self._user_json(site, c.author, base, api)
        body: Any = c.body if api == 3 else c.wiki if c.wiki is not None else adf_text(c.body)
        return {"self": f"{base}/rest/api/{api}/issue/{issue.id}/comment/{c.id}", "id": c.id, "author": author,
                "body": body, "updateAuthor": author, "created": _jira_time(c.created),
                "updated": _jira_time(c.created), "jsdPublic": True}

    def _comment_page(self, ctx: _Ctx, api: int = 3) -> dict[str, Any]:
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        start = int(ctx.q("startAt") or 0)
        size = int(ctx.q("maxResults") or 100)
        ordered = issue.comments[::-1] if ctx.q("orderBy") == "-created" else issue.comments
        return {"startAt": start, "maxResults": size, "total": len(ordered),
                "comments": [self._render_comment(ctx.site, issue, c, ctx.base, api)
                             for c in ordered[start:start + size]]}

    def _find_comment(self, ctx: _Ctx) -> tuple[Issue, Comment]:
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        cid = ctx.path_params["id"]
        comment = next((c for c in issue.comments if c.id == cid), None)
        if comment is None:  # a comment of another issue is not found through this one either
            raise JiraHttpError(404, [f"Can not find a comment for the id: {cid}."])
        return issue, comment

    def _h_get_comments(self, ctx: _Ctx) -> Response:
        return self._ok(ctx, 200, self._comment_page(ctx))

    def _h_add_comment(self, ctx: _Ctx) -> Response:
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])
        comment = self._comment(ctx.site, issue, (ctx.body or {}).get("body"), ctx.account_id)
        return self._ok(ctx, 201, self._render_comment(ctx.site, issue, comment, ctx.base))

    def _h_get_comment(self, ctx: _Ctx) -> Response:
        issue, comment = self._find_comment(ctx)
        return self._ok(ctx, 200, self._render_comment(ctx.site, issue, comment, ctx.base))

    # -- REST v2 comments: body is a string (wiki markup); the rest mirrors v3 ---------------------
    @staticmethod
    def _v2_query(ctx: _Ctx) -> None:
        """v2's comment query parameters, checked as v3's spec checks its twins (same names and types)."""
        errors = {}
        for name in ("startAt", "maxResults"):
            try:
                int(ctx.q(name) or 0)
            except ValueError:
                errors[name] = f"The value '{ctx.q(name)}' is not a valid integer for the '{name}' parameter."
        order = ctx.q("orderBy")
        if order not in (None, "created", "-created", "+created"):
            errors["orderBy"] = f"The value '{order}' of 'orderBy' is not one of ['created', '-created', '+created']."
        if errors:
            raise JiraHttpError(400, [], errors)

    def _h2_get_comments(self, ctx: _Ctx) -> Response:
        self._v2_query(ctx)
        return self._ok(ctx, 200, self._comment_page(ctx, api=2))

    def _h2_get_comment(self, ctx: _Ctx) -> Response:
        issue, comment = self._find_comment(ctx)
        return self._ok(ctx, 200, self._render_comment(ctx.site, issue, comment, ctx.base, api=2))

    def _h2_add_comment(self, ctx: _Ctx) -> Response:
        """POST /rest/api/2/issue/{key}/comment ``{"body": "<wiki markup>", "visibility"?, "properties"?}``.
        Jira binds it to CommentJsonBean with Jackson: an object ``body`` (v3's ADF) is refused with
        Jackson's message (atlassian/atlascode#1597, gioboa/jira-plugin#154 [3rd]). UNCONFIRMED: the
        "[Source: ...]" detail of that message, that numbers and booleans pass as text (Jackson's scalar
        coercion), that a blank string is "empty", the messages for a non-object request or visibility."""
        bean = "com.atlassian.jira.issue.fields.rest.json.beans.CommentJsonBean"
        if ctx.body is None:
            raise JiraHttpError(400, ["No content to map due to end-of-input"])
        if isinstance(ctx.body, str):  # lesstif/php-jira-rest-client#272 [3rd]
            message = (f"Can not instantiate value of type [simple type, class {bean}] from JSON String; "
                       "no single-String constructor/factory method")
            raise JiraHttpError(400, [message])
        if not isinstance(ctx.body, dict):
            token = "START_ARRAY" if isinstance(ctx.body, list) else "VALUE_NUMBER_INT"
            raise JiraHttpError(400, [f"Can not deserialize instance of {bean} out of {token} token"])
        text = ctx.body.get("body")
        if isinstance(text, (dict, list)):
            token = "START_OBJECT" if isinstance(text, dict) else "START_ARRAY"
            message = (f"Can not deserialize instance of java.lang.String out of {token} token\n at [Source: "
                       f"org.apache.catalina.connector.CoyoteInputStream; line: 1, column: 2] (through reference "
                       f"chain: {bean}[\"body\"])")
            raise JiraHttpError(400, [message])
        issue = ctx.site.issue(ctx.path_params["issueIdOrKey"])  # the body binds first, then the issue is looked up
        if isinstance(text, bool):
            text = str(text).lower()
        elif text is not None:
            text = str(text)
        if text is None or not text.strip():
            raise JiraHttpError(400, [], {"comment": "Comment body can not be empty!"})
        vis = ctx.body.get("visibility")
        if vis is not None and not (isinstance(vis, dict) and vis.get("type") in ("group", "role")):
            raise JiraHttpError(400, [], {"visibility": "Visibility type must be 'group' or 'role'."})
        comment = self._comment(ctx.site, issue, text_adf(text), ctx.account_id, wiki=text)
        return self._ok(ctx, 201, self._render_comment(ctx.site, issue, comment, ctx.base, api=2))
