"""Leases: time-limited claims on keys, shared by every process that uses the project's database.

One mechanism for every "one at a time" the project needs:
- one writer per record key (the ledger claim: two runs upserting the same record never both create);
- one refresher per rotating credential (the vault);
- one live worker per Dagster run (the run's own lease; a killed worker stops renewing it and the
  watchdog sensor marks the run failed within minutes instead of after ``max_runtime``).

A lease is a row ``(scope, key) -> (owner, expires_at)`` in ``cp_leases``. ``acquire`` claims the keys
that are free, already ours, or whose lease expired (a crashed owner's successor takes over, and is
told what it took over); keys another live owner holds are not returned, and never raise. Every
statement is short: no database lock is held across network I/O. An owner renews its leases with a
heartbeat while it works; ``release`` ends them.

Atomicity: on SQLite the write transaction holds the database write lock (``BEGIN IMMEDIATE``); on
PostgreSQL the insert is ``ON CONFLICT DO NOTHING`` and the take-over is a compare-and-set on the old
owner and expiry, with rows another transaction is claiming skipped (``FOR UPDATE SKIP LOCKED``), so
two claimers never both win and never deadlock.

Clocks: expiry uses this host's UTC clock; hosts sharing a database must keep their clocks within a
small fraction of the lease time (NTP).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector_pipelines.core.db import is_sqlite, leases, retrying_write, upsert_insert, utcnow

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 60.0
CHUNK = 400
RUN_SCOPE = "run"   # one lease per live Dagster run, keyed by run id (the watchdog's sign of life)


def ledger_scope(integration: str) -> str:
    """The scope of an integration's record claims (its ledger's keys)."""
    return f"ledger:{integration}"


def new_owner(label: str | None = None) -> str:
    """A unique owner name that says where it runs: ``<label>@<host>:<pid>:<random>``."""
    return f"{label or 'worker'}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:200]


@dataclass(frozen=True)
class TakenOver:
    """An expired lease this owner took over: who held it and until when (the predecessor may have
    done part of its work before it stopped)."""

    previous_owner: str
    expired_at: datetime


def _chunks(items: list[str], n: int = CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class Leases:
    def __init__(self, engine: Engine, owner: str, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.owner = owner
        self.ttl = timedelta(seconds=ttl_s)
        self._now = clock
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"Leases(owner={self.owner!r}, ttl={self.ttl.total_seconds():g}s)"

    # -- claims -----------------------------------------------------------------------------------
    def acquire(self, scope: str, keys: Iterable[str]) -> dict[str, TakenOver | None]:
        """Claim the keys that are free, ours, or expired. Returns the keys now held by this owner, each
        with what was taken over (None when the key was free or already ours)."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        return retrying_write(self.engine, lambda conn: self._acquire(conn, scope, wanted))

    def _acquire(self, conn: Connection, scope: str, wanted: list[str]) -> dict[str, TakenOver | None]:
        now = self._now()
        until = now + self.ttl
        got: dict[str, TakenOver | None] = {}
        for chunk in _chunks(wanted):
            # Sorted inserts: concurrent claimers of overlapping keys wait on each other in one order.
            insert = upsert_insert(self.engine, leases).on_conflict_do_nothing(
                index_elements=[leases.c.scope, leases.c.key])
            conn.execute(insert, [{"scope": scope, "key": k, "owner": self.owner, "acquired_at": now,
                                   "expires_at": until} for k in chunk])
            q = (sa.select(leases.c.key, leases.c.owner, leases.c.expires_at)
                 .where(leases.c.scope == scope, leases.c.key.in_(chunk)).order_by(leases.c.key))
            if not is_sqlite(self.engine):
                q = q.with_for_update(skip_locked=True)
            for key, owner, expires_at in conn.execute(q).all():
                if owner == self.owner:
                    got[key] = None
                elif expires_at < now:
                    taken = conn.execute(
                        sa.update(leases).where(leases.c.scope == scope, leases.c.key == key,
                                                leases.c.owner == owner, leases.c.expires_at == expires_at)
                        .values(owner=self.owner, acquired_at=now, expires_at=until)).rowcount
                    if taken:
                        got[key] = TakenOver(owner, expires_at)
        return got

    def wait_for(self, scope: str, key: str, timeout_s: float) -> bool:
        """Acquire one key, waiting (polling with jitter, no lock held) up to ``timeout_s`` for its holder."""
        deadline = time.monotonic() + timeout_s
        while not self.acquire(scope, [key]):
            if time.monotonic() >= deadline:
                return False
            time.sleep(random.uniform(0.05, 0.3))
        return True

    @contextmanager
    def hold(self, scope: str, key: str, timeout_s: float) -> Iterator[bool]:
        """Hold one key for the block (a mutex shared by every process on the database); yields False, holding
        nothing, when another live owner kept it for ``timeout_s`` — the caller decides what that means."""
        got = self.wait_for(scope, key, timeout_s)
        try:
            yield got
        finally:
            if got:
                self.release(scope, [key])

    def held_by_others(self, scope: str, keys: Iterable[str]) -> dict[str, tuple[str, datetime]]:
        """Live leases of other owners on these keys: key -> (owner, expires_at)."""
        wanted = sorted(set(keys))
        out: dict[str, tuple[str, datetime]] = {}
        now = self._now()
        with self.engine.connect() as conn:
            for chunk in _chunks(wanted):
                for key, owner, expires_at in conn.execute(
                        sa.select(leases.c.key, leases.c.owner, leases.c.expires_at)
                        .where(leases.c.scope == scope, leases.c.key.in_(chunk))):
                    if owner != self.owner and expires_at >= now:
                        out[key] = (owner, expires_at)
        return out

    def release(self, scope: str, keys: Iterable[str]) -> None:
        keys = sorted(set(keys))
        if not keys:
            return

        def work(conn: Connection) -> None:
            for chunk in _chunks(keys):
                conn.execute(sa.delete(leases).where(leases.c.scope == scope, leases.c.key.in_(chunk),
                                                     leases.c.owner == self.owner))

        retrying_write(self.engine, work)

    def release_all(self) -> None:
        retrying_write(self.engine, lambda conn: conn.execute(sa.delete(leases).where(leases.c.owner == self.owner)))

    def renew(self) -> int:
        """Extend every lease this owner holds; returns how many it still holds."""
        until = self._now() + self.ttl
        return retrying_write(self.engine, lambda conn: conn.execute(
            sa.update(leases).where(leases.c.owner == self.owner).values(expires_at=until)).rowcount)

    # -- heartbeat --------------------------------------------------------------------------------
    def start_heartbeat(self, interval_s: float | None = None) -> None:
        """Renew this owner's leases every ``interval_s`` (default a third of the lease) until stopped."""
        if self._heartbeat is not None:
            return
        interval = interval_s if interval_s is not None else self.ttl.total_seconds() / 3
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    self.renew()
                except Exception as exc:  # noqa: BLE001 - a missed beat is survivable; the next one retries
                    log.warning("lease heartbeat of %s failed: %s", self.owner, type(exc).__name__)

        self._heartbeat = threading.Thread(target=beat, name=f"lease-heartbeat-{self.owner[:40]}", daemon=True)
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        if self._heartbeat is None:
            return
        self._stop.set()
        self._heartbeat.join(timeout=5)
        self._heartbeat = None


def expired(engine: Engine, scope: str, now: datetime | None = None, limit: int = 100) -> list[tuple[str, str, datetime]]:
    """Expired leases of a scope: (key, owner, expires_at), oldest first."""
    now = now or utcnow()
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(leases.c.key, leases.c.owner, leases.c.expires_at)
            .where(leases.c.scope == scope, leases.c.expires_at < now)
            .order_by(leases.c.expires_at).limit(limit))]


def drop(engine: Engine, scope: str, key: str, owner: str) -> None:
    """Remove one lease (the watchdog, after it has dealt with a dead owner)."""
    retrying_write(engine, lambda conn: conn.execute(
        sa.delete(leases).where(leases.c.scope == scope, leases.c.key == key, leases.c.owner == owner)))
