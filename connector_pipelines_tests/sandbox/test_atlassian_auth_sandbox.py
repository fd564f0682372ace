"""The Atlassian auth sandbox behaves like auth.atlassian.com (API-FACTS.md §4.1)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from sandboxes.atlassian_auth import AtlassianAuthSandbox
from sandboxes.common import sync_transport

CLIENT_ID, SECRET = "app-client-id", "app-client-secret"
REDIRECT = "http://localhost:8765/callback"
SCOPES = "read:jira-work write:jira-work offline_access"
INVALID = {"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}


@pytest.fixture
def sandbox():
    sb = AtlassianAuthSandbox()
    sb.register_app(CLIENT_ID, SECRET, [REDIRECT])
    sb.grant_sites([{"url": "https://acme.atlassian.net", "name": "acme", "id": "cloud-acme"},
                    {"url": "https://acme-sandbox.atlassian.net/"}])
    return sb


@pytest.fixture
def http(sandbox):
    with httpx.Client(transport=sync_transport(sandbox.app), base_url="https://auth.sandbox") as client:
        yield client


def authorize(http, *, scope=SCOPES, redirect=REDIRECT, client_id=CLIENT_ID, state="st-1", **extra):
    params = {"audience": "api.atlassian.com", "client_id": client_id, "scope": scope, "redirect_uri": redirect,
              "state": state, "response_type": "code", "prompt": "consent", **extra}
    return http.get("/authorize", params=params)


def get_code(http, **kw) -> str:
    r = authorize(http, **kw)
    assert r.status_code == 302, r.text
    q = parse_qs(urlsplit(r.headers["location"]).query)
    return q["code"][0]


def exchange(http, code, redirect=REDIRECT, secret=SECRET):
    return http.post("/oauth/token", json={"grant_type": "authorization_code", "client_id": CLIENT_ID,
                                           "client_secret": secret, "code": code, "redirect_uri": redirect})


def refresh(http, rt):
    return http.post("/oauth/token", json={"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                           "client_secret": SECRET, "refresh_token": rt})


def consent(http) -> dict:
    r = exchange(http, get_code(http))
    assert r.status_code == 200, r.text
    return r.json()


def test_authorize_redirects_with_code_and_state(http):
    r = authorize(http, state="xyz")
    assert r.status_code == 302
    loc = urlsplit(r.headers["location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == REDIRECT
    q = parse_qs(loc.query)
    assert q["state"] == ["xyz"] and q["code"][0]


def test_authorize_refuses_unknown_client_and_redirect(http):
    r = authorize(http, client_id="nope")
    assert r.status_code == 400 and "location" not in r.headers
    r = authorize(http, redirect="https://evil.example/cb")
    assert r.status_code == 400 and "location" not in r.headers
    r = authorize(http, audience="other")
    assert r.status_code == 302 and "error=invalid_request" in r.headers["location"]
    r = authorize(http, response_type="token")
    assert "error=unsupported_response_type" in r.headers["location"]


def test_code_exchange_and_single_use(http, sandbox):
    code = get_code(http)
    r = exchange(http, code)
    assert r.status_code == 200
    body = r.json()
    assert body["expires_in"] == 3600 and body["token_type"] == "Bearer"
    assert set(body["scope"].split()) == set(SCOPES.split())
    assert body["refresh_token"] and body["access_token"]
    info = sandbox.validate_access_token(body["access_token"])
    assert info == {"client_id": CLIENT_ID, "account_id": sandbox.consenting_account_id, "scopes": SCOPES.split()}
    # the same code again: refused, and what it granted is revoked (RFC 6749 §4.1.2)
    r2 = exchange(http, code)
    assert r2.status_code == 403 and r2.json()["error"] == "invalid_grant"
    assert sandbox.validate_access_token(body["access_token"]) is None
    assert refresh(http, body["refresh_token"]).status_code == 403


def test_code_exchange_checks_redirect_secret_and_expiry(http, sandbox):
    r = exchange(http, get_code(http), redirect="http://localhost:9999/other")
    assert r.status_code == 403 and r.json()["error"] == "invalid_grant"
    r = exchange(http, get_code(http), secret="wrong")
    assert r.status_code == 401 and r.json()["error"] == "access_denied"
    code = get_code(http)
    sandbox.clock.advance(minutes=11)
    assert exchange(http, code).status_code == 403
    r = http.post("/oauth/token", json={"grant_type": "password", "client_id": CLIENT_ID, "client_secret": SECRET})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


def test_form_encoded_token_request_is_accepted(http):
    code = get_code(http)
    r = http.post("/oauth/token", data={"grant_type": "authorization_code", "client_id": CLIENT_ID,
                                        "client_secret": SECRET, "code": code, "redirect_uri": REDIRECT})
    assert r.status_code == 200 and r.json()["refresh_token"]


def test_no_refresh_token_without_offline_access(http):
    r = exchange(http, get_code(http, scope="read:jira-work"))
    assert r.status_code == 200 and "refresh_token" not in r.json()


def test_refresh_rotates_and_a_used_token_is_refused(http, sandbox):
    first = consent(http)
    r = refresh(http, first["refresh_token"])
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    # reuse inside the 10-minute leeway: refused, family intact
    sandbox.clock.advance(minutes=5)
    r = refresh(http, first["refresh_token"])
    assert r.status_code == 403 and r.json() == INVALID
    assert sandbox.refresh_failures == 1 and sandbox.families_revoked == 0
    assert sandbox.validate_access_token(second["access_token"]) is not None
    r = refresh(http, second["refresh_token"])
    assert r.status_code == 200
    assert refresh(http, "never-issued").json() == INVALID
    assert sandbox.refreshes == 2 and sandbox.token_requests == 5


def test_reuse_after_ten_minutes_revokes_the_family(http, sandbox):
    first = consent(http)
    second = refresh(http, first["refresh_token"]).json()
    other = consent(http)  # an unrelated grant stays alive
    sandbox.clock.advance(minutes=10, seconds=1)
    r = refresh(http, first["refresh_token"])
    assert r.status_code == 403 and r.json() == INVALID
    assert sandbox.families_revoked == 1
    assert sandbox.family_status(second["refresh_token"])["revoked"] is True
    # every token of the family is dead now
    assert refresh(http, second["refresh_token"]).status_code == 403
    assert sandbox.validate_access_token(second["access_token"]) is None
    assert refresh(http, other["refresh_token"]).status_code == 200
    assert [f["reason"] for f in sandbox.revoked_families()] == [
        "rotated refresh token reused after the 10-minute leeway"]


def test_access_tokens_expire_after_an_hour(http, sandbox):
    tokens = consent(http)
    assert sandbox.validate_access_token(tokens["access_token"]) is not None
    sandbox.clock.advance(seconds=3599)
    assert sandbox.validate_access_token(tokens["access_token"]) is not None
    sandbox.clock.advance(seconds=2)
    assert sandbox.validate_access_token(tokens["access_token"]) is None
    fresh = refresh(http, tokens["refresh_token"]).json()
    assert sandbox.validate_access_token(fresh["access_token"]) is not None
    sandbox.expire_access_tokens()
    assert sandbox.validate_access_token(fresh["access_token"]) is None
    assert refresh(http, fresh["refresh_token"]).status_code == 200  # refresh tokens survive


def test_refresh_token_expires_after_90_days_unused(http, sandbox):
    tokens = consent(http)
    sandbox.clock.advance(days=91)
    assert refresh(http, tokens["refresh_token"]).status_code == 403


def test_revoke_family_by_test(http, sandbox):
    tokens = consent(http)
    assert sandbox.revoke_family(tokens["refresh_token"]) == 1
    assert refresh(http, tokens["refresh_token"]).json() == INVALID
    assert sandbox.validate_access_token(tokens["access_token"]) is None
    t2 = consent(http)
    assert sandbox.revoke_family(client_id=CLIENT_ID) == 1  # the first one was already revoked
    assert sandbox.validate_access_token(t2["access_token"]) is None


def test_accessible_resources(http, sandbox):
    tokens = consent(http)
    r = http.get("/oauth/token/accessible-resources", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert r.status_code == 200
    sites = r.json()
    assert {s["url"] for s in sites} == {"https://acme.atlassian.net", "https://acme-sandbox.atlassian.net"}
    acme = next(s for s in sites if s["url"] == "https://acme.atlassian.net")
    assert acme["id"] == "cloud-acme" and acme["name"] == "acme"
    assert set(acme["scopes"]) == {"read:jira-work", "write:jira-work"} and acme["avatarUrl"]
    r = http.get("/oauth/token/accessible-resources", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_faults_apply(http, sandbox):
    sandbox.faults.rate_limit_next = 1
    r = refresh(http, "whatever")
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    sandbox.faults.server_error_next = 1
    assert refresh(http, "whatever").status_code == 503
