"""What every throughput benchmark shares: the sandbox world in its own process (driven over the harness's
control channel) beside the product's Dagster definitions in this one, the pipeline measurement (wall time,
latency floor, CPU, peak RSS, calls), the median / min–max summary and the targets."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bind(resource_def, stack):
    """A resource with its EnvVars resolved from the environment (as a run would see it), closed when
    ``stack`` (a contextlib.ExitStack) closes, as a run's teardown closes it."""
    return stack.enter_context(resource_def.process_config_and_initialize_cm())


def definition(pair: str):
    import yaml

    from connector_pipelines.integrations.definition import IntegrationDefinition

    path = Path(__file__).resolve().parents[1] / "connector_pipelines" / "defs" / pair / "defs.yaml"
    return IntegrationDefinition.model_validate(yaml.safe_load(path.read_text())["attributes"])


@dataclass
class BenchWorld:
    """The sandboxes and the receiver in their own process (``python -m sandboxes.harness --control``), driven
    through its control channel; the product's Dagster definitions on a fresh instance in this process."""

    control: Any      # sandboxes.harness.control.ControlClient
    world: dict       # the map the harness printed (URLs, company id, env)
    driver: Any
    db_url: str
    closer: Any = None   # an ExitStack: resources bound for the naive loop close with the world

    def set_latency(self, latency_ms: float) -> None:
        self.control.set_latency(latency_ms)


def start_harness(workdir: Path, db_url: str) -> tuple[subprocess.Popen, dict]:
    """``python -m sandboxes.harness --control --consent --no-auto-delivery`` as a child process; returns it
    and the map it printed once every sandbox, the receiver and the control channel answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOR_", "DAGSTER_HOME"))}
    env["CONNECTOR_DATABASE_URL"] = db_url
    log = open(workdir / "harness.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "sandboxes.harness", "--workdir", str(workdir / "stack"),
                             "--control", "--consent", "--no-auto-delivery", "--consent-port", str(_free_port())],
                            cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.PIPE,
                            stderr=log, text=True)
    log.close()
    printed = []
    for line in proc.stdout:
        printed.append(line)
        if line.startswith("# end of environment"):
            world, _ = json.JSONDecoder().raw_decode("".join(printed))
            proc.stdout.close()
            return proc, world
    proc.wait(timeout=10)
    raise RuntimeError(f"the sandbox harness ended before printing its map: {(workdir / 'harness.log').read_text()[-3000:]}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_webhooks(driver) -> None:
    """What the renewal schedules do on their first tick: BC subscriptions and the Jira webhook
    (sandboxes.harness.scenario.register_webhooks, without importing the sandboxes into this process)."""
    driver.run_job("bc_jira__subscription_renewal_job")
    driver.run_job("bc_jira__jira_webhook_renewal_job")


def stop_harness(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextmanager
def bench_world(prefix: str) -> Iterator[BenchWorld]:
    """Sandboxes + receiver in a child process on loopback, consent done, the product's definitions on a
    fresh instance here: this process is the pipeline's alone (its CPU and RSS are the pipeline's)."""
    import dagster as dg

    from sandboxes.harness.control import ControlClient
    from sandboxes.harness.dagster_driver import DagsterDriver

    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    home = workdir / "dagster_home"
    home.mkdir()
    os.environ["DAGSTER_HOME"] = str(home)
    db_url = f"sqlite:///{workdir}/connector.sqlite"
    proc, world = start_harness(workdir, db_url)
    control = ControlClient(world["control"]["url"])
    try:
        os.environ.update(world["env"])
        from connector_pipelines.definitions import defs as load_defs

        with dg.instance_for_test(temp_dir=str(home)) as instance, ExitStack() as closer:
            yield BenchWorld(control, world, DagsterDriver(load_defs(), instance), db_url, closer)
    finally:
        control.close()
        stop_harness(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def naive_clients(driver, source_resource: str, stack):
    """What the naive loop calls with: the product's own source and Jira clients and the external-id field."""
    resources = driver.defs.resources
    source_client = bind(resources[source_resource], stack).client()
    jira_client = bind(resources["jira"], stack).client(bind(resources["connector_store"], stack).vault())
    return source_client, jira_client, jira_client.resolve_fields(["ERP External ID"])["ERP External ID"]


def bench_args(prog: str, argv: list[str] | None) -> argparse.Namespace:
    """The flags every throughput benchmark takes."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--naive-records", type=int, default=60)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=3, help="pipeline measurements, each on fresh records")
    parser.add_argument("--profile", metavar="PATH", help="cProfile the first pipeline phase into PATH")
    return parser.parse_args(argv)


def drain(driver, sensor: str, failures: list | None = None) -> int:
    """Tick the sensor until it requests no more runs; every run must succeed. Returns the run count.
    ``failures`` (a list): a failed run is appended to it instead of raising, and draining stops there."""
    runs = 0
    while True:
        tick = driver.tick(sensor, raise_on_error=failures is None)
        runs += len(tick.runs)
        if not tick.runs:
            return runs
        failed = [r for r in tick.runs if not r.success]
        if failures is not None and failed:
            failures.extend(failed)
            return runs
        assert not failed


class GcTimer:
    """Time spent in the garbage collector (gc.callbacks), per generation, while ``on``."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1

    def __enter__(self) -> Self:
        import gc

        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        import gc

        gc.callbacks.remove(self)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_pipeline(world: BenchWorld, args: argparse.Namespace, *, records: int, deliver: str | None,
                     sensor: str | None, issue_prefix: str, source: str, profile: str | None = None,
                     work: Callable[[], int] | None = None, target: str = "jira",
                     count_items: Callable[[], dict] | None = None) -> dict:
    """One pipeline measurement over ``records`` records already seeded (their deliveries queued in the
    harness): deliver them to the receiver (the harness's work, timed apart), then tick the sensor and run
    until drained — the pipeline phase, whose wall time, CPU (this process, plus any child it reaped) and
    vendor calls are measured. A polled pair passes ``work`` instead (it launches the runs and returns how
    many) and no delivery. The latency floor is vendor calls x latency / the mean in-flight requests the
    sandboxes saw (the concurrency the pipeline actually used). ``target``: the vendor (a key of the control's
    call counts) whose calls per record are ``target_calls_per_record`` (Jira pairs: also
    ``jira_calls_per_record``). ``count_items``: what the target holds, ``{"count": records with an issue or
    item under the prefix, "duplicates"}`` (default: the Jira issues under ``issue_prefix``)."""
    control = world.control

    def count() -> tuple[int, int]:
        if count_items is not None:
            found = count_items()
            return found["count"], found["duplicates"]
        found = control.issues(issue_prefix)
        return found["by_prefix"][issue_prefix], found["duplicates"]

    stats_before = control.stats()
    before = stats_before["calls"]
    issues_before, _ = count()
    t_deliver = time.perf_counter()
    if deliver:
        control.call(deliver)
    delivery_s = time.perf_counter() - t_deliver
    control.reset_meter()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    cpu0, child0, t0 = time.process_time(), _children_cpu_s(), time.perf_counter()
    if profiler:
        profiler.enable()
    with GcTimer() as gc_timer:
        runs = work() if work is not None else drain(world.driver, sensor)
    if profiler:
        profiler.disable()
    wall_s = time.perf_counter() - t0
    cpu_s = (time.process_time() - cpu0) + (_children_cpu_s() - child0)
    rss = rss_mb()
    if profiler:
        profiler.dump_stats(profile)
    stats = control.stats()
    meter, after = stats["meter"], stats["calls"]
    routes = {f"{vendor} {route}": n - stats_before["routes"].get(vendor, {}).get(route, 0)
              for vendor, by_route in stats["routes"].items() for route, n in by_route.items()}
    issues_after, duplicates = count()
    created = issues_after - issues_before
    vendor_calls = meter["requests"]
    concurrency = meter["mean_in_flight"] or 1.0
    floor_s = vendor_calls * args.latency_ms / 1000 / concurrency
    target_calls_per_record = round((after[target] - before[target]) / records, 3)
    return {
        "wall_s": round(wall_s, 3),
        "latency_floor_s": round(floor_s, 3),
        "wall_over_floor": round(wall_s / floor_s, 2) if floor_s > 0 else None,
        "cpu_ms_per_record": round(cpu_s * 1000 / records, 3),
        "records_per_s": round(records / wall_s, 1),
        "vendor_calls": vendor_calls,
        "vendor_request_s": meter["request_s"],   # Σ time the sandboxes took to answer, latency included
        # the sandbox process's CPU per vendor call (the emulators' own cost on top of the injected latency)
        "sandbox_cpu_ms_per_call": round(meter["cpu_s"] * 1000 / vendor_calls, 2) if vendor_calls else None,
        "max_in_flight": meter["max_in_flight"],
        "mean_in_flight": meter["mean_in_flight"],
        "target_calls_per_record": target_calls_per_record,
        **({"jira_calls_per_record": target_calls_per_record} if target == "jira" else {}),
        "odata_calls_per_record": round((after[source] - before[source]) / records, 3),
        "token_calls": meter["by_vendor"].get("entra", 0) + meter["by_vendor"].get("atlassian", 0),
        "pipeline_runs": runs,
        "issues_created": created,
        "duplicates": duplicates,
        "peak_rss_mb": round(rss, 1),
        "delivery_s": round(delivery_s, 3),
        "gc_ms_per_record": round(sum(gc_timer.seconds) * 1000 / records, 3),   # part of the CPU above
        "gc_collections": gc_timer.collections,
        "calls_by_route": {k: n for k, n in sorted(routes.items()) if n},
    }


def naive_figures(*, records: int, seconds: float, jira_calls: int, odata_calls: int) -> dict:
    return {"naive_records": records, "naive_records_per_s": round(records / seconds, 2),
            "naive_jira_calls_per_record": round(jira_calls / records, 2),
            "naive_odata_calls_per_record": round(odata_calls / records, 2)}


SPREAD = ("wall_s", "latency_floor_s", "wall_over_floor", "cpu_ms_per_record", "records_per_s", "speedup",
          "gc_ms_per_record", "peak_rss_mb", "target_calls_per_record", "jira_calls_per_record",
          "odata_calls_per_record", "vendor_calls", "vendor_request_s", "sandbox_cpu_ms_per_call",
          "mean_in_flight",
          "max_in_flight", "pipeline_runs", "delivery_s")


def summarize(args: argparse.Namespace, runs: list[dict], naive: dict, extra_spread: tuple[str, ...] = ()) -> dict:
    """The median of every figure over the runs (min and max beside it), the naive loop's and the counts.
    ``extra_spread``: a pair's own per-run figures summarized the same way (a figure no run has is left out)."""
    import statistics

    for r in runs:
        r["speedup"] = round(r["records_per_s"] / naive["naive_records_per_s"], 1)
    out: dict[str, Any] = {"records": args.records, "latency_ms": args.latency_ms, "runs": len(runs)}
    for key in (*SPREAD, *extra_spread):
        if not any(key in r for r in runs):
            continue
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
        out[f"{key}_min_max"] = [min(values), max(values)] if values else None
    out["issues_created"] = min(r["issues_created"] for r in runs)        # every run: every record one issue
    out["issues_created_max"] = max(r["issues_created"] for r in runs)
    out["duplicates"] = max(r["duplicates"] for r in runs)
    out.update(naive)
    return out


def print_summary(result: dict, label: str, source_label: str = "OData", target_label: str = "Jira",
                  item_label: str = "issues", notes: tuple[str, ...] = ()) -> None:
    """The closing lines: each figure as median (min–max), a pair's own ``notes`` lines, then the figures as one
    JSON line."""
    def spread(key: str, unit: str = "") -> str:
        lo, hi = result[f"{key}_min_max"] or (None, None)
        return f"{result[key]}{unit} ({lo}–{hi})"

    print(f"{label}: median (min–max) of {result['runs']} runs of {result['records']} records, "
          f"{result['latency_ms']} ms per vendor call")
    print(f"  wall {spread('wall_s', ' s')}; latency floor {spread('latency_floor_s', ' s')} "
          f"= {result['vendor_calls']} vendor calls x latency / {result['mean_in_flight']} mean in flight "
          f"(max {result['max_in_flight']}); wall/floor {spread('wall_over_floor')}; the sandboxes took "
          f"{spread('vendor_request_s', ' s')} to answer (latency included), "
          f"{spread('sandbox_cpu_ms_per_call', ' ms')} of their process's CPU per call")
    print(f"  pipeline CPU {spread('cpu_ms_per_record', ' ms')} per record; peak RSS {spread('peak_rss_mb', ' MB')} "
          f"(pipeline process alone); {spread('records_per_s')} records/s in {result['pipeline_runs']} runs")
    print(f"  naive {result['naive_records_per_s']} records/s -> speedup {spread('speedup', 'x')}; "
          f"{target_label} calls/record {spread('target_calls_per_record')}, {source_label} calls/record "
          f"{spread('odata_calls_per_record')}; "
          f"{item_label} {result['issues_created']}/{result['records']} every run; duplicates {result['duplicates']}; "
          f"delivery to the receiver {spread('delivery_s', ' s')} (harness, not timed)")
    for note in notes:
        print(f"  {note}")
    print(json.dumps(result))


def targets_met(out: dict, *, max_jira_calls_per_record: float | None, max_odata_calls_per_record: float,
                min_speedup: float = 20, max_wall_over_floor: float | None = 1.5,
                max_cpu_ms_per_record: float | None = 2.0, source_label: str = "OData", target_label: str = "Jira",
                item_label: str = "issue", extra_checks: dict[str, bool] | None = None) -> bool:
    """Judged on the medians: wall <= 1.5x the latency floor, pipeline CPU <= 2 ms per record, speedup >= 20,
    calls per record no more than before the split (README), every record one issue in every run, 0 duplicates.
    A pair whose issue sets other targets passes them (None = reported, not a target); ``max_jira_calls_per_record``
    bounds the target's calls per record (``target_calls_per_record``: Jira's for the Jira pairs); ``extra_checks``:
    a pair's own targets, by name."""
    checks = {f"speedup >= {min_speedup:g}": out["speedup"] >= min_speedup}
    if max_jira_calls_per_record is not None:
        checks[f"{target_label} calls/record <= {max_jira_calls_per_record}"] = (
            out["target_calls_per_record"] <= max_jira_calls_per_record)
    checks.update({
        f"{source_label} calls/record <= {max_odata_calls_per_record}":
            out["odata_calls_per_record"] <= max_odata_calls_per_record,
        f"every record one {item_label}": out["issues_created"] == out["issues_created_max"] == out["records"],
        "0 duplicates": out["duplicates"] == 0,
        **(extra_checks or {}),
    })
    if max_wall_over_floor is not None:
        checks[f"wall <= {max_wall_over_floor:g}x latency floor"] = (
            out["wall_over_floor"] is not None and out["wall_over_floor"] <= max_wall_over_floor)
    if max_cpu_ms_per_record is not None:
        checks[f"pipeline CPU <= {max_cpu_ms_per_record:g} ms/record"] = out["cpu_ms_per_record"] <= max_cpu_ms_per_record
    missed = [name for name, ok in checks.items() if not ok]
    print("targets: " + ("all met" if not missed else "MISSED " + "; ".join(missed)), file=sys.stderr)
    return not missed
