"""Acumatica sign-in: OAuth 2.0 tokens kept in the vault, or the cookie session.

OAuth (API-FACTS §3): ``POST {instance}/identity/connect/token``, form-encoded; ``client_id`` is
``GUID@Tenant`` (the connected application, SM303010). The grant lives in the vault under one
credential name and is refreshed through ``core.oauth_grant.VaultGrantProvider`` (the same race-safe
path as Atlassian's: ``vault.locked``, re-read, invalid_grant, sibling refresh); with ``offline_access``
the identity server answers a refresh token, and rotates it on use (treated as rotating either way).
When the vault holds no grant, or its refresh token is dead, and a username and password are configured,
the password grant (ROPC) obtains a new one under the same lock. The password is never stored.
UNCONFIRMED: a ``client_credentials`` grant (not used).

Cookie session (Acumatica's Postman collection): ``POST {instance}/entity/auth/login`` with
``{"name", "password", "company", "branch"}`` -> 204 and the ``.ASPXAUTH`` / ``ASP.NET_SessionId``
cookies; ``POST /entity/auth/logout`` ends it (and frees the licence's session slot). The session rides
on an httpx transport wrapper (``AcumaticaCookieSession.transport``): every API request carries the
session cookies, a 401 signs in again once and resends.

Secrets (client secret, password, tokens, cookies) never appear in logs, exceptions or reprs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from connector_pipelines.core.http import ApiError, ResilientClient, RetrySettings, ssl_context
from connector_pipelines.core.oauth_grant import (
    InvalidGrant,
    TokenSet,
    VaultGrantProvider,
    describe_token_error,
    is_invalid_grant,
    response_json,
    token_post,
    token_set,
)
from connector_pipelines.core.vault import Vault

log = logging.getLogger(__name__)

TOKEN_PATH = "identity/connect/token"
LOGIN_PATH = "entity/auth/login"
LOGOUT_PATH = "entity/auth/logout"
DEFAULT_SCOPE = "api offline_access"


class AcumaticaError(Exception):
    """Base of every Acumatica error (HTTP failures also derive from ``core.http.ApiError``)."""


class AcumaticaAuthError(AcumaticaError):
    """Sign-in failed (token endpoint or cookie login) in a way retrying will not fix."""


def http_error_text(body: Any) -> str:
    """One line from Acumatica's ``HttpError`` body: ``message: exceptionMessage`` (or an OAuth / text body)."""
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("message", "exceptionMessage") if body.get(k)]
        if parts:
            return ": ".join(dict.fromkeys(parts))
        if isinstance(body.get("error"), str) and body["error"]:
            return f"{body['error']}: {body.get('error_description', '')}".strip(": ")
    return str(body)[:300]


class AcumaticaTokenProvider(VaultGrantProvider):
    """Bearer tokens for Acumatica's contract-based API from a grant in the vault (``core.http.TokenProvider``).

    ``client_id`` is the connected application's ``GUID@Tenant``. With ``username``/``password`` the provider
    obtains a grant itself (password grant) when the vault has none or its refresh token is dead; without them
    the grant must already be in the vault (``{"access_token", "refresh_token", "expires_at"}``). ``scope``
    should keep ``offline_access``: without a refresh token every expiry costs a password grant.
    """

    error = AcumaticaAuthError

    def __init__(self, vault: Vault, credential_name: str, instance_url: str, client_id: str, client_secret: str,
                 *, username: str | None = None, password: str | None = None, scope: str = DEFAULT_SCOPE,
                 transport: httpx.BaseTransport | None = None, verify: bool | str = True,
                 refresh_margin_s: float = 60, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(vault, credential_name, refresh_margin_s=refresh_margin_s, clock=clock)
        self.instance_url = instance_url.rstrip("/")
        self.client_id = client_id
        self.username = username
        self.scope = scope
        self._client_secret = client_secret
        self._password = password
        self._http = httpx.Client(transport=transport, timeout=30.0, trust_env=False,
                                  verify=ssl_context(verify) if transport is None else True)

    def __repr__(self) -> str:
        return (f"AcumaticaTokenProvider(credential={self.credential_name!r}, instance={self.instance_url!r}, "
                f"client_id={self.client_id!r}, username={self.username!r})")

    @property
    def token_url(self) -> str:
        return f"{self.instance_url}/{TOKEN_PATH}"

    def close(self) -> None:
        self._http.close()

    # -- VaultGrantProvider hooks -------------------------------------------------------------------
    def _holds_grant(self, value: Any) -> bool:
        # A password grant without offline_access has no refresh token: its access token is still usable.
        return isinstance(value, dict) and bool(value.get("refresh_token") or value.get("access_token"))

    def _can_bootstrap(self) -> bool:
        return bool(self.username) and self._password is not None

    def _no_grant_error(self, value: Any) -> Exception:
        what = "no Acumatica grant" if value is None else "not an Acumatica grant"
        return AcumaticaAuthError(f"credential {self.credential_name!r} holds {what} and no username/password is "
                                  "configured for the password grant")

    def _dead_grant_error(self) -> Exception:
        return AcumaticaAuthError(
            f"Acumatica cannot renew the grant of credential {self.credential_name!r}: its refresh token was refused "
            "(invalid_grant: revoked, expired or lost) or it has none, and no username/password is configured to "
            "obtain a new grant")

    def _post(self, form: dict[str, str]) -> httpx.Response:
        return token_post(self._http, self.token_url, data=form, system="the Acumatica", error=AcumaticaAuthError)

    def _tokens(self, response: httpx.Response, now: datetime) -> TokenSet:
        return token_set(response_json(response), now, system="the Acumatica", error=AcumaticaAuthError)

    def _post_refresh(self, refresh_token: str) -> TokenSet:
        now = self._now()
        response = self._post({"grant_type": "refresh_token", "client_id": self.client_id,
                               "client_secret": self._client_secret, "refresh_token": refresh_token})
        if is_invalid_grant(response):
            raise InvalidGrant()
        if response.status_code != 200:
            raise AcumaticaAuthError(f"refreshing credential {self.credential_name!r} failed "
                                     f"({describe_token_error(response)})")
        return self._tokens(response, now)

    def _bootstrap(self) -> TokenSet:
        now = self._now()
        response = self._post({"grant_type": "password", "client_id": self.client_id,
                               "client_secret": self._client_secret, "username": self.username or "",
                               "password": self._password or "", "scope": self.scope})
        if response.status_code != 200:
            raise AcumaticaAuthError(f"the password grant for user {self.username!r} (credential "
                                     f"{self.credential_name!r}) was refused ({describe_token_error(response)})")
        log.info("obtained a new Acumatica grant for credential %s by the password grant", self.credential_name)
        return self._tokens(response, now)

    def _merge(self, previous: dict[str, Any], tokens: TokenSet, sent: str | None) -> dict[str, Any]:
        value = super()._merge(previous, tokens, sent)
        value["client_id"] = self.client_id
        value["instance_url"] = self.instance_url
        if sent is None:   # a new grant: whatever the old one kept does not belong to it
            value["refresh_token"] = tokens.refresh_token
            value["obtained_by"] = "password"
        return value


class AcumaticaCookieSession:
    """The cookie alternative to OAuth: one signed-in session shared by every request of a client.

    Pass it as ``auth=`` to ``AcumaticaClient.connect``; the client sends its requests through
    ``transport(inner)``. Sign-in is lazy (first request); a 401 signs in again once and resends; ``logout``
    (also called by the client's ``close``) ends the session. ``company`` is the tenant (the client fills it in
    from its ``tenant`` when left None); ``branch`` optional.
    """

    def __init__(self, instance_url: str, username: str, password: str, *, company: str | None = None,
                 branch: str | None = None, locale: str | None = None, transport: httpx.BaseTransport | None = None,
                 verify: bool | str = True, retry: RetrySettings | None = None) -> None:
        self.instance_url = instance_url.rstrip("/")
        self.username = username
        self.company = company
        self.branch = branch
        self.locale = locale
        self._password = password
        self._http = ResilientClient("acumatica", self.instance_url, None, transport=transport, verify=verify,
                                     retry=retry, headers={"Accept": "application/json"})
        self._cookies = httpx.Cookies()
        self._lock = threading.Lock()
        self._generation = 0          # +1 per sign-in; a 401 re-signs in only if nobody did since
        self._signed_in = False
        self.logins = 0

    def __repr__(self) -> str:
        return (f"AcumaticaCookieSession(instance={self.instance_url!r}, username={self.username!r}, "
                f"company={self.company!r}, signed_in={self._signed_in})")

    @property
    def signed_in(self) -> bool:
        return self._signed_in

    # -- sign-in ------------------------------------------------------------------------------------
    def login(self) -> None:
        with self._lock:
            self._login()

    def _login(self) -> None:
        body = {"name": self.username, "password": self._password}
        for key in ("company", "branch", "locale"):
            if getattr(self, key):
                body[key] = getattr(self, key)
        try:
            # Wrong credentials answer 500 with an HttpError (UNCONFIRMED status): not worth a retry.
            response = self._http.post(LOGIN_PATH, json=body, expected=(500,))
            if response.status_code >= 300:
                raise ApiError("acumatica", "POST", LOGIN_PATH, response.status_code, response_json(response))
        except ApiError as exc:
            raise AcumaticaAuthError(f"Acumatica sign-in of user {self.username!r} (company {self.company!r}) "
                                     f"failed: HTTP {exc.status}: {http_error_text(exc.body)}") from None
        self._cookies = httpx.Cookies()
        self._cookies.extract_cookies(response)
        if not self._cookies:
            raise AcumaticaAuthError(f"Acumatica sign-in of user {self.username!r} answered no session cookie")
        self._generation += 1
        self._signed_in = True
        self.logins += 1

    def logout(self) -> None:
        """End the session (frees its licence slot); nothing to do when not signed in."""
        with self._lock:
            if not self._signed_in:
                return
            request = httpx.Request("POST", f"{self.instance_url}/{LOGOUT_PATH}")
            self._cookies.set_cookie_header(request)
            try:
                self._http.post(LOGOUT_PATH, headers={"Cookie": request.headers.get("Cookie", "")}, expected=(401,))
            except (ApiError, httpx.TransportError) as exc:   # the session ends on the server's timeout anyway
                log.warning("Acumatica sign-out failed (%s); the session will time out", type(exc).__name__)
            self._signed_in = False
            self._cookies = httpx.Cookies()

    def close(self) -> None:
        self.logout()
        self._http.close()

    # -- used by the transport ----------------------------------------------------------------------
    def _ensure(self) -> int:
        with self._lock:
            if not self._signed_in:
                self._login()
            return self._generation

    def _renew(self, generation: int) -> None:
        with self._lock:
            if self._generation == generation or not self._signed_in:
                log.info("Acumatica answered 401: signing in again as %s", self.username)
                self._login()

    def _apply(self, request: httpx.Request) -> None:
        if "Cookie" in request.headers:
            del request.headers["Cookie"]
        with self._lock:
            self._cookies.set_cookie_header(request)

    def _absorb(self, request: httpx.Request, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            response.request = request
            with self._lock:
                self._cookies.extract_cookies(response)

    def transport(self, inner: httpx.BaseTransport) -> httpx.BaseTransport:
        """``inner`` with this session's cookies on every request (and one re-sign-in on 401)."""
        return _CookieSessionTransport(self, inner)


class _CookieSessionTransport(httpx.BaseTransport):
    def __init__(self, session: AcumaticaCookieSession, inner: httpx.BaseTransport) -> None:
        self._session = session
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        generation = self._session._ensure()
        self._session._apply(request)
        response = self._inner.handle_request(request)
        if response.status_code == 401:
            response.read()
            response.close()
            self._session._renew(generation)
            self._session._apply(request)
            response = self._inner.handle_request(request)
        self._session._absorb(request, response)
        return response

    def close(self) -> None:
        self._inner.close()
