"""What finance ops see of single records on the asset pages (issue 13, items 2 and 3), BC ⇄ Jira end to end.

- a reconcile finding names the document in business words (number, vendor, amount) with links to the BC
  record and the Jira issue, shown directly (markdown table, text and URL entries), not a GUID behind JSON;
- the ledger's check ``no_record_needs_a_person`` is evaluated in the same run as the materialization (so the
  asset never says "Not evaluated" for it) and shows when the full reconcile last ran;
- the demo's generator race: a draft invoice created while the reconcile runs is in flight, not missing;
- a resolution (Done in Jira) is recorded on the entity's asset as an observation naming its outcome;
- a record the connector could not write is listed with its reason, and ``bc_jira__redrive_job`` writes it once
  the cause is fixed (a Jira refusal fixed in BC; a record BC did not return, back again).
"""

from __future__ import annotations

import threading
from urllib.parse import unquote

import dagster as dg
import pytest

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.ledger import Ledger
from sandboxes.harness.dagster_driver import check_evaluations
from sandboxes.harness.scenario import (
    BC_SENSOR,
    JIRA_SENSOR,
    issues_by_external_id,
    new_draft_invoice,
    poll_now,
    register_webhooks,
    seed_exceptions,
    transition_done,
)
from sandboxes.harness.stack import CLOUD_ID

PAIR = "bc_jira"
INVOICES = dg.AssetKey(["business_central", "purchase_invoices_awaiting_review"])
RECONCILE = "every_exception_has_one_open_issue"
NEEDS_A_PERSON = "no_record_needs_a_person"
WEB_CLIENT = "https://businesscentral.dynamics.com/tenant-1/Production"


@pytest.fixture(autouse=True)
def bc_web_client(monkeypatch):
    """Links back to BC records need the web client's address (read when the definitions load); the stack's
    own (its BC pages), when it sets one, takes its place."""
    monkeypatch.setenv("CONNECTOR_BC_WEB_CLIENT_URL", WEB_CLIENT)


def flow(world) -> dict[str, dict]:
    register_webhooks(world.driver)
    seeded = seed_exceptions(world.stack)
    world.stack.deliver_all()
    assert [r.success for r in world.driver.tick(BC_SENSOR).runs] == [True]
    return seeded


def ledger(world) -> Ledger:
    return Ledger(get_engine(world.database_url))


def reconcile_checks(world) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    run = world.driver.run_job(f"{PAIR}__reconcile_job", raise_on_error=False)
    return {(c.asset_key.path[-1], c.check_name): c for c in check_evaluations(run)}


def issue_of(world, key: str) -> dict:
    [issue] = issues_by_external_id(world.stack)[key]
    return issue


def bc_link_names(url: str, number: str) -> bool:
    """A link to the document's page in the BC web client (the purchase invoice card, filtered by its number)."""
    return url.startswith("http") and "page=51" in url and f"'No.' IS '{number}'" in unquote(url)


def test_a_reconcile_finding_names_the_document_with_links_to_bc_and_jira(world):
    seeded = flow(world)
    key = f"bc:purchaseInvoices:{seeded['invoice']['id']}"
    original = issue_of(world, key)
    fid = next(f.id for f in world.jira.sites[CLOUD_ID].custom_fields.values() if f.name == "ERP External ID")
    copy = world.jira.create_issue_as_user(CLOUD_ID, {"project": {"key": "FIN"}, "issuetype": {"name": "Task"},
                                                      "summary": "the same invoice, again", fid: key})

    check = reconcile_checks(world)[("purchase_invoices_awaiting_review", RECONCILE)]
    assert not check.passed
    table = check.metadata["documents"].value
    row = next(line for line in table.splitlines() if line.startswith("| duplicate"))
    # business words: the number, the vendor and the amount, as the summary template renders them
    assert "PI-108001" in row and "Contoso Paper" in row and "1,234.50 USD" in row
    assert seeded["invoice"]["id"] not in row                                   # no GUID
    for issue in (original, copy):
        assert f"[{issue['key']}](" in row and f"/browse/{issue['key']})" in row, row
    bc_url = row.split("[Purchase invoice PI-108001](", 1)[1].split(")", 1)[0]
    assert bc_link_names(bc_url, "PI-108001"), bc_url
    # shown directly too: one line and both links as URL entries, and the check's description
    assert "PI-108001" in check.metadata["first_problem"].value and "Contoso Paper" in check.description
    assert bc_link_names(check.metadata["first_problem_erp_record"].value, "PI-108001")
    assert check.metadata["first_problem_target_record"].value.endswith(f"/browse/{original['key']}")


def test_a_missing_document_is_named_with_its_bc_link_and_why(world):
    flow(world)
    world.bc.drop_notifications = True          # its webhook is lost...
    world.bc.clock.advance(minutes=-30)         # ... half an hour ago: no run is still writing it
    lost = world.bc.add_purchase_invoice(world.stack.company_id, number="PI-300001", status="Draft",
                                         vendorName="Litware Inc.", totalAmountIncludingTax=77.0, currencyCode="USD")
    world.bc.clock.advance(minutes=30)
    world.bc.deliver_notifications()

    check = reconcile_checks(world)[("purchase_invoices_awaiting_review", RECONCILE)]
    assert not check.passed and check.metadata["missing"].value == 1
    row = next(line for line in check.metadata["documents"].value.splitlines() if line.startswith("| missing"))
    assert "PI-300001" in row and "Litware Inc." in row and "77.00 USD" in row and lost["id"] not in row
    assert "never written" in row
    assert bc_link_names(check.metadata["first_problem_erp_record"].value, "PI-300001")


def test_the_ledger_check_is_evaluated_with_each_materialization_and_shows_the_last_reconcile(world):
    flow(world)
    instance = world.instance
    check_key = dg.AssetCheckKey(INVOICES, NEEDS_A_PERSON)
    poll = poll_now(world.driver)
    assert poll.success
    record = instance.get_latest_asset_check_evaluation_record(check_key)
    latest = instance.get_latest_materialization_event(INVOICES)
    # evaluated in the run that materialized the window: Dagster shows it for the latest materialization
    assert record is not None and record.run_id == poll.run_id == latest.run_id
    assert record.evaluation.passed
    assert "not run yet" in record.evaluation.metadata["last_full_reconcile"].value

    reconcile_checks(world)
    reconciled = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(INVOICES, RECONCILE))
    again = poll_now(world.driver)
    record = instance.get_latest_asset_check_evaluation_record(check_key)
    assert record.run_id == again.run_id == instance.get_latest_materialization_event(INVOICES).run_id
    md = record.evaluation.metadata
    assert md["last_full_reconcile_at"].value == pytest.approx(reconciled.create_timestamp)
    assert "passed" in md["last_full_reconcile"].value


def test_invoices_the_demo_generates_while_the_reconcile_runs_are_in_flight_not_missing(world, monkeypatch):
    """The demo adds a draft invoice a minute; its issue is opened by the webhook run seconds later. A reconcile
    reading BC in between called it missing, and the demo's check failed on its own generator."""
    flow(world)
    assert all(c.passed for c in reconcile_checks(world).values())
    stop, made = threading.Event(), []

    def generator():   # the demo's loop, much faster; BC delivers each webhook, no run has picked it up yet
        while not stop.is_set():
            made.append(new_draft_invoice(world.stack, len(made) + 1))
            world.bc.deliver_notifications()
            stop.wait(0.05)

    thread = threading.Thread(target=generator, daemon=True)
    thread.start()
    try:
        while len(made) < 3:
            stop.wait(0.05)
        during = reconcile_checks(world)
        monkeypatch.setenv("CONNECTOR_RECONCILE_SETTLE_S", "0")    # what the check did before: the race
        raced = reconcile_checks(world)[("purchase_invoices_awaiting_review", RECONCILE)]
        monkeypatch.delenv("CONNECTOR_RECONCILE_SETTLE_S")
    finally:
        stop.set()
        thread.join(5)
    assert not raced.passed and raced.metadata["missing"].value >= 3
    invoices = during[("purchase_invoices_awaiting_review", RECONCILE)]
    assert invoices.passed, invoices.metadata
    assert invoices.metadata["missing"].value == 0 and invoices.metadata["in_flight"].value >= 3
    assert "| in flight | Review purchase invoice PI-200001 from Northwind Traders: 250.00 USD" \
        in invoices.metadata["documents"].value
    assert all(c.passed for c in during.values()), {k: c.metadata for k, c in during.items() if not c.passed}

    # the webhook runs catch up: every generated invoice has its issue, nothing is in flight any more
    world.bc.deliver_notifications()
    while world.driver.tick(BC_SENSOR).runs:
        pass
    after = reconcile_checks(world)[("purchase_invoices_awaiting_review", RECONCILE)]
    assert after.passed and after.metadata["in_flight"].value == 0
    assert after.metadata["open_issues"].value == len(made) + 1


def test_a_resolution_is_recorded_on_the_invoice_asset(world):
    seeded = flow(world)
    issue = issue_of(world, f"bc:purchaseInvoices:{seeded['invoice']['id']}")
    transition_done(world.stack, issue["key"])
    [run] = world.driver.tick(JIRA_SENSOR).runs
    assert run.success
    [observation] = [e.event_specific_data.asset_observation for e in run.all_events
                     if e.event_type_value == "ASSET_OBSERVATION" and e.asset_key == INVOICES]
    records = world.instance.fetch_observations(INVOICES, limit=1).records
    assert records and records[0].run_id == run.run_id
    md = records[0].asset_observation.metadata
    assert md["outcome"].value == "Purchase invoice PI-108001 posted in Business Central (was Draft)"
    latest = md["latest_outcomes"].value
    assert "Review purchase invoice PI-108001 from Contoso Paper" in latest and f"/browse/{issue['key']})" in latest
    assert "posted in Business Central (was Draft)" in latest
    assert md["resolved_total"].value == 1 and md["needs_a_person_total"].value == 0
    assert md["first_target_record"].value.endswith(f"/browse/{issue['key']}")
    assert "PI-108001 posted" in (observation.description or "")
    # the run evaluated the asset's ledger check too
    record = world.instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(INVOICES, NEEDS_A_PERSON))
    assert record.run_id == run.run_id and record.evaluation.passed


def test_a_record_jira_refuses_is_listed_with_its_reason_and_the_redrive_writes_it_once_fixed(world):
    flow(world)
    cid = world.stack.company_id
    pasted = "Northwind Traders\nLogistics Division"          # a line break pasted into the name: Jira refuses it
    bad = world.bc.add_purchase_invoice(cid, number="PI-400001", status="Draft", vendorName=pasted,
                                        totalAmountIncludingTax=410.0, currencyCode="USD")
    world.stack.deliver_all()
    [run] = world.driver.tick(BC_SENSOR, raise_on_error=False).runs
    assert not run.success                                     # a permanent refusal fails the batch for a person
    key = f"bc:purchaseInvoices:{bad['id']}"
    assert ledger(world).get(PAIR, key).state == "failed"

    checks = reconcile_checks(world)
    # changed moments ago, but its write failed for good: missing (not in flight) in the full reconcile too
    reconciled = checks[("purchase_invoices_awaiting_review", RECONCILE)]
    assert not reconciled.passed and reconciled.metadata["missing"].value == 1
    assert "PI-400001" in reconciled.metadata["first_problem"].value
    assert "needs a person" in reconciled.metadata["first_problem"].value
    view = checks[("purchase_invoices_awaiting_review", NEEDS_A_PERSON)]
    assert not view.passed and view.severity == dg.AssetCheckSeverity.WARN
    assert view.metadata["needs_a_person"].value == 1
    row = next(line for line in view.metadata["records"].value.splitlines() if "PI-400001" in line)
    assert "Review purchase invoice PI-400001 from Northwind Traders" in row and bad["id"] not in row
    assert "contains newline characters" in row and "| 1 |" in row     # the reason, the attempts
    assert bc_link_names(view.metadata["first_erp_record"].value, "PI-400001")
    assert f"{PAIR}__redrive_job" in view.metadata["redrive"].value and "PI-400001" in view.description

    # a person fixes the vendor name in BC (its webhook is lost), then re-drives from the Launchpad's default
    world.bc.drop_notifications = True
    world.bc.update_record(cid, "purchaseInvoices", bad["id"], vendorName="Northwind Traders")
    redrive = world.driver.defs.resolve_job_def(f"{PAIR}__redrive_job")
    assert redrive.run_config_schema   # launchable with its default config: every record needing a person
    result = world.driver.run_job(f"{PAIR}__redrive_job")
    assert result.success
    assert ledger(world).get(PAIR, key).state == "done"
    assert "Northwind Traders: 410.00 USD" in issue_of(world, key)["fields"]["summary"]
    [evaluation] = [c for c in check_evaluations(result) if c.asset_key == INVOICES]
    assert evaluation.check_name == NEEDS_A_PERSON and evaluation.passed
    assert world.instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(INVOICES, NEEDS_A_PERSON)).run_id == result.run_id


def test_a_record_bc_did_not_return_stays_quarantined_until_it_is_back_then_the_redrive_writes_it(world):
    flow(world)
    cid = world.stack.company_id
    gone = world.bc.add_purchase_invoice(cid, number="PI-500001", status="Draft", vendorName="Fabrikam Supplies",
                                         totalAmountIncludingTax=55.0, currencyCode="USD")
    world.bc.deliver_notifications()                        # announced ...
    world.bc.drop_notifications = True
    world.bc.delete_record(cid, "purchaseInvoices", gone["id"])   # ... but not readable when the run reads it
    assert all(r.success for r in world.driver.tick(BC_SENSOR).runs)
    key = f"bc:purchaseInvoices:{gone['id']}"
    assert ledger(world).get(PAIR, key).state == "quarantined"

    view = reconcile_checks(world)[("purchase_invoices_awaiting_review", NEEDS_A_PERSON)]
    assert not view.passed
    row = next(line for line in view.metadata["records"].value.splitlines() if gone["id"] in line)
    assert "Business Central returned no purchaseInvoices record" in row and "quarantined" in row

    # re-driven too early: still not there, stays quarantined with the new reason; the run says so
    only_it = {"ops": {f"{PAIR}__redrive_records": {"config": {"ledger_keys": [key]}}}}
    early = world.driver.run_job(f"{PAIR}__redrive_job", run_config=only_it, raise_on_error=False)
    assert not early.success
    entry = ledger(world).get(PAIR, key)
    assert entry.state == "quarantined" and "(re-driven)" in entry.last_error

    # the document is back in BC (restored with its id): the re-drive writes it
    world.bc.add_purchase_invoice(cid, id=gone["id"], number="PI-500001", status="Draft",
                                  vendorName="Fabrikam Supplies", totalAmountIncludingTax=55.0, currencyCode="USD")
    entity_only = {"ops": {f"{PAIR}__redrive_records": {"config": {"entity": "purchase_invoices_awaiting_review"}}}}
    assert world.driver.run_job(f"{PAIR}__redrive_job", run_config=entity_only).success
    assert ledger(world).get(PAIR, key).state == "done"
    assert "PI-500001" in issue_of(world, key)["fields"]["summary"]
    assert reconcile_checks(world)[("purchase_invoices_awaiting_review", NEEDS_A_PERSON)].passed
