"""Drive the product's Dagster definitions the way the daemon would, but in this process.

``tick(sensor)`` evaluates a sensor against a real instance (its stored cursor included) and
executes every RunRequest it returns as a run of that instance, with the request's run_key, tags
and config — so run history, run keys and cursors are Dagster's own, only the launcher is inline.
``log_level`` (e.g. "WARNING") sets every run's console logger: the demo keeps its terminal for what matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg


@dataclass
class TickResult:
    runs: list[dg.ExecuteInProcessResult] = field(default_factory=list)
    skipped_run_keys: list[str] = field(default_factory=list)
    cursor: str | None = None


class DagsterDriver:
    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, *, log_level: str | None = None) -> None:
        self.defs = defs
        self.instance = instance
        self.log_level = log_level
        self._cursors: dict[str, str | None] = {}

    def _config(self, run_config: dict[str, Any] | None) -> dict[str, Any] | None:
        if not self.log_level:
            return run_config
        return {**(run_config or {}), "loggers": {"console": {"config": {"log_level": self.log_level}}}}

    def tick(self, sensor_name: str, *, raise_on_error: bool = True) -> TickResult:
        sensor = self.defs.resolve_sensor_def(sensor_name)
        resources = {k: v for k, v in (self.defs.resources or {}).items()
                     if k in (sensor.required_resource_keys or set())}
        with dg.build_sensor_context(instance=self.instance, cursor=self._cursors.get(sensor_name),
                                     resources=resources, sensor_name=sensor_name) as ctx:
            data = sensor.evaluate_tick(ctx)
        result = TickResult(cursor=data.cursor)
        if data.cursor is not None:
            self._cursors[sensor_name] = data.cursor
        if not data.run_requests:
            return result
        job = self.defs.resolve_job_def(sensor.job_name)
        for rr in data.run_requests or []:
            # A run_key never launches twice for a sensor (Dagster's own rule, _daemon/sensor.py).
            existing = self.instance.get_runs(filters=dg.RunsFilter(tags={
                "dagster/sensor_name": sensor_name, "dagster/run_key": rr.run_key}))
            if existing:
                result.skipped_run_keys.append(rr.run_key)
                continue
            tags = {**(rr.tags or {}), "dagster/sensor_name": sensor_name, "dagster/run_key": rr.run_key}
            result.runs.append(job.execute_in_process(run_config=self._config(rr.run_config), instance=self.instance,
                                                      tags=tags, raise_on_error=raise_on_error))
        return result

    def run_job(self, job_name: str, *, partition_key: str | None = None, raise_on_error: bool = True,
                tags: dict[str, str] | None = None, run_config: dict[str, Any] | None = None):
        job = self.defs.resolve_job_def(job_name)
        return job.execute_in_process(instance=self.instance, partition_key=partition_key,
                                      raise_on_error=raise_on_error, tags=tags, run_config=self._config(run_config))

    def current_partition(self, asset_key: list[str], when: datetime | None = None) -> str:
        assets = self.defs.resolve_asset_graph().get(dg.AssetKey(asset_key))
        partitions = assets.partitions_def
        return partitions.get_partition_key_for_timestamp((when or datetime.now(UTC)).timestamp())


def check_evaluations(result: dg.ExecuteInProcessResult, name: str | None = None) -> list:
    """The asset check evaluations a run recorded (passed, asset_key, metadata); ``name``: of that check only
    (a reconcile run evaluates each asset's reconcile check and its ledger check)."""
    return [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
            and (name is None or e.event_specific_data.check_name == name)]
