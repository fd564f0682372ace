"""Entra ID sandbox: the client-credentials token endpoint, AADSTS error bodies, token validation on the
sandbox clock, revocation, the OpenID metadata msal reads, faults, and TLS with the throwaway CA."""

from __future__ import annotations

import ssl
import warnings

import httpx
import jwt
import pytest

from sandboxes.common import SandboxServer, sync_transport
from sandboxes.entra import EntraSandbox
from sandboxes.tls import make_tls

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "6b7a3a6c-0f4e-4c43-9b5e-5c7f0b1d2e01"
SECRET = "s3cret~value.for-the-sandbox"
BC = "https://api.businesscentral.dynamics.com"
SCOPE = f"{BC}/.default"


@pytest.fixture
def entra():
    e = EntraSandbox()
    e.register_app(TENANT, CLIENT_ID, SECRET, [SCOPE])
    return e


@pytest.fixture
def http(entra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transport = sync_transport(entra.app)
    with httpx.Client(transport=transport, base_url="https://login.test") as client:
        yield client


def _token(http, **overrides):
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET, "scope": SCOPE}
    form.update(overrides)
    return http.post(f"/{TENANT}/oauth2/v2.0/token", data={k: v for k, v in form.items() if v is not None})


def test_client_credentials_token_shape_and_claims(entra, http):
    r = _token(http)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and set(body) == {"token_type", "expires_in", "ext_expires_in",
                                                            "access_token"}
    assert 3600 <= body["expires_in"] <= 5400
    claims = entra.validate(body["access_token"], BC)
    assert claims is not None and claims["aud"] == BC and claims["tid"] == TENANT and claims["appid"] == CLIENT_ID
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert entra.validate(body["access_token"], BC + "/") is not None   # a trailing slash is the same audience
    assert entra.tokens_issued == 1


def test_expires_in_varies_between_60_and_90_minutes(http):
    lifetimes = {_token(http).json()["expires_in"] for _ in range(12)}
    assert len(lifetimes) > 1 and all(3600 <= v <= 5400 for v in lifetimes)


def test_validate_rejects_wrong_audience_forged_expired_and_revoked(entra, http):
    token = _token(http).json()["access_token"]
    assert entra.validate(token, "https://contoso.operations.dynamics.com") is None
    forged = jwt.encode({**jwt.decode(token, options={"verify_signature": False})}, "another-key-of-at-least-32-bytes!", algorithm="HS256")
    assert entra.validate(forged, BC) is None
    assert entra.validate("not-a-jwt", BC) is None
    expires_in = jwt.decode(token, options={"verify_signature": False})["exp"] - entra.clock.timestamp()
    entra.clock.advance(seconds=expires_in - 5)
    assert entra.validate(token, BC) is not None
    entra.clock.advance(seconds=10)
    assert entra.validate(token, BC) is None
    fresh = _token(http).json()["access_token"]
    assert entra.validate(fresh, BC) is not None
    entra.revoke_all()
    assert entra.validate(fresh, BC) is None
    after = _token(http).json()["access_token"]
    assert entra.validate(after, BC) is not None


def test_bad_secret_is_401_invalid_client_with_aad_body(entra, http):
    r = _token(http, client_secret="wrong")
    assert r.status_code == 401
    body = r.json()
    assert body["error"] == "invalid_client" and body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    assert body["trace_id"] in body["error_description"] and body["correlation_id"] in body["error_description"]
    assert body["timestamp"].endswith("Z") and "wrong" not in r.text and SECRET not in r.text
    assert entra.tokens_issued == 0


@pytest.mark.parametrize(
    ("overrides", "tenant", "status", "error", "code"),
    [
        ({"scope": "https://contoso.operations.dynamics.com/.default"}, TENANT, 400, "invalid_scope", 70011),
        ({"scope": None}, TENANT, 400, "invalid_scope", 70011),
        ({"client_id": "00000000-0000-0000-0000-00000000dead"}, TENANT, 400, "unauthorized_client", 700016),
        ({"grant_type": "password"}, TENANT, 400, "unsupported_grant_type", 70003),
        ({}, "11111111-2222-3333-4444-555555555555", 400, "invalid_request", 90002),
    ],
)
def test_other_refusals_carry_their_aadsts_codes(http, overrides, tenant, status, error, code):
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET, "scope": SCOPE}
    form.update(overrides)
    r = http.post(f"/{tenant}/oauth2/v2.0/token", data={k: v for k, v in form.items() if v is not None})
    assert r.status_code == status
    assert r.json()["error"] == error and r.json()["error_codes"] == [code]
    assert r.json()["error_description"].startswith(f"AADSTS{code}: ")


def test_openid_configuration_points_at_this_host(entra, http):
    r = http.get(f"/{TENANT}/v2.0/.well-known/openid-configuration")
    assert r.status_code == 200
    meta = r.json()
    assert meta["token_endpoint"] == f"https://login.test/{TENANT}/oauth2/v2.0/token"
    assert meta["authorization_endpoint"].startswith("https://login.test/") and meta["issuer"]
    unknown = http.get("/nobody/v2.0/.well-known/openid-configuration")
    assert unknown.status_code == 400 and unknown.json()["error_codes"] == [90002]


def test_faults_apply_to_the_token_endpoint(entra, http):
    entra.faults.rate_limit_next = 1
    r = _token(http)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    entra.faults.server_error_next = 1
    assert _token(http).status_code == 503
    assert _token(http).status_code == 200 and entra.tokens_issued == 1


def test_served_over_tls_with_the_throwaway_ca(entra, tmp_path):
    tls = make_tls(tmp_path)
    assert (tls.server_key.stat().st_mode & 0o777) == 0o600
    with SandboxServer(entra.app, ssl_certfile=str(tls.server_cert), ssl_keyfile=str(tls.server_key)) as server:
        assert server.base_url.startswith("https://localhost:")
        form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET, "scope": SCOPE}
        for base in (server.base_url, f"https://127.0.0.1:{server.port}"):
            with httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca_bundle)), trust_env=False) as c:
                r = c.post(f"{base}/{TENANT}/oauth2/v2.0/token", data=form)
                assert r.status_code == 200 and entra.validate(r.json()["access_token"], BC)
        with httpx.Client(trust_env=False) as c, pytest.raises(httpx.ConnectError):
            c.post(f"{server.base_url}/{TENANT}/oauth2/v2.0/token", data=form)   # system CAs don't know it
