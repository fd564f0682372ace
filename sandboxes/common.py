"""What every sandbox shares: a controllable clock, switchable faults and a loopback server.

Each sandbox module exposes a class that owns its state (records, tokens, subscriptions), a
``clock`` and a ``faults`` object, and builds a Starlette ``app``. Tests drive faults and time
directly on those objects; the same app runs in-process (``sync_transport``) or on a loopback port
(``SandboxServer``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Self

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)


class DeliveryPump:
    """The vendor's own delivery loop, in a background thread: ``deliver()`` every ``interval_s`` (demo).

    A failing delivery is logged and the loop goes on; ``stop`` ends it and waits for the thread.
    """

    def __init__(self, name: str, deliver: Callable[[], object]) -> None:
        self.name = name
        self.deliver = deliver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval_s: float) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.deliver()
                except Exception:   # a background pump must not die
                    log.exception("%s: delivery failed", self.name)

        self._thread = threading.Thread(target=loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=10)
        self._thread = None


class SandboxClock:
    """Wall-clock time plus an offset the tests control (token, webhook and subscription expiry)."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def timestamp(self) -> float:
        return self.now().timestamp()

    def advance(self, seconds: float = 0, **kwargs: float) -> None:
        with self._lock:
            self._offset += timedelta(seconds=seconds, **kwargs)


@dataclass
class Faults:
    """Switchable faults applied to every request that reaches a sandbox.

    - ``latency_s``: sleep before answering each request (per call, like a WAN round trip).
    - ``rate_limit_next``: the next N requests get the vendor's 429 (see ``SandboxApp.rate_limit_response``).
    - ``server_error_next``: the next N requests get a 5xx (``server_error_status``).
    - ``retry_after``: the Retry-After value sent with 429/503 (seconds as a string, or an HTTP date).
    Only paths for which ``applies_to(path)`` is true are affected (by default all of them).
    """

    latency_s: float = 0.0
    rate_limit_next: int = 0
    server_error_next: int = 0
    server_error_status: int = 503
    retry_after: str | None = "1"
    applies_to: Callable[[str], bool] = field(default=lambda path: True)
    served_429: int = 0
    served_5xx: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, path: str) -> str | None:
        """Decide the fault for one request: 'rate_limit', 'server_error' or None."""
        if not self.applies_to(path):
            return None
        with self._lock:
            if self.rate_limit_next > 0:
                self.rate_limit_next -= 1
                self.served_429 += 1
                return "rate_limit"
            if self.server_error_next > 0:
                self.server_error_next -= 1
                self.served_5xx += 1
                return "server_error"
        return None


class FaultMiddleware:
    """ASGI middleware: latency, then 429 storms and 5xx as configured on ``faults``.

    ``rate_limit_response(retry_after)`` and ``server_error_response(status, retry_after)`` build the
    vendor-specific bodies and headers; ``count`` is called for every request (for call counters).
    """

    def __init__(
        self,
        app: ASGIApp,
        faults: Faults,
        rate_limit_response: Callable[[str | None], Response],
        server_error_response: Callable[[int, str | None], Response],
        count: Callable[[Request], None] | None = None,
    ) -> None:
        self.app = app
        self.faults = faults
        self.rate_limit_response = rate_limit_response
        self.server_error_response = server_error_response
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.count is not None:
            self.count(Request(scope))
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)
        fault = self.faults.take(scope["path"])
        if fault == "rate_limit":
            await self.rate_limit_response(self.faults.retry_after)(scope, receive, send)
            return
        if fault == "server_error":
            response = self.server_error_response(self.faults.server_error_status, self.faults.retry_after)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def default_rate_limit_response(retry_after: str | None) -> Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return JSONResponse({"error": {"code": "TooManyRequests", "message": "Too many requests"}}, 429, headers)


def default_server_error_response(status: int, retry_after: str | None) -> Response:
    headers = {"Retry-After": retry_after} if retry_after and status in (502, 503) else {}
    return JSONResponse({"error": {"code": "ServiceUnavailable", "message": "Try again later"}}, status, headers)


def bearer_token(request: Request) -> str:
    """The token of an ``Authorization: Bearer ...`` header ('' when there is none)."""
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


def count_call(sandbox, request: Request, template: str) -> None:
    """Count one request on a sandbox's ``calls`` (per method and route template) and ``calls_total``."""
    with sandbox._lock:
        sandbox.calls_total += 1
        sandbox.calls[(request.method.upper(), template)] += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SandboxServer:
    """Serve an ASGI app on a loopback port in a background thread (optionally over TLS)."""

    def __init__(
        self,
        app: ASGIApp,
        port: int = 0,
        host: str = "127.0.0.1",
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.tls = ssl_certfile is not None
        config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            log_level="warning",
            access_log=False,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            lifespan="off",
            timeout_keep_alive=5,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"sandbox:{self.port}", daemon=True)

    @property
    def base_url(self) -> str:
        host = "localhost" if self.tls else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> SandboxServer:
        self._thread.start()
        return self.wait_started(timeout)

    def wait_started(self, timeout: float = 10.0) -> SandboxServer:
        """Wait for a server whose thread was started (``start`` does both; ``stack.start_all`` starts several
        threads first, then waits for each)."""
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"sandbox server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        # Clients' idle keep-alive connections would hold a graceful shutdown for its whole timeout and
        # end in uvicorn's "timeout graceful shutdown exceeded" ERROR line: a sandbox stops at once.
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sync_transport(app: ASGIApp) -> httpx.BaseTransport:
    """An httpx *sync* transport that calls an ASGI app in-process (for unit tests)."""
    from starlette.testclient import TestClient

    client = TestClient(app, raise_server_exceptions=True)
    return client._transport  # the TestClient's own sync ASGI transport
