"""EntraTokenProvider (msal) against the Entra sandbox served over TLS on a loopback port.

The machine's REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE are pointed at a file that does not exist: if msal's
session honoured them, every request would fail; it must use only the ``ca_bundle`` it was given.
"""

from __future__ import annotations

import logging
import threading

import pytest

from connector_pipelines.systems.entra import EntraAuthError, EntraTokenProvider

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "6b7a3a6c-0f4e-4c43-9b5e-5c7f0b1d2e01"
SECRET = "Zq8~sandbox.secret-value_0123456789"
BC = "https://api.businesscentral.dynamics.com"
SCOPE = f"{BC}/.default"


@pytest.fixture
def world(entra_over_tls, monkeypatch, tmp_path):
    entra, server, tls = entra_over_tls
    bogus = str(tmp_path / "no-such-ca-bundle.pem")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", bogus)
    monkeypatch.setenv("CURL_CA_BUNDLE", bogus)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")   # trust_env=False ignores proxies too
    entra.faults.rate_limit_next = entra.faults.server_error_next = 0
    entra.register_app(TENANT, CLIENT_ID, SECRET, [SCOPE])
    made: list[EntraTokenProvider] = []
    yield entra, server, tls, made
    for p in made:   # close msal's keep-alive connections so the server stops at once
        p.close()


def provider(world, *, tenant: str = TENANT, secret: str = SECRET, scope: str = SCOPE, **kw) -> EntraTokenProvider:
    entra, server, tls, made = world
    args = {"authority_host": server.base_url, "ca_bundle": str(tls.ca_bundle), "clock": entra.clock.timestamp}
    args.update(kw)
    p = EntraTokenProvider(tenant, CLIENT_ID, secret, scope, **args)
    made.append(p)
    return p


def test_token_is_issued_over_tls_and_cached_by_msal(world):
    entra, _server, _tls, _made = world
    p = provider(world)
    before = entra.tokens_issued
    token = p.get_token()
    assert entra.validate(token, BC) is not None
    assert p.get_token() == token and p.get_token() == token
    assert entra.tokens_issued - before == 1 and p.tokens_fetched == 1


def test_invalidate_forces_a_fresh_token(world):
    entra, _server, _tls, _made = world
    p = provider(world)
    first = p.get_token()
    requests_before = entra.token_requests
    p.invalidate(first)
    second = p.get_token()
    assert second != first and entra.token_requests - requests_before == 1 and p.tokens_fetched == 2
    p.invalidate(first)   # a stale invalidate (a sibling already refreshed) keeps the current token
    assert p.get_token() == second and p.tokens_fetched == 2


def test_revoked_token_then_invalidate_gives_a_working_one(world):
    entra, _server, _tls, _made = world
    p = provider(world)
    old = p.get_token()
    entra.revoke_all()
    assert entra.validate(old, BC) is None
    p.invalidate(old)
    assert entra.validate(p.get_token(), BC) is not None


def test_expired_token_is_replaced_and_refreshed_before_expiry(world):
    entra, _server, _tls, _made = world
    p = provider(world)
    token = p.get_token()
    lifetime = p._expires_at - entra.clock.timestamp()
    assert 3590 <= lifetime <= 5400
    entra.clock.advance(seconds=lifetime - 600)          # 10 minutes left: still served from cache
    assert p.get_token() == token and p.tokens_fetched == 1
    entra.clock.advance(seconds=400)                     # < 5 minutes left: refreshed before expiry
    refreshed = p.get_token()
    assert refreshed != token and p.tokens_fetched == 2 and entra.validate(refreshed, BC) is not None
    entra.clock.advance(seconds=6000)                    # past any lifetime: the sandbox refuses it ...
    assert entra.validate(refreshed, BC) is None
    newest = p.get_token()                               # ... and the provider does not hand it out
    assert newest != refreshed and entra.validate(newest, BC) is not None and p.tokens_fetched == 3


def test_bad_secret_raises_entra_auth_error_without_the_secret(world, caplog):
    wrong = "Wr0ng~secret.value_THAT-must-not-leak"
    p = provider(world, secret=wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EntraAuthError) as err:
        p.get_token()
    message = str(err.value)
    assert "invalid_client" in message and "AADSTS7000215" in message
    assert err.value.error == "invalid_client" and err.value.error_codes == [7000215]
    assert wrong not in message and wrong not in repr(p) and wrong not in caplog.text
    assert SECRET not in repr(provider(world))


def test_unknown_scope_and_unknown_tenant(world):
    p = provider(world, scope="https://contoso.operations.dynamics.com/.default")
    with pytest.raises(EntraAuthError, match="invalid_scope.*AADSTS70011") as err:
        p.get_token()
    assert not err.value.transient
    nobody = provider(world, tenant="11111111-2222-3333-4444-555555555555")
    with pytest.raises(EntraAuthError) as err:
        nobody.get_token()
    assert SECRET not in str(err.value) and not err.value.transient


def test_without_the_sandbox_ca_tls_verification_fails(world):
    p = provider(world, ca_bundle=None)   # system CAs only
    with pytest.raises(EntraAuthError) as err:
        p.get_token()
    assert "SSL" in str(err.value) and SECRET not in str(err.value)


def test_concurrent_callers_share_one_token(world):
    entra, _server, _tls, _made = world
    p = provider(world)
    before = entra.tokens_issued
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(p.get_token())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and entra.tokens_issued - before == 1


def test_transient_entra_failures_are_retried_then_succeed(world):
    entra, _server, _tls, _made = world
    p = provider(world)
    entra.faults.server_error_next = 2   # two 503s, then a token
    assert entra.validate(p.get_token(), BC) is not None
    assert entra.faults.server_error_next == 0


def test_entra_throttling_is_reported_not_swallowed(world):
    entra, _server, _tls, _made = world
    p = provider(world, transient_attempts=1)
    entra.faults.server_error_next = 1
    with pytest.raises(EntraAuthError) as err:
        p.get_token()
    assert err.value.transient and "503" in str(err.value)
    entra.faults.server_error_next = 0
    assert entra.validate(p.get_token(), BC) is not None
