"""monday.com auth: a personal or app API token, sent raw.

The token goes in the ``Authorization`` header as it is — no ``Bearer`` (API-FACTS §6.1; whether ``Bearer`` is
also accepted is UNCONFIRMED, so the client never sends it). The ``API-Version`` header pins the schema
(default ``2026-10``, the version of the SDL in shared/specs).

Where the token comes from:
- ``VaultToken``: read from the encrypted vault **at use time** (credential name configurable, default
  ``monday:default``; the stored value is ``{"token": "..."}``, a bare string is accepted too). It is kept in
  memory for ``cache_s`` seconds at most, and re-read at once when monday refuses it (a person rotated it in
  the vault): ``invalidate``.
- ``StaticToken``: a token passed in (tests, a one-off script). A plain ``str`` given to the client becomes one.

A token is never logged, never in a ``repr``, never in an exception. ``fingerprint`` (a truncated SHA-256) is
what may be shown, and what keys the process-wide rate governor.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from connector_pipelines.core.vault import Vault
from connector_pipelines.systems.monday.errors import MondayError

DEFAULT_CREDENTIAL = "monday:default"
DEFAULT_API_VERSION = "2026-10"


class MondayTokenError(MondayError):
    """The token could not be had (no such credential, or it holds no token)."""


@runtime_checkable
class TokenSource(Protocol):
    """Anything that hands out the raw monday token at use time (``invalidate`` is optional)."""

    def get_token(self) -> str: ...


def fingerprint(token: str) -> str:
    """A stable, non-reversible id of a token (16 hex chars of SHA-256): safe to log, keys the governor."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


class StaticToken:
    """A token given in code."""

    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token.strip():
            raise MondayTokenError("the monday token is empty")
        self._token = token.strip()

    def get_token(self) -> str:
        return self._token

    def invalidate(self, token: str | None = None) -> None:   # nothing to re-read
        return None

    def __repr__(self) -> str:
        return f"StaticToken(fingerprint={fingerprint(self._token)!r})"


class VaultToken:
    """The token stored in the vault under ``credential_name`` as ``{"token": "..."}``, read at use time."""

    def __init__(self, vault: Vault, credential_name: str = DEFAULT_CREDENTIAL, *, cache_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.vault = vault
        self.credential_name = credential_name
        self.cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._read_at = 0.0
        self.reads = 0

    def __repr__(self) -> str:
        return f"VaultToken(credential={self.credential_name!r})"

    def _read(self) -> str:
        value = self.vault.get(self.credential_name)
        self.reads += 1
        token = value.get("token") if isinstance(value, dict) else value
        if not isinstance(token, str) or not token.strip():
            what = "no credential" if value is None else "no monday token (expected {\"token\": \"...\"})"
            raise MondayTokenError(f"vault credential {self.credential_name!r} holds {what}")
        return token.strip()

    def get_token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now - self._read_at >= self.cache_s:
                self._token = self._read()
                self._read_at = now
            return self._token

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (monday refused it): the next ``get_token`` re-reads the vault."""
        with self._lock:
            if token is None or token == self._token:
                self._token = None


def token_source(token: str | TokenSource) -> TokenSource:
    """A ``TokenSource`` from a raw token string or a source."""
    if isinstance(token, str):
        return StaticToken(token)
    if hasattr(token, "get_token"):
        return token
    raise TypeError("token must be a str or a TokenSource (an object with get_token())")


__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_CREDENTIAL",
    "MondayTokenError",
    "StaticToken",
    "TokenSource",
    "VaultToken",
    "fingerprint",
    "token_source",
]
