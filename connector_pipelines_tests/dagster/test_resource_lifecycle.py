"""Resources follow Dagster's lifecycle: one client per run, closed when the run ends; the store holds the
run's lease (its heartbeat is the watchdog's sign of life) only while the run lives.

Before, clients lived in a module-level cache for the life of the process and were never closed.
"""

import dagster as dg
import sqlalchemy as sa

from connector_pipelines.core.db import get_engine, leases


def test_each_run_gets_its_own_clients_and_they_are_closed_when_it_ends(world):
    seen: list[dict] = []

    @dg.op(required_resource_keys={"business_central", "finance_operations", "jira", "connector_store"})
    def use_every_client(context: dg.OpExecutionContext) -> None:
        r = context.resources
        store = r.connector_store
        clients = {"business_central": r.business_central.client(), "finance_operations": r.finance_operations.client(),
                   "jira": r.jira.client(store.vault())}
        # within a run, one client per system (its connection pool and token cache are reused)
        assert clients["business_central"] is r.business_central.client()
        assert clients["jira"] is r.jira.client(store.vault())
        clients["business_central"].companies()          # really used: a token and a request
        with get_engine(world.database_url).connect() as conn:
            held = conn.execute(sa.select(leases.c.key).where(leases.c.scope == "run")).scalars().all()
        seen.append({"clients": clients, "run_lease_held": context.run_id in held})

    @dg.job(resource_defs=world.defs.resources)
    def lifecycle_probe():
        use_every_client()

    for _ in range(2):
        assert lifecycle_probe.execute_in_process(instance=world.instance).success

    first, second = (s["clients"] for s in seen)
    for system in first:
        assert first[system] is not second[system], system      # one client per run, not per process
        for clients in (first, second):
            assert clients[system].http._client.is_closed, system   # closed at the run's teardown
    assert all(s["run_lease_held"] for s in seen)
    with get_engine(world.database_url).connect() as conn:          # and the run's lease released
        assert conn.execute(sa.select(sa.func.count()).select_from(leases)).scalar_one() == 0
