"""The Atlassian 3LO client against the auth sandbox on a loopback port.

The heart of it: eight concurrent refreshers (threads and OS processes) sharing one vault never lose
Atlassian's rotating refresh token, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.http import ResilientClient
from connector_pipelines.core.vault import Vault
from connector_pipelines.systems.atlassian import (
    AtlassianAuthError,
    AtlassianTokenProvider,
    Site,
    accessible_resources,
    authorize_url,
    choose_site,
    exchange_code,
    run_consent_flow,
)
from sandboxes.atlassian_auth import AtlassianAuthSandbox
from sandboxes.common import SandboxServer, free_port

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID, CLIENT_SECRET = "cp-app", "cp-app-secret"
REDIRECT = "http://localhost:8765/callback"
SCOPES = ["read:jira-work", "write:jira-work", "offline_access"]
CRED = "atlassian:jira"
ACME = {"url": "https://acme.atlassian.net", "name": "acme", "id": "cloud-acme"}
OTHER = {"url": "https://acme-test.atlassian.net", "name": "acme-test", "id": "cloud-acme-test"}


@pytest.fixture
def sandbox():
    sb = AtlassianAuthSandbox()
    sb.register_app(CLIENT_ID, CLIENT_SECRET, [REDIRECT])
    sb.grant_sites([ACME, OTHER])
    return sb


@pytest.fixture
def server(sandbox):
    with SandboxServer(sandbox.app) as srv:
        yield srv


@pytest.fixture
def sqlite_url(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return f"sqlite:///{tmp_path}/vault.sqlite"



def get_code(base_url: str, scopes=SCOPES, redirect=REDIRECT) -> str:
    url = authorize_url(base_url, CLIENT_ID, redirect, scopes, "state-1")
    r = httpx.get(url, follow_redirects=False, trust_env=False)
    assert r.status_code == 302, r.text
    return parse_qs(urlsplit(r.headers["location"]).query)["code"][0]


def seed(vault: Vault, base_url: str, *, expired: bool = True) -> dict:
    """Consent once and store the credential, its access token already stale (so everyone must refresh)."""
    tokens = exchange_code(base_url, CLIENT_ID, CLIENT_SECRET, get_code(base_url), REDIRECT)
    expires_at = datetime.now(UTC) - timedelta(seconds=1) if expired else tokens.expires_at
    value = {"refresh_token": tokens.refresh_token, "access_token": tokens.access_token,
             "expires_at": expires_at.isoformat(), "cloud_id": ACME["id"], "site_url": ACME["url"],
             "scopes": tokens.scope.split()}
    vault.put(CRED, value)
    return value


def provider(vault: Vault, base_url: str, **kw) -> AtlassianTokenProvider:
    return AtlassianTokenProvider(vault, CRED, CLIENT_ID, CLIENT_SECRET, base_url, **kw)


# -- URLs, code exchange, sites ---------------------------------------------------------------------

def test_authorize_url_has_atlassian_parameters():
    url = authorize_url("https://auth.atlassian.com/", "cid", REDIRECT, ["read:jira-work"], "s t")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://auth.atlassian.com/authorize"
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q == {"audience": "api.atlassian.com", "client_id": "cid", "scope": "read:jira-work offline_access",
                 "redirect_uri": REDIRECT, "state": "s t", "response_type": "code", "prompt": "consent"}
    q2 = parse_qs(urlsplit(authorize_url("https://a", "c", REDIRECT, SCOPES, "s")).query)
    assert q2["scope"] == [" ".join(SCOPES)]  # offline_access not duplicated


def test_exchange_code(server, sandbox):
    code = get_code(server.base_url)
    tokens = exchange_code(server.base_url, CLIENT_ID, CLIENT_SECRET, code, REDIRECT)
    assert tokens.refresh_token and tokens.access_token
    assert timedelta(minutes=59) < tokens.expires_at - datetime.now(UTC) <= timedelta(hours=1)
    assert set(tokens.scope.split()) == set(SCOPES)
    assert tokens.access_token not in repr(tokens) and tokens.refresh_token not in repr(tokens)
    assert sandbox.validate_access_token(tokens.access_token)["client_id"] == CLIENT_ID
    with pytest.raises(AtlassianAuthError, match="invalid_grant"):
        exchange_code(server.base_url, CLIENT_ID, CLIENT_SECRET, code, REDIRECT)  # single use
    with pytest.raises(AtlassianAuthError, match="offline_access"):
        exchange_code(server.base_url, CLIENT_ID, CLIENT_SECRET, _code_without_offline(server.base_url), REDIRECT)


def _code_without_offline(base_url: str) -> str:
    # authorize_url always adds offline_access, so ask the sandbox directly for a grant without it.
    r = httpx.get(f"{base_url}/authorize", params={
        "audience": "api.atlassian.com", "client_id": CLIENT_ID, "scope": "read:jira-work",
        "redirect_uri": REDIRECT, "state": "s", "response_type": "code", "prompt": "consent"}, trust_env=False)
    return parse_qs(urlsplit(r.headers["location"]).query)["code"][0]


def test_accessible_resources_and_explicit_site_choice(server):
    tokens = exchange_code(server.base_url, CLIENT_ID, CLIENT_SECRET, get_code(server.base_url), REDIRECT)
    sites = accessible_resources(server.base_url, tokens.access_token)
    assert {s.url for s in sites} == {ACME["url"], OTHER["url"]}
    assert all("offline_access" not in s.scopes and "read:jira-work" in s.scopes for s in sites)
    with pytest.raises(AtlassianAuthError) as info:
        choose_site(sites, None)
    assert ACME["url"] in str(info.value) and OTHER["url"] in str(info.value)
    for order in (sites, list(reversed(sites))):  # never [0]: the answer does not depend on order
        assert choose_site(order, "HTTPS://acme-test.atlassian.net/").id == OTHER["id"]
        assert choose_site(order, "acme.atlassian.net").id == ACME["id"]
    with pytest.raises(AtlassianAuthError, match="does not cover the site"):
        choose_site(sites, "https://elsewhere.atlassian.net")
    one = [Site("c1", "solo", "https://solo.atlassian.net", [])]
    assert choose_site(one, None).id == "c1"
    with pytest.raises(AtlassianAuthError, match="no Atlassian site"):
        choose_site([], None)
    with pytest.raises(AtlassianAuthError, match="accessible-resources failed"):
        accessible_resources(server.base_url, "not-a-token")


# -- the token provider -----------------------------------------------------------------------------

def test_provider_uses_the_vault_token_then_refreshes_and_persists_rotation(server, sandbox, sqlite_url):
    vault = Vault(get_engine(sqlite_url), [Vault.generate_key()])
    seeded = seed(vault, server.base_url, expired=False)
    now = [datetime.now(UTC)]
    p = provider(vault, server.base_url, clock=lambda: now[0])
    assert p.get_token() == seeded["access_token"]
    assert p.cloud_id() == ACME["id"]
    assert sandbox.refreshes == 0
    now[0] += timedelta(minutes=56)  # inside the 5-minute margin: refresh
    fresh = p.get_token()
    assert fresh != seeded["access_token"] and sandbox.refreshes == 1
    stored = vault.get(CRED)
    assert stored["access_token"] == fresh and stored["refresh_token"] != seeded["refresh_token"]
    assert stored["cloud_id"] == ACME["id"]  # the rest of the credential survives the refresh
    assert sandbox.family_status(stored["refresh_token"]) == {
        "family_id": sandbox.family_status(seeded["refresh_token"])["family_id"], "revoked": False,
        "reason": None, "rotated": False}
    assert p.get_token() == fresh and sandbox.refreshes == 1  # cached
    # a new process (new provider) reads the persisted rotation and can refresh with it
    p2 = provider(vault, server.base_url)
    assert p2.refresh() != fresh and sandbox.refresh_failures == 0


def test_invalidate_refreshes_unless_a_sibling_already_did(server, sandbox, sqlite_url):
    vault = Vault(get_engine(sqlite_url), [Vault.generate_key()])
    seed(vault, server.base_url, expired=False)
    a, b = provider(vault, server.base_url), provider(vault, server.base_url)
    t0 = a.get_token()
    assert b.get_token() == t0
    a.invalidate(t0)
    t1 = a.get_token()
    assert t1 != t0 and sandbox.refreshes == 1
    b.invalidate(t0)  # b saw the same 401; a already refreshed: b uses a's token, no second refresh
    assert b.get_token() == t1 and sandbox.refreshes == 1
    assert sandbox.refresh_failures == 0


def test_resilient_client_refreshes_once_on_401(server, sandbox, sqlite_url):
    vault = Vault(get_engine(sqlite_url), [Vault.generate_key()])
    seed(vault, server.base_url, expired=False)
    p = provider(vault, server.base_url)
    client = ResilientClient("atlassian", server.base_url, auth=p)
    assert client.get("/oauth/token/accessible-resources").status_code == 200
    sandbox.expire_access_tokens()  # the vault still believes its token has an hour left
    assert client.get("/oauth/token/accessible-resources").status_code == 200
    assert sandbox.refreshes == 1 and client.calls == 3
    client.close()


def test_invalid_grant_recovers_with_a_siblings_fresher_token(server, sandbox, sqlite_url):
    engine = get_engine(sqlite_url)
    keys = [Vault.generate_key()]
    seeded = seed(Vault(engine, keys), server.base_url)

    # A sibling (outside our lock domain) rotates the token first; its write lands only after our
    # refresh was refused, i.e. between our two lock acquisitions.
    r = httpx.post(f"{server.base_url}/oauth/token", json={
        "grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "refresh_token": seeded["refresh_token"]}, trust_env=False)
    sibling = r.json()
    sibling_value = dict(seeded, refresh_token=sibling["refresh_token"], access_token=sibling["access_token"],
                         expires_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())

    class RacingVault(Vault):
        calls = 0

        @contextmanager
        def locked(self, name):
            RacingVault.calls += 1
            if RacingVault.calls == 2:
                Vault(engine, keys).put(name, sibling_value)
            with super().locked(name) as cred:
                yield cred

    p = provider(RacingVault(engine, keys), server.base_url)
    token = p.get_token()
    assert RacingVault.calls == 2
    assert sandbox.refresh_failures == 1  # our stale token was refused once ...
    assert sandbox.families_revoked == 0  # ... inside the leeway, so the grant lives
    stored = Vault(engine, keys).get(CRED)
    assert stored["access_token"] == token
    assert stored["refresh_token"] not in (seeded["refresh_token"], sibling["refresh_token"])
    assert sandbox.validate_access_token(token) is not None


def test_revoked_family_raises_with_the_consent_hint(server, sandbox, sqlite_url):
    vault = Vault(get_engine(sqlite_url), [Vault.generate_key()])
    seeded = seed(vault, server.base_url)
    sandbox.revoke_family(seeded["refresh_token"])
    p = provider(vault, server.base_url)
    with pytest.raises(AtlassianAuthError) as info:
        p.get_token()
    msg = str(info.value)
    assert "run `connector-pipelines jira consent` again" in msg and "invalid_grant" in msg
    assert seeded["refresh_token"] not in msg
    assert sandbox.refresh_failures == 1  # re-read once, saw no fresher token, did not hammer
    assert vault.get(CRED)["refresh_token"] == seeded["refresh_token"]  # kept for inspection
    with pytest.raises(AtlassianAuthError, match="no Atlassian credential"):
        AtlassianTokenProvider(vault, "missing", CLIENT_ID, CLIENT_SECRET, server.base_url).get_token()


# -- eight concurrent refreshers, threads and OS processes -----------------------------------------

WORKER = r"""
import json, os, sys, threading, time
cfg = json.loads(sys.argv[1])
import httpx
from connector_pipelines.core.db import get_engine
from connector_pipelines.core.vault import Vault
from connector_pipelines.systems.atlassian.oauth import AtlassianTokenProvider
vault = Vault(get_engine(cfg["url"]), cfg["keys"])
errors, ok = [], []
def work():
    p = AtlassianTokenProvider(vault, cfg["name"], cfg["client_id"], cfg["client_secret"], cfg["base"])
    with httpx.Client(trust_env=False) as http:
        for _ in range(cfg["rounds"]):
            try:
                token = p.get_token()
                r = http.get(cfg["base"] + "/oauth/token/accessible-resources",
                             headers={"Authorization": "Bearer " + token})
                (ok if r.status_code == 200 else errors).append(r.status_code)
                p.invalidate(token)  # as if the API had answered 401: forces another refresh
            except Exception as exc:
                errors.append(repr(exc))
threads = [threading.Thread(target=work) for _ in range(cfg["threads"])]
print("ready", flush=True)
while not os.path.exists(cfg["go"]):
    time.sleep(0.002)
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"errors": errors, "ok": len(ok)}), flush=True)
"""


def _eight_refreshers(url: str, tmp_path: Path, server, sandbox, *, processes=2, threads_per_process=3,
                      local_threads=2, rounds=4) -> None:
    assert processes * threads_per_process + local_threads == 8
    keys = [Vault.generate_key()]
    vault = Vault(get_engine(url), keys)
    seed(vault, server.base_url)  # access token stale: all eight stampede into a refresh at once
    go = tmp_path / f"go-{uuid.uuid4().hex}"
    cfg = {"url": url, "keys": keys, "name": CRED, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
           "base": server.base_url, "rounds": rounds, "threads": threads_per_process, "go": str(go)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(cfg)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(processes)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        errors: list[str] = []
        ok = [0]
        lock = threading.Lock()

        def work():
            p = provider(vault, server.base_url)
            with httpx.Client(trust_env=False) as http:
                for _ in range(rounds):
                    try:
                        token = p.get_token()
                        r = http.get(f"{server.base_url}/oauth/token/accessible-resources",
                                     headers={"Authorization": f"Bearer {token}"})
                        with lock:
                            if r.status_code == 200:
                                ok[0] += 1
                            else:
                                errors.append(str(r.status_code))
                        p.invalidate(token)
                    except Exception as exc:  # noqa: BLE001
                        errors.append(repr(exc))

        local = [threading.Thread(target=work) for _ in range(local_threads)]
        go.touch()
        for t in local:
            t.start()
        for t in local:
            t.join()
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            result = json.loads(out.strip().splitlines()[-1])
            assert result["errors"] == [], result
            ok[0] += result["ok"]
        assert errors == []
        assert ok[0] == 8 * rounds  # every refresher got a working token every round
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()

    # Nothing was lost: no refresh was refused, no family revoked, several real rotations happened,
    # and the stored refresh token is the live (unrotated) one, which a further refresh accepts.
    assert sandbox.refresh_failures == 0
    assert sandbox.families_revoked == 0 and sandbox.revoked_families() == []
    assert sandbox.refreshes >= rounds
    stored = vault.get(CRED)
    assert sandbox.family_status(stored["refresh_token"])["rotated"] is False
    after = provider(vault, server.base_url)
    token = after.refresh()
    assert sandbox.validate_access_token(token) is not None
    assert vault.get(CRED)["refresh_token"] != stored["refresh_token"]
    assert sandbox.refresh_failures == 0 and sandbox.families_revoked == 0


def test_eight_concurrent_refreshers_never_lose_the_token_sqlite(sqlite_url, tmp_path, server, sandbox):
    _eight_refreshers(sqlite_url, tmp_path, server, sandbox)


def test_eight_concurrent_refreshers_never_lose_the_token_postgresql(pg_url, tmp_path, server, sandbox):
    _eight_refreshers(pg_url, tmp_path, server, sandbox)


# -- consent, end to end ----------------------------------------------------------------------------

def _drive_consent(sandbox, server, vault, *, site_url):
    port = free_port()
    redirect = f"http://localhost:{port}/callback"
    sandbox.register_app(CLIENT_ID, CLIENT_SECRET, [redirect])
    messages: list[str] = []
    got_url = threading.Event()
    outcome: dict = {}

    def notify(msg: str) -> None:
        messages.append(msg)
        got_url.set()

    def run():
        try:
            outcome["site"] = run_consent_flow(
                vault, CRED, CLIENT_ID, CLIENT_SECRET, auth_base=server.base_url, api_base=server.base_url,
                site_url=site_url, scopes=["read:jira-work", "write:jira-work"], port=port, open_browser=False,
                timeout_s=20, notify=notify)
        except Exception as exc:  # noqa: BLE001
            outcome["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    assert got_url.wait(10)
    url = re.search(r"https?://\S+/authorize\?\S+", messages[0]).group(0)
    # The "browser": follow the sandbox's 302 to the local callback server.
    response = httpx.get(url, follow_redirects=True, trust_env=False, timeout=30)
    t.join(30)
    assert not t.is_alive()
    return outcome, response, messages


def test_consent_flow_end_to_end(sandbox, server, sqlite_url):
    vault = Vault(get_engine(sqlite_url), [Vault.generate_key()])
    outcome, response, messages = _drive_consent(sandbox, server, vault, site_url="https://acme-test.atlassian.net/")
    assert "error" not in outcome, outcome
    site = outcome["site"]
    assert (site.id, site.url) == (OTHER["id"], OTHER["url"])
    assert response.status_code == 200 and "Connected to https://acme-test.atlassian.net" in response.text
    stored = vault.get(CRED)
    assert {"refresh_token", "access_token", "expires_at", "cloud_id", "site_url", "scopes"} <= stored.keys()
    assert stored["cloud_id"] == OTHER["id"] and stored["site_url"] == OTHER["url"]
    assert "offline_access" in stored["scopes"]
    assert sandbox.validate_access_token(stored["access_token"]) is not None
    for msg in messages:  # never print tokens
        assert stored["access_token"] not in msg and stored["refresh_token"] not in msg
    # the stored grant works for the token provider
    p = provider(vault, server.base_url)
    assert p.cloud_id() == OTHER["id"]
    assert p.refresh() and sandbox.refresh_failures == 0


def test_consent_flow_refuses_an_ambiguous_site(sandbox, server, sqlite_url):
    vault = Vault(get_engine(sqlite_url), [Vault.generate_key()])
    outcome, response, _ = _drive_consent(sandbox, server, vault, site_url=None)
    assert isinstance(outcome.get("error"), AtlassianAuthError)
    assert ACME["url"] in str(outcome["error"]) and OTHER["url"] in str(outcome["error"])
    assert response.status_code == 400 and "set site_url" in response.text
    assert vault.get(CRED) is None  # nothing bound to a guessed site
