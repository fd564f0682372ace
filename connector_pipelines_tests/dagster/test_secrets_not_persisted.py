"""Secrets never reach Dagster's storage, and never print.

DAGSTER-STYLE rule 3: a literal (or vault-decrypted) secret assigned to a resource field is written
in plaintext (zlib) into the run storage ``snapshots`` table; a ``dg.EnvVar`` is stored by name
only. This runs jobs of the real definitions (resources bound by resources_from_env) on a Dagster
instance — SQLite, and PostgreSQL as in production — with recognisable secret values, among them the
password inside CONNECTOR_DATABASE_URL (the project's tables live on the machine's PostgreSQL here,
whose trust auth ignores it), then reads every table the instance wrote (zlib-decompressing blobs)
and every file under its home: the values must be absent, while the variable *names* are present
(which proves the scan sees the snapshots).
"""

import socket
import sqlite3
import zlib
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from connector_pipelines.core.vault import Vault
from connector_pipelines.definitions import defs as load_defs

BC_SECRET = "SECRET-bc-123"
JIRA_SECRET = "SECRET-jira-456"
STATE_SECRET = "SECRET-state-789"
REFRESH_TOKEN = "SECRET-refresh-000"
DB_PASSWORD = "SECRET-dbpass-555"
VAULT_KEY = Vault.generate_key()
SECRETS = (BC_SECRET, JIRA_SECRET, STATE_SECRET, REFRESH_TOKEN, VAULT_KEY, DB_PASSWORD)
CANARY = "CANARY-metadata-visible"  # a non-secret the op writes to the event log: the scan must find it
SETTINGS = {
    "CONNECTOR_BC_TENANT_ID": "tenant-1",
    "CONNECTOR_BC_ENVIRONMENT": "sandbox",
    "CONNECTOR_BC_CLIENT_ID": "bc-client",
    "CONNECTOR_BC_CLIENT_SECRET": BC_SECRET,
    "CONNECTOR_BC_CLIENT_STATE": STATE_SECRET,
    "CONNECTOR_JIRA_CLIENT_ID": "jira-client",
    "CONNECTOR_JIRA_CLIENT_SECRET": JIRA_SECRET,
    "CONNECTOR_JIRA_SITE_URL": "https://example.invalid",
    "CONNECTOR_VAULT_KEYS": VAULT_KEY,
    # nothing listens here, and the socket trap below refuses to connect anyway
    "CONNECTOR_BC_API_URL": "http://127.0.0.1:9",
    "CONNECTOR_ENTRA_AUTHORITY_HOST": "http://127.0.0.1:9",
    "CONNECTOR_ATLASSIAN_AUTH_URL": "http://127.0.0.1:9",
    "CONNECTOR_ATLASSIAN_API_URL": "http://127.0.0.1:9",
}


@pytest.fixture(scope="module")
def databases():
    """Two throwaway PostgreSQL databases: the project's tables, and Dagster's own storage."""
    from sandboxes.harness.postgres import throwaway_databases

    with throwaway_databases("cp_secrets", 2) as [connector, dagster_db]:
        yield {"connector": connector, "dagster": dagster_db}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def env(request, tmp_path_factory, databases):
    tmp_path = tmp_path_factory.mktemp(f"secrets-{request.param}")
    home = tmp_path / "dagster_home"
    home.mkdir()
    # a password trust auth ignores, so it can be looked for everywhere Dagster writes
    url = f"postgresql+psycopg2://postgres:{DB_PASSWORD}@127.0.0.1:5432/{databases['connector']}"

    def no_network(*_args, **_kwargs):
        raise AssertionError("this test must not reach a vendor")

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        monkeypatch.setenv("CONNECTOR_DATABASE_URL", url)
        for name, value in SETTINGS.items():
            monkeypatch.setenv(name, value)
        # Python sockets only: PostgreSQL is reached through libpq, vendors through httpx.
        monkeypatch.setattr(socket.socket, "connect", no_network)
        monkeypatch.setattr(socket, "create_connection", no_network)
        overrides = {} if request.param == "sqlite" else {"storage": {"postgres": {"postgres_db": {
            "scheme": "postgresql+psycopg2", "hostname": "127.0.0.1", "port": 5432,
            "db_name": databases["dagster"], "username": "postgres", "password": ""}}}}
        yield home, url, overrides, request.param, databases["dagster"]


def texts_of_value(value) -> list[str]:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out = [raw.decode("utf-8", "replace")]
        try:
            out.append(zlib.decompress(raw).decode("utf-8", "replace"))
        except zlib.error:
            pass
        return out
    return [] if value is None else [str(value)]


def scan_sqlite(path: Path) -> dict[str, str]:
    """table -> all its text (blobs also zlib-decompressed where they decompress)."""
    out: dict[str, str] = {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            out[f"{path.name}:{table}"] = texts_of_rows(conn.execute(f'SELECT * FROM "{table}"'))
    finally:
        conn.close()
    return out


def texts_of_rows(rows) -> str:
    return "\n".join(text for row in rows for value in row for text in texts_of_value(value))


def scan_postgres(database: str) -> dict[str, str]:
    """table -> all its text, for every table of a PostgreSQL database (bytea also zlib-decompressed)."""
    from sandboxes.harness.postgres import url_of

    engine = sa.create_engine(url_of(database))
    try:
        with engine.connect() as conn:
            tables = [r[0] for r in conn.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            return {f"pg:{t}": texts_of_rows(conn.exec_driver_sql(f'SELECT * FROM "{t}"')) for t in tables}
    finally:
        engine.dispose()


def scan_tree(root: Path) -> dict[str, str]:
    """Every SQLite table under root, plus every file's raw bytes (WAL files, compute logs, ...)."""
    found: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found[f"file:{path.relative_to(root)}"] = data.decode("utf-8", "replace")
        if data.startswith(b"SQLite format 3\x00"):
            found.update({f"{path.relative_to(root)}:{k}": v for k, v in scan_sqlite(path).items()})
    return found


def leaks(found: dict[str, str], needles=SECRETS) -> list[tuple[str, str]]:
    return [(where, needle) for where, text in found.items() for needle in needles if needle in text]


def probe_job(seen: dict[str, str]) -> dg.JobDefinition:
    """Initialises every resource, uses the vault and the Jira token provider, writes a canary."""

    @dg.op(required_resource_keys={"connector_store", "business_central", "jira"})
    def touch_resources(context: dg.OpExecutionContext) -> dg.Output[None]:
        bc, jira, store = context.resources.business_central, context.resources.jira, context.resources.connector_store
        assert (bc.client_secret, bc.client_state, jira.client_secret) == (BC_SECRET, STATE_SECRET, JIRA_SECRET)
        vault = store.vault()
        vault.put("atlassian:jira", {"refresh_token": REFRESH_TOKEN, "cloud_id": "c-1"})
        assert vault.get("atlassian:jira")["refresh_token"] == REFRESH_TOKEN
        with vault.locked("atlassian:jira") as credential:
            seen["locked_credential"] = repr(credential)
        seen["vault"] = repr(vault)
        seen["token_provider"] = repr(jira.token_provider(vault))
        seen["store"] = repr(store)
        seen["resolved_business_central"] = repr(bc)
        seen["resolved_jira"] = repr(jira)
        context.log.info(f"resources initialised for tenant {bc.tenant_id}")
        return dg.Output(None, metadata={"canary": CANARY})

    @dg.job(name="secrets_probe_job")
    def secrets_probe_job():
        touch_resources()

    return secrets_probe_job


@pytest.fixture(scope="module")
def executed(env):
    """Run the probe job and the real bc_jira__jira_webhook_renewal_job; yield what they left behind."""
    home, connector_url, overrides, storage, dagster_db = env
    defs = load_defs()
    seen: dict[str, str] = {}
    with dg.instance_for_test(temp_dir=str(home), overrides=overrides) as instance:
        probe = dg.Definitions(jobs=[probe_job(seen)], resources=defs.resources).resolve_job_def("secrets_probe_job")
        assert probe.execute_in_process(instance=instance).success
        # A job of the real definitions: it initialises the resources, then stops before any vendor
        # call because no receiver URL is configured (the failure and its message are stored too).
        renewal = defs.resolve_job_def("bc_jira__jira_webhook_renewal_job")
        failed = renewal.execute_in_process(instance=instance, raise_on_error=False)
        assert not failed.success
        [failure] = [e for e in failed.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        assert "webhook_url" in failure.step_failure_data.error.cause.message
        assert instance.get_runs_count() == 2
    yield defs, seen, home, connector_url, storage, dagster_db


def test_no_secret_in_any_table_or_file_of_the_instance(executed):
    _, _, home, _, storage, dagster_db = executed
    found = scan_tree(home)
    if storage == "postgres":
        found.update(scan_postgres(dagster_db))
        assert any(k == "pg:snapshots" for k in found), sorted(found)  # the PostgreSQL run storage was scanned
    else:
        assert any(k.endswith(":snapshots") for k in found), sorted(found)  # the run storage was scanned
    assert any(CANARY in text for text in found.values())               # ... and decompressed
    for name in ("CONNECTOR_BC_CLIENT_SECRET", "CONNECTOR_JIRA_CLIENT_SECRET", "CONNECTOR_BC_CLIENT_STATE",
                 "CONNECTOR_DATABASE_URL"):
        assert any(name in text for key, text in found.items() if key.endswith("snapshots")), name
    assert leaks(found) == []


def test_the_vault_keeps_only_ciphertext_in_the_connector_database(executed):
    _, _, _, connector_url, _, _ = executed
    found = scan_postgres(connector_url.rsplit("/", 1)[-1])
    assert found.get("pg:cp_credentials")
    assert leaks(found, (REFRESH_TOKEN, VAULT_KEY, BC_SECRET, JIRA_SECRET, DB_PASSWORD)) == []


def test_resources_are_bound_by_variable_name(executed):
    defs = executed[0]
    bc, jira, store = defs.resources["business_central"], defs.resources["jira"], defs.resources["connector_store"]
    for value, name in ((bc.client_secret, "CONNECTOR_BC_CLIENT_SECRET"), (bc.client_state, "CONNECTOR_BC_CLIENT_STATE"),
                        (jira.client_secret, "CONNECTOR_JIRA_CLIENT_SECRET"),
                        (store.database_url, "CONNECTOR_DATABASE_URL")):
        assert isinstance(value, dg.EnvVar) and value.env_var_name == name


def test_reprs_of_vault_credentials_and_bound_resources_hide_secrets(executed):
    defs, seen = executed[0], executed[1]
    reprs = {k: seen[k] for k in ("vault", "locked_credential", "token_provider", "store")}
    reprs.update({f"bound_{k}": repr(v) for k, v in defs.resources.items()})
    assert set(seen) >= {"vault", "locked_credential", "token_provider"}
    assert [(k, s) for k, text in reprs.items() for s in SECRETS if s in text] == []


def test_reprs_of_resolved_resources_hide_secrets(executed):
    seen = executed[1]
    reprs = {k: seen[k] for k in ("resolved_business_central", "resolved_jira", "store")}
    assert [(k, s) for k, text in reprs.items() for s in SECRETS if s in text] == []
