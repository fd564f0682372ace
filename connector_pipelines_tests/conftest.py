"""Shared fixtures: a sandbox world on loopback ports plus a real Dagster instance (SQLite or PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

# Never let a developer's CONNECTOR_* settings leak into a test.
for _var in list(os.environ):
    if _var.startswith("CONNECTOR_"):
        os.environ.pop(_var)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database on the machine's server (a down server fails the test, never skips)."""
    from sandboxes.harness.postgres import throwaway_databases

    with throwaway_databases("cp_test") as [name]:
        yield name


@pytest.fixture
def pg_url(pg_database) -> str:
    """The SQLAlchemy URL of a throwaway PostgreSQL database."""
    from sandboxes.harness.postgres import url_of

    return url_of(pg_database)


@pytest.fixture(scope="module")
def entra_over_tls(tmp_path_factory):
    """The Entra ID sandbox on a loopback port over TLS (msal refuses http), with its throwaway CA.

    Yields (entra, server, tls); each test module registers the apps it needs on ``entra``.
    """
    from sandboxes.common import SandboxServer
    from sandboxes.entra import EntraSandbox
    from sandboxes.tls import make_tls

    tls = make_tls(tmp_path_factory.mktemp("tls"))
    entra = EntraSandbox()
    with SandboxServer(entra.app, ssl_certfile=str(tls.server_cert), ssl_keyfile=str(tls.server_key)) as server:
        yield entra, server, tls


@dataclass
class World:
    stack: object
    driver: object
    defs: dg.Definitions
    instance: dg.DagsterInstance
    database_url: str

    @property
    def bc(self):
        return self.stack.bc

    @property
    def jira(self):
        return self.stack.jira


def _world(tmp_path: Path, monkeypatch, storage: str, pg_name: str | None) -> Iterator[World]:
    from connector_pipelines.definitions import defs as load_defs
    from sandboxes.harness.dagster_driver import DagsterDriver
    from sandboxes.harness.stack import consent, start_stack

    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    if storage == "postgres":
        database_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{pg_name}"
        overrides = {"storage": {"postgres": {"postgres_db": {
            "scheme": "postgresql+psycopg2", "hostname": "127.0.0.1", "port": 5432, "db_name": pg_name,
            "username": "postgres", "password": ""}}}}
    else:
        database_url = f"sqlite:///{tmp_path}/connector.sqlite"
        overrides = {}
    stack = start_stack(tmp_path / "stack", database_url=database_url)
    try:
        for k, v in stack.env.items():
            monkeypatch.setenv(k, v)
        consent(stack)
        with dg.instance_for_test(temp_dir=str(home), overrides=overrides) as instance:
            defs = load_defs()
            yield World(stack, DagsterDriver(defs, instance), defs, instance, database_url)
    finally:
        stack.stop()


@pytest.fixture
def world(tmp_path, monkeypatch) -> Iterator[World]:
    yield from _world(tmp_path, monkeypatch, "sqlite", None)


@pytest.fixture
def pg_world(tmp_path, monkeypatch, pg_database) -> Iterator[World]:
    yield from _world(tmp_path, monkeypatch, "postgres", pg_database)
