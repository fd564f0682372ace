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

The site (cloudId) is chosen explicitly at consent time from accessible-resources, never ``[0]``.
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
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from connector_pipelines.core.vault import Vault

log = logging.getLogger(__name__)

DEFAULT_AUTH_BASE = "https://auth.atlassian.com"
DEFAULT_API_BASE = "https://api.atlassian.com"
AUDIENCE = "api.atlassian.com"
CONSENT_HINT = "run `connector-pipelines jira consent` again"
DEFAULT_CONSENT_PORT = 8765   # the consent flow's local callback: http://localhost:8765/callback


class AtlassianAuthError(Exception):
    """Consent, token exchange or refresh failed in a way retrying will not fix."""


@dataclass
class TokenSet:
    access_token: str
    refresh_token: str | None
    expires_at: datetime
    scope: str

    def __repr__(self) -> str:  # never print tokens
        return f"TokenSet(expires_at={self.expires_at.isoformat()}, scope={self.scope!r})"


@dataclass
class Site:
    id: str
    name: str
    url: str
    scopes: list[str] = field(default_factory=list)


class _InvalidGrant(Exception):
    pass


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _client(transport: httpx.BaseTransport | None, timeout_s: float = 30.0) -> httpx.Client:
    return httpx.Client(transport=transport, timeout=timeout_s, trust_env=False)


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:300]


def _describe(response: httpx.Response) -> str:
    body = _body(response)
    if isinstance(body, dict) and ("error" in body or "message" in body):
        err = body.get("error") or body.get("code")
        desc = body.get("error_description") or body.get("message") or ""
        return f"HTTP {response.status_code} {err}: {desc}".strip(": ")
    return f"HTTP {response.status_code}"


def _is_invalid_grant(response: httpx.Response) -> bool:
    body = _body(response)
    return response.status_code in (400, 401, 403) and isinstance(body, dict) and body.get("error") == "invalid_grant"


def _token_post(client: httpx.Client, url: str, payload: dict[str, Any], *, attempts: int = 4) -> httpx.Response:
    """POST to the token endpoint, retrying only where the server cannot have consumed the grant.

    Retried: connection failures before the request was sent, 429 and 5xx answers (the server
    refused before rotating). A read timeout is *not* retried for refresh grants by the caller's
    choice of ``attempts``: the token may have rotated server-side, and resending it would burn it.
    """
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            response = client.post(url, json=payload, headers={"Accept": "application/json"})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if attempt == attempts:
                raise AtlassianAuthError(f"cannot reach the Atlassian token endpoint {url}: {exc}") from None
            time.sleep(delay)
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
            time.sleep(wait)
            delay *= 2
            continue
        return response
    raise AssertionError("unreachable")


def _token_set(body: dict[str, Any], now: datetime) -> TokenSet:
    try:
        return TokenSet(
            access_token=body["access_token"],
            refresh_token=body.get("refresh_token"),
            expires_at=now + timedelta(seconds=float(body.get("expires_in", 3600))),
            scope=body.get("scope", ""),
        )
    except (KeyError, TypeError, ValueError):
        raise AtlassianAuthError("the Atlassian token endpoint answered without an access_token") from None


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
        now = _utcnow()
        response = _token_post(client, f"{auth_base.rstrip('/')}/oauth/token", {
            "grant_type": "authorization_code",
            "client_id": client_id,
            "client_secret": client_secret,
            "code": code,
            "redirect_uri": redirect_uri,
        })
    if response.status_code != 200:
        raise AtlassianAuthError(f"the authorization code was refused ({_describe(response)}); {CONSENT_HINT}")
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
        raise AtlassianAuthError(f"accessible-resources failed ({_describe(response)})")
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


class AtlassianTokenProvider:
    """Hands out Atlassian access tokens backed by the vault (satisfies ``core.http.TokenProvider``).

    ``clock`` (optional, keyword-only) replaces ``datetime.now(UTC)`` for tests that move time.
    """

    def __init__(self, vault: Vault, credential_name: str, client_id: str, client_secret: str,
                 auth_base: str = DEFAULT_AUTH_BASE, *, transport: httpx.BaseTransport | None = None,
                 refresh_margin_s: float = 300, clock: Callable[[], datetime] | None = None) -> None:
        self.vault = vault
        self.credential_name = credential_name
        self.client_id = client_id
        self._client_secret = client_secret
        self.auth_base = auth_base.rstrip("/")
        self.refresh_margin = timedelta(seconds=refresh_margin_s)
        self._now = clock or _utcnow
        self._http = _client(transport)
        self._lock = threading.Lock()
        self._cached: tuple[str, datetime] | None = None
        self._invalid: dict[str, None] = {}  # insertion-ordered, bounded
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"AtlassianTokenProvider(credential={self.credential_name!r}, client_id={self.client_id!r})"

    # -- TokenProvider ----------------------------------------------------------------------------
    def get_token(self) -> str:
        with self._lock:
            if self._cached and self._usable_token(*self._cached):
                return self._cached[0]
            value = self._load(self.vault.get(self.credential_name))
            if self._usable(value):
                return self._remember(value)
            return self._refresh(force=False)

    def invalidate(self, token: str) -> None:
        with self._lock:
            self._invalid[token] = None
            while len(self._invalid) > 64:
                self._invalid.pop(next(iter(self._invalid)))
            if self._cached and self._cached[0] == token:
                self._cached = None

    def close(self) -> None:
        self._http.close()

    def refresh(self) -> str:
        """Rotate now, whatever the access token's age (keeps a quiet grant inside the 90-day window)."""
        with self._lock:
            return self._refresh(force=True)

    def cloud_id(self) -> str:
        value = self._load(self.vault.get(self.credential_name))
        cloud_id = value.get("cloud_id")
        if not cloud_id:
            raise AtlassianAuthError(f"credential {self.credential_name!r} has no cloud_id; {CONSENT_HINT}")
        return cloud_id

    def site_url(self) -> str | None:
        return self._load(self.vault.get(self.credential_name)).get("site_url")

    # -- internals --------------------------------------------------------------------------------
    def _load(self, value: Any) -> dict[str, Any]:
        if value is None:
            raise AtlassianAuthError(f"no Atlassian credential {self.credential_name!r} in the vault; {CONSENT_HINT}")
        if not isinstance(value, dict) or not value.get("refresh_token"):
            raise AtlassianAuthError(f"credential {self.credential_name!r} is not an Atlassian grant; {CONSENT_HINT}")
        return value

    def _usable_token(self, token: str | None, expires_at: datetime | None) -> bool:
        return bool(token) and token not in self._invalid and expires_at is not None \
            and expires_at - self._now() > self.refresh_margin

    def _usable(self, value: dict[str, Any]) -> bool:
        return self._usable_token(value.get("access_token"), _parse_dt(value.get("expires_at")))

    def _remember(self, value: dict[str, Any]) -> str:
        self._cached = (value["access_token"], _parse_dt(value["expires_at"]))
        return value["access_token"]

    def _refresh(self, *, force: bool) -> str:
        refused: str | None = None
        for _ in range(2):
            with self.vault.locked(self.credential_name) as cred:
                value = self._load(cred.value)
                if refused is not None:
                    if value["refresh_token"] == refused:
                        break  # nobody stored a fresher token: the grant is dead
                    # A sibling stored a newer refresh token (and maybe a fresh access token).
                    if self._usable(value):
                        return self._remember(value)
                elif not force and self._usable(value):
                    return self._remember(value)  # a sibling refreshed while we waited for the lock
                sent = value["refresh_token"]
                try:
                    tokens = self._post_refresh(sent)
                except _InvalidGrant:
                    refused = sent
                    continue  # leave the transaction, then re-read the vault
                new_value = dict(value)
                new_value.update(
                    access_token=tokens.access_token,
                    refresh_token=tokens.refresh_token or sent,
                    expires_at=tokens.expires_at.isoformat(),
                    refreshed_at=self._now().isoformat(),
                )
                if tokens.scope:
                    new_value["scopes"] = tokens.scope.split()
                cred.set(new_value)
            self.refreshes += 1
            return self._remember(new_value)
        self._cached = None
        raise AtlassianAuthError(
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
        if _is_invalid_grant(response):
            log.warning("Atlassian refused the refresh token of %s (invalid_grant); re-reading the vault",
                        self.credential_name)
            raise _InvalidGrant()
        if response.status_code != 200:
            raise AtlassianAuthError(f"refreshing credential {self.credential_name!r} failed ({_describe(response)})")
        return _token_set(response.json(), now)


def _parse_dt(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


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
                "consented_at": _utcnow().isoformat(),
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
