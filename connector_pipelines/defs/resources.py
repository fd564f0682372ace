"""Every resource of the code location, bound once (components.resources.resources_from_env).

Secrets and required settings are dg.EnvVar (run storage keeps only the names); non-secret
endpoints default to the vendors' hosts and can be pointed at the sandboxes by environment.
"""

import dagster as dg

from connector_pipelines.components.resources import resources_from_env


@dg.definitions
def resources() -> dg.Definitions:
    # I/O-bound jobs: one process per run, no per-step subprocesses.
    return dg.Definitions(resources=resources_from_env(for_dagster=True), executor=dg.in_process_executor)
