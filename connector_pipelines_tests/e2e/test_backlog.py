"""`make bench`'s backlog benchmark stays runnable: a small backlog, drained in a child process, every
inbox row one issue. Whether memory stays flat over 100,000 rows is measured by the benchmark itself
(never asserted here on timing); this proves the script drives the product end to end and counts honestly."""

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.backlog import passed

REPO = Path(__file__).resolve().parents[2]


def test_backlog_benchmark_drains_every_row_to_one_issue():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOR_", "DAGSTER_HOME"))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.backlog", "--rows", "1200", "--samples", "3"],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(lines[-1])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["rows"] == 1200 and report["issues_created"] == 1200
    assert report["duplicates"] == 0 and report["missing"] == 0 and report["failed_runs"] == 0
    assert report["runs"] == 2                               # batches of 1,000: the sensor's batch size
    assert len(report["rss_samples_mb"]) >= 1 and report["peak_rss_mb"] >= max(report["rss_samples_mb"]) > 0


def test_the_verdict_fails_on_growth_a_missing_or_a_duplicated_issue():
    ok = {"rows": 10, "issues_created": 10, "missing": 0, "duplicates": 0, "failed_runs": 0, "rss_growth_mb": 5.0}
    assert passed(ok, 50.0)
    assert not passed({**ok, "rss_growth_mb": 50.0}, 50.0)
    assert not passed({**ok, "missing": 1, "issues_created": 9}, 50.0)
    assert not passed({**ok, "duplicates": 1}, 50.0)
    assert not passed({**ok, "failed_runs": 1}, 50.0)
