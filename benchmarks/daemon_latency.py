"""Event -> issue latency under the real Dagster daemon, on SQLite and on PostgreSQL.

The production shape, nothing ticked by the benchmark: in a fresh DAGSTER_HOME (the repo's dagster.yaml
for SQLite, deploy/dagster.postgres.yaml on a throwaway PostgreSQL database), the sandboxes and the
product's receiver run in this process and ``dagster-daemon run -w workspace.yaml`` runs as a separate
process, launching each run in its own process (DefaultRunLauncher).

What is measured: Dynamics 365 F&O business events (a third each: vendor invoice posted, PO confirmed,
PO rejected in workflow, each for its own document), fired at a steady ``--rate`` for ``--minutes``, each
POSTed by the F&O sandbox over HTTPS to the receiver's business-event endpoint as soon as it is fired.
Latency = from the receiver's 2xx to the issue being in Jira (the Jira sandbox's store, polled every
150 ms for the ERP External ID). F&O rather than Business Central because BC delivers change
notifications only after its own ~30 s batching delay (its documented behaviour, which the BC sandbox
reproduces): that delay would dominate and is not ours to tune.

Per event, the stages (from the inbox row, the reader's dispatch row and the run's Dagster events):
  receive   F&O's POST until the receiver's 2xx (verify, store in the inbox, answer)
  tick      inbox row stored -> the inbox sensor puts it in a batch: the daemon's sensor loop runs every 5 s,
            and new rows wait while the sensor's previous run is still queued or launching
  request   batch queued -> the daemon creates the run (rest of the sensor evaluation, run submission)
  queue     run created -> dequeued by the run queue (QueuedRunCoordinator, dequeue_interval_seconds)
  launch    dequeued -> RUN_START (a new process: Python, dagster and the code location loaded)
  work      RUN_START -> the issue created in Jira (step start, OData reads, JQL search, bulk create)
The daemon's processes get a bytecode cache (PYTHONPYCACHEPREFIX in the work directory), as a pip-installed
deployment has compiled bytecode; --no-bytecode-cache measures without it (each launch compiles from source).

Prints a report, then one JSON line per backend. Exits non-zero when p95 > --target-p95-s (15 s), an event
never became an issue, or one became two. Other load on the machine counts: numbers measured on a busy
machine are indicative only (the JSON line carries the load average).

    python -m benchmarks.daemon_latency --backend both --minutes 3 --rate 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
AREA = "usmf"
PAIR = "d365_jira"
FO_SOURCE = "finance_operations"
FO_SENSOR = f"{PAIR}__finance_operations_inbox_sensor"
READER = f"{PAIR}:{FO_SOURCE}"
POLL_S = 0.15
STAGES = ("receive", "tick", "request", "queue", "launch", "work")


# -- the F&O documents and their events -----------------------------------------------------------------
def seed(fo, n: int, prefix: str) -> list[tuple[str, str, str]]:
    """n documents, a third of each kind: (kind, document reference, the external id its issue will carry)."""
    vendor = f"{prefix}-V1"
    fo.add_vendor(AREA, VendorAccountNumber=vendor, VendorOrganizationName="Latency Vendor", CurrencyCode="USD")
    docs = []
    for i in range(n):
        kind = ("invoice", "confirmed", "rejected")[i % 3]
        if kind == "invoice":
            number = f"{prefix}-INV-{i:05d}"
            inv = fo.add_vendor_invoice(AREA, VendorAccount=vendor, VendorName="Latency Vendor", InvoiceNumber=number,
                                        Currency="USD", lines=[{"Amount": 100.0 + i}])
            docs.append((kind, inv["HeaderReference"], f"fo:vendor_invoices_posted:{AREA}:{vendor}:{number}"))
        else:
            number = f"{prefix}-PO-{i:05d}"
            fo.add_purchase_order(AREA, PurchaseOrderNumber=number, CurrencyCode="USD", OrderVendorAccountNumber=vendor,
                                  DocumentApprovalStatus="Approved" if kind == "confirmed" else "InReview",
                                  lines=[{"LineAmount": 50.0 + i}])
            entity = "purchase_orders_confirmed" if kind == "confirmed" else "purchase_orders_rejected_in_workflow"
            docs.append((kind, number, f"fo:{entity}:{AREA}:{number}"))
    return docs


def fire(fo, kind: str, ref: str) -> dict[str, Any]:
    """A person posts the invoice / confirms the PO / the workflow rejects it: F&O fires the event."""
    if kind == "invoice":
        return fo.post_vendor_invoice(AREA, ref)
    if kind == "confirmed":
        return fo.confirm_purchase_order(AREA, ref)
    return fo.reject_purchase_order_workflow(AREA, ref)


class JiraWatcher(threading.Thread):
    """Polls the Jira sandbox's store every POLL_S: when each awaited external id first has an issue."""

    def __init__(self, jira, cloud_id: str, field_id: str, awaited: set[str]) -> None:
        super().__init__(daemon=True, name="jira-watcher")
        self.site = jira.sites[cloud_id]
        self.field_id = field_id
        self.awaited = set(awaited)
        self.seen: dict[str, float] = {}           # external id -> when the poll first saw it (epoch s)
        self.created: dict[str, float] = {}        # external id -> the issue's own creation time (epoch s)
        self.counts: dict[str, int] = {}           # external id -> issues carrying it (duplicates > 1)
        self.stop_event = threading.Event()

    def poll(self) -> None:
        now = time.time()
        try:
            stored = list(self.site.issues.values())
        except RuntimeError:                        # the store grew while we copied it: next poll
            return
        counts: dict[str, int] = {}
        for issue in stored:
            ext = issue.fields.get(self.field_id)
            if ext in self.awaited:
                counts[ext] = counts.get(ext, 0) + 1
                if ext not in self.seen:
                    self.seen[ext] = now
                    self.created[ext] = issue.created.timestamp()
        self.counts = counts

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.poll()
            self.stop_event.wait(POLL_S)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)
        self.poll()


# -- one backend -----------------------------------------------------------------------------------------
@contextmanager
def patched_environ(values: dict[str, str]):
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_daemon(log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                                 str(REPO / "workspace.yaml")], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_daemon(daemon: subprocess.Popen) -> None:
    """SIGTERM the daemon's process group (its code server and any run worker), SIGKILL if it lingers."""
    if daemon.poll() is not None:
        return
    os.killpg(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=10)


def wait_daemon_ready(instance, daemon: subprocess.Popen, log: Path, timeout_s: float = 180) -> float:
    """Until the daemon's sensor daemon has evaluated the F&O inbox sensor once (code location loaded)."""
    from dagster._core.scheduler.instigation import InstigatorType

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if daemon.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited ({daemon.returncode}):\n{log.read_text()[-4000:]}")
        states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                  if s.name == FO_SENSOR]
        if states and instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id, limit=1):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise RuntimeError(f"the daemon never ticked {FO_SENSOR} in {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")


def stop_instigators(instance) -> int:
    """Stop every sensor and schedule the daemon has ticked, as the UI's Stop does, so that no run is launched
    while the daemon is being stopped (the ledger retry sensor, the other pairs' inbox sensors and the schedules
    launch on their own clocks; a run the shutdown interrupts would count as failed)."""
    from dagster._core.scheduler.instigation import InstigatorStatus

    states = [s for s in instance.all_instigator_state() if s.status != InstigatorStatus.STOPPED]
    for state in states:
        instance.update_instigator_state(state.with_status(InstigatorStatus.STOPPED))
    return len(states)


def wait_runs_done(instance, daemon: subprocess.Popen, timeout_s: float = 90, quiet_s: float = 6.0) -> None:
    """Let runs in flight finish: none queued or running, and no new run for ``quiet_s`` (a sensor tick that
    began before its sensor was stopped may still submit one)."""
    import dagster as dg

    active = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED]
    deadline = time.monotonic() + timeout_s
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline and daemon.poll() is None:
        total = instance.get_runs_count()
        if total != seen or instance.get_run_ids(filters=dg.RunsFilter(statuses=active), limit=1):
            seen, quiet_since = total, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.5)


def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from sandboxes.harness.scenario import ext_field_id
    from sandboxes.harness.stack import CLOUD_ID, consent, start_stack

    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    env: dict[str, str] = {"DAGSTER_HOME": str(home)}
    with ExitStack() as cleanup:
        if backend == "postgres":
            from sandboxes.harness.postgres import throwaway_databases, url_of

            [db_name] = cleanup.enter_context(throwaway_databases("cp_latency"))
            shutil.copy(REPO / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
            env |= {"CONNECTOR_PG_HOST": "127.0.0.1", "CONNECTOR_PG_PORT": "5432", "CONNECTOR_PG_DB": db_name,
                    "CONNECTOR_PG_USER": "postgres", "CONNECTOR_PG_PASSWORD": ""}
            database_url = url_of(db_name)
        else:
            shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
            database_url = None                    # the project's tables in $DAGSTER_HOME/connector_pipelines.sqlite
        cleanup.enter_context(patched_environ(env))
        stack = start_stack(workdir / "stack", database_url=database_url, latency_s=args.latency_ms / 1000)
        cleanup.callback(stack.stop)
        cleanup.enter_context(patched_environ(stack.env))
        consent(stack)

        import dagster as dg

        instance = cleanup.enter_context(dg.DagsterInstance.get())
        n = max(1, round(args.rate * args.minutes * 60))
        docs = seed(stack.fo, n, prefix=f"L{int(time.time()) % 100000}")
        field_id = ext_field_id(stack)

        log = workdir / "daemon.log"
        daemon_env = dict(os.environ)
        if args.bytecode_cache:
            # A pip-installed deployment has its modules' bytecode compiled; this venv has none and the
            # environment may set PYTHONDONTWRITEBYTECODE, so every run worker would recompile dagster and the
            # product from source (seconds per launch). The daemon's processes (code server, run workers)
            # share a bytecode cache outside the source tree instead: warm once the daemon has loaded the code.
            daemon_env.pop("PYTHONDONTWRITEBYTECODE", None)
            daemon_env["PYTHONPYCACHEPREFIX"] = str(workdir.parent / "pycache")
        daemon = start_daemon(log, daemon_env)
        cleanup.callback(stop_daemon, daemon)
        ready_s = wait_daemon_ready(instance, daemon, log)

        watcher = JiraWatcher(stack.jira, CLOUD_ID, field_id, {ext for _, _, ext in docs})
        watcher.start()
        sent: dict[str, tuple[float, float, int]] = {}   # ext -> (POST started, 2xx, ControlNumber)
        failed_posts = 0
        load_start = round(os.getloadavg()[0], 2)
        t0 = time.time()
        for i, (kind, ref, ext) in enumerate(docs):
            pause = t0 + i / args.rate - time.time()
            if pause > 0:
                time.sleep(pause)
            start = time.time()
            envelope = fire(stack.fo, kind, ref)
            result = stack.fo.deliver_events()
            if result["delivered"] == 1 and not result["failed"]:
                sent[ext] = (start, time.time(), envelope["ControlNumber"])
            else:
                failed_posts += 1
        delivery_s = time.time() - t0

        deadline = time.monotonic() + args.drain_s
        while time.monotonic() < deadline and not all(e in watcher.seen for e in sent):
            if daemon.poll() is not None:
                break
            time.sleep(POLL_S)
        watcher.stop()
        daemon_alive = daemon.poll() is None
        stop_instigators(instance)
        wait_runs_done(instance, daemon)
        stop_daemon(daemon)

        stages = stage_timings(instance, database_url, sent, watcher.created)
        runs = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/sensor_name": FO_SENSOR}))
        all_runs = instance.get_run_records()
        latencies = [watcher.seen[e] - sent[e][1] for e in sent if e in watcher.seen]
        missing = sorted(e for e in sent if e not in watcher.seen)
        out = {
            "benchmark": "daemon_latency", "backend": backend, "path": "F&O business event -> receiver (HTTPS)",
            "events": n, "delivered": len(sent), "failed_posts": failed_posts,
            "rate_per_s": args.rate, "delivery_s": round(delivery_s, 1), "latency_ms_per_call": args.latency_ms,
            "issues": len(watcher.seen), "missing": len(missing), "duplicates": sum(max(0, c - 1) for c in
                                                                                   watcher.counts.values()),
            "latency_s": summary(latencies),
            "stages_s": {k: summary(v) for k, v in stages.items()},
            "sensor_runs": len(runs), "runs_total": len(all_runs),
            "runs_failed": sum(r.dagster_run.status == dg.DagsterRunStatus.FAILURE for r in all_runs),
            "events_per_run": round(len(sent) / len(runs), 1) if runs else None,
            "daemon_ready_s": round(ready_s, 1), "daemon_alive": daemon_alive, "bytecode_cache": args.bytecode_cache,
            "target_p95_s": args.target_p95_s,
            "failed_runs": failed_runs(instance, all_runs),
        }
        out["load_avg_1m"] = [load_start, round(os.getloadavg()[0], 2)]   # at the first event, at the end
        out["ok"] = bool(not missing and not failed_posts and not out["duplicates"] and latencies
                         and out["latency_s"]["p95"] <= args.target_p95_s)
        if missing:
            out["missing_examples"] = missing[:5]
            print(f"[{backend}] daemon log tail:\n{log.read_text()[-3000:]}", file=sys.stderr)
        return out


def stage_timings(instance, database_url: str | None, sent: dict[str, tuple[float, float, int]],
                  created: dict[str, float]) -> dict[str, list[float]]:
    """Per event: the stage durations defined in the module docstring (events whose issue appeared)."""
    import dagster as dg
    import sqlalchemy as sa

    from connector_pipelines.core import db

    engine = db.get_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.inbox.c.id, db.inbox.c.received_at, db.inbox.c.payload)
                            .where(db.inbox.c.source == FO_SOURCE)).all()
        dispatch = {r.inbox_id: r for r in conn.execute(
            sa.select(db.inbox_dispatch.c.inbox_id, db.inbox_dispatch.c.queued_at, db.inbox_dispatch.c.run_key)
            .where(db.inbox_dispatch.c.reader == READER)).all()}
    by_control = {}
    for r in rows:
        payload = r.payload if isinstance(r.payload, dict) else json.loads(r.payload)
        by_control[payload.get("ControlNumber")] = r

    marks = {}                                       # run key -> {created, dequeued, started}
    for rec in instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/sensor_name": FO_SENSOR})):
        run = rec.dagster_run
        times = {"created": rec.create_timestamp.timestamp()}
        for entry in instance.all_logs(run.run_id, of_type={dg.DagsterEventType.RUN_STARTING,
                                                            dg.DagsterEventType.RUN_START}):
            times.setdefault(entry.dagster_event.event_type_value, entry.timestamp)
        marks[run.tags.get("dagster/run_key")] = times

    out: dict[str, list[float]] = {k: [] for k in STAGES}
    for ext, (start, ok, control) in sent.items():
        out["receive"].append(ok - start)
        row = by_control.get(control)
        d = dispatch.get(row.id) if row is not None else None
        m = marks.get(d.run_key) if d is not None else None
        if row is None or d is None or m is None or ext not in created:
            continue
        received = row.received_at.replace(tzinfo=UTC).timestamp()
        queued = d.queued_at.replace(tzinfo=UTC).timestamp()
        dequeued = m.get("PIPELINE_STARTING", m["created"])   # the run queue hands it to the launcher
        started = m.get("PIPELINE_START")
        out["tick"].append(queued - received)
        out["request"].append(m["created"] - queued)
        out["queue"].append(dequeued - m["created"])
        if started is not None:
            out["launch"].append(started - dequeued)
            out["work"].append(created[ext] - started)
    return out


def failed_runs(instance, records) -> list[dict[str, Any]]:
    """Each failed run's job, how it was launched and the first error its event log holds: a failed run is
    reported with its cause, never only counted."""
    import dagster as dg

    out = []
    for rec in records:
        run = rec.dagster_run
        if run.status != dg.DagsterRunStatus.FAILURE:
            continue
        errors = []
        for entry in instance.all_logs(run.run_id, of_type={dg.DagsterEventType.STEP_FAILURE,
                                                            dg.DagsterEventType.RUN_FAILURE,
                                                            dg.DagsterEventType.ENGINE_EVENT}):
            info = entry.dagster_event.event_specific_data
            error = getattr(info, "error", None)
            if error is not None:
                errors.append(f"{entry.dagster_event.event_type_value}: {error.to_string()[:1500]}")
            elif entry.dagster_event.event_type_value == "PIPELINE_FAILURE":
                errors.append(f"PIPELINE_FAILURE: {entry.message[:500]}")
        out.append({"job": run.job_name, "tags": {k: v for k, v in run.tags.items() if k.startswith("dagster/")},
                    "errors": errors[:3]})
    return out


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {"n": len(ordered), "p50": round(statistics.median(ordered), 2), "p95": round(p95, 2),
            "max": round(ordered[-1], 2)}


def report(out: dict[str, Any]) -> None:
    lat = out["latency_s"]
    print(f"\n== {out['backend']}: {out['events']} F&O business events at {out['rate_per_s']}/s "
          f"over {out['delivery_s']} s ==")
    print(f"issues {out['issues']}/{out['delivered']} (missing {out['missing']}, duplicates {out['duplicates']}, "
          f"failed POSTs {out['failed_posts']}); runs launched by the F&O inbox sensor {out['sensor_runs']} "
          f"(~{out['events_per_run']} events/run), all runs {out['runs_total']}, failed {out['runs_failed']}")
    print(f"load average (1 min) at the start and the end: {out['load_avg_1m']} on {os.cpu_count()} CPUs")
    print(f"delivery (receiver 2xx) -> issue in Jira: p50 {lat['p50']} s, p95 {lat['p95']} s, max {lat['max']} s "
          f"(target p95 <= {out['target_p95_s']} s)")
    for name in STAGES:
        s = out["stages_s"][name]
        print(f"  {name:8s} p50 {s['p50']!s:>6} s  p95 {s['p95']!s:>6} s  max {s['max']!s:>6} s  (n={s['n']})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks.daemon_latency", description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--minutes", type=float, default=3.0, help="how long events are delivered (default 3)")
    p.add_argument("--rate", type=float, default=2.0, help="events per second (default 2)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every sandbox call (default 0)")
    p.add_argument("--drain-s", type=float, default=120.0, help="wait for the last issues after delivery ends")
    p.add_argument("--target-p95-s", type=float, default=15.0)
    p.add_argument("--no-bytecode-cache", dest="bytecode_cache", action="store_false",
                   help="run the daemon's processes without a bytecode cache (each run worker compiles from source)")
    p.add_argument("--workdir", help="keep DAGSTER_HOME and the daemon log here (default: a temporary directory)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.disable(logging.WARNING)
    args = parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = []
    with tempfile.TemporaryDirectory(prefix="daemon_latency_") as tmp:
        if args.workdir:
            tmp = args.workdir
        for backend in backends:
            results.append(run_backend(backend, args, Path(tmp) / backend))
            report(results[-1])
    print()
    for out in results:
        print(json.dumps(out, sort_keys=True))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
