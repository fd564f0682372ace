"""Microsoft Entra ID client credentials through msal (API-FACTS §0).

- The token is cached by msal's own ``TokenCache``; msal serves it until 5 minutes before expiry and
  then asks Entra again ("refreshed before expiry"). ``expires_in`` is honoured as sent (Entra's default
  lifetime is random between 60 and 90 minutes), never assumed to be 3600.
- ``invalidate(token)`` (called by ``core.http.ResilientClient`` on a 401) removes that token from msal's
  cache, so the next ``get_token`` fetches a fresh one.
- msal talks HTTP through ``requests``. This machine (and many CI images) set ``REQUESTS_CA_BUNDLE`` /
  ``CURL_CA_BUNDLE``, which ``requests`` lets override ``verify=`` whenever ``trust_env`` is on; msal gets
  its own ``requests.Session`` with ``trust_env = False`` and ``verify = ca_bundle or True``.
- Non-Microsoft authority hosts (the sandbox, a proxy) are used as given: no instance discovery and no
  authority validation against Microsoft's list (msal would reject them). Microsoft hosts keep both.
- Neither the client secret nor a token ever appears in a log line, an exception or a repr.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import msal
import msal.exceptions
import requests
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

log = logging.getLogger(__name__)

MICROSOFT_HOSTS = ("login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn",
                   "login.partner.microsoftonline.cn", "login.microsoft.com")
REFRESH_MARGIN_S = 300   # msal's own rule: a cached token with < 5 minutes left counts as expired


class EntraAuthError(Exception):
    """Entra refused (or could not be asked) to issue a token; carries the AADSTS code, never the secret."""

    def __init__(self, message: str, *, error: str | None = None, error_codes: list[int] | None = None,
                 correlation_id: str | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.error = error
        self.error_codes = list(error_codes or [])
        self.correlation_id = correlation_id
        # True when asking again later may succeed (Entra unreachable, 429/5xx, temporarily_unavailable).
        self.transient = transient


TRANSIENT_ERRORS = {"temporarily_unavailable", "server_error"}
_CALL_ERRORS = (ValueError, requests.RequestException, msal.exceptions.MsalError)


def _failure(what: str, exc: Exception, secret: str) -> EntraAuthError:
    status = getattr(exc, "status_code", None)
    text = _scrub(str(exc), secret)
    m = re.search(r"HTTP Error: (\d+)", text)
    code = int(m.group(1)) if m else status
    transient = isinstance(exc, requests.RequestException) and not isinstance(exc, requests.exceptions.SSLError)
    transient = transient or (code is not None and (int(code) == 429 or int(code) >= 500))
    return EntraAuthError(f"{what}: {type(exc).__name__}: {text}", transient=transient)


class EntraTokenProvider:
    """Satisfies ``core.http.TokenProvider``. msal is built lazily, at the first token request.

    ``clock`` (seconds since the epoch, default ``time.time``) is the time this provider uses to decide
    that the token it handed out last is about to expire; it exists so tests can move time the way the
    Entra sandbox's clock moves. msal's cache keeps using real time; when the two disagree, the token is
    dropped from msal's cache and a fresh one is fetched.
    """

    def __init__(self, tenant_id: str, client_id: str, client_secret: str, scope: str,
                 authority_host: str = "https://login.microsoftonline.com", ca_bundle: str | None = None,
                 *, clock: Callable[[], float] = time.time, timeout_s: float = 30.0,
                 transient_attempts: int = 4) -> None:
        self.transient_attempts = transient_attempts
        self.tenant_id = tenant_id
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.authority_host = authority_host.rstrip("/")
        self.ca_bundle = ca_bundle
        self._clock = clock
        self._timeout_s = timeout_s
        self._app: msal.ConfidentialClientApplication | None = None
        self._session: requests.Session | None = None
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.tokens_fetched = 0      # tokens Entra issued to this provider (cache hits not counted)

    def __repr__(self) -> str:
        return (f"EntraTokenProvider(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, "
                f"scope={self.scope!r}, authority_host={self.authority_host!r})")

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant_id}"

    def _msal(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            session = requests.Session()
            session.trust_env = False   # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE / proxies must not override verify
            session.verify = self.ca_bundle or True
            microsoft = (urlsplit(self.authority_host).hostname or "").lower() in MICROSOFT_HOSTS
            try:
                self._app = msal.ConfidentialClientApplication(
                    self.client_id, client_credential=self._secret, authority=self.authority,
                    http_client=session, timeout=self._timeout_s, token_cache=msal.TokenCache(),
                    instance_discovery=microsoft, validate_authority=microsoft)
            except _CALL_ERRORS as exc:
                session.close()
                raise _failure(f"Entra ID authority {self.authority} is not usable", exc, self._secret) from None
            self._session = session
        return self._app

    def _drop_from_cache(self, token: str) -> None:
        """Remove ``token`` from msal's cache (a no-op if msal never had it or already dropped it)."""
        if self._app is None or not token:
            return
        cache = self._app.token_cache
        entries = [e for e in cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN,
                                           query={"client_id": self.client_id})
                   if e.get("secret") == token]
        for entry in entries:
            cache.remove_at(entry)

    def get_token(self) -> str:
        """A valid access token; transient Entra failures (429, 5xx, network) are retried a few times
        with exponential backoff, permanent ones (bad secret, unknown scope) raise at once."""
        retrying = Retrying(retry=retry_if_exception(lambda e: isinstance(e, EntraAuthError) and e.transient),
                            stop=stop_after_attempt(self.transient_attempts),
                            wait=wait_exponential_jitter(initial=0.5, max=8), reraise=True)
        return retrying(self._get_token_once)

    def _get_token_once(self) -> str:
        with self._lock:
            if self._token is not None and self._clock() >= self._expires_at - REFRESH_MARGIN_S:
                # Our clock says the last token is (nearly) expired; msal's cache might still disagree.
                self._drop_from_cache(self._token)
                self._token = None
            app = self._msal()
            try:
                result = app.acquire_token_for_client(scopes=[self.scope])
            except _CALL_ERRORS as exc:
                raise _failure(f"could not get a token from Entra ID at {self.authority}", exc,
                               self._secret) from None
            if not result or "access_token" not in result:
                result = result or {}
                description = _scrub(str(result.get("error_description") or ""), self._secret)
                first_line = description.splitlines()[0] if description else ""
                raise EntraAuthError(
                    f"Entra ID refused a token for {self.scope} (tenant {self.tenant_id}, client "
                    f"{self.client_id}): {result.get('error', 'unknown_error')}: {first_line}",
                    error=result.get("error"), error_codes=result.get("error_codes"),
                    correlation_id=result.get("correlation_id"),
                    transient=result.get("error") in TRANSIENT_ERRORS)
            token = result["access_token"]
            if result.get("token_source") != "cache" or token != self._token:
                if result.get("token_source") != "cache":
                    self.tokens_fetched += 1
                    log.debug("Entra ID: new token for %s (expires in %ss)", self.scope, result.get("expires_in"))
                self._token = token
                self._expires_at = self._clock() + float(result.get("expires_in") or 3600)
            return token

    def invalidate(self, token: str) -> None:
        """An API refused ``token``: drop it from msal's cache so the next call fetches anew."""
        with self._lock:
            if token and self._token is not None and token != self._token:
                return   # a sibling thread already replaced it
            self._drop_from_cache(token or self._token or "")
            self._token = None
            self._expires_at = 0.0

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
            self._app = self._session = None
            self._token = None


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text
