"""Atlassian authorization server sandbox (OAuth 2.0 3LO): auth.atlassian.com plus accessible-resources.

Routes (API-FACTS.md §4.1):
- ``GET /authorize``: audience=api.atlassian.com, client_id, scope, redirect_uri, state,
  response_type=code, prompt=consent. The sandbox consents on behalf of ``consenting_account_id``
  and answers 302 to ``redirect_uri?code=…&state=…``. An unknown client or an unregistered
  redirect_uri gets a 400 page (never a redirect to an untrusted URI).
- ``POST /oauth/token``: JSON body as Atlassian documents (form encoding is also accepted here;
  whether Atlassian accepts it is untested). ``grant_type=authorization_code`` (code single-use,
  redirect_uri must match the one the code was issued for) or ``refresh_token``.
- ``GET /oauth/token/accessible-resources``: the sites the access token's user granted the app
  (on api.atlassian.com in production; served here too so one sandbox covers the consent flow).

Token facts:
- access tokens expire after 1 h (``expires_in`` 3600) on the sandbox clock;
- refresh tokens (only with the ``offline_access`` scope) ROTATE on every use: a used refresh token
  is refused with HTTP 403 ``{"error":"invalid_grant","error_description":"Unknown or invalid refresh
  token."}``; reusing one more than 10 minutes after it was rotated revokes the whole token family
  (every refresh and access token descended from the same consent);
- a refresh token unused for 90 days expires, and a family expires 365 days after consent.

Unconfirmed details (marked where used): the 401 body for bad client credentials, the 403 for a bad
authorization code, the 10-minute life of an authorization code, revoking the family when a code is
replayed (RFC 6749 §4.1.2 recommends it), and the gateway's 401 body on accessible-resources.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from sandboxes.common import FaultMiddleware, Faults, SandboxClock, bearer_token

AUDIENCE = "api.atlassian.com"
ACCESS_TOKEN_TTL = timedelta(hours=1)
AUTH_CODE_TTL = timedelta(minutes=10)  # unconfirmed
REUSE_LEEWAY = timedelta(minutes=10)
REFRESH_INACTIVITY = timedelta(days=90)
FAMILY_MAX_AGE = timedelta(days=365)
DEFAULT_ACCOUNT_ID = "557058:sandbox-user-0001"

INVALID_REFRESH = {"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}


@dataclass
class _App:
    client_id: str
    client_secret: str
    redirect_uris: list[str]


@dataclass
class _Family:
    id: str
    client_id: str
    account_id: str
    scopes: list[str]
    created_at: datetime
    code: str | None = None
    revoked: bool = False
    revoked_reason: str | None = None


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    scopes: list[str]
    account_id: str
    expires_at: datetime
    used: bool = False
    family_id: str | None = None


@dataclass
class _RefreshToken:
    family_id: str
    issued_at: datetime
    rotated_at: datetime | None = None


@dataclass
class _AccessToken:
    family_id: str
    expires_at: datetime
    expired_by_test: bool = False


@dataclass
class _Site:
    id: str
    name: str
    url: str
    avatarUrl: str = "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/koala.png"
    scopes: list[str] = field(default_factory=list)


def _token_error(error: str, description: str, status: int) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _rate_limit_response(retry_after: str | None) -> Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return JSONResponse({"code": 429, "message": "Too Many Requests"}, 429, headers)


def _server_error_response(status: int, retry_after: str | None) -> Response:
    headers = {"Retry-After": retry_after} if retry_after and status in (502, 503) else {}
    return JSONResponse({"code": status, "message": "Service Unavailable"}, status, headers)


class AtlassianAuthSandbox:
    """State, clock, faults and the Starlette ``app`` of the Atlassian auth sandbox."""

    def __init__(self, clock: SandboxClock | None = None, faults: Faults | None = None) -> None:
        self.clock = clock or SandboxClock()
        self.faults = faults or Faults()
        self.consenting_account_id = DEFAULT_ACCOUNT_ID
        self._lock = threading.RLock()
        self._apps: dict[str, _App] = {}
        self._sites: dict[str, list[_Site]] = {}  # account_id -> sites the user granted
        self._codes: dict[str, _Code] = {}
        self._families: dict[str, _Family] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._access: dict[str, _AccessToken] = {}
        # counters
        self.requests = 0
        self.authorize_requests = 0
        self.token_requests = 0
        self.code_exchanges = 0
        self.refreshes = 0  # successful refresh-token grants
        self.refresh_failures = 0  # refused refresh-token grants
        self.families_revoked = 0
        self.accessible_resources_requests = 0
        self.app = FaultMiddleware(
            Starlette(routes=[
                Route("/authorize", self._authorize, methods=["GET"]),
                Route("/oauth/token", self._token, methods=["POST"]),
                Route("/oauth/token/accessible-resources", self._accessible_resources, methods=["GET"]),
            ]),
            self.faults,
            _rate_limit_response,
            _server_error_response,
            count=self._count,
        )

    def _count(self, _request: Request) -> None:
        with self._lock:
            self.requests += 1

    # -- set-up ------------------------------------------------------------------------------------
    def register_app(self, client_id: str, client_secret: str, redirect_uris: list[str] | str) -> None:
        if isinstance(redirect_uris, str):
            redirect_uris = [redirect_uris]
        with self._lock:
            self._apps[client_id] = _App(client_id, client_secret, list(redirect_uris))

    def grant_sites(self, sites: list[dict[str, Any]] | dict[str, Any], *,
                    account_id: str | None = None) -> list[dict[str, Any]]:
        """Sites the user can grant (each {"url", "name"?, "id"?}); returns them with their cloudIds."""
        if isinstance(sites, dict):
            sites = [sites]
        account_id = account_id or self.consenting_account_id
        out = []
        with self._lock:
            stored = self._sites.setdefault(account_id, [])
            for s in sites:
                url = s["url"].rstrip("/")
                name = s.get("name") or urlsplit(url).hostname.split(".")[0]
                site = _Site(id=s.get("id") or _uuid(), name=name, url=url)
                stored[:] = [x for x in stored if x.url != url]
                stored.append(site)
                out.append({"id": site.id, "name": site.name, "url": site.url})
        return out

    # -- hooks for tests and other sandboxes ------------------------------------------------------
    def validate_access_token(self, token: str) -> dict[str, Any] | None:
        """{"client_id", "account_id", "scopes"} for a live access token, else None."""
        with self._lock:
            at = self._access.get(token)
            if at is None or at.expired_by_test or at.expires_at <= self.clock.now():
                return None
            fam = self._families[at.family_id]
            if fam.revoked:
                return None
            return {"client_id": fam.client_id, "account_id": fam.account_id, "scopes": list(fam.scopes)}

    def revoke_family(self, refresh_token: str | None = None, *, access_token: str | None = None,
                      client_id: str | None = None, account_id: str | None = None,
                      reason: str = "revoked by test") -> int:
        """Revoke the family of a token, or every family of a client and/or account; returns the count."""
        with self._lock:
            if refresh_token is not None:
                rt = self._refresh.get(refresh_token)
                ids = [rt.family_id] if rt else []
            elif access_token is not None:
                at = self._access.get(access_token)
                ids = [at.family_id] if at else []
            else:
                ids = [f.id for f in self._families.values()
                       if (client_id is None or f.client_id == client_id)
                       and (account_id is None or f.account_id == account_id)]
            n = 0
            for fid in ids:
                if self._revoke(fid, reason):
                    n += 1
            return n

    def expire_access_tokens(self) -> int:
        """Expire every access token issued so far (the refresh tokens stay valid)."""
        with self._lock:
            for at in self._access.values():
                at.expired_by_test = True
            return len(self._access)

    def family_status(self, refresh_token: str) -> dict[str, Any] | None:
        with self._lock:
            rt = self._refresh.get(refresh_token)
            if rt is None:
                return None
            fam = self._families[rt.family_id]
            return {"family_id": fam.id, "revoked": fam.revoked, "reason": fam.revoked_reason,
                    "rotated": rt.rotated_at is not None}

    def revoked_families(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"family_id": f.id, "client_id": f.client_id, "reason": f.revoked_reason}
                    for f in self._families.values() if f.revoked]

    # -- internals ---------------------------------------------------------------------------------
    def _revoke(self, family_id: str, reason: str) -> bool:
        fam = self._families.get(family_id)
        if fam is None or fam.revoked:
            return False
        fam.revoked = True
        fam.revoked_reason = reason
        self.families_revoked += 1
        return True

    def _issue(self, family: _Family, now: datetime) -> dict[str, Any]:
        access = "sbx-at-" + secrets.token_urlsafe(32)
        self._access[access] = _AccessToken(family.id, now + ACCESS_TOKEN_TTL)
        body: dict[str, Any] = {
            "access_token": access,
            "expires_in": int(ACCESS_TOKEN_TTL.total_seconds()),
            "token_type": "Bearer",
            "scope": " ".join(family.scopes),
        }
        if "offline_access" in family.scopes:
            refresh = "sbx-rt-" + secrets.token_urlsafe(32)
            self._refresh[refresh] = _RefreshToken(family.id, now)
            body["refresh_token"] = refresh
        return body

    # -- routes ------------------------------------------------------------------------------------
    async def _authorize(self, request: Request) -> Response:
        q = request.query_params
        with self._lock:
            self.authorize_requests += 1
            app = self._apps.get(q.get("client_id", ""))
            if app is None:
                return PlainTextResponse("Invalid client_id: the app does not exist.", 400)
            redirect_uri = q.get("redirect_uri", "")
            if redirect_uri not in app.redirect_uris:
                return PlainTextResponse("The redirect_uri does not match the app's callback URL.", 400)
            state = q.get("state")

            def fail(error: str, description: str) -> Response:
                params = {"error": error, "error_description": description}
                if state is not None:
                    params["state"] = state
                return RedirectResponse(_with_query(redirect_uri, params), 302)

            if q.get("audience") != AUDIENCE:
                return fail("invalid_request", f"audience must be {AUDIENCE}")
            if q.get("response_type") != "code":
                return fail("unsupported_response_type", "response_type must be code")
            scopes = [s for s in q.get("scope", "").split() if s]
            if not scopes:
                return fail("invalid_scope", "scope is required")
            code = "sbx-code-" + secrets.token_urlsafe(24)
            self._codes[code] = _Code(app.client_id, redirect_uri, scopes, self.consenting_account_id,
                                      self.clock.now() + AUTH_CODE_TTL)
            params = {"code": code}
            if state is not None:
                params["state"] = state
            return RedirectResponse(_with_query(redirect_uri, params), 302)

    async def _token(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "")
        raw = await request.body()
        try:
            if "application/json" in ctype:
                body = json.loads(raw or b"null")
            else:  # application/x-www-form-urlencoded (parsed here: no python-multipart needed)
                body = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        except (ValueError, UnicodeDecodeError):
            body = None
        with self._lock:
            self.token_requests += 1
            if not isinstance(body, dict):
                return _token_error("invalid_request", "The request body could not be parsed.", 400)
            grant = body.get("grant_type")
            if grant not in ("authorization_code", "refresh_token"):
                return _token_error("unsupported_grant_type", f"Unsupported grant type: {grant}", 400)
            app = self._apps.get(str(body.get("client_id", "")))
            if app is None or not secrets.compare_digest(str(body.get("client_secret", "")), app.client_secret):
                return _token_error("access_denied", "Unauthorized", 401)  # unconfirmed body
            now = self.clock.now()
            if grant == "authorization_code":
                return self._grant_code(app, body, now)
            return self._grant_refresh(app, body, now)

    def _grant_code(self, app: _App, body: dict[str, Any], now: datetime) -> Response:
        code = self._codes.get(str(body.get("code", "")))
        if code is None or code.client_id != app.client_id:
            return _token_error("invalid_grant", "Invalid authorization code", 403)
        if code.used:
            # RFC 6749 §4.1.2: a replayed code revokes what it granted.
            if code.family_id:
                self._revoke(code.family_id, "authorization code replayed")
            return _token_error("invalid_grant", "Invalid authorization code", 403)
        code.used = True
        if code.expires_at <= now:
            return _token_error("invalid_grant", "Invalid authorization code", 403)
        if body.get("redirect_uri") != code.redirect_uri:
            return _token_error("invalid_grant", "redirect_uri does not match the authorization request", 403)
        family = _Family(_uuid(), app.client_id, code.account_id, code.scopes, now)
        self._families[family.id] = family
        code.family_id = family.id
        self.code_exchanges += 1
        return JSONResponse(self._issue(family, now))

    def _grant_refresh(self, app: _App, body: dict[str, Any], now: datetime) -> Response:
        token = str(body.get("refresh_token", ""))
        rt = self._refresh.get(token)
        family = self._families.get(rt.family_id) if rt else None
        refused = (
            rt is None
            or family is None
            or family.client_id != app.client_id
            or family.revoked
            or rt.rotated_at is not None
            or now - rt.issued_at > REFRESH_INACTIVITY
            or now - family.created_at > FAMILY_MAX_AGE
        )
        if refused:
            self.refresh_failures += 1
            if (rt is not None and family is not None and rt.rotated_at is not None
                    and now - rt.rotated_at > REUSE_LEEWAY):
                self._revoke(family.id, "rotated refresh token reused after the 10-minute leeway")
            return JSONResponse(INVALID_REFRESH, status_code=403)
        rt.rotated_at = now
        self.refreshes += 1
        return JSONResponse(self._issue(family, now))

    async def _accessible_resources(self, request: Request) -> Response:
        token = bearer_token(request)
        with self._lock:
            self.accessible_resources_requests += 1
            info = self.validate_access_token(token)
            if info is None:
                return JSONResponse({"code": 401, "message": "Unauthorized"}, 401)  # unconfirmed body
            scopes = [s for s in info["scopes"] if s != "offline_access"]
            return JSONResponse([
                {"id": s.id, "url": s.url, "name": s.name, "scopes": scopes, "avatarUrl": s.avatarUrl}
                for s in self._sites.get(info["account_id"], [])
            ])


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


def _with_query(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
