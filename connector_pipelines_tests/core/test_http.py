"""The resilient HTTP client's rules, on a scripted transport (no sleeping: waits are recorded)."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from connector_pipelines.core.http import ApiError, ResilientClient, RetrySettings, parse_retry_after


class Tokens:
    def __init__(self):
        self.n = 0
        self.invalidated = []

    def get_token(self):
        return f"t{self.n}"

    def invalidate(self, token):
        self.invalidated.append(token)
        self.n += 1


def client(responses, auth=None, **retry):
    seen = []

    def handler(request):
        seen.append(request)
        return responses.pop(0)

    waits = []
    c = ResilientClient("vendor", "http://vendor.test", auth, transport=httpx.MockTransport(handler),
                        retry=RetrySettings(**retry) if retry else None, sleep=waits.append,
                        reason_header="RateLimit-Reason")
    return c, seen, waits


def test_retry_after_seconds_and_http_date():
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None) is None


def test_429_honours_retry_after_then_succeeds():
    c, seen, waits = client([httpx.Response(429, headers={"Retry-After": "3"}),
                             httpx.Response(503, headers={"Retry-After": "1"}), httpx.Response(200, json={"ok": 1})])
    assert c.get("/x").json() == {"ok": 1}
    assert waits == [3.0, 1.0] and len(seen) == 3 and c.stats()["retries"] == 2


def test_without_retry_after_backoff_is_exponential_with_jitter_and_bounded():
    c, seen, waits = client([httpx.Response(429)] * 4, max_attempts=4, initial_backoff_s=1.0, max_backoff_s=3.0)
    with pytest.raises(ApiError) as err:
        c.get("/x")
    assert err.value.status == 429 and len(seen) == 4
    assert len(waits) == 3
    assert 0.5 <= waits[0] <= 1.5 and 1.0 <= waits[1] <= 3.0 and waits[2] <= 4.5


def test_retry_after_is_capped():
    c, _seen, waits = client([httpx.Response(429, headers={"Retry-After": "99999"}), httpx.Response(200)],
                             max_retry_after_s=10)
    c.get("/x")
    assert waits == [10]


def test_401_refreshes_the_token_once_and_retries_once():
    tokens = Tokens()
    c, seen, _ = client([httpx.Response(401), httpx.Response(200, json={})], auth=tokens)
    c.get("/x")
    assert tokens.invalidated == ["t0"]
    assert [r.headers["Authorization"] for r in seen] == ["Bearer t0", "Bearer t1"]
    tokens2 = Tokens()
    c2, seen2, _ = client([httpx.Response(401), httpx.Response(401, json={"error": "no"})], auth=tokens2)
    with pytest.raises(ApiError) as err:
        c2.get("/x")
    assert err.value.status == 401 and len(seen2) == 2 and tokens2.invalidated == ["t0"]


def test_permanent_errors_raise_at_once_with_the_vendors_reason():
    c, seen, waits = client([httpx.Response(400, json={"errorMessages": ["bad jql"], "errors": {}},
                                            headers={"RateLimit-Reason": "jira-burst-based"})])
    with pytest.raises(ApiError) as err:
        c.get("/x")
    assert len(seen) == 1 and waits == []
    assert "bad jql" in str(err.value) and err.value.reason == "jira-burst-based"


def test_transport_errors_are_retried():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    waits = []
    c = ResilientClient("v", "http://v.test", transport=httpx.MockTransport(handler), sleep=waits.append)
    assert c.get("/x").status_code == 200 and len(calls) == 3 and len(waits) == 2


def test_clients_share_one_ssl_context_per_ca_bundle_and_still_verify(tmp_path):
    """Building a context loads the whole CA bundle (~100 ms of CPU per client, per run): one is shared per
    bundle, rebuilt when the file changes, and a client still trusts exactly that bundle."""
    import os

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from connector_pipelines.core.http import ssl_context
    from sandboxes.common import SandboxServer
    from sandboxes.tls import make_tls

    tls = make_tls(tmp_path / "tls")
    bundle = str(tls.ca_bundle)
    assert ssl_context(bundle) is ssl_context(bundle)
    assert ssl_context(True) is ssl_context(True) and ssl_context(True) is not ssl_context(bundle)
    assert ssl_context(False) is False and ssl_context(str(tmp_path / "missing.pem")) == str(tmp_path / "missing.pem")
    first = ssl_context(bundle)
    os.utime(bundle, ns=(os.stat(bundle).st_atime_ns, os.stat(bundle).st_mtime_ns + 10**9))
    assert ssl_context(bundle) is not first     # a renewed bundle is read again

    app = Starlette(routes=[Route("/ping", lambda request: JSONResponse({"ok": True}))])
    with SandboxServer(app, ssl_certfile=str(tls.server_cert), ssl_keyfile=str(tls.server_key)) as server:
        trusting = ResilientClient("test", server.base_url, verify=bundle, retry=RetrySettings(max_attempts=1))
        assert trusting.get("/ping").json() == {"ok": True}
        strangers = ResilientClient("test", server.base_url, retry=RetrySettings(max_attempts=1))
        with pytest.raises(httpx.ConnectError):
            strangers.get("/ping")
        trusting.close()
        strangers.close()


# -- non-idempotent writes (a posting, a release): re-sent only when the vendor cannot have acted ----------
@pytest.mark.parametrize("answer", [httpx.Response(502), httpx.Response(503, headers={"Retry-After": "1"}),
                                    httpx.Response(504), httpx.Response(500)])
def test_a_non_idempotent_write_answered_5xx_is_sent_once(answer):
    c, seen, waits = client([answer, httpx.Response(204)])
    with pytest.raises(ApiError) as err:
        c.post("/Bill/ReleaseBill", json={}, idempotent=False)
    assert err.value.status == answer.status_code and len(seen) == 1 and waits == []


def test_a_non_idempotent_write_refused_with_429_is_sent_again():
    c, seen, waits = client([httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(204)])
    assert c.post("/Bill/ReleaseBill", json={}, idempotent=False).status_code == 204
    assert len(seen) == 2 and waits == [2.0]


def test_a_non_idempotent_write_is_resent_after_a_refused_connection_never_after_a_read_timeout():
    attempts = []

    def handler(kind):
        def handle(request):
            attempts.append(kind)
            if len(attempts) == 1:
                raise (httpx.ConnectError("refused") if kind == "connect" else httpx.ReadTimeout("no answer"))
            return httpx.Response(204)
        return handle

    for kind, sent in (("connect", 2), ("read", 1)):
        attempts.clear()
        c = ResilientClient("vendor", "http://vendor.test", transport=httpx.MockTransport(handler(kind)),
                            sleep=lambda _s: None)
        if kind == "connect":
            assert c.post("/post", idempotent=False).status_code == 204
        else:
            with pytest.raises(httpx.ReadTimeout):
                c.post("/post", idempotent=False)
        assert len(attempts) == sent, kind
    # the same timeout on an idempotent read is retried
    attempts.clear()
    c = ResilientClient("vendor", "http://vendor.test", transport=httpx.MockTransport(handler("read")),
                        sleep=lambda _s: None)
    assert c.get("/read").status_code == 204 and len(attempts) == 2
