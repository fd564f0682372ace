"""What every benchmark shares: the sandbox world with a Dagster instance, memory, resources."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    stack: Any
    driver: Any
    db_url: str
    closer: Any = None   # an ExitStack: resources bound for the naive loop close with the world

    def set_latency(self, latency_ms: float) -> None:
        for s in (self.stack.entra, self.stack.bc, self.stack.fo, self.stack.atlassian, self.stack.jira):
            s.faults.latency_s = latency_ms / 1000


@contextmanager
def bench_world(prefix: str) -> Iterator[BenchWorld]:
    """Sandboxes + receiver on loopback, consent done, the product's definitions on a fresh instance."""
    import dagster as dg

    from sandboxes.harness.dagster_driver import DagsterDriver
    from sandboxes.harness.stack import consent, start_stack

    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    home = workdir / "dagster_home"
    home.mkdir()
    os.environ["DAGSTER_HOME"] = str(home)
    db_url = f"sqlite:///{workdir}/connector.sqlite"
    stack = start_stack(workdir / "stack", database_url=db_url)
    try:
        stack.apply_env()
        consent(stack)
        from connector_pipelines.definitions import defs as load_defs

        with dg.instance_for_test(temp_dir=str(home)) as instance, ExitStack() as closer:
            yield BenchWorld(stack, DagsterDriver(load_defs(), instance), db_url, closer)
    finally:
        stack.stop()
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
    return parser.parse_args(argv)


def drain(driver, sensor: str) -> int:
    """Tick the sensor until it requests no more runs; every run must succeed. Returns the run count."""
    runs = 0
    while True:
        tick = driver.tick(sensor)
        runs += len(tick.runs)
        if not tick.runs:
            return runs
        assert all(r.success for r in tick.runs)


def figures(args: argparse.Namespace, *, stack, pipeline_s: float, runs: int, created: int, pipeline_rss: float,
            jira_calls: int, odata_calls: int, naive_records: int, naive_s: float, naive_jira_calls: int,
            naive_odata_calls: int) -> dict:
    """The figures both benchmarks report (pipeline beside the naive loop), duplicates counted in Jira."""
    from sandboxes.harness.scenario import issues_by_external_id

    duplicates = sum(len(v) - 1 for v in issues_by_external_id(stack).values() if len(v) > 1)
    return {
        "records": args.records,
        "latency_ms": args.latency_ms,
        "records_per_s": round(args.records / pipeline_s, 1),
        "naive_records_per_s": round(naive_records / naive_s, 2),
        "speedup": round((args.records / pipeline_s) / (naive_records / naive_s), 1),
        "jira_calls_per_record": round(jira_calls / args.records, 3),
        "odata_calls_per_record": round(odata_calls / args.records, 3),
        "naive_jira_calls_per_record": round(naive_jira_calls / naive_records, 2),
        "naive_odata_calls_per_record": round(naive_odata_calls / naive_records, 2),
        "pipeline_runs": runs,
        "issues_created": created,
        "peak_rss_mb": round(pipeline_rss, 1),
        "duplicates": duplicates,
    }


def print_summary(result: dict) -> None:
    """The closing lines: speedup, memory, duplicates, then the figures as one JSON line."""
    print(f"speedup {result['speedup']}x; peak RSS {result['peak_rss_mb']} MB; duplicates {result['duplicates']}")
    print(json.dumps({k: result[k] for k in ("records_per_s", "naive_records_per_s", "speedup",
                                             "jira_calls_per_record", "odata_calls_per_record",
                                             "peak_rss_mb", "duplicates", "records", "issues_created",
                                             "pipeline_runs")}))


def targets_met(out: dict, *, max_odata_calls_per_record: float | None = None) -> bool:
    """speedup >= 10, Jira calls/record <= 0.5, every record one issue, zero duplicates (+ OData calls if set)."""
    odata_ok = max_odata_calls_per_record is None or out["odata_calls_per_record"] <= max_odata_calls_per_record
    return (out["speedup"] >= 10 and out["jira_calls_per_record"] <= 0.5 and odata_ok
            and out["duplicates"] == 0 and out["issues_created"] == out["records"])
