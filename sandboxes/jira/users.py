"""Users and the server: a user as JSON, GET /user, GET /myself and GET /serverInfo."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from sandboxes.jira.errors import JiraHttpError
from sandboxes.jira.model import Site, User, _jira_time
from sandboxes.jira.routing import _Ctx


class UsersMixin:
    """User JSON and the user / server-info endpoints."""

    def _user_json(self, site: Site, account_id: str | None, base: str, api: int = 3) -> dict[str, Any] | None:
        if not account_id:
            return None
        user = site.users.get(account_id) or User(account_id, account_id)
        out = {"self": f"{base}/rest/api/{api}/user?accountId={account_id}", "accountId": account_id,
               "displayName": user.display_name, "active": user.active, "accountType": "atlassian",
               "timeZone": "Etc/UTC",
               "avatarUrls": {k: f"https://avatar-management.example/{account_id}/{k}"
                              for k in ("16x16", "24x24", "32x32", "48x48")}}
        if user.email:
            out["emailAddress"] = user.email
        return out

    def _user_bean(self, ctx: _Ctx, account_id: str) -> dict[str, Any]:
        u = self._user_json(ctx.site, account_id, ctx.base) or {}
        u.update({"locale": "en_US", "groups": {"size": 1, "items": []},
                  "applicationRoles": {"size": 1, "items": []}, "expand": "groups,applicationRoles"})
        return u

    def _h_user(self, ctx: _Ctx) -> Response:
        account_id = ctx.q("accountId")
        if not account_id:
            raise JiraHttpError(400, ["The accountId query parameter needs to be provided."])
        if account_id not in ctx.site.users:
            raise JiraHttpError(404, ["Specified user does not exist or you do not have required permissions"])
        return self._ok(ctx, 200, self._user_bean(ctx, account_id))

    def _h_myself(self, ctx: _Ctx) -> Response:
        return self._ok(ctx, 200, self._user_bean(ctx, ctx.account_id))

    def _h_server_info(self, ctx: _Ctx) -> Response:
        now = self.clock.now()
        return self._ok(ctx, 200, {
            "baseUrl": ctx.site.url, "displayUrl": ctx.site.url, "version": "1001.0.0-SNAPSHOT",
            "versionNumbers": [1001, 0, 0], "deploymentType": "Cloud", "buildNumber": 100280,
            "buildDate": "2025-12-01T00:00:00.000+0000", "serverTime": _jira_time(now),
            "scmInfo": "sandbox", "serverTitle": "Jira", "serverTimeZone": "Etc/UTC"})
