"""The webhook inbox: verified inbound deliveries, stored once per (source, dedupe key).

The receiver writes rows (one transaction per delivery, whatever its number of entries); each reader
(one integration pair reading one source) has a cursor sensor that reads rows after its cursor and
launches one run per batch; the run records the outcome per row in ``cp_inbox_dispatch``. Nothing here
talks to a vendor.

Gap safety: the sensor's cursor is the row's ``seq``, handed out from a counter row that the storing
transaction locks until it commits. A transaction holding seq 7 commits before any other can take
seq 8, so a reader that has seen seq 8 has seen seq 7 — however slowly a concurrent commit lands
(PostgreSQL's id sequence gives no such order; the old "settle window" was a guess at commit timing).

Per reader, a row is ``queued`` (in a launched batch), ``processed``, ``retry`` (due again at
``next_attempt_at``: the batch failed, or its run died) or ``dead`` (the retry budget is spent, or the
error is permanent): a dead letter, listed with its error by ``connector-pipelines inbox`` and by the
pair's ``no_dead_letters`` check, and replayable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector_pipelines.core.db import (
    inbox,
    inbox_dispatch,
    inbox_rejections,
    replay_guard,
    retrying_write,
    sequences,
    upsert_insert,
    utcnow,
)

QUEUED = "queued"
PROCESSED = "processed"
RETRY = "retry"
DEAD = "dead"
SEQ_NAME = "inbox"
REPLAY = "replay"


@dataclass(frozen=True)
class InboxRow:
    id: int
    source: str
    dedupe_key: str
    received_at: datetime
    payload: dict[str, Any]
    status: str
    run_id: str | None
    seq: int | None = None


@dataclass(frozen=True)
class Proof:
    """A verified signature that may be presented once: its digest, the delivery it belongs to, and how
    long it stays valid (a replay after that is refused by the signature check itself)."""

    digest: str
    identifier: str
    expires_at: datetime


@dataclass(frozen=True)
class Stored:
    new: int
    duplicates: int
    replayed: bool = False   # the proof was already used by another delivery: nothing was stored


@dataclass(frozen=True)
class Dispatch:
    inbox_id: int
    status: str
    attempts: int
    dispatches: int
    run_key: str | None
    run_id: str | None
    next_attempt_at: datetime | None
    error: str | None
    queued_at: datetime
    updated_at: datetime


def _naive_utc(moment: datetime) -> datetime:
    """Stored timestamps are naive UTC (utcnow); aware inputs are converted, naive ones taken as UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _row(r: Any) -> InboxRow:
    return InboxRow(r.id, r.source, r.dedupe_key, r.received_at, r.payload, r.status, r.run_id, r.seq)


def _dispatch(r: Any) -> Dispatch:
    return Dispatch(r.inbox_id, r.status, r.attempts, r.dispatches, r.run_key, r.run_id, r.next_attempt_at, r.error,
                    r.queued_at, r.updated_at)


def _chunks(items: list[Any], n: int = 500) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class Inbox:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- the receiver's side ------------------------------------------------------------------------
    def put(self, source: str, dedupe_key: str, payload: dict[str, Any]) -> bool:
        """Store one delivery; False if (source, dedupe_key) was already stored (a re-delivery)."""
        return self.put_many(source, [(dedupe_key, payload)]).new == 1

    def put_many(self, source: str, items: list[tuple[str, dict[str, Any]]], proof: Proof | None = None) -> Stored:
        """Store a delivery's entries in one transaction (all or none), in commit order (``seq``).

        With a ``proof``, its digest is recorded in the same transaction; a proof already recorded for
        another delivery identifier is a replay and nothing is stored (the same identifier again is the
        sender's retry: its entries dedupe as usual)."""
        unique: dict[str, dict[str, Any]] = {}
        for key, payload in items:
            unique.setdefault(key, payload)
        if not unique and proof is None:
            return Stored(0, 0)
        return retrying_write(self.engine, lambda conn: self._store(conn, source, unique, proof, len(items)))

    def _store(self, conn: Connection, source: str, unique: dict[str, dict[str, Any]], proof: Proof | None,
               total: int) -> Stored:
        now = utcnow()
        if proof is not None:
            conn.execute(sa.delete(replay_guard).where(replay_guard.c.source == source,
                                                       replay_guard.c.digest == proof.digest,
                                                       replay_guard.c.expires_at < now))
            inserted = conn.execute(
                upsert_insert(self.engine, replay_guard).on_conflict_do_nothing(
                    index_elements=[replay_guard.c.source, replay_guard.c.digest])
                .returning(replay_guard.c.digest),
                [{"source": source, "digest": proof.digest, "identifier": proof.identifier[:512], "seen_at": now,
                  "expires_at": _naive_utc(proof.expires_at)}]).all()
            if not inserted:
                first = conn.execute(sa.select(replay_guard.c.identifier).where(
                    replay_guard.c.source == source, replay_guard.c.digest == proof.digest)).scalar_one()
                if first != proof.identifier[:512]:
                    return Stored(0, 0, replayed=True)
        if not unique:
            return Stored(0, total)
        # The counter row's lock is held to commit: seq order is commit order across every writer.
        top = conn.execute(sa.update(sequences).where(sequences.c.name == SEQ_NAME)
                           .values(value=sequences.c.value + len(unique)).returning(sequences.c.value)).scalar()
        if top is None:
            conn.execute(upsert_insert(self.engine, sequences).on_conflict_do_nothing(
                index_elements=[sequences.c.name]), [{"name": SEQ_NAME, "value": 0}])
            top = conn.execute(sa.update(sequences).where(sequences.c.name == SEQ_NAME)
                               .values(value=sequences.c.value + len(unique)).returning(sequences.c.value)).scalar_one()
        first_seq = top - len(unique) + 1
        rows = [{"source": source, "dedupe_key": key, "payload": payload, "status": "pending", "received_at": now,
                 "seq": first_seq + i} for i, (key, payload) in enumerate(unique.items())]
        stmt = (upsert_insert(self.engine, inbox).on_conflict_do_nothing(index_elements=[inbox.c.source,
                                                                                         inbox.c.dedupe_key])
                .returning(inbox.c.id))
        new = sum(len(conn.execute(stmt, chunk).all()) for chunk in _chunks(rows))
        return Stored(new, total - new)

    def reject(self, source: str, reason: str, status_code: int) -> None:
        """Count a refused inbound call (bad signature, malformed body): one counter per source, reason,
        status and hour, so the table stays small whatever a flood of forgeries does. It is never work."""
        now = utcnow()
        hour = now.replace(minute=0, second=0, microsecond=0)
        insert = upsert_insert(self.engine, inbox_rejections)
        stmt = insert.on_conflict_do_update(
            index_elements=[inbox_rejections.c.source, inbox_rejections.c.reason, inbox_rejections.c.status_code,
                            inbox_rejections.c.hour],
            set_={"count": inbox_rejections.c.count + 1, "last_at": insert.excluded.last_at})
        retrying_write(self.engine, lambda conn: conn.execute(stmt, [{
            "source": source, "reason": reason[:64], "status_code": status_code, "hour": hour, "count": 1,
            "last_at": now}]))

    def rejections(self, source: str | None = None, reason: str | None = None) -> int:
        q = sa.select(sa.func.coalesce(sa.func.sum(inbox_rejections.c.count), 0))
        if source:
            q = q.where(inbox_rejections.c.source == source)
        if reason:
            q = q.where(inbox_rejections.c.reason == reason)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def rejection_counts(self, source: str | None = None) -> dict[tuple[str, str, int], int]:
        q = (sa.select(inbox_rejections.c.source, inbox_rejections.c.reason, inbox_rejections.c.status_code,
                       sa.func.sum(inbox_rejections.c.count))
             .group_by(inbox_rejections.c.source, inbox_rejections.c.reason, inbox_rejections.c.status_code))
        if source:
            q = q.where(inbox_rejections.c.source == source)
        with self.engine.connect() as conn:
            return {(s, r, int(c)): int(n) for s, r, c, n in conn.execute(q)}

    def prune_proofs(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        return retrying_write(self.engine, lambda conn: conn.execute(
            sa.delete(replay_guard).where(replay_guard.c.expires_at < now)).rowcount)

    # -- the readers' side --------------------------------------------------------------------------
    def read_after(self, source: str, cursor: int, limit: int) -> list[InboxRow]:
        """Rows of ``source`` with seq > cursor, in commit order, at most ``limit``. Gap-safe: a row that
        commits later than a row already read has a larger seq."""
        q = (sa.select(inbox).where(inbox.c.source == source, inbox.c.seq > cursor)
             .order_by(inbox.c.seq).limit(limit))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def pending_after(self, source: str, cursor: int) -> tuple[int, datetime | None]:
        """How many rows a reader has not looked at yet, and when the next of them (in commit order) arrived.

        Every sensor tick asks this over the whole backlog: the count is taken on the (source, seq) index
        alone, and only the first unseen row is read — a ``min(received_at)`` read every unseen row (115 ms
        per tick with 100,000 queued). The first in commit order is the oldest, give or take the moments
        concurrent deliveries waited for the seq counter's lock."""
        where = (inbox.c.source == source, inbox.c.seq > cursor)
        with self.engine.connect() as conn:
            n = int(conn.execute(sa.select(sa.func.count(inbox.c.seq)).where(*where)).scalar_one())
            oldest = conn.execute(sa.select(inbox.c.received_at).where(*where).order_by(inbox.c.seq)
                                  .limit(1)).scalar() if n else None
        return n, oldest

    def received_between(self, source: str, start: datetime, end: datetime) -> list[InboxRow]:
        """Rows of ``source`` received in [start, end), oldest first (a window's replay)."""
        start, end = _naive_utc(start), _naive_utc(end)
        q = (sa.select(inbox).where(inbox.c.source == source, inbox.c.received_at >= start,
                                    inbox.c.received_at < end).order_by(inbox.c.id))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def get(self, ids: list[int]) -> list[InboxRow]:
        if not ids:
            return []
        out: list[InboxRow] = []
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids)):
                out += [_row(r) for r in conn.execute(sa.select(inbox).where(inbox.c.id.in_(chunk)))]
        return sorted(out, key=lambda r: r.id)

    def stats(self, source: str) -> dict[str, Any]:
        """Rows received from the source (what any reader sees) and refusals counted for it."""
        with self.engine.connect() as conn:
            total, last = conn.execute(sa.select(sa.func.count(), sa.func.max(inbox.c.received_at))
                                       .where(inbox.c.source == source)).one()
        return {"total": int(total), "last_received_at": last.isoformat() if last else None,
                "refused": self.rejections(source)}

    def count(self, source: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(inbox.c.source == source)).scalar_one())

    def dispatch(self, reader: str) -> InboxDispatch:
        return InboxDispatch(self.engine, reader)


class InboxDispatch:
    """One reader's record of what it did with inbox rows (see the module docstring)."""

    def __init__(self, engine: Engine, reader: str) -> None:
        self.engine = engine
        self.reader = reader

    def _where(self, ids: Iterable[int]):
        return sa.and_(inbox_dispatch.c.reader == self.reader, inbox_dispatch.c.inbox_id.in_(list(ids)))

    # -- the sensor -------------------------------------------------------------------------------
    def queue(self, ids: list[int], run_key: str) -> list[int]:
        """Record a batch about to be launched; returns the ids not queued before (a tick evaluated twice
        from the same cursor re-queues nothing: its first RunRequest is re-emitted by ``orphans``)."""
        now = utcnow()
        stmt = (upsert_insert(self.engine, inbox_dispatch)
                .on_conflict_do_nothing(index_elements=[inbox_dispatch.c.reader, inbox_dispatch.c.inbox_id])
                .returning(inbox_dispatch.c.inbox_id))

        def work(conn: Connection) -> list[int]:
            out: list[int] = []
            for chunk in _chunks(sorted(set(ids))):
                out += [r[0] for r in conn.execute(stmt, [
                    {"reader": self.reader, "inbox_id": i, "status": QUEUED, "attempts": 0, "dispatches": 1,
                     "run_key": run_key, "queued_at": now, "updated_at": now} for i in chunk]).all()]
            return sorted(out)

        return retrying_write(self.engine, work)

    def not_dispatched(self, ids: list[int]) -> list[int]:
        """The ids this reader has no record of yet, in order."""
        known = set(self.rows(ids))
        return [i for i in ids if i not in known]

    def due(self, now: datetime | None = None, limit: int = 500) -> list[Dispatch]:
        """Rows whose next attempt is due, oldest first."""
        now = now or utcnow()
        q = (sa.select(inbox_dispatch).where(inbox_dispatch.c.reader == self.reader,
                                             inbox_dispatch.c.status == RETRY,
                                             inbox_dispatch.c.next_attempt_at <= now)
             .order_by(inbox_dispatch.c.next_attempt_at, inbox_dispatch.c.inbox_id).limit(limit))
        with self.engine.connect() as conn:
            return [_dispatch(r) for r in conn.execute(q)]

    def requeue(self, ids: list[int], run_key: str) -> None:
        """A due batch is launched again under a new run key."""
        now = utcnow()
        retrying_write(self.engine, lambda conn: conn.execute(
            sa.update(inbox_dispatch).where(self._where(ids), inbox_dispatch.c.status == RETRY)
            .values(status=QUEUED, run_key=run_key, dispatches=inbox_dispatch.c.dispatches + 1, queued_at=now,
                    updated_at=now)))

    def queued_before(self, moment: datetime, limit: int = 2000) -> dict[str, list[int]]:
        """Batches (run key -> ids) queued before ``moment`` whose run has not recorded an outcome yet."""
        q = (sa.select(inbox_dispatch.c.run_key, inbox_dispatch.c.inbox_id)
             .where(inbox_dispatch.c.reader == self.reader, inbox_dispatch.c.status == QUEUED,
                    inbox_dispatch.c.queued_at < moment)
             .order_by(inbox_dispatch.c.queued_at, inbox_dispatch.c.inbox_id).limit(limit))
        out: dict[str, list[int]] = {}
        with self.engine.connect() as conn:
            for key, inbox_id in conn.execute(q):
                out.setdefault(key, []).append(inbox_id)
        return out

    # -- the run ------------------------------------------------------------------------------------
    def rows(self, ids: Iterable[int]) -> dict[int, Dispatch]:
        ids = list(ids)
        out: dict[int, Dispatch] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                out.update({r.inbox_id: _dispatch(r) for r in conn.execute(sa.select(inbox_dispatch)
                                                                            .where(self._where(chunk)))})
        return out

    def processed(self, ids: list[int], run_id: str | None) -> None:
        self._set(ids, status=PROCESSED, run_id=run_id, error=None, next_attempt_at=None)

    def failed(self, ids: list[int], run_id: str | None, error: str,
               next_at: Callable[[int], datetime | None] | None) -> dict[int, datetime | None]:
        """The batch did not complete. Each row's failed attempts go up by one and ``next_at(attempts)``
        says when it is due again; None (or no ``next_at``: a permanent error) parks it as a dead letter.
        Returns inbox id -> when it is due again (None = dead)."""
        if not ids:
            return {}
        self.queue(ids, run_id or "manual")   # rows a hand-launched run never queued are recorded too
        now = utcnow()

        def work(conn: Connection) -> dict[int, datetime | None]:
            out: dict[int, datetime | None] = {}
            for chunk in _chunks(sorted(set(ids))):
                current = dict(conn.execute(sa.select(inbox_dispatch.c.inbox_id, inbox_dispatch.c.attempts)
                                            .where(self._where(chunk))).all())
                for inbox_id in chunk:
                    attempts = current.get(inbox_id, 0) + 1
                    due = next_at(attempts) if next_at else None
                    out[inbox_id] = due
                    conn.execute(sa.update(inbox_dispatch).where(self._where([inbox_id])).values(
                        status=RETRY if due else DEAD, attempts=attempts, next_attempt_at=due, run_id=run_id,
                        error=error[:2000], updated_at=now))
            return out

        return retrying_write(self.engine, work)

    def orphaned(self, ids: list[int], error: str, next_at: Callable[[int], datetime | None]) -> None:
        """Queued rows whose run ended without recording them (its worker died): due again, or dead."""
        self.failed(ids, None, error, next_at)

    def _set(self, ids: list[int], **values: Any) -> None:
        if not ids:
            return
        now = utcnow()
        # Rows a run never queued (a run launched by hand from the UI with ids in its config) are recorded too.
        self.queue(ids, values.get("run_id") or "manual")

        def work(conn: Connection) -> None:
            for chunk in _chunks(sorted(set(ids))):
                conn.execute(sa.update(inbox_dispatch).where(self._where(chunk)).values(updated_at=now, **values))

        retrying_write(self.engine, work)

    # -- people -------------------------------------------------------------------------------------
    def dead_letters(self, limit: int = 100) -> list[Dispatch]:
        q = (sa.select(inbox_dispatch).where(inbox_dispatch.c.reader == self.reader, inbox_dispatch.c.status == DEAD)
             .order_by(inbox_dispatch.c.updated_at.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [_dispatch(r) for r in conn.execute(q)]

    def replay(self, ids: list[int] | None = None) -> int:
        """Dead letters (all, or these) become due now, with a fresh retry budget."""
        now = utcnow()
        cond = [inbox_dispatch.c.reader == self.reader, inbox_dispatch.c.status == DEAD]
        if ids is not None:
            cond.append(inbox_dispatch.c.inbox_id.in_(ids))
        return retrying_write(self.engine, lambda conn: conn.execute(
            sa.update(inbox_dispatch).where(*cond).values(status=RETRY, attempts=0, next_attempt_at=now,
                                                          updated_at=now)).rowcount)

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = dict(conn.execute(sa.select(inbox_dispatch.c.status, sa.func.count())
                                     .where(inbox_dispatch.c.reader == self.reader)
                                     .group_by(inbox_dispatch.c.status)).all())
        return {s: int(rows.get(s, 0)) for s in (QUEUED, PROCESSED, RETRY, DEAD)}

    def oldest_owed(self) -> datetime | None:
        """When the oldest row this reader still owes work on (queued or retry) arrived."""
        q = (sa.select(sa.func.min(inbox.c.received_at))
             .select_from(inbox_dispatch.join(inbox, inbox.c.id == inbox_dispatch.c.inbox_id))
             .where(inbox_dispatch.c.reader == self.reader, inbox_dispatch.c.status.in_((QUEUED, RETRY))))
        with self.engine.connect() as conn:
            return conn.execute(q).scalar()


def age_s(moment: datetime | None, now: datetime | None = None) -> float:
    return 0.0 if moment is None else max(0.0, ((now or utcnow()) - moment) / timedelta(seconds=1))
