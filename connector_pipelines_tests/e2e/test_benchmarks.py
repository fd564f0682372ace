"""`make bench` stays runnable: the throughput benchmarks, small and without latency, as a user runs them.

The throughput targets are measured by `make bench` itself (README, Performance), never asserted here;
this proves the scripts still drive the product end to end — the sandboxes and the receiver in their own
process, the pipeline in the script's — and report honest counts and sane figures.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(module: str, *flags: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOR_", "DAGSTER_HOME"))}
    proc = subprocess.run([sys.executable, "-m", module, "--records", "45", "--naive-records", "3", *flags],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1])


@pytest.mark.parametrize("module", ["benchmarks.bc_jira", "benchmarks.fo_jira", "benchmarks.acumatica_jira",
                                    "benchmarks.d365_monday"])
def test_benchmark_runs_and_reports_every_record_once(module):
    report = run_benchmark(module, "--latency-ms", "0", "--runs", "2")
    assert report["records"] == 45 and report["runs"] == 2
    assert report["issues_created"] == report["issues_created_max"] == 45   # every run: every record one issue/item
    assert report["duplicates"] == 0
    assert report.get("failed_runs_total", 0) == 0
    assert report["pipeline_runs"] >= 1
    assert 0 < report["target_calls_per_record"] <= 0.5      # batched: lookups and bulk creates, not one per record
    assert 0 < report["odata_calls_per_record"] <= 0.2       # one filter over many keys, not one read per record
    assert report["naive_records_per_s"] > 0 and report["speedup"] > 0
    # the pipeline's own figures: its CPU and RSS (the sandboxes run in another process), the vendor calls
    # the sandboxes saw and the concurrency they came with; no latency, so no floor
    assert 0 < report["cpu_ms_per_record"] < 1000
    assert 50 < report["peak_rss_mb"] < 2000
    assert report["vendor_calls"] >= 45 * (report["target_calls_per_record"] + report["odata_calls_per_record"]) - 1
    assert 1 <= report["mean_in_flight"] <= report["max_in_flight"]
    assert report["latency_floor_s"] == 0 and report["wall_over_floor"] is None
    lo, hi = report["wall_s_min_max"]
    assert 0 < lo <= report["wall_s"] <= hi


def test_latency_floor_is_vendor_calls_times_latency_over_concurrency():
    report = run_benchmark("benchmarks.bc_jira", "--latency-ms", "20", "--runs", "1")
    assert report["issues_created"] == 45 and report["duplicates"] == 0
    floor = report["vendor_calls"] * 0.020 / report["mean_in_flight"]
    assert report["latency_floor_s"] == pytest.approx(floor, rel=0.01)
    assert report["wall_s"] >= report["latency_floor_s"] * 0.9     # the pipeline waits for at least its calls
    assert report["wall_over_floor"] == pytest.approx(report["wall_s"] / report["latency_floor_s"], rel=0.02)
    assert report["vendor_request_s"] >= report["vendor_calls"] * 0.020 * 0.9
