"""The record ledger: (integration, source key) -> (target key, state, attempts, last error, run id).

Idempotency, audit and replay for every write:
- a record already ``done`` with the same fingerprint is skipped;
- an ``intent`` row is committed *before* each create, so a crash between the vendor's answer and
  the ledger commit is visible on retry: the writer then looks the target up by its external key
  before creating again (DESIGN.md §3.3-3.4);
- ``failed`` rows are retried on replay; ``quarantined`` rows need a person (reason in last_error).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector_pipelines.core.db import ledger, utcnow

INTENT = "intent"
DONE = "done"
FAILED = "failed"
QUARANTINED = "quarantined"
STATES = (INTENT, DONE, FAILED, QUARANTINED)


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


def _entry(r: Any) -> LedgerEntry:
    return LedgerEntry(r.integration, r.source_key, r.entity, r.action, r.state, r.target_key, r.target_url,
                       r.fingerprint, r.attempts, r.last_error, r.run_id, r.context or {})


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

    # -- writes ------------------------------------------------------------------------------------
    def _upsert(self, integration: str, rows: list[dict[str, Any]], bump_attempts: bool) -> None:
        if not rows:
            return
        now = utcnow()
        with self.engine.begin() as conn:
            for chunk in _chunks(rows):
                keys = [r["source_key"] for r in chunk]
                existing = {r.source_key: r for r in conn.execute(
                    sa.select(ledger.c.source_key, ledger.c.attempts)
                    .where(ledger.c.integration == integration, ledger.c.source_key.in_(keys)))}
                inserts, updates = [], []
                for r in chunk:
                    values = {**r, "integration": integration, "updated_at": now}
                    old = existing.get(r["source_key"])
                    if old is None:
                        values.setdefault("attempts", 1 if bump_attempts else 0)
                        values["created_at"] = now
                        inserts.append(values)
                    else:
                        if bump_attempts:
                            values["attempts"] = old.attempts + 1
                        updates.append(values)
                if inserts:
                    keys_all = set().union(*(v.keys() for v in inserts))
                    conn.execute(sa.insert(ledger), [{k: v.get(k) for k in keys_all} | {
                        "attempts": v.get("attempts", 0), "context": v.get("context") or {}} for v in inserts])
                for v in updates:
                    conn.execute(sa.update(ledger).where(ledger.c.integration == integration,
                                                         ledger.c.source_key == v["source_key"])
                                 .values(**{k: val for k, val in v.items() if k != "source_key"}))

    def record_intents(self, integration: str, intents: list[dict[str, Any]], run_id: str | None) -> None:
        """Commit intent rows before the writes: each dict has source_key, entity, action, context."""
        self._upsert(integration, [{**i, "state": INTENT, "run_id": run_id, "last_error": None} for i in intents],
                     bump_attempts=True)

    def mark_done(self, integration: str, results: list[dict[str, Any]], run_id: str | None) -> None:
        """Each dict has source_key (+ entity, action) and target_key, target_url, fingerprint, context."""
        self._upsert(integration, [{**r, "state": DONE, "run_id": run_id, "last_error": None} for r in results],
                     bump_attempts=False)

    def mark_failed(self, integration: str, failures: list[dict[str, Any]], run_id: str | None,
                    state: str = FAILED) -> None:
        """Each dict has source_key, entity, action, last_error (+ context)."""
        self._upsert(integration, [{**f, "state": state, "run_id": run_id} for f in failures], bump_attempts=False)

    def quarantine(self, integration: str, items: list[dict[str, Any]], run_id: str | None) -> None:
        self.mark_failed(integration, items, run_id, state=QUARANTINED)
