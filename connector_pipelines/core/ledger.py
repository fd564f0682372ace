"""The record ledger: (integration, source key) -> (target key, state, attempts, last error, run id).

Idempotency, audit and replay for every write:
- a record already ``done`` with the same fingerprint is skipped;
- an ``intent`` row is committed *before* each create, so a crash between the vendor's answer and
  the ledger commit is visible on retry: the writer then looks the target up by its external key
  before creating again (DESIGN.md §3.3-3.4). Such an intent is *uncertain*: ``verify_after`` says
  when a target search is late enough to trust a "not found" (the search index lags);
- ``failed`` rows carry ``retry_after`` when they are retried automatically (transient errors, with
  backoff, up to a limit); without it they wait for a person (a permanent error, or given up);
- ``quarantined`` rows need a person (the reason in last_error).

Every write is one atomic statement per row shape (``INSERT ... ON CONFLICT DO UPDATE``) inside a
write transaction, so concurrent writers never read-then-insert into a unique violation or SQLite's
"database is locked". Who may write a record at all is decided before, by a lease (core.leases).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector_pipelines.core.db import ledger, retrying_write, upsert_insert, utcnow

INTENT = "intent"
DONE = "done"
FAILED = "failed"
QUARANTINED = "quarantined"
STATES = (INTENT, DONE, FAILED, QUARANTINED)
# Columns a write may set; any other key of a row dict is an error (it would be silently dropped).
WRITABLE = {"source_key", "entity", "action", "state", "target_key", "target_url", "fingerprint", "last_error",
            "run_id", "context", "retry_after", "verify_after"}


@dataclass
class LedgerEntry:
    integration: str
    source_key: str
    entity: str
    action: str
    state: str
    target_key: str | None = None
    target_url: str | None = None
    fingerprint: str | None = None
    attempts: int = 0
    last_error: str | None = None
    run_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    retry_after: datetime | None = None
    verify_after: datetime | None = None
    id: int | None = None
    updated_at: datetime | None = None


def _entry(r: Any) -> LedgerEntry:
    return LedgerEntry(r.integration, r.source_key, r.entity, r.action, r.state, r.target_key, r.target_url,
                       r.fingerprint, r.attempts, r.last_error, r.run_id, r.context or {}, r.retry_after,
                       r.verify_after, r.id, r.updated_at)


# (dialect, row shape, bump_attempts) -> the upsert statement of Ledger._upsert_statement
_UPSERTS: dict[tuple[str, tuple[str, ...], bool], Any] = {}


def _chunks(items: list[Any], n: int = 500) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- reads -------------------------------------------------------------------------------------
    def get_many(self, integration: str, source_keys: Iterable[str]) -> dict[str, LedgerEntry]:
        keys = list(dict.fromkeys(source_keys))
        out: dict[str, LedgerEntry] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(keys):
                q = sa.select(ledger).where(ledger.c.integration == integration, ledger.c.source_key.in_(chunk))
                out.update({r.source_key: _entry(r) for r in conn.execute(q)})
        return out

    def get(self, integration: str, source_key: str) -> LedgerEntry | None:
        return self.get_many(integration, [source_key]).get(source_key)

    def by_target(self, integration: str, target_key: str) -> list[LedgerEntry]:
        q = sa.select(ledger).where(ledger.c.integration == integration, ledger.c.target_key == target_key)
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(q)]

    def in_state(self, integration: str, state: str, entity: str | None = None) -> list[LedgerEntry]:
        q = sa.select(ledger).where(ledger.c.integration == integration, ledger.c.state == state)
        if entity:
            q = q.where(ledger.c.entity == entity)
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(q.order_by(ledger.c.id))]

    def counts(self, integration: str, entity: str | None = None) -> dict[str, int]:
        q = sa.select(ledger.c.state, sa.func.count()).where(ledger.c.integration == integration)
        if entity:
            q = q.where(ledger.c.entity == entity)
        with self.engine.connect() as conn:
            rows = dict(conn.execute(q.group_by(ledger.c.state)).all())
        return {s: int(rows.get(s, 0)) for s in STATES}

    def needing_a_person(self, integration: str, entity: str | None = None, keys: Iterable[str] | None = None,
                         limit: int | None = None) -> list[LedgerEntry]:
        """Rows no automatic retry will write: quarantined, or failed without a ``retry_after`` (a permanent
        error, or the retry budget spent) — record rows and write-back rows (``#resolve``, ``#write_back``)
        alike, oldest change first. ``keys``: only these source keys."""
        q = sa.select(ledger).where(ledger.c.integration == integration, sa.or_(
            ledger.c.state == QUARANTINED, sa.and_(ledger.c.state == FAILED, ledger.c.retry_after.is_(None))))
        if entity:
            q = q.where(ledger.c.entity == entity)
        out: list[LedgerEntry] = []
        with self.engine.connect() as conn:
            if keys is None:
                out = [_entry(r) for r in conn.execute(q.order_by(ledger.c.updated_at, ledger.c.id).limit(limit))]
            else:
                for chunk in _chunks(list(dict.fromkeys(keys))):
                    out += [_entry(r) for r in conn.execute(q.where(ledger.c.source_key.in_(chunk)))]
                out = sorted(out, key=lambda e: (e.updated_at or datetime.min, e.id or 0))[:limit]
        return out

    def attention(self, integration: str, entity: str | None = None) -> dict[str, int]:
        """How many rows need a person, wait for an automatic retry (or a search-lag check), or are being
        written right now (an intent without a retry time)."""
        needs = sa.or_(ledger.c.state == QUARANTINED, sa.and_(ledger.c.state == FAILED, ledger.c.retry_after.is_(None)))
        retrying = sa.and_(ledger.c.state.in_((FAILED, INTENT)), ledger.c.retry_after.is_not(None))
        writing = sa.and_(ledger.c.state == INTENT, ledger.c.retry_after.is_(None))
        q = sa.select(*(sa.func.sum(sa.case((c, 1), else_=0)) for c in (needs, retrying, writing))).where(
            ledger.c.integration == integration, ledger.c.state.in_((FAILED, INTENT, QUARANTINED)))  # not done
        if entity:
            q = q.where(ledger.c.entity == entity)
        with self.engine.connect() as conn:
            row = conn.execute(q).one()
        return {"needs_a_person": int(row[0] or 0), "retrying": int(row[1] or 0), "being_written": int(row[2] or 0)}

    def latest(self, integration: str, entity: str, actions: Iterable[str], limit: int = 10) -> list[LedgerEntry]:
        """The rows of ``entity`` with one of ``actions`` (e.g. its resolution, ``write_back``) changed last,
        newest first."""
        q = (sa.select(ledger).where(ledger.c.integration == integration, ledger.c.entity == entity,
                                     ledger.c.action.in_(list(actions)))
             .order_by(ledger.c.updated_at.desc(), ledger.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(q)]

    def action_counts(self, integration: str, entity: str, actions: Iterable[str]) -> dict[str, int]:
        """Rows of ``entity`` with one of ``actions`` per state."""
        q = (sa.select(ledger.c.state, sa.func.count()).where(
            ledger.c.integration == integration, ledger.c.entity == entity, ledger.c.action.in_(list(actions)))
             .group_by(ledger.c.state))
        with self.engine.connect() as conn:
            rows = dict(conn.execute(q).all())
        return {s: int(rows.get(s, 0)) for s in STATES}

    def due_for_retry(self, integration: str, now: datetime | None = None, limit: int = 500,
                      action: str = "issue") -> list[LedgerEntry]:
        """Rows whose automatic retry is due (``retry_after`` passed), oldest first."""
        now = now or utcnow()
        q = (sa.select(ledger).where(ledger.c.integration == integration, ledger.c.action == action,
                                     ledger.c.state.in_((INTENT, FAILED)), ledger.c.retry_after <= now)
             .order_by(ledger.c.retry_after, ledger.c.id).limit(limit))
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(q)]

    def by_ids(self, ids: Iterable[int]) -> list[LedgerEntry]:
        ids = list(dict.fromkeys(ids))
        out: list[LedgerEntry] = []
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                out += [_entry(r) for r in conn.execute(sa.select(ledger).where(ledger.c.id.in_(chunk)))]
        return sorted(out, key=lambda e: e.id or 0)

    # -- writes ------------------------------------------------------------------------------------
    def _upsert(self, integration: str, rows: list[dict[str, Any]], bump_attempts: bool) -> None:
        if not rows:
            return
        for r in rows:
            unknown = set(r) - WRITABLE
            if unknown:
                raise ValueError(f"ledger rows have no column(s) {sorted(unknown)}")
        now = utcnow()
        # One statement per row shape: ON CONFLICT updates exactly the columns the caller gave, so a
        # write that does not name target_key (an intent, a failure) keeps the issue already recorded.
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for r in sorted(rows, key=lambda r: r["source_key"]):   # one lock order for concurrent writers
            shapes.setdefault(tuple(sorted(r)), []).append(r)

        def work(conn: Connection) -> None:
            for shape, group in shapes.items():
                stmt = self._upsert_statement(shape, bump_attempts)
                for chunk in _chunks(group):
                    conn.execute(stmt, [{**r, "integration": integration, "created_at": now, "updated_at": now,
                                         "attempts": 1 if bump_attempts else 0,
                                         "context": r.get("context") or {}} for r in chunk])

        retrying_write(self.engine, work)

    def _upsert_statement(self, shape: tuple[str, ...], bump_attempts: bool) -> Any:
        """The ``INSERT ... ON CONFLICT DO UPDATE`` of one row shape, built once per database dialect and
        process (a statement is immutable; building its ``excluded`` columns and conflict clause cost about a
        quarter of a 50-row write's CPU)."""
        key = (self.engine.dialect.name, shape, bump_attempts)
        stmt = _UPSERTS.get(key)
        if stmt is None:
            insert = upsert_insert(self.engine, ledger)
            changes = {c: insert.excluded[c] for c in shape if c != "source_key"}
            changes["updated_at"] = insert.excluded.updated_at
            if bump_attempts:
                changes["attempts"] = ledger.c.attempts + 1
            stmt = _UPSERTS[key] = insert.on_conflict_do_update(
                index_elements=[ledger.c.integration, ledger.c.source_key], set_=changes)
        return stmt

    def record_intents(self, integration: str, intents: list[dict[str, Any]], run_id: str | None) -> None:
        """Commit intent rows before the writes: each dict has source_key, entity, action, context."""
        self._upsert(integration, [{**i, "state": INTENT, "run_id": run_id, "last_error": None, "retry_after": None,
                                    "verify_after": None} for i in intents], bump_attempts=True)

    def mark_done(self, integration: str, results: list[dict[str, Any]], run_id: str | None) -> None:
        """Each dict has source_key (+ entity, action) and target_key, target_url, fingerprint, context."""
        self._upsert(integration, [{**r, "state": DONE, "run_id": run_id, "last_error": None, "retry_after": None,
                                    "verify_after": None} for r in results], bump_attempts=False)

    def remember(self, integration: str, rows: list[dict[str, Any]]) -> None:
        """Update what existing rows remember (each dict: source_key, entity, action, context), their state and
        everything else as they are (what a write-back last wrote to a target record)."""
        for r in rows:
            if set(r) != {"source_key", "entity", "action", "context"}:
                raise ValueError("remember() takes source_key, entity, action and context only")
        now = utcnow()

        def work(conn: Connection) -> None:
            for r in sorted(rows, key=lambda r: r["source_key"]):   # one lock order for concurrent writers
                conn.execute(sa.update(ledger).where(ledger.c.integration == integration,
                                                     ledger.c.source_key == r["source_key"])
                             .values(context=r["context"], updated_at=now))

        retrying_write(self.engine, work)

    def mark_failed(self, integration: str, failures: list[dict[str, Any]], run_id: str | None,
                    state: str = FAILED, count_attempt: bool = False) -> None:
        """Each dict has source_key, entity, action, last_error (+ context, retry_after, verify_after).
        Without ``retry_after`` the row waits for a person (or an explicit re-run). ``count_attempt``
        for a write that recorded no intent before it (an update): the failure counts as an attempt."""
        self._upsert(integration, [{"retry_after": None, **f, "state": state, "run_id": run_id} for f in failures],
                     bump_attempts=count_attempt)

    def quarantine(self, integration: str, items: list[dict[str, Any]], run_id: str | None) -> None:
        self.mark_failed(integration, [{**i, "retry_after": None} for i in items], run_id, state=QUARANTINED)

    def postpone(self, integration: str, entries: list[LedgerEntry], error: str, run_id: str | None,
                 next_at: Callable[[int], datetime | None] | None) -> None:
        """A retry that could not even start: each row keeps its state, counts an attempt, and is due
        again at ``next_at(attempts)`` (None, or no ``next_at``: given up, a person must look)."""
        rows = [{"source_key": e.source_key, "entity": e.entity, "action": e.action, "state": e.state,
                 "last_error": error[:2000], "run_id": run_id,
                 "retry_after": next_at(e.attempts + 1) if next_at else None} for e in entries]
        self._upsert(integration, rows, bump_attempts=True)

    def defer(self, integration: str, items: list[dict[str, Any]], run_id: str | None) -> None:
        """Keep rows as they are (an uncertain intent stays an intent) but due again at ``retry_after``;
        each dict has source_key, entity, action, retry_after, verify_after, last_error (the reason)."""
        self._upsert(integration, [{**i, "state": INTENT, "run_id": run_id} for i in items], bump_attempts=False)
