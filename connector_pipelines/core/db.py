"""The project's own tables, beside Dagster's: SQLite under DAGSTER_HOME by default, PostgreSQL when configured.

``CONNECTOR_DATABASE_URL`` selects the database (``postgresql+psycopg2://...`` in production, the same
server dagster-postgres uses); without it the tables live in ``$DAGSTER_HOME/connector_pipelines.sqlite``.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

DATABASE_URL_ENV = "CONNECTOR_DATABASE_URL"

metadata = sa.MetaData()


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# Encrypted credentials (core.vault). ``ciphertext`` is a Fernet token: never plaintext.
credentials = sa.Table(
    "cp_credentials",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("version", sa.Integer, nullable=False, default=1),
    sa.Column("updated_at", sa.DateTime, nullable=False, default=utcnow),
)

# Verified inbound webhook deliveries waiting for a sensor (core.inbox).
inbox = sa.Table(
    "cp_inbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("dedupe_key", sa.String(512), nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False, default=utcnow),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default="pending"),
    sa.Column("run_id", sa.String(64)),
    sa.Column("processed_at", sa.DateTime),
    sa.Column("error", sa.Text),
    sa.UniqueConstraint("source", "dedupe_key", name="uq_cp_inbox_source_dedupe"),
)
sa.Index("ix_cp_inbox_source_id", inbox.c.source, inbox.c.id)

# Inbound calls refused by the receiver (bad signature, malformed body): counted, never work.
inbox_rejections = sa.Table(
    "cp_inbox_rejections",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False, default=utcnow),
)

# Record ledger: idempotency + audit + replay, one row per (integration, source record/action).
ledger = sa.Table(
    "cp_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("integration", sa.String(64), nullable=False),
    sa.Column("source_key", sa.String(512), nullable=False),
    sa.Column("entity", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("target_key", sa.String(200)),
    sa.Column("target_url", sa.String(1000)),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("run_id", sa.String(64)),
    sa.Column("context", sa.JSON),
    sa.Column("created_at", sa.DateTime, nullable=False, default=utcnow),
    sa.Column("updated_at", sa.DateTime, nullable=False, default=utcnow),
    sa.UniqueConstraint("integration", "source_key", name="uq_cp_ledger_integration_source"),
)
sa.Index("ix_cp_ledger_target", ledger.c.integration, ledger.c.target_key)
sa.Index("ix_cp_ledger_state", ledger.c.integration, ledger.c.state)

# Webhook subscriptions we registered with vendors (BC subscriptions, Jira dynamic webhooks).
webhook_registrations = sa.Table(
    "cp_webhook_registrations",
    metadata,
    sa.Column("system", sa.String(64), primary_key=True),
    sa.Column("resource", sa.String(500), primary_key=True),
    sa.Column("registration_id", sa.String(200), nullable=False),
    sa.Column("expires_at", sa.DateTime),
    sa.Column("etag", sa.String(200)),
    sa.Column("updated_at", sa.DateTime, nullable=False, default=utcnow),
)


def default_database_url() -> str:
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise RuntimeError(
            f"Neither {DATABASE_URL_ENV} nor DAGSTER_HOME is set: the project needs a database for its "
            "inbox, ledger and vault (set DAGSTER_HOME for the embedded SQLite default)."
        )
    Path(home).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(home) / 'connector_pipelines.sqlite'}"


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - driver hook
    # Let pysqlite not issue BEGIN itself, so ``BEGIN IMMEDIATE`` (the vault's write lock) works.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn) -> None:  # pragma: no cover - driver hook
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("immediate") else "BEGIN")


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process, tables created on first use."""
    url = url or default_database_url()
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
                event.listen(engine, "connect", _sqlite_pragmas)
                event.listen(engine, "begin", _sqlite_begin)
            else:
                engine = sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
            _create_tables(engine)
            _engines[url] = engine
        return engine


def _create_tables(engine: Engine, attempts: int = 5) -> None:
    """Create the project's tables once, even when several processes open a new database at once.

    PostgreSQL: serialised by a transaction-level advisory lock; SQLite: BEGIN IMMEDIATE. A loser of
    a remaining race (catalog unique violation) retries and then finds the tables present.
    """
    import time

    from sqlalchemy.exc import DBAPIError

    for attempt in range(attempts):
        try:
            with write_transaction(engine) as conn:
                if engine.dialect.name == "postgresql":
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727172001)")
                metadata.create_all(conn)
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def write_transaction(engine: Engine):
    """A transaction that takes the database's write lock at BEGIN on SQLite (``BEGIN IMMEDIATE``).

    On PostgreSQL it is an ordinary transaction: lock rows with ``SELECT ... FOR UPDATE`` inside it.
    """
    conn = engine.connect()
    if is_sqlite(engine):
        conn.info["immediate"] = True

    class _Tx:
        def __enter__(self):
            self._tx = conn.begin()
            return conn

        def __exit__(self, exc_type, exc, tb):
            try:
                if exc_type is None:
                    self._tx.commit()
                else:
                    self._tx.rollback()
            finally:
                conn.info.pop("immediate", None)
                conn.close()
            return False

    return _Tx()
