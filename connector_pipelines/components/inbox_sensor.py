"""Inbox sensors: one per (integration pair, source) — the *reader* — over the local inbox only.

Each tick, bounded, reading only the project's database and Dagster's own run records:
1. new rows after the cursor (the inbox's commit-order ``seq``: gap-safe) that the reader's filter
   takes become batches of ≤ ``batch_size``; each batch is recorded as ``queued`` for the reader and
   requested as one run whose ``run_key`` is derived from its rows and dispatch number — unless the
   sensor's last run has not started yet (queued or launching): then new rows wait for a later tick and
   go together in one batch, so a steady stream makes bigger runs rather than a growing run queue;
2. batches queued longer than ``orphan_after_s`` whose run never appeared are requested again (a
   RunRequest lost between the tick and the launch), and those whose run ended without recording
   them (the worker was killed) are retried like a failed batch;
3. rows whose retry is due (a batch that failed, or whose run died) are requested again under a new
   run key, with the retry budget's backoff; after the last attempt they are dead letters.
It reports the reader's backlog — rows it has not looked at, plus rows it owes work on — and its dead
letters on the pair's ``[<pair>, inbox, <source>]`` asset. Rows the filter does not take (another pair's
Jira project, our own comments) are passed by the cursor and never count as pending. When it has read
new rows, it also records an observation of the shared ``[inbox, <source>]`` asset (the receiver writes
that table, no run materializes it): the UI shows when deliveries last arrived. Every reader of an inbox
observes it, so an inbox two pairs read is observed twice per arrival, each naming its reader.
"""


import hashlib
import json
import os
from collections.abc import Callable
from datetime import UTC, timedelta

import dagster as dg

from connector_pipelines.components.run_tags import tag_run_of_pair
from connector_pipelines.core.db import utcnow
from connector_pipelines.core.failures import RetryBudget
from connector_pipelines.core.inbox import InboxRow, age_s

# Rows per batch run. A run costs ~0.5 s of fixed CPU (process start aside: Dagster's execution and event log)
# whatever its size, so 1,000 rows per run instead of 500 took BC's pipeline from ~2.0 to ~1.25 ms of CPU per
# record and its speedup over the naive loop from ~15x to ~21x (make bench); a run over 1,000 records holds a few
# MB more. The run config carries the ids only.
INBOX_BATCH_SIZE = 1000
ORPHAN_AFTER_S = 120.0
# The daemon evaluates sensors in a loop that runs at most every 5 s (dagster._daemon.sensor's
# MIN_INTERVAL_LOOP_TIME, not configurable) and skips a sensor whose last tick is younger than its
# minimum_interval_seconds. An interval of exactly 5 s loses that race on about every other loop, so the
# inbox was read every ~10 s; 1 s means "every loop": an inbox row waits ≤ ~5 s for its tick
# (benchmarks/daemon_latency.py measures this as the `tick` stage).
INBOX_SENSOR_INTERVAL_S = 1
# Runs of a reader whose batch is not running yet: created, waiting in the run queue, or being launched.
LAUNCHING = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING]
SENSOR_NAME_TAG = "dagster/sensor_name"
RUN_KEY_TAG = "dagster/run_key"


class InboxBatchConfig(dg.Config):
    """The inbox rows a run covers: ids only, never payloads or secrets."""

    inbox_ids: list[int]


def reader_name(pair: str, source: str) -> str:
    return f"{pair}:{source}"


def inbox_asset_key(source: str) -> dg.AssetKey:
    """The receiver's inbox of ``source`` (defs/inbox/assets.py), shared by every pair that reads it."""
    return dg.AssetKey(["inbox", source])


def backlog_asset_key(pair: str, source: str) -> dg.AssetKey:
    return dg.AssetKey([pair, "inbox", source])


def orphan_after_s() -> float:
    """CONNECTOR_INBOX_ORPHAN_S: how long a queued batch may wait for its run before the sensor acts."""
    value = os.environ.get("CONNECTOR_INBOX_ORPHAN_S")
    return float(value) if value else ORPHAN_AFTER_S


def batch_run_key(reader: str, dispatch: int, ids: list[int]) -> str:
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12]
    return f"{reader}:{ids[0]}-{ids[-1]}:{len(ids)}:d{dispatch}:{digest}"


def build_inbox_sensor(name: str, pair: str, source: str, job: dg.JobDefinition, tags: dict[str, str], *,
                       description: str, row_filter: Callable[[InboxRow], bool] | None = None,
                       batch_size: int = INBOX_BATCH_SIZE, max_runs_per_tick: int = 4,
                       interval_s: int = INBOX_SENSOR_INTERVAL_S) -> dg.SensorDefinition:
    """A cursor sensor over the local inbox for one reader (see the module docstring)."""

    [op_node] = job.graph.nodes  # a one-op job: its op takes the inbox ids as config
    op_name = op_node.name
    reader = reader_name(pair, source)
    backlog = backlog_asset_key(pair, source)
    inbox_key = inbox_asset_key(source)

    def request(run_key: str, ids: list[int], kind: str) -> dg.RunRequest:
        return dg.RunRequest(
            run_key=run_key, run_config={"ops": {op_name: {"config": {"inbox_ids": ids}}}},
            tags={**tags, "connector/inbox_first_id": str(ids[0]), "connector/inbox_last_id": str(ids[-1]),
                  "connector/records": str(len(ids)), "connector/dispatch": kind})

    @dg.sensor(name=name, job=job, minimum_interval_seconds=interval_s, description=description,
               required_resource_keys={"connector_store"}, default_status=dg.DefaultSensorStatus.RUNNING)
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        inbox = context.resources.connector_store.inbox()
        dispatch = inbox.dispatch(reader)
        budget = RetryBudget.from_env()
        cursor = int(context.cursor or 0)
        run_requests: list[dg.RunRequest] = []
        notes: list[str] = []
        new_rows, newest = 0, None

        # 1. new rows, in commit order — unless this sensor's last batch is still waiting for or starting its
        # run. Each run is a new process (DefaultRunLauncher: seconds of start-up and code loading), so under
        # a steady stream one run per tick would queue up behind the run queue's limits and latency would grow
        # without bound; instead the rows that arrive meanwhile wait for the next tick and travel together in
        # one bigger batch (benchmarks/daemon_latency.py). Relaunches and due retries below are not held.
        # A run stuck before starting holds them for orphan_after_s at most (run monitoring fails it later).
        held = bool(context.instance.get_run_ids(filters=dg.RunsFilter(
            statuses=LAUNCHING, tags={SENSOR_NAME_TAG: name},
            created_after=utcnow().replace(tzinfo=UTC) - timedelta(seconds=orphan_after_s())), limit=1))
        for _ in range(0 if held else max_runs_per_tick):
            rows = inbox.read_after(source, cursor, batch_size)
            if not rows:
                break
            cursor = int(rows[-1].seq or cursor)
            new_rows, newest = new_rows + len(rows), rows[-1]
            # Rows queued by an earlier evaluation of this cursor keep their batch (and run key).
            fresh = dispatch.not_dispatched([r.id for r in rows if row_filter is None or row_filter(r)])
            if fresh:
                key = batch_run_key(reader, 1, fresh)
                queued = dispatch.queue(fresh, key)
                if queued:
                    run_requests.append(request(key, queued, "new"))
            if len(rows) < batch_size:
                break

        # 2. batches whose run never appeared, or ended without recording them
        requested = {r.run_key for r in run_requests}
        stale = dispatch.queued_before(utcnow() - timedelta(seconds=orphan_after_s()))
        for key, ids in [(k, v) for k, v in stale.items() if k not in requested][:10]:
            runs = context.instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: key}), limit=5)
            if not runs:
                run_requests.append(request(key, ids, "relaunch"))
                notes.append(f"relaunched {key}: its run never started")
            elif all(r.is_finished for r in runs):
                last = runs[0]
                dispatch.orphaned(ids, f"run {last.run_id} ended {last.status.value} without recording these rows "
                                       "(its worker died?)", budget.next_from_now)
                notes.append(f"{len(ids)} row(s) of run {last.run_id[:8]} are due again")

        # 3. retries that are due (orphans of step 2 included)
        room = max(0, max_runs_per_tick - len(run_requests)) * batch_size
        due = dispatch.due(limit=room) if room else []
        for start in range(0, len(due), batch_size):
            group = due[start:start + batch_size]
            ids = [d.inbox_id for d in group]
            key = batch_run_key(reader, max(d.dispatches for d in group) + 1, ids)
            dispatch.requeue(ids, key)
            run_requests.append(request(key, ids, "retry"))

        counts = dispatch.counts()
        unseen, oldest_unseen = inbox.pending_after(source, cursor)
        oldest = min((m for m in (oldest_unseen, dispatch.oldest_owed()) if m is not None), default=None)
        observation = dg.AssetObservation(asset_key=backlog, metadata={
            "pending": dg.MetadataValue.int(unseen + counts["queued"] + counts["retry"]),
            "queued": dg.MetadataValue.int(counts["queued"]),
            "retry": dg.MetadataValue.int(counts["retry"]),
            "dead_letters": dg.MetadataValue.int(counts["dead"]),
            "processed": dg.MetadataValue.int(counts["processed"]),
            "oldest_pending_age_s": dg.MetadataValue.float(round(age_s(oldest), 1))})
        events: list[dg.AssetObservation] = [observation]
        if newest is not None:   # deliveries arrived: the inbox itself shows when (its "last observed")
            events.append(dg.AssetObservation(asset_key=inbox_key, metadata={
                "new_rows": dg.MetadataValue.int(new_rows),
                "latest_received_at": dg.MetadataValue.timestamp(newest.received_at.replace(tzinfo=UTC)),
                "latest_seq": dg.MetadataValue.int(cursor),
                "reader": dg.MetadataValue.text(reader)}))
        for note in notes:
            context.log.info(note)
        if not run_requests and str(cursor) == (context.cursor or "0"):
            reason = (f"New {source} inbox rows for {pair} (after seq {cursor}) wait: the last batch has not started "
                      "running yet." if held and unseen else
                      f"No new {source} inbox rows for {pair} after seq {cursor}, and none due again.")
            return dg.SensorResult(skip_reason=dg.SkipReason(reason), asset_events=events)
        return dg.SensorResult(run_requests=run_requests, cursor=str(cursor), asset_events=events)

    return _sensor


def inbox_backlog_spec(pair: str, source: str, label: str, owners: list[str] | None) -> dg.AssetSpec:
    return dg.AssetSpec(backlog_asset_key(pair, source), group_name=pair, kinds={source}, owners=owners,
                        deps=[inbox_asset_key(source)],
                        description=f"The {label} deliveries {pair} acts on: rows not yet looked at, queued or due "
                                    "again (pending), and dead letters. Observed by the pair's inbox sensor.")


def dead_letter_check(pair: str, source: str, tags: dict[str, str] | None = None) -> dg.AssetChecksDefinition:
    """``no_dead_letters`` on the pair's backlog of ``source``; ``tags``: the pair's run tags (run_tags)."""
    key = backlog_asset_key(pair, source)
    reader = reader_name(pair, source)

    @dg.asset_check(asset=key, name="no_dead_letters", required_resource_keys={"connector_store"},
                    description="No delivery of this source is parked as a dead letter (its retries ran out or its "
                                "error is permanent). `connector-pipelines inbox` lists them; `inbox replay` retries.",
                    blocking=False)
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        if tags:
            tag_run_of_pair(context.instance, context.op_execution_context.run_id, tags)
        dispatch = context.resources.connector_store.inbox().dispatch(reader)
        dead = dispatch.dead_letters(limit=50)
        counts = dispatch.counts()
        md: dict = {"dead_letters": dg.MetadataValue.int(counts["dead"]),
                    "retry": dg.MetadataValue.int(counts["retry"])}
        if dead:
            md["latest"] = dg.MetadataValue.md("\n".join(
                f"- inbox row {d.inbox_id} (attempts {d.attempts}): {(d.error or '')[:300]}" for d in dead[:20]))
        return dg.AssetCheckResult(passed=not counts["dead"], metadata=md, severity=dg.AssetCheckSeverity.ERROR)

    return _check
