"""The resilient HTTP client every system module uses.

- 429 / 503 (and 502, 504, 408): honour ``Retry-After`` (seconds or an HTTP date); otherwise
  exponential backoff with jitter; bounded attempts and total wait.
- Transport errors (connect, read timeouts) are retried the same way — for non-idempotent writes
  (``idempotent=False``) only what cannot have reached the vendor: a 429 and a connection never opened.
- 401: ask the token provider for a fresh token once and retry the request once.
- Any other 4xx/5xx raises ``ApiError`` carrying status, the vendor's error body and the
  vendor's reason header (e.g. Jira's ``RateLimit-Reason``) — never the request's secrets.
Every call is counted per client (``calls``, ``calls_by_endpoint``) for run metadata and benchmarks.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class TokenProvider(Protocol):
    """Anything that can hand out a bearer token and be told the last one was refused."""

    def get_token(self) -> str: ...

    def invalidate(self, token: str) -> None: ...


class ApiError(Exception):
    """A vendor answered with an error that retrying will not fix (or retries ran out)."""

    def __init__(self, system: str, method: str, url: str, status: int, body: Any, reason: str | None = None):
        self.system = system
        self.method = method
        self.url = url
        self.status = status
        self.body = body
        self.reason = reason
        super().__init__(f"{system} {method} {url} -> HTTP {status}: {summarise_error_body(body)}"
                         + (f" (reason: {reason})" if reason else ""))

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUS


class RetryableHTTPStatus(Exception):
    def __init__(self, response: httpx.Response, wait_s: float | None):
        self.response = response
        self.wait_s = wait_s
        super().__init__(f"HTTP {response.status_code}")


def summarise_error_body(body: Any) -> str:
    """One line from the usual vendor error shapes (OData, Jira ErrorCollection, OAuth)."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")
        if isinstance(err, str):
            return f"{err}: {body.get('error_description', '')}".strip(": ")
        msgs = list(body.get("errorMessages") or [])
        errors = body.get("errors")
        if isinstance(errors, dict):
            msgs += [f"{k}: {v}" for k, v in errors.items()]
        if msgs:
            return "; ".join(str(m) for m in msgs)
    text = str(body)
    return text[:300]


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as delay-seconds or an HTTP date; None if absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_total_wait_s: float = 300.0
    max_retry_after_s: float = 120.0


def response_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


_SSL_CONTEXTS: dict[tuple[Any, ...], ssl.SSLContext] = {}
_SSL_LOCK = threading.Lock()


def ssl_context(verify: bool | str | ssl.SSLContext) -> bool | str | ssl.SSLContext:
    """One shared SSL context per CA bundle (``True``: the default bundle) instead of one per client.

    Building a context loads the whole bundle (~100 ms of CPU), and every run builds its clients anew; a
    context is safe to share between clients and threads. A bundle file that changes (its mtime) gets a
    new context; ``False``, a context given by the caller, or a path that cannot be read pass through."""
    if verify is False or isinstance(verify, ssl.SSLContext):
        return verify
    try:
        key: tuple[Any, ...] = (verify, os.stat(verify).st_mtime_ns) if isinstance(verify, str) else (True,)
    except OSError:
        return verify   # httpx reports the missing bundle as before
    with _SSL_LOCK:
        ctx = _SSL_CONTEXTS.get(key)
        if ctx is None:
            ctx = _SSL_CONTEXTS[key] = httpx.create_ssl_context(verify=verify, trust_env=False)
        return ctx


class ResilientClient:
    """A thread-safe wrapper around ``httpx.Client`` with the retry, auth and counting rules above."""

    def __init__(
        self,
        system: str,
        base_url: str,
        auth: TokenProvider | None = None,
        *,
        timeout_s: float = 30.0,
        retry: RetrySettings | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: bool | str = True,
        reason_header: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_connections: int = 20,
    ) -> None:
        self.system = system
        self.auth = auth
        self.retry = retry or RetrySettings()
        self.reason_header = reason_header
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            headers=dict(headers or {}),
            transport=transport,
            verify=ssl_context(verify) if transport is None else verify,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,
        )
        self._lock = threading.Lock()
        self.calls = 0
        self.calls_by_endpoint: Counter[str] = Counter()
        self.retries = 0
        self.waited_s = 0.0

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    def close(self) -> None:
        self._client.close()

    def _count(self, method: str, url: str) -> None:
        path = url.split("?", 1)[0]
        with self._lock:
            self.calls += 1
            self.calls_by_endpoint[f"{method} {path}"] += 1

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableHTTPStatus) and exc.wait_s is not None:
            wait = min(exc.wait_s, self.retry.max_retry_after_s)
        else:
            base = self.retry.initial_backoff_s * (2 ** (state.attempt_number - 1))
            wait = min(self.retry.max_backoff_s, base) * random.uniform(0.5, 1.5)
        with self._lock:
            self.retries += 1
            self.waited_s += wait
        log.info("%s: retrying after %.2fs (attempt %d): %s", self.system, wait, state.attempt_number, exc)
        return wait

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        expected: tuple[int, ...] = (),
        idempotent: bool = True,
    ) -> httpx.Response:
        """Send one logical request; returns the response for 2xx (or any status in ``expected``).

        ``idempotent=False`` (a posting, a release, a workflow step): re-sent only when the vendor cannot have
        acted on it — a 429 (refused before processing) or a connection that never opened. A timeout, a reset
        or a 5xx may have come after the vendor acted: the error is raised (transient) and the caller's retry
        re-reads the document's state before acting again."""
        refreshed = False

        def attempt() -> httpx.Response:
            nonlocal refreshed
            hdrs = dict(headers or {})
            token = None
            if self.auth is not None:
                token = self.auth.get_token()
                hdrs["Authorization"] = f"Bearer {token}"
            self._count(method, url)
            response = self._client.request(method, url, params=params, json=json, data=data,
                                            content=content, headers=hdrs)
            status = response.status_code
            if status == 401 and self.auth is not None and not refreshed:
                refreshed = True
                self.auth.invalidate(token or "")
                return attempt()
            if status in expected or 200 <= status < 300:
                return response
            if status in RETRYABLE_STATUS:
                raise RetryableHTTPStatus(response, parse_retry_after(response.headers.get("Retry-After")))
            raise ApiError(self.system, method, url, status, response_body(response),
                           response.headers.get(self.reason_header) if self.reason_header else None)

        def retryable(e: BaseException) -> bool:
            if idempotent:
                return isinstance(e, (RetryableHTTPStatus, httpx.TransportError))
            if isinstance(e, RetryableHTTPStatus):
                return e.response.status_code == 429
            return isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout))

        retrying = Retrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(self.retry.max_attempts) | stop_after_delay(self.retry.max_total_wait_s),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except RetryableHTTPStatus as exc:
            r = exc.response
            raise ApiError(self.system, method, url, r.status_code, response_body(r),
                           r.headers.get(self.reason_header) if self.reason_header else None) from None

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", url, **kw)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": self.calls, "retries": self.retries, "waited_s": round(self.waited_s, 2)}
