"""The inbox sensors: receiver -> inbox table -> one cursor sensor per (pair, source) (DAGSTER-STYLE rule 4).

What is pinned here: a tick reads only the local inbox (never a vendor), launches one run per batch
of rows (never one per row), carries inbox ids and never payloads in run_config, derives run_key
from the rows so a re-evaluation from an old cursor cannot launch the same batch twice, is bounded
by batch_size * max_runs_per_tick, and reports the pair's backlog on [<pair>, inbox, <source>].
And what finding 4 of the exactly-once issue asked: the cursor is gap-safe whatever the commit timing,
failed batches are retried with backoff up to a limit and then parked as dead letters (listed, and
failing a check), a batch whose run died is retried, and rows no pair takes never count as pending.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from datetime import UTC, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from connector_pipelines.components.inbox_sensor import INBOX_BATCH_SIZE
from connector_pipelines.components.integration_pair import build_inbox_sensor
from connector_pipelines.components.resources import BusinessCentralResource, ConnectorStore, JiraResource
from connector_pipelines.core import db
from connector_pipelines.core.inbox import DEAD, PROCESSED, QUEUED, Inbox

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
def pg_store(pg_url, monkeypatch):
    monkeypatch.setenv("CONNECTOR_DATABASE_URL", pg_url)
    return ConnectorStore(database_url=pg_url)


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
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"connector_store": store, **vendor_traps()}) as ctx:
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
    """One delivery per payload, like the receiver; returns the new rows' ids in commit order."""
    inbox = store.inbox()
    start = inbox.count(source)
    for i, payload in enumerate(payloads):
        assert inbox.put(source, f"{prefix}-{start + i}", payload)
    return [r.id for r in inbox.read_after(source, 0, 100_000)][start:]


def put_many_fast(store: ConnectorStore, source: str, n: int) -> list[int]:
    """Bulk setup: one delivery of n entries (one transaction)."""
    store.inbox().put_many(source, [(f"bulk-{i}", bc_payload(i)) for i in range(n)])
    return [r.id for r in store.inbox().read_after(source, 0, n + 1)]


def seq_of(store: ConnectorStore, source: str, inbox_id: int) -> str:
    return str(next(r.seq for r in store.inbox().read_after(source, 0, 100_000) if r.id == inbox_id))


def inbox_ids(request: dg.RunRequest, op_name: str = BC_OP) -> list[int]:
    return request.run_config["ops"][op_name]["config"]["inbox_ids"]


def observation(result, source: str = BC, pair: str = PAIR) -> dict:
    """The reader's backlog observation (the tick may also observe the shared inbox: inbox_observations)."""
    events = [e for e in result.asset_events if isinstance(e, dg.AssetObservation)]
    backlog = dg.AssetKey([pair, "inbox", source])
    assert {e.asset_key for e in events} <= {backlog, dg.AssetKey(["inbox", source])}
    [event] = [e for e in events if e.asset_key == backlog]
    return {k: v.value for k, v in event.metadata.items()}


def inbox_observations(result, source: str = BC) -> list[dict]:
    """Observations of the receiver's [inbox, <source>] asset: recorded when the tick read new rows."""
    return [{k: v.value for k, v in e.metadata.items()} for e in result.asset_events
            if isinstance(e, dg.AssetObservation) and e.asset_key == dg.AssetKey(["inbox", source])]


def empty_backlog(**overrides) -> dict:
    return {"pending": 0, "queued": 0, "retry": 0, "dead_letters": 0, "processed": 0,
            "oldest_pending_age_s": 0.0} | overrides


# ------------------------------------------------------------------------------------------------
def test_an_empty_inbox_skips_and_still_reports_its_backlog(defs, instance, store):
    result = tick(defs.resolve_sensor_def(BC_SENSOR), instance, store)
    assert result.run_requests == []
    assert result.skip_message and "No new business_central inbox rows" in result.skip_message
    assert result.cursor is None
    assert observation(result) == empty_backlog()


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
    assert result.cursor == seq_of(store, BC, ids[-1])
    assert store.inbox().dispatch(f"{PAIR}:{BC}").counts()[QUEUED] == 7
    # the run_config is valid for the job the sensor targets (its resources need their settings to resolve)
    for name in DUMMY_SETTINGS:
        monkeypatch.setenv(name, "dummy")
    dg.validate_run_config(defs.resolve_job_def(sensor.job_name), request.run_config)


def test_a_re_evaluation_from_an_old_cursor_launches_nothing_twice(defs, instance, store):
    sensor = defs.resolve_sensor_def(BC_SENSOR)
    ids = put(store, BC, [bc_payload(i) for i in range(7)])

    first = tick(sensor, instance, store)
    again = tick(sensor, instance, store)  # e.g. the cursor write was lost: re-evaluated from the old cursor
    assert again.run_requests == [] and again.cursor == first.cursor
    later = tick(sensor, instance, store, cursor=seq_of(store, BC, ids[2]))
    assert later.run_requests == []        # rows 3..6 are already in the first batch

    [new] = put(store, BC, [bc_payload(99)])
    nxt = tick(sensor, instance, store, cursor=first.cursor)
    [request] = nxt.run_requests
    assert inbox_ids(request) == [new]
    assert request.run_key != first.run_requests[0].run_key
    assert nxt.cursor == seq_of(store, BC, new)


def test_a_batch_whose_run_request_was_lost_is_requested_again_under_the_same_key(defs, instance, store,
                                                                                   monkeypatch):
    sensor = defs.resolve_sensor_def(BC_SENSOR)
    ids = put(store, BC, [bc_payload(i) for i in range(3)])
    first = tick(sensor, instance, store)       # the daemon never launched it (crashed after the tick)
    monkeypatch.setenv("CONNECTOR_INBOX_ORPHAN_S", "0")
    again = tick(sensor, instance, store, cursor=first.cursor)
    [request] = again.run_requests
    assert request.run_key == first.run_requests[0].run_key and inbox_ids(request) == ids
    assert request.tags["connector/dispatch"] == "relaunch"


def test_a_tick_covers_2400_rows_in_three_runs_of_at_most_1000(defs, instance, store):
    assert INBOX_BATCH_SIZE == 1000
    ids = put_many_fast(store, BC, 2400)
    result = tick(defs.resolve_sensor_def(BC_SENSOR), instance, store)  # defaults: batch 1000, 4 runs per tick
    batches = [inbox_ids(r) for r in result.run_requests]
    assert [len(b) for b in batches] == [1000, 1000, 400]
    assert [i for b in batches for i in b] == ids
    assert len({r.run_key for r in result.run_requests}) == 3
    assert result.cursor == seq_of(store, BC, ids[-1])


def test_max_runs_per_tick_bounds_a_tick_and_the_next_tick_resumes(defs, instance, store):
    ids = put_many_fast(store, BC, 1200)
    notification_job = defs.resolve_job_def(f"{PAIR}__notification_job")
    sensor = build_inbox_sensor("bounded", PAIR, BC, notification_job, {}, description="test",
                                batch_size=100, max_runs_per_tick=4)

    first = tick(sensor, instance, store)
    assert [len(inbox_ids(r)) for r in first.run_requests] == [100] * 4
    assert first.cursor == seq_of(store, BC, ids[399])  # the last row covered, not the last in the inbox

    second = tick(sensor, instance, store, cursor=first.cursor)
    covered = [i for r in first.run_requests + second.run_requests for i in inbox_ids(r)]
    assert covered == ids[:800]
    assert second.cursor == seq_of(store, BC, ids[799])


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
    assert result.cursor == seq_of(store, "jira", ids[-1])
    assert MARKER not in json.dumps(request.run_config)

    others = put(store, "jira", [jira_payload("OPS-3", "OPS"), jira_payload("HR-1", "HR")])
    only_others = tick(sensor, instance, store, cursor=result.cursor)
    assert only_others.run_requests == []
    assert only_others.cursor == seq_of(store, "jira", others[-1])  # skipped rows are never read again
    # rows no pair takes are not pending: only the two this pair queued are owed
    assert observation(only_others, "jira")["pending"] == 2


def test_rows_no_pair_takes_never_count_as_pending(defs, instance, store):
    """Today's finding: "oldest pending age" only grew, because other projects' events stayed pending."""
    sensor = defs.resolve_sensor_def(JIRA_SENSOR)
    put(store, "jira", [jira_payload("OPS-1", "OPS"), jira_payload("HR-1", "HR")])
    with store.engine().begin() as conn:
        conn.execute(sa.update(db.inbox).values(received_at=db.utcnow() - timedelta(hours=5)))
    before = observation(tick(sensor, instance, store, cursor="0"), "jira")
    assert before == empty_backlog()


def test_observation_carries_pending_queued_and_the_oldest_owed_age(defs, instance, store):
    ids = put(store, BC, [bc_payload(i) for i in range(3)])
    with store.engine().begin() as conn:  # the oldest row arrived two minutes ago
        conn.execute(sa.update(db.inbox).where(db.inbox.c.id == ids[1])
                     .values(received_at=db.utcnow() - timedelta(seconds=120)))
    result = tick(defs.resolve_sensor_def(BC_SENSOR), instance, store)
    store.inbox().dispatch(f"{PAIR}:{BC}").processed([ids[0]], "run-1")
    seen = observation(tick(defs.resolve_sensor_def(BC_SENSOR), instance, store, cursor=result.cursor))
    assert seen["pending"] == 2 and seen["queued"] == 2 and seen["processed"] == 1
    assert 120 <= seen["oldest_pending_age_s"] < 180


def test_new_rows_are_observed_on_the_receiver_s_inbox_so_the_ui_shows_when_deliveries_arrived(
        defs, instance, store):
    """The inbox is an external asset the receiver writes: it shows 'last observed' = the latest arrival."""
    sensor = defs.resolve_sensor_def(BC_SENSOR)
    empty = tick(sensor, instance, store)
    assert inbox_observations(empty) == []              # nothing arrived: nothing to say about the inbox
    ids = put(store, BC, [bc_payload(i) for i in range(3)])
    result = tick(sensor, instance, store, cursor=empty.cursor)
    [seen] = inbox_observations(result)
    newest = store.inbox().get([ids[-1]])[0].received_at
    assert seen == {"new_rows": 3, "latest_seq": int(result.cursor), "reader": f"{PAIR}:{BC}",
                    "latest_received_at": newest.replace(tzinfo=UTC).timestamp()}
    assert inbox_observations(tick(sensor, instance, store, cursor=result.cursor)) == []   # read already


def test_rows_no_pair_takes_still_count_as_arrivals_on_the_inbox(defs, instance, store):
    sensor = defs.resolve_sensor_def(JIRA_SENSOR)
    put(store, "jira", [jira_payload("OTHER-1", "OTHER")])       # another project's: no run, still a delivery
    result = tick(sensor, instance, store)
    assert result.run_requests == []
    [seen] = inbox_observations(result, "jira")
    assert seen["new_rows"] == 1 and seen["reader"] == f"{PAIR}:jira"


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


# -- finding 4: nothing accepted is skipped or left without a visible reason ------------------------------
def test_a_row_whose_commit_lands_late_is_not_passed_by_the_cursor(defs, instance, pg_store):
    """On PostgreSQL an id is taken before a slow commit: the old id cursor (with a 2 s settle window)
    passed a row committed 2.5 s after a later one. The seq is handed out under a lock held to commit,
    so the later delivery cannot become visible before the slow one."""
    sensor = defs.resolve_sensor_def(BC_SENSOR)
    inbox = pg_store.inbox()
    slow_open = threading.Event()
    fast_done = threading.Event()

    def slow_delivery() -> None:
        with db.write_transaction(inbox.engine) as conn:
            inbox._store(conn, BC, {"slow": bc_payload(1)}, None, 1)
            slow_open.set()
            time.sleep(2.5)

    def fast_delivery() -> None:
        slow_open.wait(10)
        inbox.put(BC, "fast", bc_payload(2))
        fast_done.set()

    threads = [threading.Thread(target=slow_delivery), threading.Thread(target=fast_delivery)]
    for t in threads:
        t.start()
    slow_open.wait(10)
    time.sleep(0.5)
    assert not fast_done.is_set()                       # the later delivery waits for the earlier commit
    during = tick(sensor, instance, pg_store)
    assert during.run_requests == []                    # nothing visible is half a story
    for t in threads:
        t.join(20)
    after = tick(sensor, instance, pg_store, cursor=during.cursor)
    keys = {r.dedupe_key: r.id for r in inbox.read_after(BC, 0, 10)}
    assert [inbox_ids(r) for r in after.run_requests] == [[keys["slow"], keys["fast"]]]


def test_a_failed_batch_is_retried_with_backoff_then_parked_as_a_dead_letter_that_fails_the_check(
        defs, instance, store, monkeypatch):
    from connector_pipelines.core.failures import RetryBudget

    monkeypatch.setenv("CONNECTOR_RETRY_BASE_S", "0")
    monkeypatch.setenv("CONNECTOR_RETRY_MAX_ATTEMPTS", "3")
    budget = RetryBudget.from_env()
    sensor = defs.resolve_sensor_def(BC_SENSOR)
    dispatch = store.inbox().dispatch(f"{PAIR}:{BC}")
    ids = put(store, BC, [bc_payload(i) for i in range(2)])
    result = tick(sensor, instance, store)
    keys = [result.run_requests[0].run_key]
    for attempt in (1, 2):
        due = dispatch.failed(ids, f"run-{attempt}", "business_central 503: down", budget.next_from_now)
        assert all(due.values())
        result = tick(sensor, instance, store, cursor=result.cursor)
        [request] = result.run_requests
        assert inbox_ids(request) == ids and request.tags["connector/dispatch"] == "retry"
        keys.append(request.run_key)
    assert len(set(keys)) == 3                          # each attempt is its own run
    dispatch.failed(ids, "run-3", "business_central 503: down", budget.next_from_now)
    result = tick(sensor, instance, store, cursor=result.cursor)
    assert result.run_requests == []                    # the budget is spent: parked, not retried
    assert observation(result)["dead_letters"] == 2
    assert [d.inbox_id for d in sorted(dispatch.dead_letters(), key=lambda d: d.inbox_id)] == ids
    assert all(d.status == DEAD and d.attempts == 3 and "503" in d.error for d in dispatch.dead_letters())

    verdict = run_dead_letter_check(instance, store)
    assert not verdict.passed and verdict.metadata["dead_letters"].value == 2
    assert "503" in verdict.metadata["latest"].value

    assert dispatch.replay() == 2                       # a person fixed the cause: replay them
    result = tick(sensor, instance, store, cursor=result.cursor)
    assert [inbox_ids(r) for r in result.run_requests] == [ids]


def run_dead_letter_check(instance, store):
    from connector_pipelines.components.inbox_sensor import dead_letter_check, inbox_backlog_spec
    from sandboxes.harness.dagster_driver import check_evaluations

    key = dg.AssetKey([PAIR, "inbox", BC])
    job = dg.define_asset_job("dead_letters", selection=dg.AssetSelection.checks_for_assets(key))
    defs = dg.Definitions(assets=[inbox_backlog_spec(PAIR, BC, "BC", None)], asset_checks=[dead_letter_check(PAIR, BC)],
                          jobs=[job], resources={"connector_store": store})
    [verdict] = check_evaluations(defs.resolve_job_def("dead_letters").execute_in_process(instance=instance))
    return verdict


def test_a_permanent_batch_error_parks_the_rows_at_once(defs, instance, store):
    dispatch = store.inbox().dispatch(f"{PAIR}:{BC}")
    ids = put(store, BC, [bc_payload(0)])
    tick(defs.resolve_sensor_def(BC_SENSOR), instance, store)
    assert dispatch.failed(ids, "run-1", "business_central 403: Forbidden", None) == {ids[0]: None}
    assert dispatch.counts()[DEAD] == 1


def test_a_batch_whose_run_died_without_recording_it_is_retried(defs, instance, store, monkeypatch):
    """kill -9 of the run worker: the run ends FAILURE (the watchdog marks it), its rows still say queued."""
    monkeypatch.setenv("CONNECTOR_RETRY_BASE_S", "0")
    sensor = defs.resolve_sensor_def(BC_SENSOR)
    dispatch = store.inbox().dispatch(f"{PAIR}:{BC}")
    ids = put(store, BC, [bc_payload(i) for i in range(2)])
    first = tick(sensor, instance, store)
    [request] = first.run_requests
    for name in DUMMY_SETTINGS:
        monkeypatch.setenv(name, "dummy")
    dead_run = instance.create_run_for_job(defs.resolve_job_def(f"{PAIR}__notification_job"),
                                           run_config=request.run_config,
                                           tags={"dagster/run_key": request.run_key})
    instance.report_run_failed(dead_run, message="worker killed")
    monkeypatch.setenv("CONNECTOR_INBOX_ORPHAN_S", "0")
    second = tick(sensor, instance, store, cursor=first.cursor)
    [retry] = second.run_requests             # noticed and, with no backoff configured, due at once
    assert inbox_ids(retry) == ids and retry.run_key != request.run_key
    assert retry.tags["connector/dispatch"] == "retry"
    rows = dispatch.rows(ids)
    assert all(r.attempts == 1 and "ended FAILURE" in r.error and r.run_key == retry.run_key for r in rows.values())
    dispatch.processed(ids, "run-ok")
    assert dispatch.counts()[PROCESSED] == 2


def test_rows_stored_by_a_receiver_are_gap_free_in_commit_order(store):
    inbox: Inbox = store.inbox()
    inbox.put_many(BC, [("a", {}), ("b", {})])
    inbox.put_many(BC, [("a", {}), ("c", {})])   # a re-delivered entry takes a seq it does not use
    seqs = [r.seq for r in inbox.read_after(BC, 0, 10)]
    assert seqs == sorted(seqs) and len(seqs) == 3


def test_new_rows_wait_while_the_sensor_s_last_run_has_not_started_then_go_together(defs, instance, store,
                                                                                  monkeypatch):
    """Under the daemon every run is a new process: rows arriving while the sensor's last run is still queued or
    launching join the next batch instead of queueing one more run behind it (benchmarks/daemon_latency.py).
    A run stuck before starting holds them no longer than the orphan timeout."""
    sensor = defs.resolve_sensor_def(BC_SENSOR)
    put(store, BC, [bc_payload(i) for i in range(3)])
    first = tick(sensor, instance, store)
    [request] = first.run_requests

    def daemon_created_run(status: dg.DagsterRunStatus, rr: dg.RunRequest) -> dg.DagsterRun:
        return instance.add_run(dg.DagsterRun(job_name=f"{PAIR}__notification_job", run_id=str(uuid.uuid4()),
                                              status=status, tags={**rr.tags, "dagster/sensor_name": BC_SENSOR,
                                                                   "dagster/run_key": rr.run_key}))

    queued = daemon_created_run(dg.DagsterRunStatus.NOT_STARTED, request)   # created, not yet launched
    later = put(store, BC, [bc_payload(10 + i) for i in range(2)])
    held = tick(sensor, instance, store, cursor=first.cursor)
    assert held.run_requests == [] and held.cursor in (None, first.cursor)
    assert "wait" in held.skip_message
    assert observation(held)["pending"] == 3 + 2                 # still owed and visible as backlog

    instance.delete_run(queued.run_id)
    daemon_created_run(dg.DagsterRunStatus.STARTED, request)     # the first batch is running: no hold
    again = tick(sensor, instance, store, cursor=first.cursor)
    [nxt] = again.run_requests
    assert inbox_ids(nxt) == later
    assert again.cursor == seq_of(store, BC, later[-1])

    daemon_created_run(dg.DagsterRunStatus.STARTING, nxt)        # launching: held again
    more = put(store, BC, [bc_payload(20)])
    assert tick(sensor, instance, store, cursor=again.cursor).run_requests == []
    monkeypatch.setenv("CONNECTOR_INBOX_ORPHAN_S", "0")          # a run stuck before starting holds no longer
    freed = tick(sensor, instance, store, cursor=again.cursor)
    assert [inbox_ids(r) for r in freed.run_requests if r.tags["connector/dispatch"] == "new"] == [more]


def test_inbox_sensors_tick_on_every_loop_of_the_daemon(defs):
    """The daemon's sensor loop runs every 5 s; a minimum interval of 5 s would skip every other loop (10 s)."""
    from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

    inbox_sensors = [s for s in defs.sensors if s.name.endswith("_inbox_sensor")]
    assert len(inbox_sensors) == 8   # a source inbox sensor and a target one per pair
    assert all(s.minimum_interval_seconds < MIN_INTERVAL_LOOP_TIME for s in inbox_sensors)


@pytest.mark.parametrize("config", ["dagster.yaml", "deploy/dagster.postgres.yaml"])
def test_the_shipped_instances_dequeue_every_second_from_worker_threads(config, tmp_path, monkeypatch):
    """A run's launch blocks until its process has loaded the code: launched from threads, runs do not wait on
    each other, and the queue is read every second (benchmarks/daemon_latency.py: the `queue` stage)."""
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[2]
    settings = yaml.safe_load((repo / config).read_text())
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({k: v for k, v in settings.items() if k != "storage"}))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        coordinator = instance.run_coordinator
        assert coordinator.dequeue_interval_seconds == 1
        assert coordinator.dequeue_use_threads and coordinator.dequeue_num_workers == 4
        # the run limits are still the concurrency block's
        assert instance.get_concurrency_config().run_queue_config.tag_concurrency_limits == [
            {"key": "connector/trigger", "value": "webhook", "limit": 2}]
