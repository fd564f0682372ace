"""The project's own tables, beside Dagster's: SQLite under DAGSTER_HOME by default, PostgreSQL when configured.

``CONNECTOR_DATABASE_URL`` selects the database (``postgresql+psycopg2://...`` in production, the same
server dagster-postgres uses); without it the tables live in ``$DAGSTER_HOME/connector_pipelines.sqlite``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

T = TypeVar("T")

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

# Verified inbound webhook deliveries waiting for a sensor (core.inbox). ``seq`` is the commit order:
# allocated from ``cp_sequences`` under a row lock held to the end of the storing transaction, so a reader
# that has seen ``seq = n`` has seen every committed row with a smaller ``seq`` (whatever the timing of
# concurrent commits: PostgreSQL ids are not in commit order).
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
    sa.Column("seq", sa.BigInteger),
    sa.UniqueConstraint("source", "dedupe_key", name="uq_cp_inbox_source_dedupe"),
)
sa.Index("ix_cp_inbox_source_id", inbox.c.source, inbox.c.id)
sa.Index("ix_cp_inbox_source_seq", inbox.c.source, inbox.c.seq)

# Monotonic counters (name -> last value handed out), e.g. the inbox commit order.
sequences = sa.Table(
    "cp_sequences",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False, default=0),
)

# What each reader (one integration pair reading one source) did with an inbox row: queued for a run,
# processed, due for another attempt (``retry`` at next_attempt_at), or parked as a dead letter.
inbox_dispatch = sa.Table(
    "cp_inbox_dispatch",
    metadata,
    sa.Column("reader", sa.String(128), primary_key=True),
    sa.Column("inbox_id", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("dispatches", sa.Integer, nullable=False, default=1),
    sa.Column("run_key", sa.String(200)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("next_attempt_at", sa.DateTime),
    sa.Column("error", sa.Text),
    sa.Column("queued_at", sa.DateTime, nullable=False, default=utcnow),
    sa.Column("updated_at", sa.DateTime, nullable=False, default=utcnow),
)
sa.Index("ix_cp_inbox_dispatch_status", inbox_dispatch.c.reader, inbox_dispatch.c.status,
         inbox_dispatch.c.next_attempt_at)

# Inbound calls refused by the receiver (bad signature, malformed body): counted, never work. One row per
# (source, reason, status, hour) with a count, so a flood of forgeries cannot grow the table without bound.
inbox_rejections = sa.Table(
    "cp_inbox_refusals",
    metadata,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(64), primary_key=True),
    sa.Column("status_code", sa.Integer, primary_key=True),
    sa.Column("hour", sa.DateTime, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False, default=0),
    sa.Column("last_at", sa.DateTime, nullable=False, default=utcnow),
)

# Verified signatures seen by the receiver (a JWT, or the HMAC-signed body): the same proof presented
# again with another delivery identifier is a replay. Rows expire with the proof.
replay_guard = sa.Table(
    "cp_replay_guard",
    metadata,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("digest", sa.String(80), primary_key=True),
    sa.Column("identifier", sa.String(512), nullable=False),
    sa.Column("seen_at", sa.DateTime, nullable=False, default=utcnow),
    sa.Column("expires_at", sa.DateTime, nullable=False),
)
sa.Index("ix_cp_replay_guard_expires", replay_guard.c.expires_at)

# Time-limited claims on keys (core.leases): one writer per record key, one refresher per credential,
# one live run worker per run id. An owner renews its leases while it works; a crashed owner's lease
# expires and a successor may take it over.
leases = sa.Table(
    "cp_leases",
    metadata,
    sa.Column("scope", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("acquired_at", sa.DateTime, nullable=False, default=utcnow),
    sa.Column("expires_at", sa.DateTime, nullable=False),
)
sa.Index("ix_cp_leases_owner", leases.c.owner)
sa.Index("ix_cp_leases_scope_expires", leases.c.scope, leases.c.expires_at)

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
    # when an automatic retry is due (None: not retried automatically: done, given up, or needs a person)
    sa.Column("retry_after", sa.DateTime),
    # an *uncertain* intent (the create may have happened, its answer was lost): a target search made
    # after this moment sees such an issue despite the search index's lag; before it, finding nothing
    # proves nothing
    sa.Column("verify_after", sa.DateTime),
    sa.Column("created_at", sa.DateTime, nullable=False, default=utcnow),
    sa.Column("updated_at", sa.DateTime, nullable=False, default=utcnow),
    sa.UniqueConstraint("integration", "source_key", name="uq_cp_ledger_integration_source"),
)
sa.Index("ix_cp_ledger_target", ledger.c.integration, ledger.c.target_key)
sa.Index("ix_cp_ledger_state", ledger.c.integration, ledger.c.state)
sa.Index("ix_cp_ledger_retry", ledger.c.integration, ledger.c.retry_after)

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


class DatabaseNotConfigured(RuntimeError):
    """Neither CONNECTOR_DATABASE_URL nor DAGSTER_HOME is set: the message says what to set."""


def default_database_url() -> str:
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise DatabaseNotConfigured(
            "set DAGSTER_HOME to a folder (the project's SQLite database is kept there, beside Dagster's) or "
            f"{DATABASE_URL_ENV} to a database URL: the inbox, ledger and vault need a database, and neither is set"
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
    """Create the project's tables once, even when several processes open a new database at once, and
    add columns a newer release declares to tables an older one created (additive, nullable only).

    PostgreSQL: serialised by a transaction-level advisory lock; SQLite: BEGIN IMMEDIATE. A loser of
    a remaining race (catalog unique violation) retries and then finds the tables present.
    """
    from sqlalchemy.exc import DBAPIError

    for attempt in range(attempts):
        try:
            with write_transaction(engine) as conn:
                if engine.dialect.name == "postgresql":
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727172001)")
                metadata.create_all(conn)
                _add_missing_columns(conn)
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _add_missing_columns(conn: Connection) -> None:
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"{table.name}.{column.name} is missing and not nullable: migrate by hand")
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
            if table is inbox and column.name == "seq":   # rows stored before commit ordering existed
                conn.execute(sa.update(inbox).values(seq=inbox.c.id))


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def upsert_insert(engine: Engine, table: sa.Table):
    """``INSERT`` with ``on_conflict_do_nothing`` / ``on_conflict_do_update`` for this engine's dialect."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)


class _WriteTransaction:
    def __init__(self, engine: Engine) -> None:
        self.conn = engine.connect()
        if is_sqlite(engine):
            self.conn.info["immediate"] = True

    def __enter__(self) -> Connection:
        self._tx = self.conn.begin()
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._tx.commit()
            else:
                self._tx.rollback()
        finally:
            self.conn.info.pop("immediate", None)
            self.conn.close()
        return False


def write_transaction(engine: Engine) -> _WriteTransaction:
    """A transaction that takes the database's write lock at BEGIN on SQLite (``BEGIN IMMEDIATE``).

    Every write of the project's tables goes through one: a SQLite transaction that reads first and
    writes later would otherwise fail with "database is locked" when another writer got in between
    (the busy timeout cannot help an upgrade from a read lock). On PostgreSQL it is an ordinary
    transaction: lock rows with ``SELECT ... FOR UPDATE`` inside it. Never hold one across network I/O.
    """
    return _WriteTransaction(engine)


def transient_db_error(exc: BaseException) -> bool:
    """A failure a new transaction may not meet: deadlock, serialization failure, lock or busy timeout,
    a lost connection."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, OperationalError):
        return True
    code = getattr(getattr(exc, "orig", None), "pgcode", None)
    return isinstance(exc, DBAPIError) and code in ("40001", "40P01", "55P03", "57014")


def retrying_write(engine: Engine, work: Callable[[Connection], T], *, attempts: int = 5) -> T:
    """Run ``work(conn)`` in a write transaction, again (after a short jittered pause) when the database
    refused it for a transient reason; nothing of a refused attempt is committed."""
    for attempt in range(1, attempts + 1):
        try:
            with write_transaction(engine) as conn:
                return work(conn)
        except Exception as exc:
            if attempt == attempts or not transient_db_error(exc):
                raise
            time.sleep(random.uniform(0.02, 0.1) * attempt)
    raise AssertionError("unreachable")
