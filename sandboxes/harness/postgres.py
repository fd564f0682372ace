"""Throwaway PostgreSQL databases on the machine's server, for tests, benchmarks and the chaos run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def url_of(name: str, password: str | None = None) -> str:
    auth = f"postgres:{password}" if password else "postgres"
    return f"postgresql+psycopg2://{auth}@127.0.0.1:5432/{name}"


@contextmanager
def throwaway_databases(prefix: str, count: int = 1) -> Iterator[list[str]]:
    """``count`` new empty databases (names), dropped afterwards with every cached engine on them."""
    names = [f"{prefix}_{uuid.uuid4().hex[:12]}" for _ in range(count)]
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield names
    finally:
        from connector_pipelines.core import db

        for url in [u for u in db._engines if any(n in u for n in names)]:
            db._engines.pop(url).dispose()
        with admin.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
