"""Atlassian OAuth 2.0 (3LO): consent, code exchange, site choice, and a rotating-token provider.

Atlassian's refresh tokens rotate: every refresh returns a new one and invalidates the one sent;
reusing an old one more than 10 minutes later revokes the whole grant (API-FACTS.md §4.1). So:

- the credential (refresh token, access token, expiry, cloudId) lives encrypted in the vault;
- a refresh happens only under ``vault.locked(name)`` — one refresher at a time across every
  process on the database — and the new refresh token is written in the same transaction that read
  the old one;
- inside the lock the vault is re-read first: if a sibling already refreshed, its access token is
  used and no refresh is sent;
- on ``invalid_grant`` the vault is re-read once more; a fresher refresh token stored by another
  process is used; only when the stored token is the one just refused is the grant declared dead.

That mechanism is shared with every other rotating-token provider (``core.oauth_grant``); this module
sends Atlassian's token POSTs. The site (cloudId) is chosen explicitly at consent time from accessible-resources, never ``[0]``.
Tokens never appear in logs, exceptions or printed output.
"""

from __future__ import annotations

import html
import logging
import queue
import secrets
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from connector_pipelines.core.oauth_grant import (
    InvalidGrant,
    OAuthGrantError,
    TokenSet,
    VaultGrantProvider,
    describe_token_error,
    is_invalid_grant,
    token_post,
    token_set,
    utcnow,
)
from connector_pipelines.core.vault import Vault

log = logging.getLogger(__name__)

DEFAULT_AUTH_BASE = "https://auth.atlassian.com"
DEFAULT_API_BASE = "https://api.atlassian.com"
AUDIENCE = "api.atlassian.com"
CONSENT_HINT = "run `connector-pipelines jira consent` again"
DEFAULT_CONSENT_PORT = 8765   # the consent flow's local callback: http://localhost:8765/callback


class AtlassianAuthError(OAuthGrantError):
    """Consent, token exchange or refresh failed in a way retrying will not fix."""


@dataclass
class Site:
    id: str
    name: str
    url: str
    scopes: list[str] = field(default_factory=list)


def _client(transport: httpx.BaseTransport | None, timeout_s: float = 30.0) -> httpx.Client:
    return httpx.Client(transport=transport, timeout=timeout_s, trust_env=False)


def _token_post(client: httpx.Client, url: str, payload: dict[str, Any], *, attempts: int = 4) -> httpx.Response:
    """POST JSON to Atlassian's token endpoint (retry rules: ``core.oauth_grant.token_post``)."""
    return token_post(client, url, json=payload, attempts=attempts, system="the Atlassian",
                      error=AtlassianAuthError)


def _token_set(body: dict[str, Any], now: datetime) -> TokenSet:
    return token_set(body, now, system="the Atlassian", error=AtlassianAuthError)


def authorize_url(auth_base: str, client_id: str, redirect_uri: str, scopes: list[str], state: str) -> str:
    """The consent URL; ``offline_access`` is added when missing (without it no refresh token is issued)."""
    scopes = list(dict.fromkeys(scopes))
    if "offline_access" not in scopes:
        scopes.append("offline_access")
    query = urlencode({
        "audience": AUDIENCE,
        "client_id": client_id,
        "scope": " ".join(scopes),
        "redirect_uri": redirect_uri,
        "state": state,
        "response_type": "code",
        "prompt": "consent",
    })
    return f"{auth_base.rstrip('/')}/authorize?{query}"


def exchange_code(auth_base: str, client_id: str, client_secret: str, code: str, redirect_uri: str, *,
                  transport: httpx.BaseTransport | None = None) -> TokenSet:
    """Trade the authorization code for tokens (the code is single-use)."""
    with _client(transport) as client:
        now = utcnow()
        response = _token_post(client, f"{auth_base.rstrip('/')}/oauth/token", {
            "grant_type": "authorization_code",
            "client_id": client_id,
            "client_secret": client_secret,
            "code": code,
            "redirect_uri": redirect_uri,
        })
    if response.status_code != 200:
        raise AtlassianAuthError(f"the authorization code was refused ({describe_token_error(response)}); {CONSENT_HINT}")
    tokens = _token_set(response.json(), now)
    if not tokens.refresh_token:
        raise AtlassianAuthError("Atlassian issued no refresh token: the consent must include the "
                                 "offline_access scope")
    return tokens


def accessible_resources(api_base: str, access_token: str, *,
                         transport: httpx.BaseTransport | None = None) -> list[Site]:
    """The sites (cloudIds) the grant covers. The list is unordered: choose by url, never ``[0]``."""
    with _client(transport) as client:
        response = client.get(f"{api_base.rstrip('/')}/oauth/token/accessible-resources",
                              headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"})
    if response.status_code != 200:
        raise AtlassianAuthError(f"accessible-resources failed ({describe_token_error(response)})")
    return [Site(id=s["id"], name=s.get("name", ""), url=s["url"], scopes=list(s.get("scopes") or []))
            for s in response.json()]


def _norm_url(url: str) -> str:
    url = url.strip().rstrip("/").lower()
    if "://" not in url:
        url = "https://" + url
    return url


def choose_site(sites: list[Site], site_url: str | None) -> Site:
    """The site named by ``site_url``; the only site when none is named; otherwise refuse."""
    urls = ", ".join(sorted(s.url for s in sites)) or "(none)"
    if site_url:
        wanted = _norm_url(site_url)
        matches = [s for s in sites if _norm_url(s.url) == wanted]
        if len(matches) == 1:
            return matches[0]
        raise AtlassianAuthError(f"the consent does not cover the site {site_url!r}; the app can reach: {urls}. "
                                 f"Grant that site during consent or set site_url to one of these.")
    if not sites:
        raise AtlassianAuthError("the consent covers no Atlassian site: grant the app access to a Jira site")
    if len(sites) > 1:
        raise AtlassianAuthError(f"the consent covers {len(sites)} sites ({urls}); set site_url to choose one "
                                 "explicitly")
    return sites[0]


class AtlassianTokenProvider(VaultGrantProvider):
    """Hands out Atlassian access tokens backed by the vault (satisfies ``core.http.TokenProvider``).

    The lock / re-read / invalid_grant / sibling-refresh mechanism is ``core.oauth_grant.VaultGrantProvider``;
    this class sends Atlassian's refresh POST and knows its credential's extra fields (cloudId, site).
    ``clock`` (optional, keyword-only) replaces ``datetime.now(UTC)`` for tests that move time.
    """

    error = AtlassianAuthError

    def __init__(self, vault: Vault, credential_name: str, client_id: str, client_secret: str,
                 auth_base: str = DEFAULT_AUTH_BASE, *, transport: httpx.BaseTransport | None = None,
                 refresh_margin_s: float = 300, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(vault, credential_name, refresh_margin_s=refresh_margin_s, clock=clock)
        self.client_id = client_id
        self._client_secret = client_secret
        self.auth_base = auth_base.rstrip("/")
        self._http = _client(transport)

    def __repr__(self) -> str:
        return f"AtlassianTokenProvider(credential={self.credential_name!r}, client_id={self.client_id!r})"

    def close(self) -> None:
        self._http.close()

    def cloud_id(self) -> str:
        value = self._load(self.vault.get(self.credential_name))
        cloud_id = value.get("cloud_id")
        if not cloud_id:
            raise AtlassianAuthError(f"credential {self.credential_name!r} has no cloud_id; {CONSENT_HINT}")
        return cloud_id

    def site_url(self) -> str | None:
        return self._load(self.vault.get(self.credential_name)).get("site_url")

    # -- VaultGrantProvider hooks -----------------------------------------------------------------
    def _load(self, value: Any) -> dict[str, Any]:
        if not self._holds_grant(value):
            raise self._no_grant_error(value)
        return value

    def _no_grant_error(self, value: Any) -> Exception:
        if value is None:
            return AtlassianAuthError(f"no Atlassian credential {self.credential_name!r} in the vault; {CONSENT_HINT}")
        return AtlassianAuthError(f"credential {self.credential_name!r} is not an Atlassian grant; {CONSENT_HINT}")

    def _dead_grant_error(self) -> Exception:
        return AtlassianAuthError(
            f"Atlassian refused the refresh token of credential {self.credential_name!r} (invalid_grant: the "
            f"grant was revoked, expired after 90 days unused, or the rotated token was lost); {CONSENT_HINT}"
        )

    def _post_refresh(self, refresh_token: str) -> TokenSet:
        now = self._now()
        response = _token_post(self._http, f"{self.auth_base}/oauth/token", {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "refresh_token": refresh_token,
        })
        if is_invalid_grant(response):
            raise InvalidGrant()
        if response.status_code != 200:
            raise AtlassianAuthError(f"refreshing credential {self.credential_name!r} failed "
                                     f"({describe_token_error(response)})")
        return _token_set(response.json(), now)


# -- consent ----------------------------------------------------------------------------------------

class _CallbackServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def run_consent_flow(vault: Vault, credential_name: str, client_id: str, client_secret: str, *,
                     auth_base: str = DEFAULT_AUTH_BASE, api_base: str = DEFAULT_API_BASE,
                     site_url: str | None, scopes: list[str], port: int = DEFAULT_CONSENT_PORT, open_browser: bool = True,
                     transport: httpx.BaseTransport | None = None, timeout_s: float = 300,
                     redirect_uri: str | None = None,
                     notify: Callable[[str], None] | None = None) -> Site:
    """Interactive 3LO consent: local callback on 127.0.0.1:port, code exchange, explicit site choice.

    ``redirect_uri`` defaults to ``http://localhost:{port}/callback`` (register it as the app's
    callback URL). ``notify`` receives the human-readable messages (default: print to stdout); they
    contain the authorize URL but never a token.
    """
    say = notify or (lambda msg: print(msg, file=sys.stdout, flush=True))
    state = secrets.token_urlsafe(24)
    results: queue.Queue[tuple[str, str]] = queue.Queue()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    server = _CallbackServer(("127.0.0.1", port), _make_handler(results, outcome, done))
    port = server.server_address[1]
    redirect_uri = redirect_uri or f"http://localhost:{port}/callback"
    callback_path = urlsplit(redirect_uri).path or "/"
    server.callback_path = callback_path  # type: ignore[attr-defined]
    server.expected_state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="atlassian-consent-callback", daemon=True)
    thread.start()
    try:
        url = authorize_url(auth_base, client_id, redirect_uri, scopes, state)
        say(f"Open this URL in a browser to connect connector_pipelines to Atlassian:\n{url}")
        if open_browser:
            try:
                webbrowser.open(url)
            except Exception as exc:  # noqa: BLE001 - a headless host simply has no browser
                log.info("could not open a browser (%s); open the URL by hand", type(exc).__name__)
        try:
            kind, payload = results.get(timeout=timeout_s)
        except queue.Empty:
            raise AtlassianAuthError(f"no consent arrived at {redirect_uri} within {timeout_s:.0f} s") from None
        try:
            if kind == "error":
                raise AtlassianAuthError(f"consent failed: {payload}")
            tokens = exchange_code(auth_base, client_id, client_secret, payload, redirect_uri, transport=transport)
            sites = accessible_resources(api_base, tokens.access_token, transport=transport)
            site = choose_site(sites, site_url)
            value = {
                "refresh_token": tokens.refresh_token,
                "access_token": tokens.access_token,
                "expires_at": tokens.expires_at.isoformat(),
                "cloud_id": site.id,
                "site_url": site.url,
                "scopes": tokens.scope.split() if tokens.scope else list(scopes),
                "client_id": client_id,
                "consented_at": utcnow().isoformat(),
            }
            with vault.locked(credential_name) as cred:
                cred.set(value)
            outcome["ok"] = f"Connected to {site.url} (cloudId {site.id}). You can close this tab."
            say(f"Connected credential {credential_name!r} to {site.url} (cloudId {site.id}).")
            return site
        except AtlassianAuthError as exc:
            outcome["error"] = str(exc)
            raise
        except Exception as exc:
            outcome["error"] = f"consent failed: {type(exc).__name__}"
            raise
        finally:
            done.set()
    finally:
        done.set()
        # Let the callback handler finish its answer before the socket closes.
        deadline = time.monotonic() + 5
        while outcome.get("answered") is None and "code_received" in outcome and time.monotonic() < deadline:
            time.sleep(0.01)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _make_handler(results: queue.Queue, outcome: dict[str, Any], done: threading.Event):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, message: str) -> None:
            body = (f"<!doctype html><title>connector_pipelines</title><p>{html.escape(message)}</p>").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != self.server.callback_path:  # type: ignore[attr-defined]
                self._answer(404, "Not found")
                return
            if "code_received" in outcome:
                self._answer(409, "This consent was already completed.")
                return
            q = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if not secrets.compare_digest(q.get("state", ""), self.server.expected_state):  # type: ignore[attr-defined]
                self._answer(400, "State mismatch: this callback does not belong to the running consent.")
                return
            outcome["code_received"] = True
            if "error" in q:
                results.put(("error", f"{q['error']}: {q.get('error_description', '')}".strip(": ")))
            elif q.get("code"):
                results.put(("code", q["code"]))
            else:
                results.put(("error", "the callback carried no authorization code"))
            done.wait(timeout=120)
            try:
                if "ok" in outcome:
                    self._answer(200, outcome["ok"])
                else:
                    self._answer(400, outcome.get("error", "consent failed"))
            finally:
                outcome["answered"] = True

    return Handler
