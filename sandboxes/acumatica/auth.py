"""Sign-in for the Acumatica sandbox: OAuth 2.0 / OIDC at ``/identity`` and the cookie session at ``/entity/auth``.

OAuth (API-FACTS §3; the grants Acumatica's own C# client implements):
- ``POST /identity/connect/token`` (form-encoded): ``password`` (client_id ``GUID@Tenant``, client_secret, username,
  password, scope ``api`` [+ ``offline_access`` for a refresh token]), ``refresh_token`` (rotating: each refresh
  answers a new refresh token and the old one is spent -> ``invalid_grant``), ``authorization_code`` (code from
  ``GET /identity/connect/authorize``, which redirects to the registered redirect URI at once, signed in as
  ``authorize_user``). ``client_credentials`` and anything else -> ``unsupported_grant_type``.
  Errors are RFC 6749 bodies ``{"error", "error_description"}`` with 400.
  UNCONFIRMED: the error_description texts.
- ``GET /identity/.well-known/openid-configuration``: the discovery document.
- Access tokens live ``access_token_ttl_s`` (default 3600) on the sandbox clock; ``expire_all`` ends them now.

Cookie session: ``POST /entity/auth/login`` with JSON ``{"name","password","company","branch"}`` (``tenant`` is
taken for ``company`` too, as Acumatica's Postman collection sends it) -> 204 with ``.ASPXAUTH`` and
``ASP.NET_SessionId`` cookies; ``POST /entity/auth/logout`` -> 204 (also without a session). Wrong credentials ->
500 HttpError "Invalid credentials. Please try again." (UNCONFIRMED status and wording).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from sandboxes.common import SandboxClock, bearer_token

SESSION_COOKIE = ".ASPXAUTH"
SESSION_ID_COOKIE = "ASP.NET_SessionId"


@dataclass
class ConnectedApp:
    client_id: str
    secret: str
    redirect_uris: list[str] = field(default_factory=list)


class AuthServer:
    def __init__(self, tenant: str, clock: SandboxClock):
        self.tenant = tenant
        self.clock = clock
        self.apps: dict[str, ConnectedApp] = {}
        self.users: dict[str, str] = {}
        self.access_token_ttl_s: float = 3600.0
        self.refreshes = 0
        self.authorize_user: str | None = None   # who "signs in" on the authorize page (default: the first user)
        self._access: dict[str, dict[str, Any]] = {}    # token -> {user, client, expires}
        self._refresh: dict[str, dict[str, Any]] = {}   # token -> {user, client, scope}
        self._codes: dict[str, dict[str, Any]] = {}     # code -> {user, client, redirect_uri, scope}
        self._sessions: dict[str, dict[str, Any]] = {}  # .ASPXAUTH value -> {user, company, branch}
        self._lock = threading.Lock()

    # -- admin ---------------------------------------------------------------------------------------
    def register_app(self, client_guid: str, secret: str, redirect_uris: list[str] | tuple[str, ...] = ()) -> str:
        client_id = f"{client_guid}@{self.tenant}"
        self.apps[client_id.lower()] = ConnectedApp(client_id, secret, list(redirect_uris))
        return client_id

    def add_user(self, username: str, password: str) -> None:
        self.users[username] = password

    def expire_all(self) -> None:
        with self._lock:
            self._access.clear()

    # -- checks --------------------------------------------------------------------------------------
    def principal(self, request: Request) -> str | None:
        """The user a request is signed in as (bearer token or session cookie), or None."""
        token = bearer_token(request)
        now = self.clock.timestamp()
        if token:
            with self._lock:
                info = self._access.get(token)
            if info is not None and info["expires"] > now:
                return info["user"]
            return None
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            with self._lock:
                session = self._sessions.get(cookie)
            if session is not None:
                return session["user"]
        return None

    # -- OAuth ---------------------------------------------------------------------------------------
    @staticmethod
    def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": error, "error_description": description}, status,
                            {"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _client(self, form: Any) -> ConnectedApp | None:
        app = self.apps.get(str(form.get("client_id", "")).lower())
        if app is None or form.get("client_secret") != app.secret:
            return None
        return app

    def _issue(self, user: str, client: str, scope: str) -> dict[str, Any]:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._access[token] = {"user": user, "client": client,
                                   "expires": self.clock.timestamp() + self.access_token_ttl_s}
        body: dict[str, Any] = {"access_token": token, "expires_in": int(self.access_token_ttl_s),
                                "token_type": "Bearer", "scope": scope}
        if "offline_access" in scope.split():
            refresh = secrets.token_urlsafe(32)
            with self._lock:
                self._refresh[refresh] = {"user": user, "client": client, "scope": scope}
            body["refresh_token"] = refresh
        return body

    async def token(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" not in ctype:
            return self._oauth_error("invalid_request", "The request must be form-encoded.")
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
        grant = form.get("grant_type")
        if grant not in ("password", "refresh_token", "authorization_code"):
            return self._oauth_error("unsupported_grant_type", f"Grant type '{grant}' is not supported.")
        app = self._client(form)
        if app is None:
            return self._oauth_error("invalid_client", "Unknown client or wrong client secret.", 400)
        scope = str(form.get("scope") or "api")
        if grant == "password":
            user, password = str(form.get("username", "")), form.get("password")
            if user not in self.users or self.users[user] != password:
                return self._oauth_error("invalid_grant", "Invalid username or password.")
            if "api" not in scope.split():
                return self._oauth_error("invalid_scope", "The scope must include 'api'.")
            return JSONResponse(self._issue(user, app.client_id, scope), headers={"Cache-Control": "no-store"})
        if grant == "refresh_token":
            with self._lock:
                info = self._refresh.pop(str(form.get("refresh_token", "")), None)
                if info is not None and info["client"] != app.client_id:
                    info = None
                self.refreshes += 1
            if info is None:
                return self._oauth_error("invalid_grant", "The refresh token is invalid or has been used.")
            return JSONResponse(self._issue(info["user"], app.client_id, info["scope"]),
                                headers={"Cache-Control": "no-store"})
        with self._lock:
            info = self._codes.pop(str(form.get("code", "")), None)
        if info is None or info["client"] != app.client_id or info["redirect_uri"] != form.get("redirect_uri"):
            return self._oauth_error("invalid_grant", "The authorization code is invalid.")
        return JSONResponse(self._issue(info["user"], app.client_id, info["scope"]),
                            headers={"Cache-Control": "no-store"})

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        app = self.apps.get(q.get("client_id", "").lower())
        redirect = q.get("redirect_uri", "")
        if app is None or redirect not in app.redirect_uris:
            return JSONResponse({"error": "invalid_request", "error_description": "Unknown client or redirect_uri."},
                                400)
        if q.get("response_type") != "code":
            return RedirectResponse(redirect + "?" + urlencode({"error": "unsupported_response_type",
                                                                "state": q.get("state", "")}), 302)
        user = self.authorize_user or next(iter(self.users), None)
        if user is None:
            return RedirectResponse(redirect + "?" + urlencode({"error": "access_denied",
                                                                "state": q.get("state", "")}), 302)
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = {"user": user, "client": app.client_id, "redirect_uri": redirect,
                                 "scope": q.get("scope", "api")}
        params = {"code": code, "scope": q.get("scope", "api")}
        if "state" in q:
            params["state"] = q["state"]
        return RedirectResponse(redirect + "?" + urlencode(params), 302)

    def discovery(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/") + "/identity"
        return JSONResponse({
            "issuer": base,
            "authorization_endpoint": f"{base}/connect/authorize",
            "token_endpoint": f"{base}/connect/token",
            "userinfo_endpoint": f"{base}/connect/userinfo",
            "end_session_endpoint": f"{base}/connect/endsession",
            "scopes_supported": ["openid", "profile", "email", "api", "offline_access", "api:concurrent_access"],
            "response_types_supported": ["code", "token", "id_token", "id_token token", "code id_token"],
            "grant_types_supported": ["authorization_code", "implicit", "password", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        })

    # -- cookie session ------------------------------------------------------------------------------
    async def login(self, request: Request, error: Any) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return error(400, "The request is invalid.", "The login body must be a JSON object.")
        name, password = body.get("name"), body.get("password")
        company = body.get("company") or body.get("tenant") or self.tenant
        if name not in self.users or self.users[name] != password or str(company).lower() != self.tenant.lower():
            return error(500, "An error has occurred.", "Invalid credentials. Please try again.")
        cookie = secrets.token_hex(32)
        with self._lock:
            self._sessions[cookie] = {"user": name, "company": company, "branch": body.get("branch")}
        response = Response(status_code=204)
        response.set_cookie(SESSION_COOKIE, cookie, httponly=True, path="/")
        response.set_cookie(SESSION_ID_COOKIE, secrets.token_hex(12), httponly=True, path="/")
        response.set_cookie("CompanyID", str(company), path="/")
        return response

    async def logout(self, request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            with self._lock:
                self._sessions.pop(cookie, None)
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(SESSION_ID_COOKIE, path="/")
        return response
