"""The webhook inbox: verified inbound deliveries, stored once per (source, dedupe key).

The receiver writes rows; a cursor sensor per source reads rows after its cursor and launches one
run per batch; the run marks the rows it processed. Nothing here talks to a vendor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from connector_pipelines.core.db import inbox, inbox_rejections, utcnow


@dataclass(frozen=True)
class InboxRow:
    id: int
    source: str
    dedupe_key: str
    received_at: datetime
    payload: dict[str, Any]
    status: str
    run_id: str | None


def _naive_utc(moment: datetime) -> datetime:
    """Stored timestamps are naive UTC (utcnow); aware inputs are converted, naive ones taken as UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _row(r: Any) -> InboxRow:
    return InboxRow(r.id, r.source, r.dedupe_key, r.received_at, r.payload, r.status, r.run_id)


class Inbox:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put(self, source: str, dedupe_key: str, payload: dict[str, Any]) -> bool:
        """Store one delivery; False if (source, dedupe_key) was already stored (a re-delivery)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(inbox).values(source=source, dedupe_key=dedupe_key, payload=payload,
                                                     status="pending", received_at=utcnow()))
            return True
        except IntegrityError:
            return False

    def put_many(self, source: str, items: list[tuple[str, dict[str, Any]]]) -> int:
        """Store several deliveries; returns how many were new."""
        return sum(1 for key, payload in items if self.put(source, key, payload))

    def reject(self, source: str, reason: str, status_code: int) -> None:
        """Count a refused inbound call (bad signature, malformed body). It is never work."""
        with self.engine.begin() as conn:
            conn.execute(sa.insert(inbox_rejections).values(source=source, reason=reason[:200],
                                                            status_code=status_code, received_at=utcnow()))

    def rejections(self, source: str | None = None) -> int:
        q = sa.select(sa.func.count()).select_from(inbox_rejections)
        if source:
            q = q.where(inbox_rejections.c.source == source)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def read_after(self, source: str, cursor: int, limit: int, settle_s: float = 0.0) -> list[InboxRow]:
        """Rows of ``source`` with id > cursor, oldest first, at most ``limit``.

        The cursor is the reader's own (several integrations may read one source, e.g. Jira); rows
        younger than ``settle_s`` are left for the next read, so an id allocated before a slower
        concurrent commit (PostgreSQL sequences) is never skipped by a cursor that moved past it.
        """
        q = (sa.select(inbox).where(inbox.c.source == source, inbox.c.id > cursor)
             .order_by(inbox.c.id).limit(limit))
        with self.engine.connect() as conn:
            rows = [_row(r) for r in conn.execute(q)]
        if settle_s > 0 and rows:
            horizon = utcnow().timestamp() - settle_s
            for i, r in enumerate(rows):
                if r.received_at.timestamp() > horizon:
                    return rows[:i]
        return rows

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
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(sa.select(inbox).where(inbox.c.id.in_(ids)).order_by(inbox.c.id))]

    def mark(self, ids: list[int], status: str, run_id: str | None = None, error: str | None = None) -> None:
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(sa.update(inbox).where(inbox.c.id.in_(ids))
                         .values(status=status, run_id=run_id, error=error, processed_at=utcnow()))

    def stats(self, source: str) -> dict[str, Any]:
        """Pending depth and the age of the oldest pending row (for the sensor's AssetObservation)."""
        with self.engine.connect() as conn:
            pending, oldest = conn.execute(
                sa.select(sa.func.count(), sa.func.min(inbox.c.received_at))
                .where(inbox.c.source == source, inbox.c.status == "pending")).one()
            total = conn.execute(sa.select(sa.func.count()).where(inbox.c.source == source)).scalar_one()
        age = (utcnow() - oldest).total_seconds() if oldest else 0.0
        return {"pending": int(pending), "total": int(total), "oldest_pending_age_s": round(age, 1)}

    def count(self, source: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(inbox.c.source == source)).scalar_one())
