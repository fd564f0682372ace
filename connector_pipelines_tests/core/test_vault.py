"""The credential vault: encryption at rest, key rotation, and the cross-process lock (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from connector_pipelines.core import db
from connector_pipelines.core.db import credentials, get_engine
from connector_pipelines.core.vault import VAULT_KEYS_ENV, Vault, VaultError

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-refresh-token-value-0123456789"


@pytest.fixture
def sqlite_url(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.delenv(db.DATABASE_URL_ENV, raising=False)
    return f"sqlite:///{tmp_path}/vault.sqlite"



def test_round_trip_dict_and_str(sqlite_url):
    vault = Vault(get_engine(sqlite_url), Vault.generate_key())
    assert vault.get("missing") is None
    vault.put("atlassian:jira", {"refresh_token": SECRET, "n": 1, "nested": {"a": [1, 2]}})
    vault.put("plain", "just a string")
    assert vault.get("atlassian:jira") == {"refresh_token": SECRET, "n": 1, "nested": {"a": [1, 2]}}
    assert vault.get("plain") == "just a string"
    vault.put("plain", "replaced")
    assert vault.get("plain") == "replaced"
    assert vault.names() == ["atlassian:jira", "plain"]
    vault.delete("plain")
    assert vault.get("plain") is None and vault.names() == ["atlassian:jira"]
    with pytest.raises(TypeError):
        vault.put("bad", 42)  # type: ignore[arg-type]


def test_stored_bytes_never_contain_plaintext(sqlite_url, tmp_path):
    engine = get_engine(sqlite_url)
    vault = Vault(engine, [Vault.generate_key()])
    vault.put("atlassian:jira", {"refresh_token": SECRET})
    vault.put("client-secret", SECRET + "-str")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(credentials)).all()
    assert len(rows) == 2
    for row in rows:
        raw = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
        assert SECRET.encode() not in raw
        assert b"refresh_token" not in raw
    # ... and not in the database files themselves (main file and WAL).
    for f in tmp_path.glob("vault.sqlite*"):
        assert SECRET.encode() not in f.read_bytes(), f
    assert "s3cr3t" not in repr(vault)


def test_rotate_to_new_primary_then_drop_old_key(sqlite_url):
    engine = get_engine(sqlite_url)
    old, new = Vault.generate_key(), Vault.generate_key()
    v_old = Vault(engine, [old])
    v_old.put("a", {"refresh_token": "A"})
    v_old.put("b", "B")
    both = Vault(engine, f"{new},{old}")  # comma-separated, new primary first
    assert both.get("a") == {"refresh_token": "A"}  # the old key still decrypts before rotation
    assert both.rotate() == 2
    only_new = Vault(engine, [new])
    assert only_new.get("a") == {"refresh_token": "A"} and only_new.get("b") == "B"
    with pytest.raises(VaultError):
        Vault(engine, [old]).get("a")  # really re-encrypted


def test_wrong_keys_give_a_helpful_error(sqlite_url, monkeypatch):
    engine = get_engine(sqlite_url)
    Vault(engine, [Vault.generate_key()]).put("atlassian:jira", {"refresh_token": SECRET})
    wrong = Vault(engine, [Vault.generate_key()])
    with pytest.raises(VaultError) as info:
        wrong.get("atlassian:jira")
    msg = str(info.value)
    assert "'atlassian:jira' could not be decrypted with the configured keys" in msg
    assert "CONNECTOR_VAULT_KEYS rotated without keeping the old key" in msg
    assert SECRET not in msg
    with pytest.raises(VaultError, match="could not be decrypted"):
        wrong.rotate()
    with pytest.raises(VaultError, match="could not be decrypted"), wrong.locked("atlassian:jira"):
        pass

    bad_key = "not-a-fernet-key"
    with pytest.raises(VaultError) as info:
        Vault(engine, [bad_key])
    assert "key #1 is not a valid Fernet key" in str(info.value) and bad_key not in str(info.value)

    monkeypatch.delenv(VAULT_KEYS_ENV, raising=False)
    with pytest.raises(VaultError, match="CONNECTOR_VAULT_KEYS is not set"):
        Vault.from_env(engine)
    monkeypatch.setenv(VAULT_KEYS_ENV, "garbage")
    with pytest.raises(VaultError, match="not a valid Fernet key"):
        Vault.from_env(engine)
    key = Vault.generate_key()
    monkeypatch.setenv(VAULT_KEYS_ENV, f" {key} , {Vault.generate_key()}")
    v = Vault.from_env(engine)
    v.put("x", "y")
    assert Vault(engine, key).get("x") == "y"


def test_from_env_uses_default_engine(sqlite_url, monkeypatch):
    monkeypatch.setenv(db.DATABASE_URL_ENV, sqlite_url)
    monkeypatch.setenv(VAULT_KEYS_ENV, Vault.generate_key())
    v = Vault.from_env()
    assert v.engine is get_engine(sqlite_url)


def test_ciphertext_copied_to_another_row_is_refused(sqlite_url):
    engine = get_engine(sqlite_url)
    vault = Vault(engine, [Vault.generate_key()])
    vault.put("a", "value-a")
    vault.put("b", "value-b")
    with engine.begin() as conn:
        ct = conn.execute(sa.select(credentials.c.ciphertext).where(credentials.c.name == "a")).scalar_one()
        conn.execute(credentials.update().where(credentials.c.name == "b").values(ciphertext=ct))
    with pytest.raises(VaultError, match="sealed for another credential"):
        vault.get("b")


def test_locked_set_is_stored_at_once_and_survives_a_later_error(sqlite_url):
    """A rotated refresh token is valid the moment Atlassian issued it and the old one is burnt: ``set``
    stores it at once, so an error later in the block can never lose it (the old design rolled it back)."""
    vault = Vault(get_engine(sqlite_url), [Vault.generate_key()])
    with vault.locked("c") as cred:
        assert cred.value is None
        cred.set({"v": 1})
        cred.set({"v": 2})
        assert vault.get("c") == {"v": 2}   # visible to every process before the block ends
    with pytest.raises(RuntimeError), vault.locked("c") as cred:
        cred.set({"v": 3})
        raise RuntimeError("boom")
    assert vault.get("c") == {"v": 3}
    with db.get_engine(sqlite_url).connect() as conn:
        assert conn.execute(sa.select(credentials.c.version).where(credentials.c.name == "c")).scalar_one() == 3


def test_a_held_credential_lock_holds_no_database_lock(sqlite_url):
    """While one process refreshes (the lock held across the token endpoint's answer and its Retry-After
    sleeps), another can still write the database: on SQLite a transaction held open there would take the
    whole database's write lock, and the receiver could not store deliveries."""
    from connector_pipelines.core.inbox import Inbox

    engine = get_engine(sqlite_url)
    vault = Vault(engine, [Vault.generate_key()])
    with vault.locked("atlassian:jira"):
        started = time.monotonic()
        assert Inbox(engine).put("jira", "delivery-1", {"event": {}})
        assert time.monotonic() - started < 5     # not the 30 s busy timeout
        with pytest.raises(VaultError, match="stayed locked"), vault.locked("atlassian:jira", timeout_s=0.3):
            pass


# -- exclusivity across processes -----------------------------------------------------------------

WORKER = r"""
import json, os, sys, threading, time
cfg = json.loads(sys.argv[1])
from connector_pipelines.core.db import get_engine
from connector_pipelines.core.vault import Vault
vault = Vault(get_engine(cfg["url"]), cfg["keys"])
errors = []
def work():
    try:
        for _ in range(cfg["rounds"]):
            with vault.locked(cfg["name"]) as cred:
                value = dict(cred.value or {"count": 0, "holders": 0})
                time.sleep(cfg["hold_s"])
                value["count"] += 1
                cred.set(value)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=work) for _ in range(cfg["threads"])]
print("ready", flush=True)
while not os.path.exists(cfg["go"]):
    time.sleep(0.005)
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"errors": errors}), flush=True)
"""


def _increment_under_lock(url: str, tmp_path: Path, *, processes: int = 2, threads_per_process: int = 2,
                          local_threads: int = 2, rounds: int = 5, hold_s: float = 0.01) -> int:
    keys = [Vault.generate_key()]
    vault = Vault(get_engine(url), keys)  # tables exist before the children start (create_all is not race-safe)
    go = tmp_path / f"go-{uuid.uuid4().hex}"
    cfg = {"url": url, "keys": keys, "name": "counter", "rounds": rounds, "hold_s": hold_s,
           "threads": threads_per_process, "go": str(go)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(cfg)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(processes)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        errors: list[str] = []

        def work():
            try:
                for _ in range(rounds):
                    with vault.locked("counter") as cred:
                        value = dict(cred.value or {"count": 0})
                        time.sleep(hold_s)
                        value["count"] += 1
                        cred.set(value)
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
            assert json.loads(out.strip().splitlines()[-1])["errors"] == []
        assert errors == []
        expected = (processes * threads_per_process + local_threads) * rounds
        assert vault.get("counter")["count"] == expected
        return expected
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_locked_is_exclusive_across_processes_sqlite(sqlite_url, tmp_path):
    assert _increment_under_lock(sqlite_url, tmp_path) == 30


def test_locked_is_exclusive_across_processes_postgresql(pg_url, tmp_path):
    assert _increment_under_lock(pg_url, tmp_path) == 30


def test_postgresql_lock_is_per_credential(pg_url):
    vault = Vault(get_engine(pg_url), [Vault.generate_key()])
    vault.put("a", "A")
    vault.put("b", "B")
    entered, release = threading.Event(), threading.Event()

    def hold_a():
        with vault.locked("a"):
            entered.set()
            release.wait(10)

    t = threading.Thread(target=hold_a)
    t.start()
    try:
        assert entered.wait(5)
        start = time.monotonic()
        with vault.locked("b") as cred:  # another credential: not blocked
            assert cred.value == "B"
        assert time.monotonic() - start < 2

        got_a = threading.Event()

        def wait_a():
            with vault.locked("a"):
                got_a.set()

        t2 = threading.Thread(target=wait_a)
        t2.start()
        assert not got_a.wait(0.5)  # the same credential: blocked until released
        release.set()
        assert got_a.wait(5)
        t2.join()
    finally:
        release.set()
        t.join()
