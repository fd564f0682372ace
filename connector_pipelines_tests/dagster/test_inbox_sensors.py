"""The inbox sensors: receiver -> inbox table -> one cursor sensor per source (DAGSTER-STYLE rule 4).

What is pinned here: a tick reads only the local inbox (never a vendor), launches one run per batch
of rows (never one per row), carries inbox ids and never payloads in run_config, derives run_key
from the rows so a re-evaluation from an old cursor cannot launch the same batch twice, is bounded
by batch_size * max_runs_per_tick, and reports the inbox depth on the [inbox, <source>] asset.
"""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from connector_pipelines.components.integration_pair import build_inbox_sensor
from connector_pipelines.components.resources import BusinessCentralResource, ConnectorStore, JiraResource
from connector_pipelines.core import db
from connector_pipelines.definitions import defs as load_defs

PAIR = "bc_jira"
BC = "business_central"
BC_SENSOR = f"{PAIR}__{BC}_inbox_sensor"
JIRA_SENSOR = f"{PAIR}__jira_inbox_sensor"
BC_OP = f"{PAIR}__sync_notified_records"
JIRA_OP = f"{PAIR}__apply_jira_resolutions"
MARKER = "PAYLOAD-MUST-NOT-TRAVEL"
DUMMY_SETTINGS = ("CONNECTOR_BC_TENANT_ID", "CONNECTOR_BC_ENVIRONMENT", "CONNECTOR_BC_CLIENT_ID",
                  "CONNECTOR_BC_CLIENT_SECRET", "CONNECTOR_JIRA_CLIENT_ID", "CONNECTOR_JIRA_CLIENT_SECRET",
                  "CONNECTOR_JIRA_SITE_URL")


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return load_defs()


@pytest.fixture(autouse=True)
def no_vendor(monkeypatch):
    """Any attempt to build a vendor client or open a socket during a tick fails the test."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("an inbox sensor tick must not reach a vendor")

    monkeypatch.setattr(BusinessCentralResource, "client", refuse)
    monkeypatch.setattr(JiraResource, "client", refuse)
    monkeypatch.setattr(JiraResource, "token_provider", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def store(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    url = f"sqlite:///{tmp_path}/connector.sqlite"
    monkeypatch.setenv("CONNECTOR_DATABASE_URL", url)
    yield ConnectorStore(database_url=url)
    engine = db._engines.pop(url, None)
    if engine is not None:
        engine.dispose()


@pytest.fixture
def instance(tmp_path, store):
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as inst:
        yield inst


def vendor_traps() -> dict[str, dg.ConfigurableResource]:
    """Vendor resources that would raise if a tick built a client from them (see no_vendor)."""
    return {
        BC: BusinessCentralResource(tenant_id="t", environment="e", client_id="c", client_secret="x",
                                    api_url="http://127.0.0.1:9", authority_host="http://127.0.0.1:9"),
        "jira": JiraResource(client_id="c", client_secret="x", site_url="http://127.0.0.1:9",
                             auth_url="http://127.0.0.1:9", api_url="http://127.0.0.1:9"),
    }


def tick(sensor: dg.SensorDefinition, instance, store: ConnectorStore, cursor: str | None = None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"connector_store": store, **vendor_traps()})
    return sensor.evaluate_tick(ctx)


def bc_payload(i: int) -> dict:
    return {"subscriptionId": "sub-1", "resource": f"/api/v2.0/companies(c)/purchaseInvoices(id-{i})",
            "changeType": "updated", "lastModifiedDateTime": f"2026-11-20T10:00:{i % 60:02d}Z", "note": MARKER}


def jira_payload(issue_key: str, project: str | None, event: str = "jira:issue_updated",
                 changed: str = "status") -> dict:
    issue: dict = {"key": issue_key}
    if project:
        issue["fields"] = {"project": {"key": project}}
    body = {"webhookEvent": event, "issue": issue, "note": MARKER,
            "changelog": {"items": [{"field": changed, "fromString": "To Do", "toString": "Done"}]}}
    return {"event": body, "signature_kind": "jwt"}


def put(store: ConnectorStore, source: str, payloads: list[dict], prefix: str = "k") -> list[int]:
    inbox = store.inbox()
    start = inbox.count(source)
    for i, payload in enumerate(payloads):
        assert inbox.put(source, f"{prefix}-{start + i}", payload)
    return [r.id for r in inbox.read_after(source, 0, 100_000)][start:]


def put_many_fast(store: ConnectorStore, source: str, n: int) -> list[int]:
    """Bulk setup (one transaction) for the batching tests."""
    now = db.utcnow()
    with store.engine().begin() as conn:
        conn.execute(sa.insert(db.inbox), [
            {"source": source, "dedupe_key": f"bulk-{i}", "payload": bc_payload(i), "status": "pending",
             "received_at": now} for i in range(n)])
    return [r.id for r in store.inbox().read_after(source, 0, n + 1)]


def inbox_ids(request: dg.RunRequest, op_name: str = BC_OP) -> list[int]:
    return request.run_config["ops"][op_name]["config"]["inbox_ids"]


def observation(result, source: str = BC) -> dict:
    events = [e for e in result.asset_events if isinstance(e, dg.AssetObservation)]
    assert [e.asset_key for e in events] == [dg.AssetKey(["inbox", source])]
    return {k: v.value for k, v in events[0].metadata.items()}


# ------------------------------------------------------------------------------------------------
def test_an_empty_inbox_skips_and_still_reports_its_depth(defs, instance, store):
    result = tick(defs.resolve_sensor_def(BC_SENSOR), instance, store)
    assert result.run_requests == []
    assert result.skip_message and "No new business_central inbox rows" in result.skip_message
    assert result.cursor is None
    assert observation(result) == {"pending": 0, "total": 0, "oldest_pending_age_s": 0.0}


def test_seven_rows_become_one_run_carrying_only_their_ids(defs, instance, store, monkeypatch):
    ids = put(store, BC, [bc_payload(i) for i in range(7)])
    put(store, "jira", [jira_payload("FIN-1", "FIN")])  # another source's row is not this sensor's
    sensor = defs.resolve_sensor_def(BC_SENSOR)

    result = tick(sensor, instance, store)

    assert result.skip_message is None
    [request] = result.run_requests
    assert request.run_config == {"ops": {BC_OP: {"config": {"inbox_ids": ids}}}}
    assert MARKER not in json.dumps(request.run_config) + json.dumps(dict(request.tags))
    assert request.tags["connector/records"] == "7"
    assert result.cursor == str(ids[-1])
    # the run_config is valid for the job the sensor targets (its resources need their settings to resolve)
    for name in DUMMY_SETTINGS:
        monkeypatch.setenv(name, "dummy")
    dg.validate_run_config(defs.resolve_job_def(sensor.job_name), request.run_config)


def test_run_key_is_derived_from_the_rows_and_stable_on_re_evaluation(defs, instance, store):
    sensor = defs.resolve_sensor_def(BC_SENSOR)
    ids = put(store, BC, [bc_payload(i) for i in range(7)])

    first = tick(sensor, instance, store)
    again = tick(sensor, instance, store)  # e.g. the cursor write was lost: re-evaluated from the old cursor
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    assert again.cursor == first.cursor

    later = tick(sensor, instance, store, cursor=str(ids[2]))  # other rows -> another key
    assert inbox_ids(later.run_requests[0]) == ids[3:]
    assert later.run_requests[0].run_key != first.run_requests[0].run_key

    assert tick(sensor, instance, store, cursor=first.cursor).run_requests == []
    [new] = put(store, BC, [bc_payload(99)])
    nxt = tick(sensor, instance, store, cursor=first.cursor)
    [request] = nxt.run_requests
    assert inbox_ids(request) == [new]
    assert request.run_key not in {first.run_requests[0].run_key, later.run_requests[0].run_key}
    assert nxt.cursor == str(new)


def test_a_tick_covers_1200_rows_in_three_runs_of_at_most_500(defs, instance, store):
    ids = put_many_fast(store, BC, 1200)
    result = tick(defs.resolve_sensor_def(BC_SENSOR), instance, store)  # defaults: batch 500, 4 runs per tick
    batches = [inbox_ids(r) for r in result.run_requests]
    assert [len(b) for b in batches] == [500, 500, 200]
    assert [i for b in batches for i in b] == ids
    assert len({r.run_key for r in result.run_requests}) == 3
    assert result.cursor == str(ids[-1])


def test_max_runs_per_tick_bounds_a_tick_and_the_next_tick_resumes(defs, instance, store):
    ids = put_many_fast(store, BC, 1200)
    notification_job = defs.resolve_job_def(f"{PAIR}__notification_job")
    sensor = build_inbox_sensor("bounded", BC, notification_job, {}, description="test",
                                batch_size=100, max_runs_per_tick=4)

    first = tick(sensor, instance, store)
    assert [len(inbox_ids(r)) for r in first.run_requests] == [100] * 4
    assert first.cursor == str(ids[399])  # the last id covered, not the last id in the inbox

    second = tick(sensor, instance, store, cursor=first.cursor)
    covered = [i for r in first.run_requests + second.run_requests for i in inbox_ids(r)]
    assert covered == ids[:800]
    assert second.cursor == str(ids[799])


def test_jira_sensor_takes_only_its_projects_rows_and_still_advances(defs, instance, store):
    sensor = defs.resolve_sensor_def(JIRA_SENSOR)
    ids = put(store, "jira", [
        jira_payload("FIN-1", "FIN"),
        jira_payload("OPS-1", "OPS"),
        jira_payload("FIN-2", None),        # no fields.project: falls back to the key's prefix
        jira_payload("FINANCE-3", None),    # a prefix of another project is not ours
        jira_payload("OPS-2", "OPS"),
    ])

    result = tick(sensor, instance, store)
    [request] = result.run_requests
    assert inbox_ids(request, JIRA_OP) == [ids[0], ids[2]]
    assert result.cursor == str(ids[-1])
    assert MARKER not in json.dumps(request.run_config)

    others = put(store, "jira", [jira_payload("OPS-3", "OPS"), jira_payload("HR-1", "HR")])
    only_others = tick(sensor, instance, store, cursor=result.cursor)
    assert only_others.run_requests == []
    assert only_others.cursor == str(others[-1])  # skipped rows are never read again
    assert observation(only_others, "jira")["total"] == 7


def test_observation_carries_pending_total_and_oldest_pending_age(defs, instance, store):
    ids = put(store, BC, [bc_payload(i) for i in range(3)])
    inbox = store.inbox()
    inbox.mark([ids[0]], "processed", "run-1")
    with store.engine().begin() as conn:  # the oldest pending row arrived two minutes ago
        conn.execute(sa.update(db.inbox).where(db.inbox.c.id == ids[1])
                     .values(received_at=db.utcnow() - timedelta(seconds=120)))

    seen = observation(tick(defs.resolve_sensor_def(BC_SENSOR), instance, store))
    assert seen["pending"] == 2 and seen["total"] == 3
    assert 120 <= seen["oldest_pending_age_s"] < 180


def test_a_tick_builds_no_vendor_client(defs, instance, store):
    """The autouse traps are live (a vendor client would raise), and the ticks above passed under them."""
    with pytest.raises(AssertionError, match="must not reach a vendor"):
        vendor_traps()["jira"].client(None)
    put(store, BC, [bc_payload(1)])
    put(store, "jira", [jira_payload("FIN-9", "FIN")])
    for name in (BC_SENSOR, JIRA_SENSOR):
        sensor = defs.resolve_sensor_def(name)
        assert sensor.required_resource_keys == {"connector_store"}
        assert len(tick(sensor, instance, store).run_requests) == 1


def test_jira_sensor_launches_nothing_for_comments_or_field_edits(defs, instance, store):
    """Only status transitions can resolve anything: comments (our own outcome comments echo back)
    and field edits stay in the inbox as audit but launch no run."""
    sensor = defs.resolve_sensor_def(JIRA_SENSOR)
    put(store, "jira", [jira_payload("FIN-1", "FIN", event="comment_created"),
                        jira_payload("FIN-2", "FIN", changed="summary")])
    result = tick(sensor, instance, store)
    assert not result.run_requests
    ids = put(store, "jira", [jira_payload("FIN-3", "FIN")])
    result = tick(sensor, instance, store, cursor=result.cursor)
    assert [rr.run_config["ops"][JIRA_OP]["config"]["inbox_ids"] for rr in result.run_requests] == [ids]


def test_jira_sensor_launches_a_run_for_a_resolution_comment_only(defs, instance, store):
    """A person's "Resolution: ..." comment resolves like a Done transition; other comments (and our own
    "connector_pipelines: ..." outcome comments) do not."""
    sensor = defs.resolve_sensor_def(JIRA_SENSOR)

    def comment(key: str, text: str) -> dict:
        payload = jira_payload(key, "FIN", event="comment_created")
        payload["event"]["comment"] = {"body": {"type": "doc", "version": 1, "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": text}]}]}}
        return payload

    put(store, "jira", [comment("FIN-1", "connector_pipelines: Vendor V1 unblocked"),
                        comment("FIN-2", "looks fine to me")])
    result = tick(sensor, instance, store)
    assert not result.run_requests
    ids = put(store, "jira", [comment("FIN-3", "Resolution: vendor called, bank details fixed")])
    result = tick(sensor, instance, store, cursor=result.cursor)
    assert [rr.run_config["ops"][JIRA_OP]["config"]["inbox_ids"] for rr in result.run_requests] == [ids]


def test_each_pair_s_jira_sensor_takes_only_its_own_projects(defs, instance, store):
    """bc_jira writes to FIN, d365_jira to AP: one Jira inbox, two sensors, no cross-talk."""
    put(store, "jira", [jira_payload("FIN-1", "FIN"), jira_payload("AP-1", "AP")])
    bc = tick(defs.resolve_sensor_def(JIRA_SENSOR), instance, store)
    fo = tick(defs.resolve_sensor_def("d365_jira__jira_inbox_sensor"), instance, store)
    assert len(bc.run_requests) == 1 == len(fo.run_requests)
    assert bc.run_requests[0].tags["connector/inbox_first_id"] != fo.run_requests[0].tags["connector/inbox_first_id"]
    assert fo.run_requests[0].tags["connector/integration"] == "d365_jira"
