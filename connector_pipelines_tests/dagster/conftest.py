"""The project's Definitions as the Dagster tests read them: loaded once per test module."""

import dagster as dg
import pytest

from connector_pipelines.definitions import defs as load_defs


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return load_defs()


@pytest.fixture(scope="module")
def repo(defs: dg.Definitions) -> dg.RepositoryDefinition:
    return defs.get_repository_def()
