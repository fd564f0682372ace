"""The run watchdog: a run whose worker died (kill -9, OOM, a lost host) is marked failed in minutes.

Dagster's default run launcher cannot check a worker's health, so run monitoring only fails such a run
after ``max_runtime``. Every run of this project holds a lease on its run id (ConnectorStore), renewed by
a heartbeat every ``lease_ttl_s / 3``; when a lease has expired, the worker stopped beating. The watchdog
marks that run failed (if Dagster still thinks it runs), which hands it to the layers that recover:
Dagster's run retries re-launch a poll or partition run, and the inbox sensors retry the deliveries a
dead notification or resolution run left queued. Its record claims expire the same way and the next
writer takes them over.
"""


import dagster as dg

from connector_pipelines.core import leases as lease_store
from connector_pipelines.core.db import utcnow

WATCHDOG_NAME = "connector__run_watchdog"


def build_run_watchdog(interval_s: int = 30) -> dg.SensorDefinition:
    @dg.sensor(name=WATCHDOG_NAME, minimum_interval_seconds=interval_s, required_resource_keys={"connector_store"},
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Marks failed, within minutes, a run whose worker stopped renewing its lease (killed).")
    def _watchdog(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        engine = context.resources.connector_store.engine()
        now = utcnow()
        failed = []
        for run_id, owner, expired_at in lease_store.expired(engine, lease_store.RUN_SCOPE, now):
            run = context.instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                silent = (now - expired_at).total_seconds()
                context.instance.report_run_failed(run, message=(
                    f"connector_pipelines watchdog: the run worker ({owner}) stopped renewing its lease "
                    f"{silent:.0f} s ago (killed or hung); marking the run failed so it can be recovered."))
                failed.append(run_id)
            lease_store.drop(engine, lease_store.RUN_SCOPE, run_id, owner)
        if failed:
            context.log.warning(f"marked {len(failed)} dead run(s) failed: {', '.join(failed)}")
            return dg.SkipReason(f"Marked {len(failed)} run(s) whose worker died as failed.")
        return dg.SkipReason("Every running run's worker is alive.")

    return _watchdog
