"""`make chaos` stays runnable and honest: every scenario, small, as a user runs it (a subprocess).

The full sizes (3,000 deliveries, 20 trials, 15 s and 60 s of search lag) run in `make chaos`; here every
counter must already be 0 — duplicates, lost, acked_not_stored, forged_accepted, erp_actions_without_done,
http_5xx — and each scenario must really have run (its figures are present and non-trivial).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COUNTERS = ("duplicates", "lost", "acked_not_stored", "forged_accepted", "erp_actions_without_done", "http_5xx")


def test_chaos_small_runs_every_scenario_and_every_counter_is_zero():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOR_", "DAGSTER_HOME"))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.chaos", "--small"], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert {k: result[k] for k in COUNTERS} == dict.fromkeys(COUNTERS, 0), proc.stdout[-3000:]
    assert result["writer_crashes"] == 0
    assert proc.returncode == 0
    for scenario in ("writers", "kill", "forgery", "receiver"):
        assert result[f"{scenario}_s"] > 0, scenario
    assert result["kill_lag_2s"]["trials"] == 2 and len(result["kill_lag_2s"]["killed_at"]) == 2
    forgery = result["forgery"]
    assert forgery["forgeries_per_source"] >= 100 and forgery["malformed"] >= 100
    # every forged Done that got in (under a captured token, or freshly signed) was refused after re-reading Jira
    assert forgery["refused_by_jira_reread"] == forgery["forged_bodies_under_a_captured_jwt"] + 2
    for storage in ("sqlite", "postgres"):
        receiver = result[f"receiver_{storage}"]
        assert receiver["killed_mid_load"] and receiver["deliveries"] == 300
        assert receiver["deliveries_per_s"] > 0 and receiver["p99_ms"] > 0
    assert result["receiver_postgres"]["receivers"] == 2
