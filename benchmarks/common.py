"""What every benchmark shares: the sandbox world with a Dagster instance, memory, resources."""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bind(resource_def):
    """A resource with its EnvVars resolved from the environment (as a run would see it)."""
    return resource_def.process_config_and_initialize()


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

    def set_latency(self, latency_ms: float) -> None:
        for s in (self.stack.entra, self.stack.bc, self.stack.fo, self.stack.atlassian, self.stack.jira):
            s.faults.latency_s = latency_ms / 1000


@contextmanager
def bench_world(prefix: str) -> Iterator[BenchWorld]:
    """Sandboxes + receiver on loopback, consent done, the product's definitions on a fresh instance."""
    import dagster as dg

    from connector_pipelines.components.resources import clear_client_cache
    from connector_pipelines.sandbox.dagster_driver import DagsterDriver
    from connector_pipelines.sandbox.stack import consent, start_stack

    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    home = workdir / "dagster_home"
    home.mkdir()
    os.environ["DAGSTER_HOME"] = str(home)
    db_url = f"sqlite:///{workdir}/connector.sqlite"
    stack = start_stack(workdir / "stack", database_url=db_url)
    try:
        stack.apply_env()
        consent(stack)
        clear_client_cache()
        from connector_pipelines.definitions import defs as load_defs

        with dg.instance_for_test(temp_dir=str(home)) as instance:
            yield BenchWorld(stack, DagsterDriver(load_defs(), instance), db_url)
    finally:
        clear_client_cache()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
