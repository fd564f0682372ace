"""The production shape, automated: `dagster-daemon` on dagster-postgres (deploy/dagster.postgres.yaml)
with the shipped workspace.yaml, nothing ticked by the test.

F&O fires its three business events at the receiver; the daemon's sensor launches the batch run in its
own process (DefaultRunLauncher) and the issues appear in Jira. A person moves the rejected order's
issue to Done; Jira's webhook reaches the receiver, the daemon launches the resolution run, and the
order is resubmitted to its workflow once. Every run is in Dagster's PostgreSQL run storage, tagged with
the sensor that launched it: run history is the audit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from benchmarks.daemon_latency import stop_daemon
from sandboxes.harness.scenario import (
    FO_JIRA_SENSOR,
    FO_SENSOR,
    comments,
    fire_fo_events,
    fo_external_ids,
    issues_by_external_id,
    seed_fo_documents,
)
from sandboxes.harness.stack import CLOUD_ID, LEGAL_ENTITY, consent, start_stack

REPO = Path(__file__).resolve().parents[2]
PAIR = "d365_jira"


def wait_for(what: str, check: Callable[[], object], daemon: subprocess.Popen, log: Path, timeout_s: float = 150):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert daemon.poll() is None, f"dagster-daemon exited ({daemon.returncode}):\n{log.read_text()[-4000:]}"
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; daemon log:\n{log.read_text()[-4000:]}")


@pytest.fixture
def production(tmp_path, monkeypatch, pg_database):
    """Sandboxes + receiver on loopback, a DAGSTER_HOME with the production dagster.yaml on a fresh database."""

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
    pg_env = {"CONNECTOR_PG_HOST": "127.0.0.1", "CONNECTOR_PG_PORT": "5432", "CONNECTOR_PG_DB": pg_database,
              "CONNECTOR_PG_USER": "postgres", "CONNECTOR_PG_PASSWORD": "",
              "DAGSTER_HOME": str(home)}
    stack = start_stack(tmp_path / "stack",
                        database_url=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{pg_database}")
    try:
        for k, v in {**stack.env, **pg_env}.items():
            monkeypatch.setenv(k, v)
        consent(stack)
        yield stack, home
    finally:
        stack.stop()


def test_daemon_on_postgres_turns_business_events_into_issues_and_done_into_one_resubmission(production, tmp_path):
    stack, home = production
    from connector_pipelines.definitions import defs as load_defs
    from sandboxes.harness.dagster_driver import DagsterDriver

    with dg.DagsterInstance.get() as instance:
        # the production dagster.yaml in this DAGSTER_HOME, which the daemon reads too
        assert instance.root_directory == str(home)
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        # the webhook renewal job once, as its schedule's first tick would (the schedule is daily)
        assert DagsterDriver(load_defs(), instance).run_job(f"{PAIR}__jira_webhook_renewal_job").success

        seeded = seed_fo_documents(stack)
        fire_fo_events(stack, seeded)
        stack.fo.deliver_events()                      # F&O -> HTTPS receiver -> inbox (PostgreSQL)

        log = tmp_path / "daemon.log"
        with log.open("w") as out:
            daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                                       str(REPO / "workspace.yaml")], cwd=REPO, env=dict(os.environ),
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ids = fo_external_ids(seeded)

            def three_issues():
                found = issues_by_external_id(stack)
                return found if all(found.get(i) for i in ids.values()) else None

            found = wait_for("three issues from the daemon's sensor", three_issues, daemon, log)
            assert all(len(found[i]) == 1 for i in ids.values())

            sensor_runs = wait_for("the batch run to finish", lambda: [
                r for r in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": FO_SENSOR}))
                if r.status == dg.DagsterRunStatus.SUCCESS], daemon, log)
            assert len(sensor_runs) == 1                      # three events, one batch run
            assert sensor_runs[0].job_name == f"{PAIR}__notification_job"

            issue_key = found[ids["purchase order rejected in workflow"]][0]["key"]
            stack.jira.transition_as_user(CLOUD_ID, issue_key, "Done")
            stack.jira.deliver_pending()                      # Jira webhook -> receiver -> inbox

            wait_for("the workflow resubmission", lambda: stack.fo.action_calls("SubmitToWorkflow") >= 1,
                     daemon, log)
            resolution_runs = wait_for("the resolution run to finish", lambda: [
                r for r in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": FO_JIRA_SENSOR}))
                if r.status == dg.DagsterRunStatus.SUCCESS], daemon, log)
            assert resolution_runs[0].job_name == f"{PAIR}__resolution_job"
            po_keys = {"dataAreaId": LEGAL_ENTITY, "PurchaseOrderNumber": seeded["rejected_po"]["PurchaseOrderNumber"]}
            assert stack.fo.get_record("PurchaseOrderHeadersV2", po_keys)["DocumentApprovalStatus"] == "InReview"
            wait_for("the outcome comment", lambda: any("SubmitToWorkflow called in F&O" in c
                                                        for c in comments(stack, issue_key)), daemon, log)

            # F&O delivers every event again (same ControlNumbers): the daemon's next ticks open nothing new
            assert stack.fo.redeliver()["failed"] == 0
            time.sleep(8)                                     # more than one sensor interval (5 s)
            again = issues_by_external_id(stack)
            assert all(len(again[i]) == 1 for i in ids.values())
            assert stack.fo.action_calls("SubmitToWorkflow") == 1
            failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
            assert not failed, [(r.job_name, r.run_id) for r in failed]
        finally:
            stop_daemon(daemon)
