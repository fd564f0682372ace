"""Acumatica sign-in against the sandbox's identity server and cookie login: the grant in the vault (password
grant when there is none, rotating refresh, racing providers, a dead refresh token), and the cookie session."""

from __future__ import annotations

import json
import threading
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.http import ResilientClient
from connector_pipelines.core.vault import Vault
from connector_pipelines.systems.acumatica import (
    AcumaticaAuthError,
    AcumaticaCookieSession,
    AcumaticaTokenProvider,
)
from sandboxes.acumatica import AcumaticaSandbox
from sandboxes.common import sync_transport

INSTANCE = "http://acumatica.test"
TENANT = "Company"
SECRET = "connected-app-secret~0123"
USER, PASSWORD = "admin", "pa55-word-123"
CRED = "acumatica:company"
VENDORS = "entity/Default/24.200.001/Vendor"


@pytest.fixture
def sb():
    sandbox = AcumaticaSandbox(tenant=TENANT)
    sandbox.add_user(USER, PASSWORD)
    return sandbox


@pytest.fixture
def transport(sb):
    return sync_transport(sb.app)


@pytest.fixture
def client_id(sb):
    return sb.register_connected_app(str(uuid.uuid4()).upper(), SECRET)


@pytest.fixture
def engine_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return get_engine(f"sqlite:///{tmp_path}/vault.sqlite"), [Vault.generate_key()]


@pytest.fixture
def vault(engine_keys):
    return Vault(*engine_keys)


def provider(vault, client_id, transport, *, password=True, **kw) -> AcumaticaTokenProvider:
    creds = {"username": USER, "password": PASSWORD} if password else {}
    return AcumaticaTokenProvider(vault, CRED, INSTANCE, client_id, SECRET, transport=transport, **creds, **kw)


def api_ok(transport, token: str) -> bool:
    r = httpx.Client(transport=transport).get(f"{INSTANCE}/{VENDORS}", headers={"Authorization": f"Bearer {token}"})
    return r.status_code == 200


def test_client_id_is_guid_at_tenant(client_id):
    guid, _, tenant = client_id.partition("@")
    assert tenant == TENANT and uuid.UUID(guid)


def test_password_grant_when_the_vault_is_empty_and_the_grant_stored_without_the_password(vault, client_id, transport,
                                                                                            sb):
    p = provider(vault, client_id, transport)
    token = p.get_token()
    assert api_ok(transport, token) and p.bootstraps == 1 and sb.refreshes == 0
    stored = vault.get(CRED)
    assert stored["access_token"] == token and stored["refresh_token"] and stored["obtained_by"] == "password"
    assert stored["client_id"] == client_id and set(stored["scopes"]) == {"api", "offline_access"}
    assert PASSWORD not in json.dumps(stored) and "password" not in stored   # the password is never stored
    assert p.get_token() == token and p.bootstraps == 1                       # cached
    # another process without the password uses the stored grant
    other = provider(vault, client_id, transport, password=False)
    assert other.get_token() == token and other.bootstraps == 0
    text = repr(p) + repr(other)
    for secret in (PASSWORD, SECRET, token, stored["refresh_token"]):
        assert secret not in text
    p.close()
    other.close()


def test_refresh_rotates_and_the_rotation_is_stored(vault, client_id, transport, sb):
    now = [datetime.now(UTC)]
    p = provider(vault, client_id, transport, password=False, clock=lambda: now[0])
    with pytest.raises(AcumaticaAuthError, match="no Acumatica grant"):
        p.get_token()                                     # nothing in the vault and no password
    first = provider(vault, client_id, transport).get_token()
    seeded = vault.get(CRED)
    assert p.get_token() == first
    now[0] += timedelta(seconds=sb.access_token_ttl_s - 30)   # inside the 60 s margin: refresh before expiry
    fresh = p.get_token()
    stored = vault.get(CRED)
    assert fresh != first and sb.refreshes == 1 and p.refreshes == 1 and p.bootstraps == 0
    assert stored["access_token"] == fresh and stored["refresh_token"] != seeded["refresh_token"]
    assert api_ok(transport, fresh)
    # the old refresh token is spent (rotation); the stored one works for a new process
    r = httpx.Client(transport=transport).post(f"{INSTANCE}/identity/connect/token", data={
        "grant_type": "refresh_token", "client_id": client_id, "client_secret": SECRET,
        "refresh_token": seeded["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert provider(vault, client_id, transport, password=False).refresh() != fresh
    p.close()


def test_two_providers_racing_refresh_once(vault, client_id, transport, sb):
    provider(vault, client_id, transport).get_token()
    stale = dict(vault.get(CRED), expires_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    vault.put(CRED, stale)                                 # everybody must refresh at once
    providers = [provider(vault, client_id, transport, password=False) for _ in range(4)]
    barrier = threading.Barrier(len(providers))
    tokens: list[str] = []
    errors: list[BaseException] = []

    def work(p: AcumaticaTokenProvider) -> None:
        barrier.wait()
        try:
            tokens.append(p.get_token())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in providers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(tokens)) == 1 and api_ok(transport, tokens[0])
    assert sb.refreshes == 1 and sum(p.refreshes for p in providers) == 1   # one refreshed, the others reused it
    # the same after a 401: both saw the same token refused; one refreshes, the other takes its token
    a, b = providers[:2]
    a.invalidate(tokens[0])
    b.invalidate(tokens[0])
    t1 = a.get_token()
    assert b.get_token() == t1 and sb.refreshes == 2


def test_invalid_grant_takes_a_siblings_fresher_grant(engine_keys, client_id, transport, sb):
    engine, keys = engine_keys
    plain = Vault(engine, keys)
    provider(plain, client_id, transport).get_token()
    seeded = dict(plain.get(CRED), expires_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    plain.put(CRED, seeded)
    # A sibling outside our lock domain rotates first; its write lands between our two lock acquisitions.
    sibling = httpx.Client(transport=transport).post(f"{INSTANCE}/identity/connect/token", data={
        "grant_type": "refresh_token", "client_id": client_id, "client_secret": SECRET,
        "refresh_token": seeded["refresh_token"]}).json()
    sibling_value = dict(seeded, access_token=sibling["access_token"], refresh_token=sibling["refresh_token"],
                         expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())

    class RacingVault(Vault):
        calls = 0

        @contextmanager
        def locked(self, name):
            RacingVault.calls += 1
            if RacingVault.calls == 2:
                Vault(engine, keys).put(name, sibling_value)
            with super().locked(name) as cred:
                yield cred

    p = provider(RacingVault(engine, keys), client_id, transport)
    assert p.get_token() == sibling["access_token"]
    assert RacingVault.calls == 2 and p.bootstraps == 0 and p.refreshes == 0   # no password grant needed


def test_a_dead_refresh_token_falls_back_to_the_password_grant(vault, client_id, transport, sb):
    dead = {"access_token": "gone", "refresh_token": "spent-refresh-token",
            "expires_at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}
    vault.put(CRED, dead)
    without = provider(vault, client_id, transport, password=False)
    with pytest.raises(AcumaticaAuthError) as info:
        without.get_token()
    assert "invalid_grant" in str(info.value) and "spent-refresh-token" not in str(info.value)
    assert vault.get(CRED)["refresh_token"] == "spent-refresh-token"   # kept for inspection
    p = provider(vault, client_id, transport)
    token = p.get_token()
    assert api_ok(transport, token) and p.bootstraps == 1
    assert vault.get(CRED)["refresh_token"] not in ("spent-refresh-token", None)


def test_a_grant_without_refresh_token_is_renewed_by_the_password_grant(vault, client_id, transport, sb):
    now = [datetime.now(UTC)]
    p = provider(vault, client_id, transport, scope="api", clock=lambda: now[0])
    first = p.get_token()
    assert vault.get(CRED)["refresh_token"] is None
    now[0] += timedelta(hours=1)
    second = p.get_token()
    assert second != first and p.bootstraps == 2 and sb.refreshes == 0 and api_ok(transport, second)


def test_refused_password_and_client_secret(vault, client_id, transport):
    wrong = AcumaticaTokenProvider(vault, CRED, INSTANCE, client_id, SECRET, username=USER, password="nope",
                                   transport=transport)
    with pytest.raises(AcumaticaAuthError) as info:
        wrong.get_token()
    assert "invalid_grant" in str(info.value) and "nope" not in str(info.value)
    bad_client = AcumaticaTokenProvider(vault, CRED, INSTANCE, client_id, "wrong-secret", username=USER,
                                        password=PASSWORD, transport=transport)
    with pytest.raises(AcumaticaAuthError) as info:
        bad_client.get_token()
    assert "invalid_client" in str(info.value) and "wrong-secret" not in str(info.value)
    assert vault.get(CRED) is None


def test_resilient_client_refreshes_once_on_401(vault, client_id, transport, sb):
    p = provider(vault, client_id, transport)
    http = ResilientClient("acumatica", INSTANCE, p, transport=transport)
    assert http.get(VENDORS).status_code == 200
    sb.expire_access_tokens()
    assert http.get(VENDORS).status_code == 200
    assert sb.refreshes == 1 and http.calls == 3
    http.close()


# -- cookie session ---------------------------------------------------------------------------------

def test_cookie_session_signs_in_lazily_and_out(sb, transport):
    session = AcumaticaCookieSession(INSTANCE, USER, PASSWORD, company=TENANT, transport=transport)
    api = httpx.Client(transport=session.transport(transport), base_url=INSTANCE)
    assert not session.signed_in
    assert api.get(VENDORS).status_code == 200 and session.logins == 1
    assert api.get(VENDORS).status_code == 200 and session.logins == 1   # one session for every request
    session.logout()
    assert not session.signed_in
    assert api.get(VENDORS).status_code == 200 and session.logins == 2   # signs in again when needed
    for text in (repr(session),):
        assert PASSWORD not in text
    session.close()
    assert sb.calls_by_path["/entity/auth/logout"] == 2


def test_cookie_session_refused_credentials(sb, transport):
    session = AcumaticaCookieSession(INSTANCE, USER, "wrong-password", company=TENANT, transport=transport)
    with pytest.raises(AcumaticaAuthError) as info:
        session.login()
    assert "Invalid credentials" in str(info.value) and "wrong-password" not in str(info.value)
    assert sb.calls_by_path["/entity/auth/login"] == 1   # a refused sign-in is not retried
