"""Runs that overlap on the same records (a poll window and a webhook batch, two webhook batches, a
partition re-materialized from the UI while the sensor runs) open one issue per record, and none fails.

Each writer is what one run has: its own lease owner over the shared ledger database (SQLite, and the
machine's PostgreSQL). They start together on the same 20 records; Jira's search index lags in half of
the trials, so the target search alone cannot save them — the record claim must.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.leases import Leases, new_owner
from connector_pipelines.core.ledger import DONE, Ledger
from connector_pipelines_tests.integrations.test_jira_writer import Harness, make_harness

WRITERS = 4
TRIALS = 20
RECORDS = 20


@pytest.fixture(params=["sqlite", "postgres"])
def h(request, tmp_path: Path) -> Iterator[Harness]:
    for harness in make_harness(tmp_path):
        if request.param == "postgres":
            harness.ledger = Ledger(get_engine(request.getfixturevalue("pg_url")))
        yield harness


def run_together(h: Harness, records, lag_s: float) -> tuple[list, list[BaseException]]:
    h.sandbox.search_lag_s = lag_s
    entity = h.entity()
    barrier = threading.Barrier(WRITERS)
    reports, errors = [], []

    def one_run(n: int) -> None:
        writer = h.writer(run_id=f"run-{n}", claim_wait_s=20)
        barrier.wait()
        try:
            reports.append(writer.upsert(entity, records))
        except BaseException as exc:  # noqa: BLE001 - a crashed writer is what this test counts
            errors.append(exc)

    threads = [threading.Thread(target=one_run, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return reports, errors


def test_parallel_writers_on_the_same_records_open_one_issue_each_and_never_crash(h: Harness):
    entity = h.entity()
    duplicates, crashes = 0, 0
    for trial in range(TRIALS):
        ids = [f"t{trial}-{uuid.uuid4().hex[:6]}-{n}" for n in range(RECORDS)]
        for rid in ids:
            h.vendor(rid)
        records = [h.source.record(entity, rid) for rid in ids]
        reports, errors = run_together(h, records, lag_s=0.3 if trial % 2 else 0.0)
        crashes += len(errors)
        assert not errors, errors
        for rid in ids:
            duplicates += max(0, len(h.issues_with(f"fake:vendors:{rid}")) - 1)
        assert sum(r.created for r in reports) == RECORDS
        assert all(not r.left_to_others and not r.failures for r in reports)
        done = h.ledger.get_many("bc_jira", [f"fake:vendors:{rid}" for rid in ids])
        assert {e.state for e in done.values()} == {DONE} and len(done) == RECORDS
    assert (duplicates, crashes) == (0, 0)


def test_a_record_held_by_a_live_writer_is_left_to_it_not_failed(h: Harness):
    """The loser waits for the holder, and past its wait leaves the record to it: no error, no issue."""
    entity = h.entity()
    h.vendor("held")
    holder = Leases(h.ledger.engine, new_owner("holder"), ttl_s=30)
    assert holder.acquire("ledger:bc_jira", ["fake:vendors:held"])
    report = h.writer(claim_wait_s=0.5).upsert(entity, h.source.all(entity))
    assert report.created == 0 and not report.failures
    assert report.left_to_others == {"fake:vendors:held": holder.owner}
    assert h.issues() == []
    holder.release("ledger:bc_jira", ["fake:vendors:held"])
    assert h.writer().upsert(entity, h.source.all(entity)).created == 1


def test_a_crashed_writer_s_claim_expires_and_its_successor_takes_it_over(h: Harness):
    entity = h.entity()
    h.vendor("orphan")
    dead = Leases(h.ledger.engine, new_owner("dead"), ttl_s=0.3)   # never renewed: the process died
    assert dead.acquire("ledger:bc_jira", ["fake:vendors:orphan"])
    report = h.writer(claim_wait_s=5).upsert(entity, h.source.all(entity))
    assert report.created == 1 and not report.left_to_others
    assert len(h.issues_with("fake:vendors:orphan")) == 1
