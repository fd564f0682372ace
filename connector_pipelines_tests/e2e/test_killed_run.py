"""A run *killed* (os._exit, no cleanup, like kill -9) between Jira's create answer and the ledger
commit: the watchdog marks the dead run failed as soon as its lease lapses (not after max_runtime), and
the re-execution — waiting out the dead worker's record claims, then finding its issue by search — leaves
exactly one issue per exception."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.core.ledger import Ledger
from sandboxes.harness.scenario import issues_by_external_id, register_webhooks, seed_exceptions

REPO = Path(__file__).resolve().parents[2]
OP = "bc_jira__sync_notified_records"

WORKER = textwrap.dedent("""
    import json, os, sys
    from connector_pipelines.core.ledger import Ledger
    real = Ledger.mark_done
    def die_after_jira_answered(self, integration, results, run_id):
        if any(r.get("target_key") for r in results):
            os._exit(137)          # the worker dies: no exception handler, no ledger commit, no run event
        return real(self, integration, results, run_id)
    Ledger.mark_done = die_after_jira_answered
    import dagster as dg
    from connector_pipelines.definitions import defs
    job = defs().resolve_job_def("bc_jira__notification_job")
    job.execute_in_process(run_config=json.loads(sys.argv[1]), instance=dg.DagsterInstance.get())
""")


def test_killed_worker_then_reexecution_gives_exactly_one_issue(world, monkeypatch):
    monkeypatch.setenv("CONNECTOR_LEASE_TTL_S", "2")     # the dead worker's claims lapse in 2 s (default 60)
    register_webhooks(world.driver)
    seeded = seed_exceptions(world.stack)
    world.stack.deliver_all()
    ids = [r.id for r in Inbox(get_engine(world.database_url)).read_after("business_central", 0, 100)]
    run_config = {"ops": {OP: {"config": {"inbox_ids": ids}}}}

    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(run_config)], check=False, cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr[-2000:]
    created_by_the_dead_worker = issues_by_external_id(world.stack)
    assert len(created_by_the_dead_worker) == 1          # Jira answered for the first entity's bulk create
    ledger = Ledger(get_engine(world.database_url))
    assert ledger.counts("bc_jira")["intent"] >= 1 and ledger.counts("bc_jira")["done"] == 0
    zombie = [r for r in world.instance.get_runs() if r.job_name == "bc_jira__notification_job"]
    assert zombie and not zombie[0].is_finished         # Dagster alone would wait for max_runtime (an hour)
    world.driver.tick("connector__run_watchdog")        # the lease has not lapsed yet: alive as far as we know
    assert not world.instance.get_run_by_id(zombie[0].run_id).is_finished
    time.sleep(2.5)
    world.driver.tick("connector__run_watchdog")
    dead = world.instance.get_run_by_id(zombie[0].run_id)
    assert dead.status == dg.DagsterRunStatus.FAILURE

    again = world.defs.resolve_job_def("bc_jira__notification_job").execute_in_process(
        run_config=run_config, instance=world.instance)
    assert again.success
    found = issues_by_external_id(world.stack)
    assert set(found) == {f"bc:vendors:{seeded['blocked']['id']}", f"bc:purchaseInvoices:{seeded['invoice']['id']}"}
    assert all(len(v) == 1 for v in found.values())
    assert ledger.counts("bc_jira")["intent"] == 0
