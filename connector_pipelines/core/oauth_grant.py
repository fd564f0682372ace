"""An OAuth 2.0 grant kept in the vault, refreshed race-safely with rotating refresh tokens.

Some vendors rotate the refresh token on every use: the refresh answers a new one and the token sent is
spent (Atlassian 3LO, API-FACTS §4.1; Acumatica's identity server, §3). Two processes that refresh with
the same token at once lose the grant. ``VaultGrantProvider`` owns the one mechanism every such
provider shares; a vendor's provider delegates only the token POSTs:

- the grant (access token, refresh token, expiry, plus whatever the vendor keeps beside it) lives
  encrypted in the vault under one credential name;
- a refresh happens only under ``vault.locked(name)`` (one refresher at a time across every process
  on the database) and the new refresh token is stored before the lock is released;
- inside the lock the vault is re-read first: if a sibling already refreshed, its access token is
  used and no refresh is sent;
- on ``invalid_grant`` the lock is released and the vault re-read once more: a fresher refresh token
  stored by a sibling is used; only when the stored token is the one just refused is the grant dead;
- a provider that can obtain a grant without a refresh token (``_bootstrap``: Acumatica's password
  grant) does so, under the same lock, when the vault holds no grant or the grant is dead.

Subclasses implement ``_post_refresh`` (raise ``InvalidGrant`` on invalid_grant) and may override
``_bootstrap``, ``_holds_grant``, ``_no_grant_error``, ``_dead_grant_error`` and ``_merge``.
Tokens never appear in logs, exceptions, reprs or printed output.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from connector_pipelines.core.vault import Vault

log = logging.getLogger(__name__)


class OAuthGrantError(Exception):
    """The grant cannot be used or renewed in a way retrying will not fix."""


class InvalidGrant(Exception):
    """The token endpoint answered ``invalid_grant`` for the refresh token (or code, or password) sent."""


@dataclass
class TokenSet:
    access_token: str
    refresh_token: str | None
    expires_at: datetime
    scope: str

    def __repr__(self) -> str:  # never print tokens
        return f"TokenSet(expires_at={self.expires_at.isoformat()}, scope={self.scope!r})"


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_dt(value: Any) -> datetime | None:
    """An ISO-8601 text (or a datetime) as an aware datetime (naive = UTC); None when absent or unparseable."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def response_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:300]


def describe_token_error(response: httpx.Response) -> str:
    """``HTTP 400 invalid_grant: <description>`` from an RFC 6749 error body (or a vendor's message); no tokens."""
    body = response_json(response)
    if isinstance(body, dict) and ("error" in body or "message" in body):
        err = body.get("error") or body.get("code")
        desc = body.get("error_description") or body.get("message") or ""
        return f"HTTP {response.status_code} {err}: {desc}".strip(": ")
    return f"HTTP {response.status_code}"


def is_invalid_grant(response: httpx.Response) -> bool:
    body = response_json(response)
    return response.status_code in (400, 401, 403) and isinstance(body, dict) and body.get("error") == "invalid_grant"


def token_post(client: httpx.Client, url: str, *, json: dict[str, Any] | None = None,
               data: dict[str, Any] | None = None, attempts: int = 4, system: str = "the",
               error: type[Exception] = OAuthGrantError,
               sleep: Callable[[float], None] = time.sleep) -> httpx.Response:
    """POST to a token endpoint (JSON or form body), retrying only where the server cannot have consumed the grant.

    Retried: connection failures before the request was sent, 429 and 5xx answers (the server refused
    before rotating). A read timeout is *not* retried: the token may have rotated server-side, and
    resending it would burn it. The last 429/5xx answer is returned; ``error`` is raised when the
    endpoint cannot be reached at all.
    """
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            response = client.post(url, json=json, data=data, headers={"Accept": "application/json"})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if attempt == attempts:
                raise error(f"cannot reach {system} token endpoint {url}: {exc}") from None
            sleep(delay)
            delay *= 2
            continue
        if response.status_code == 429 or response.status_code >= 500:
            if attempt == attempts:
                return response
            retry_after = response.headers.get("Retry-After")
            try:
                wait = min(30.0, float(retry_after)) if retry_after else delay
            except ValueError:
                wait = delay
            sleep(wait)
            delay *= 2
            continue
        return response
    raise AssertionError("unreachable")


def token_set(body: Any, now: datetime, *, system: str = "the",
              error: type[Exception] = OAuthGrantError) -> TokenSet:
    """A token endpoint's 200 answer as a TokenSet (``expires_in`` defaults to an hour)."""
    try:
        return TokenSet(
            access_token=body["access_token"],
            refresh_token=body.get("refresh_token"),
            expires_at=now + timedelta(seconds=float(body.get("expires_in", 3600))),
            scope=body.get("scope", "") or "",
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise error(f"{system} token endpoint answered without an access_token") from None


class VaultGrantProvider:
    """Hands out access tokens of a grant kept in the vault (satisfies ``core.http.TokenProvider``).

    ``clock`` (optional) replaces ``datetime.now(UTC)`` for tests that move time. ``refreshes`` counts
    refresh-token grants this provider sent successfully, ``bootstraps`` the grants it obtained anew.
    """

    error: type[Exception] = OAuthGrantError

    def __init__(self, vault: Vault, credential_name: str, *, refresh_margin_s: float = 300,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.vault = vault
        self.credential_name = credential_name
        self.refresh_margin = timedelta(seconds=refresh_margin_s)
        self._now = clock or utcnow
        self._lock = threading.Lock()
        self._cached: tuple[str, datetime] | None = None
        self._invalid: dict[str, None] = {}  # insertion-ordered, bounded
        self.refreshes = 0
        self.bootstraps = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(credential={self.credential_name!r})"

    # -- TokenProvider ----------------------------------------------------------------------------
    def get_token(self) -> str:
        with self._lock:
            if self._cached and self._usable_token(*self._cached):
                return self._cached[0]
            value = self.vault.get(self.credential_name)
            if self._holds_grant(value):
                if self._usable(value):
                    return self._remember(value)
            elif not self._can_bootstrap():
                raise self._no_grant_error(value)
            return self._refresh(force=False)

    def invalidate(self, token: str) -> None:
        with self._lock:
            self._invalid[token] = None
            while len(self._invalid) > 64:
                self._invalid.pop(next(iter(self._invalid)))
            if self._cached and self._cached[0] == token:
                self._cached = None

    def close(self) -> None:
        pass

    def refresh(self) -> str:
        """Rotate now, whatever the access token's age (keeps a quiet grant alive)."""
        with self._lock:
            return self._refresh(force=True)

    # -- hooks ------------------------------------------------------------------------------------
    def _post_refresh(self, refresh_token: str) -> TokenSet:
        """Send the refresh-token grant; raise ``InvalidGrant`` when the endpoint answers invalid_grant."""
        raise NotImplementedError

    def _can_bootstrap(self) -> bool:
        """Whether ``_bootstrap`` can obtain a grant without a refresh token."""
        return False

    def _bootstrap(self) -> TokenSet:
        """Obtain a new grant without a refresh token (e.g. the password grant). Called under the lock."""
        raise NotImplementedError

    def _holds_grant(self, value: Any) -> bool:
        """Whether a vault value is a grant this provider can use (default: a dict with a refresh token)."""
        return isinstance(value, dict) and bool(value.get("refresh_token"))

    def _no_grant_error(self, value: Any) -> Exception:
        return self.error(f"no usable grant in credential {self.credential_name!r}")

    def _dead_grant_error(self) -> Exception:
        return self.error(f"the refresh token of credential {self.credential_name!r} was refused (invalid_grant)")

    def _merge(self, previous: dict[str, Any], tokens: TokenSet, sent: str | None) -> dict[str, Any]:
        """The value to store after a refresh (``sent`` = the refresh token used) or a bootstrap (``sent`` None)."""
        value = dict(previous)
        value.update(
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token or sent,
            expires_at=tokens.expires_at.isoformat(),
            refreshed_at=self._now().isoformat(),
        )
        if tokens.scope:
            value["scopes"] = tokens.scope.split()
        return value

    # -- internals --------------------------------------------------------------------------------
    def _usable_token(self, token: str | None, expires_at: datetime | None) -> bool:
        return bool(token) and token not in self._invalid and expires_at is not None \
            and expires_at - self._now() > self.refresh_margin

    def _usable(self, value: dict[str, Any]) -> bool:
        return self._usable_token(value.get("access_token"), parse_dt(value.get("expires_at")))

    def _remember(self, value: dict[str, Any]) -> str:
        self._cached = (value["access_token"], parse_dt(value["expires_at"]))
        return value["access_token"]

    def _refresh(self, *, force: bool) -> str:
        refused: str | None = None
        for _ in range(2):
            with self.vault.locked(self.credential_name) as cred:
                value = cred.value if self._holds_grant(cred.value) else None
                if value is not None:
                    if refused is not None:
                        if value.get("refresh_token") != refused and self._usable(value):
                            return self._remember(value)  # a sibling stored a fresher grant
                    elif not force and self._usable(value):
                        return self._remember(value)  # a sibling refreshed while we waited for the lock
                sent = value.get("refresh_token") if value is not None else None
                if not sent or sent == refused:
                    # No grant, no refresh token, or the grant is dead: obtain a new one if this provider can.
                    if not self._can_bootstrap():
                        if value is None:
                            raise self._no_grant_error(cred.value)
                        break
                    new_value = self._merge(value or {}, self._bootstrap(), None)
                    cred.set(new_value)
                    self.bootstraps += 1
                    return self._remember(new_value)
                try:
                    tokens = self._post_refresh(sent)
                except InvalidGrant:
                    log.warning("the token endpoint refused the refresh token of %s (invalid_grant); "
                                "re-reading the vault", self.credential_name)
                    refused = sent
                    continue  # leave the lock, then re-read the vault
                new_value = self._merge(value or {}, tokens, sent)
                cred.set(new_value)
            self.refreshes += 1
            return self._remember(new_value)
        self._cached = None
        raise self._dead_grant_error()
