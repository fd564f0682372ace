"""Dynamics 365 F&O business events -> Jira -> back into F&O, end to end.

The F&O sandbox posts its stub envelopes over HTTPS to the product's receiver (shared-secret header);
the product's Dagster definitions run against a real instance: the F&O inbox sensor batches the
events, the notification run reads the documents over OData and writes Jira through the ledger ->
JQL -> bulk create path; a person's Done (or "Resolution: ..." comment) comes back through the Jira
webhook, the Jira inbox sensor and the resolution run. Nothing is mocked between them.
"""

from __future__ import annotations

import json

import dagster as dg
import pytest

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.core.ledger import DONE, QUARANTINED, Ledger
from sandboxes.harness.dagster_driver import check_evaluations
from sandboxes.harness.scenario import (
    FO_JIRA_SENSOR,
    FO_SENSITIVE,
    FO_SENSOR,
    comments,
    fire_fo_events,
    fo_external_ids,
    issues_by_external_id,
    seed_fo_documents,
)
from sandboxes.harness.stack import CLOUD_ID, LEGAL_ENTITY

PAIR = "d365_jira"
RECONCILE_CHECK = "every_exception_has_one_open_issue"
PO_SET = "PurchaseOrderHeadersV2"


def fields_by_name(world, issue: dict) -> dict[str, object]:
    site = world.stack.jira.sites[CLOUD_ID]
    names = {f.id: f.name for f in site.custom_fields.values()}
    return {names.get(k, k): v for k, v in issue["fields"].items()}


def one_issue_each(world, seeded) -> dict[str, dict]:
    found = issues_by_external_id(world.stack)
    expected = fo_external_ids(seeded)
    mine = {k: v for k, v in found.items() if k and k.startswith("fo:")}
    assert set(mine) == set(expected.values()), mine.keys()
    assert all(len(v) == 1 for v in mine.values()), {k: [i["key"] for i in v] for k, v in mine.items()}
    return {k: v[0] for k, v in mine.items()}


def output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return event.event_specific_data.metadata


def process_events(world) -> list[dg.ExecuteInProcessResult]:
    world.stack.fo.deliver_events()
    runs = []
    while True:
        tick = world.driver.tick(FO_SENSOR)
        if not tick.runs:
            return runs
        runs.extend(tick.runs)
        assert all(r.success for r in tick.runs)


def test_each_event_type_becomes_one_issue_with_the_context_to_act(world):
    seeded = seed_fo_documents(world.stack)
    fire_fo_events(world.stack, seeded)

    runs = process_events(world)

    assert len(runs) == 1  # three events, one batch run
    by_ext = one_issue_each(world, seeded)
    ids = fo_external_ids(seeded)
    invoice = fields_by_name(world, by_ext[ids["vendor invoice posted"]])
    assert invoice["project"]["key"] == "AP" and invoice["issuetype"]["name"] == "Task"
    assert invoice["ERP Document Number"] == "INV-2026-0001"
    assert invoice["ERP Vendor"] == "US-101 Fabrikam Electronics"
    assert invoice["ERP Amount"] == 1234.5  # the sum of the invoice's lines, read with $expand
    assert invoice["ERP Status"] == f"Posted ({LEGAL_ENTITY})"
    rejected = fields_by_name(world, by_ext[ids["purchase order rejected in workflow"]])
    assert rejected["issuetype"]["name"] == "Bug" and rejected["ERP Status"] == "Rejected"
    assert rejected["ERP Amount"] == 9800.0
    from connector_pipelines.core.adf import plain_text

    text = plain_text(rejected["description"])
    assert "Dynamics 365 Finance & Operations (usmf)" in text
    assert f"cmp={LEGAL_ENTITY}&mi=PurchTable" in str(rejected["description"])  # the link back to F&O
    # only identifiers and the context to act: no vendor master or GL data travel
    in_fo = json.dumps([r for s in ("VendorsV2", "VendorInvoiceHeaders", "VendorInvoiceLines", PO_SET)
                        for r in world.stack.fo.records(s)])
    assert all(v in in_fo for v in FO_SENSITIVE.values())                             # they are in F&O...
    for issue in by_ext.values():
        blob = json.dumps(issue["fields"]) + json.dumps(comments(world.stack, issue["key"]))
        leaked = [name for name, value in FO_SENSITIVE.items() if value in blob]
        assert not leaked, leaked                                                        # ...never in Jira
    md = output_metadata(runs[0])
    assert md["notifications"].value == 3 and md["created"].value == 3
    # one OData read per entity (an OR of key groups each), not one per event
    assert md["api_calls_finance_operations"].value <= 4
    ledger = Ledger(get_engine(world.database_url))
    assert ledger.counts(PAIR).get(DONE) == 3


def test_three_deliveries_and_out_of_order_events_give_one_issue(world):
    seeded = seed_fo_documents(world.stack)
    fo = world.stack.fo
    po = seeded["confirmed_po"]["PurchaseOrderNumber"]
    fo.confirm_purchase_order(LEGAL_ENTITY, po)
    fo.confirm_purchase_order(LEGAL_ENTITY, po)   # a second event for the same document, newer ControlNumber
    fo.deliver_events(order="reverse")            # arrives newest first
    fo.redeliver()                                # F&O re-sends everything: same ControlNumbers
    fo.redeliver()

    inbox = Inbox(get_engine(world.database_url))
    assert inbox.count("finance_operations") == 2  # deduplicated on ControlNumber at the inbox
    runs = process_events(world)
    assert len(runs) == 1
    found = issues_by_external_id(world.stack)
    key = f"fo:purchase_orders_confirmed:{LEGAL_ENTITY}:{po}"
    assert len(found[key]) == 1
    # and a later re-delivery opens nothing new
    fo.redeliver()
    process_events(world)
    assert len(issues_by_external_id(world.stack)[key]) == 1


def test_an_event_for_a_document_odata_cannot_find_is_quarantined_and_the_rest_proceeds(world):
    seeded = seed_fo_documents(world.stack)
    fire_fo_events(world.stack, seeded)
    world.stack.fo.fire("PurchaseOrderConfirmedBusinessEvent", LEGAL_ENTITY, PurchaseOrderNumber="PO-GHOST",
                        PurchaseJournal="PJ-1", VendorAccount="US-101")

    runs = process_events(world)

    assert len(runs) == 1 and runs[0].success
    one_issue_each(world, seeded)
    ledger = Ledger(get_engine(world.database_url))
    row = ledger.get(PAIR, f"fo:purchase_orders_confirmed:{LEGAL_ENTITY}:PO-GHOST")
    assert row.state == QUARANTINED
    assert "PurchaseOrderHeadersV2" in row.last_error and "PO-GHOST" in row.last_error
    assert "PurchaseOrderConfirmedBusinessEvent ControlNumber" in row.last_error
    logs = [e.message for e in world.instance.all_logs(runs[0].run_id)]
    assert any("quarantined" in (m or "") and "PO-GHOST" in (m or "") for m in logs)


def open_issues_and_watch_jira(world) -> tuple[dict, dict[str, str]]:
    """The three events processed into issues and Jira's webhook registered: (seeded, issue key by event)."""
    seeded = seed_fo_documents(world.stack)
    fire_fo_events(world.stack, seeded)
    process_events(world)
    world.driver.run_job(f"{PAIR}__jira_webhook_renewal_job")
    found = issues_by_external_id(world.stack)
    return seeded, {event: found[ext][0]["key"] for event, ext in fo_external_ids(seeded).items()}


def test_done_resubmits_the_rejected_order_to_its_workflow_exactly_once(world):
    seeded, issue_keys = open_issues_and_watch_jira(world)
    issue_key = issue_keys["purchase order rejected in workflow"]
    jira, fo = world.stack.jira, world.stack.fo
    po_keys = {"dataAreaId": LEGAL_ENTITY, "PurchaseOrderNumber": seeded["rejected_po"]["PurchaseOrderNumber"]}

    jira.transition_as_user(CLOUD_ID, issue_key, "Done")
    jira.deliver_pending()
    tick = world.driver.tick(FO_JIRA_SENSOR)
    assert len(tick.runs) == 1 and tick.runs[0].success
    assert fo.action_calls("SubmitToWorkflow") == 1
    assert fo.get_record(PO_SET, po_keys)["DocumentApprovalStatus"] == "InReview"
    assert any("SubmitToWorkflow called in F&O" in c for c in comments(world.stack, issue_key))

    # reopened and done again, and the webhook re-delivered: the workflow is not submitted twice
    jira.transition_as_user(CLOUD_ID, issue_key, "To Do")
    jira.transition_as_user(CLOUD_ID, issue_key, "Done")
    jira.deliver_pending()
    for _ in range(2):
        for run in world.driver.tick(FO_JIRA_SENSOR).runs:
            assert run.success
    assert fo.action_calls("SubmitToWorkflow") == 1


def test_a_resolution_comment_records_the_outcome_on_the_confirmed_order(world):
    seeded, issue_keys = open_issues_and_watch_jira(world)
    issue_key = issue_keys["purchase order confirmed"]

    world.stack.jira.comment_as_user(CLOUD_ID, issue_key, "Resolution: delivery date agreed with Fabrikam")
    world.stack.jira.deliver_pending()
    tick = world.driver.tick(FO_JIRA_SENSOR)

    assert len(tick.runs) == 1 and tick.runs[0].success
    po = world.stack.fo.get_record(PO_SET, {"dataAreaId": LEGAL_ENTITY,
                                            "PurchaseOrderNumber": seeded["confirmed_po"]["PurchaseOrderNumber"]})
    assert po["ReasonComment"] == f"{issue_key}: delivery date agreed with Fabrikam"


def test_a_429_storm_from_fo_ends_in_success(world):
    seeded = seed_fo_documents(world.stack)
    fire_fo_events(world.stack, seeded)
    fo = world.stack.fo
    fo.faults.retry_after = "0"
    fo.faults.rate_limit_next = 4

    runs = process_events(world)

    assert len(runs) == 1 and runs[0].success
    assert fo.faults.served_429 == 4
    one_issue_each(world, seeded)


@pytest.mark.parametrize("other_area", ["demf"])
def test_events_of_a_legal_entity_the_integration_does_not_watch_open_nothing(world, other_area):
    fo = world.stack.fo
    seeded = seed_fo_documents(world.stack, area=other_area)
    fo.activate("PurchaseOrderConfirmedBusinessEvent", "connector-pipelines", legal_entity=other_area)
    fo.confirm_purchase_order(other_area, seeded["confirmed_po"]["PurchaseOrderNumber"])
    runs = process_events(world)
    assert all(r.success for r in runs)
    assert not [k for k in issues_by_external_id(world.stack) if k and k.startswith("fo:")]


def test_lost_events_fail_reconciliation_and_the_repair_opens_the_missing_issues(world):
    """The F&O endpoint was down: every event of the hour is lost (kept in F&O's Errors tab). The state
    entity (rejected PO) and the event-only entity (confirmed PO, found by its catch-up read: confirmed,
    accounting date in the last 14 days) both fail the check; posted invoices cannot be verified (no
    catch-up read exists) and say so as a warning. The repair job opens the missing issues; F&O's later
    Resend opens nothing twice."""
    from sandboxes.harness.dagster_driver import check_evaluations

    seeded = seed_fo_documents(world.stack)
    fo = world.stack.fo
    fo.endpoints["connector-pipelines"].url = "https://127.0.0.1:9/unreachable"   # the endpoint is down
    fo.retry_delay_s = 0
    fire_fo_events(world.stack, seeded)
    assert fo.deliver_events()["failed"] == 3 and len(fo.errors) == 3   # kept in F&O's Errors tab

    checks = {str(c.asset_key.path[-1]): c for c in
              check_evaluations(world.driver.run_job(f"{PAIR}__reconcile_job", raise_on_error=False),
                                RECONCILE_CHECK)}
    for entity in ("purchase_orders_rejected_in_workflow", "purchase_orders_confirmed"):
        assert not checks[entity].passed and checks[entity].metadata["missing"].value == 1, entity
        assert checks[entity].severity == dg.AssetCheckSeverity.ERROR
    invoices = checks["vendor_invoices_posted"]
    assert not invoices.passed and invoices.severity == dg.AssetCheckSeverity.WARN
    assert "cannot be verified" in invoices.metadata["cannot_verify"].value

    repaired = world.driver.run_job(f"{PAIR}__repair_job")
    assert repaired.success
    found = issues_by_external_id(world.stack)
    ids = fo_external_ids(seeded)
    for what in ("purchase order confirmed", "purchase order rejected in workflow"):
        assert len(found[ids[what]]) == 1, what
    checks = {str(c.asset_key.path[-1]): c for c in
              check_evaluations(world.driver.run_job(f"{PAIR}__reconcile_job", raise_on_error=False),
                                RECONCILE_CHECK)}
    assert checks["purchase_orders_confirmed"].passed and checks["purchase_orders_rejected_in_workflow"].passed

    # the endpoint is back; an administrator presses Resend: the invoice's issue opens, nothing twice
    fo.endpoints["connector-pipelines"].url = world.stack.servers["receiver_tls"].base_url + \
        "/webhooks/d365-business-events"
    for _, envelope in list(fo.errors):
        assert fo.resend(envelope["ControlNumber"])
    process_events(world)
    one_issue_each(world, seeded)


def test_a_window_replay_heals_what_a_lost_batch_missed(world):
    """The hour's partition replays the events the inbox received in it (here: the batch never ran)."""
    seeded = seed_fo_documents(world.stack)
    fire_fo_events(world.stack, seeded)
    world.stack.fo.deliver_events()
    key = world.driver.current_partition(["finance_operations", "purchase_orders_rejected_in_workflow"])
    result = world.driver.run_job(f"{PAIR}__poll_job", partition_key=key)
    assert result.success
    one_issue_each(world, seeded)


def window_status(world, entity: str) -> tuple[set[str], set[str]]:
    """(materialized, failed) partitions of an entity's asset, as the Dagster UI's partition bar reads them."""
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    key = dg.AssetKey(["finance_operations", entity])
    partitions = world.defs.resolve_asset_graph().get(key).partitions_def
    with dg.partition_loading_context(dynamic_partitions_store=world.instance):
        value = get_and_update_asset_status_cache_value(world.instance, key, partitions)
    if value is None:
        return set(), set()
    return (set(value.deserialize_materialized_partition_subsets(partitions).get_partition_keys()),
            set(value.deserialize_failed_partition_subsets(partitions).get_partition_keys()))


def test_a_webhook_batch_shows_on_its_windows_and_a_window_holding_a_broken_record_is_red_until_fixed(world):
    """Issue 13: the event-driven assets show what the webhook runs did. A batch materializes each window whose
    records it settled; the window holding a record F&O cannot return only gets an observation; closing that
    hour fails its run (red) while the record is broken, and re-running it after the fix turns it green."""
    seeded = seed_fo_documents(world.stack)
    fire_fo_events(world.stack, seeded)
    world.stack.fo.fire("PurchaseOrderConfirmedBusinessEvent", LEGAL_ENTITY, PurchaseOrderNumber="PO-GHOST",
                        PurchaseJournal="PJ-1", VendorAccount="US-101")
    [run] = process_events(world)
    hour = world.driver.current_partition(["finance_operations", "purchase_orders_confirmed"])

    for entity in ("vendor_invoices_posted", "purchase_orders_rejected_in_workflow"):
        assert window_status(world, entity) == ({hour}, set()), entity
    assert window_status(world, "purchase_orders_confirmed") == (set(), set())
    [observed] = [o for o in (e.asset_observation for e in world.instance.all_logs(
        run.run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION)) if o.asset_key.path[-1] == "purchase_orders_confirmed"]
    assert observed.partition == hour and observed.metadata["not_settled"].value == 1
    assert "PO-GHOST" in observed.metadata["not_settled_records"].value
    # the batch evaluated each set's ledger check: the asset pages are current, not "Not evaluated"
    ledger_checks = {e.asset_key.path[-1]: e.passed for e in check_evaluations(run, "no_record_needs_a_person")}
    assert ledger_checks == {"vendor_invoices_posted": True, "purchase_orders_confirmed": False,
                             "purchase_orders_rejected_in_workflow": True}

    # the hour is closed (the window close schedule's run): still broken -> the window fails, named
    closed = world.driver.run_job(f"{PAIR}__poll_job", partition_key=hour, raise_on_error=False,
                                  tags={"connector/trigger": "window_close"})
    assert not closed.success
    assert window_status(world, "purchase_orders_confirmed") == (set(), {hour})
    # its check step is skipped (the asset failed), yet the check's latest result names the record and why
    latest = world.instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey(["finance_operations", "purchase_orders_confirmed"]),
                          "no_record_needs_a_person")])
    [execution] = latest.values()
    named = execution.event.dagster_event.event_specific_data
    assert not named.passed and "PO-GHOST" in str(named.metadata)
    assert hour in window_status(world, "vendor_invoices_posted")[0]

    # the order exists in F&O now: re-running the failed window turns it green
    world.stack.fo.add_purchase_order(LEGAL_ENTITY, PurchaseOrderNumber="PO-GHOST", PurchaseOrderName="Chairs",
                                      OrderVendorAccountNumber="US-101", CurrencyCode="USD",
                                      DocumentApprovalStatus="Approved", lines=[{"LineAmount": 10.0}])
    again = world.driver.run_job(f"{PAIR}__poll_job", partition_key=hour)
    assert again.success
    assert window_status(world, "purchase_orders_confirmed") == ({hour}, set())
    assert "fo:purchase_orders_confirmed:usmf:PO-GHOST" in issues_by_external_id(world.stack)


def test_the_window_close_schedule_asks_for_the_hour_that_just_ended(world):
    schedule = world.defs.resolve_schedule_def(f"{PAIR}__window_close_schedule")
    from datetime import UTC, datetime

    with dg.build_schedule_context(instance=world.instance, repository_def=world.defs.get_repository_def(),
                                   scheduled_execution_time=datetime(2026, 12, 3, 14, 5, tzinfo=UTC)) as ctx:
        [request] = list(schedule.evaluate_tick(ctx).run_requests)
    assert request.partition_key == "2026-12-03-13:00"        # the pair's windows are UTC hours
    assert request.tags["connector/trigger"] == "window_close"
