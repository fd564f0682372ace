"""Business Central ⇄ Jira end to end: sandboxes on loopback ports, the product's receiver, and the
product's Dagster definitions run against a real instance (SQLite, and PostgreSQL).

Every test goes through the same doors production uses: BC notifications and Jira webhooks over
HTTP into the receiver, the inbox sensors' ticks, the jobs and partitioned assets, and the vendors'
APIs over HTTP. Nothing is mocked between them.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.core.ledger import Ledger
from sandboxes.harness.dagster_driver import check_evaluations
from sandboxes.harness.scenario import (
    BC_SENSOR,
    JIRA_SENSOR,
    comments,
    expected_external_ids,
    issues,
    issues_by_external_id,
    poll_now,
    register_webhooks,
    seed_exceptions,
    transition_done,
)
from sandboxes.harness.stack import CLOUD_ID


def seed(world):
    return seed_exceptions(world.stack)


def by_ext(world):
    return issues_by_external_id(world.stack)


def run_flow(world) -> dict[str, dict]:
    register_webhooks(world.driver)
    seeded = seed(world)
    world.stack.deliver_all()
    tick = world.driver.tick(BC_SENSOR)
    assert len(tick.runs) == 1 and tick.runs[0].success
    assert poll_now(world.driver).success
    return seeded


def assert_one_issue_each(world, seeded) -> dict[str, dict]:
    found = by_ext(world)
    assert set(found) == set(expected_external_ids(seeded).values()), found.keys()
    assert all(len(v) == 1 for v in found.values())
    return {k: v[0] for k, v in found.items()}


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_exceptions_become_one_issue_each_and_done_flows_back(storage, request):
    world = request.getfixturevalue("world" if storage == "sqlite" else "pg_world")
    seeded = run_flow(world)
    one_each = assert_one_issue_each(world, seeded)
    invoice_issue = one_each[f"bc:purchaseInvoices:{seeded['invoice']['id']}"]
    vendor_issue = one_each[f"bc:vendors:{seeded['blocked']['id']}"]
    assert "PI-108001" in invoice_issue["fields"]["summary"] and "Contoso Paper" in invoice_issue["fields"]["summary"]

    # Jira -> BC: Done posts the draft invoice and unblocks the vendor, after reading their status.
    transition_done(world.stack, invoice_issue["key"])
    transition_done(world.stack, vendor_issue["key"])
    tick = world.driver.tick(JIRA_SENSOR)
    assert [r.success for r in tick.runs] == [True]
    cid = world.stack.company_id
    assert world.bc.get_record(cid, "purchaseInvoices", seeded["invoice"]["id"])["status"] == "Open"
    assert world.bc.get_record(cid, "vendors", seeded["blocked"]["id"])["blocked"] == " "
    posts = world.bc.action_calls("post")
    assert posts == 1

    # A repeated Done webhook (Jira's retry of the same delivery) is stored once and does nothing more.
    identifiers = sorted({ident for _url, ident, status in world.jira.delivery_log
                          if isinstance(status, int) and status < 300})
    for ident in identifiers:
        world.jira.redeliver(ident)
    assert world.driver.tick(JIRA_SENSOR).runs == []
    # ... and a second, genuinely new Done transition on the same issue does not post twice.
    world.jira.transition_as_user(CLOUD_ID, invoice_issue["key"], "To Do")
    transition_done(world.stack, invoice_issue["key"])
    tick = world.driver.tick(JIRA_SENSOR)
    assert all(r.success for r in tick.runs)
    assert world.bc.action_calls("post") == 1

    # The outcome is recorded on the Jira side as a comment.
    assert any("posted in Business Central" in c for c in comments(world.stack, invoice_issue["key"]))

    # Reconciliation: every current exception (the stuck PO) has exactly one open issue.
    result = world.driver.run_job("bc_jira__reconcile_job")
    checks = check_evaluations(result)
    assert checks and all(c.passed for c in checks), [(c.asset_key, c.metadata) for c in checks]
    ledger = Ledger(get_engine(world.database_url))
    assert ledger.counts("bc_jira")["failed"] == 0


def test_the_same_notification_three_times_gives_one_issue(world):
    register_webhooks(world.driver)
    world.bc.duplicate_notifications = True
    seeded = seed(world)
    world.bc.deliver_notifications()
    # BC retries the same batch again later (at-least-once): deliver the same bodies once more.
    world.bc.redeliver_last()
    inbox = Inbox(get_engine(world.database_url))
    tick = world.driver.tick(BC_SENSOR)
    assert all(r.success for r in tick.runs)
    assert world.driver.tick(BC_SENSOR).runs == []
    found = by_ext(world)
    assert len(found[f"bc:purchaseInvoices:{seeded['invoice']['id']}"]) == 1
    assert len(found[f"bc:vendors:{seeded['blocked']['id']}"]) == 1
    assert inbox.count("business_central") >= 2


def test_forged_webhooks_get_401_and_no_work(world):
    import httpx
    register_webhooks(world.driver)
    receiver = world.stack.urls["receiver"]
    body = b'{"webhookEvent":"jira:issue_updated","issue":{"key":"FIN-1"}}'
    bad_hmac = httpx.post(f"{receiver}/webhooks/jira", content=body, headers={
        "X-Hub-Signature": "sha256=" + "0" * 64, "X-Atlassian-Webhook-Identifier": "forged-1",
        "Content-Type": "application/json"})
    bad_jwt = httpx.post(f"{receiver}/webhooks/jira", content=body, headers={
        "Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl",
        "X-Atlassian-Webhook-Identifier": "forged-2", "Content-Type": "application/json"})
    bad_state = httpx.post(f"{receiver}/webhooks/business-central", json={"value": [{
        "subscriptionId": "x", "clientState": "wrong", "resource": "/api/v2.0/companies(x)/vendors(y)",
        "changeType": "updated", "lastModifiedDateTime": "2026-11-22T10:00:00Z"}]})
    assert (bad_hmac.status_code, bad_jwt.status_code, bad_state.status_code) == (401, 401, 401)
    inbox = Inbox(get_engine(world.database_url))
    assert inbox.count("jira") == 0 and inbox.count("business_central") == 0
    assert inbox.rejections() == 3
    assert world.driver.tick(JIRA_SENSOR).runs == [] and world.driver.tick(BC_SENSOR).runs == []


def test_429_storms_and_expiring_tokens_end_in_success(world):
    register_webhooks(world.driver)
    seeded = seed(world)
    world.stack.deliver_all()
    for sandbox in (world.bc, world.jira):
        sandbox.faults.retry_after = "0"
        sandbox.faults.rate_limit_next = 3
    world.bc.faults.server_error_next = 1
    world.stack.entra.revoke_all()               # the BC access token dies mid-run -> 401 -> refresh once
    world.stack.atlassian.expire_access_tokens()  # the Jira access token too -> rotate the refresh token
    tick = world.driver.tick(BC_SENSOR)
    assert [r.success for r in tick.runs] == [True]
    assert world.jira.faults.served_429 == 3 and world.bc.faults.served_429 == 3
    found = by_ext(world)
    assert len(found[f"bc:purchaseInvoices:{seeded['invoice']['id']}"]) == 1


def test_a_lapsed_subscription_loses_no_invoice(world):
    register_webhooks(world.driver)
    world.bc.clock.advance(days=4)   # nobody renewed: BC's 3-day subscriptions lapse ...
    assert world.bc.subscriptions() == []
    world.bc.clock.advance(days=-4)  # ... (back to today's clock, so the invoice lands in today's window)
    cid = world.stack.company_id
    invoice = world.bc.add_purchase_invoice(cid, number="PI-LATE", vendorName="Late Vendor", status="Draft",
                                            totalAmountIncludingTax=10.0)
    world.bc.deliver_notifications()
    assert world.driver.tick(BC_SENSOR).runs == []   # no notification arrived
    key = world.driver.current_partition(["business_central", "purchase_invoices_awaiting_review"],
                                         datetime.now(UTC))
    assert world.driver.run_job("bc_jira__poll_job", partition_key=key).success
    assert len(by_ext(world)[f"bc:purchaseInvoices:{invoice['id']}"]) == 1
    # and the renewal job notices and re-creates the subscription
    world.driver.run_job("bc_jira__subscription_renewal_job")
    assert len([s for s in world.bc.subscriptions() if s["resource"].endswith("/purchaseInvoices")]) == 1


def test_a_crash_between_create_and_ledger_commit_heals_to_one_issue(world, monkeypatch):
    register_webhooks(world.driver)
    seeded = seed(world)
    world.stack.deliver_all()
    real_mark_done = Ledger.mark_done
    crashed = {"n": 0}

    def crash_after_jira_answered(self, integration, results, run_id):
        if results and crashed["n"] == 0:
            crashed["n"] += 1
            raise RuntimeError("worker killed between Jira's answer and the ledger commit")
        return real_mark_done(self, integration, results, run_id)

    monkeypatch.setattr(Ledger, "mark_done", crash_after_jira_answered)
    first = world.driver.tick(BC_SENSOR, raise_on_error=False)
    assert [r.success for r in first.runs] == [False]
    created_before = len(issues(world.stack))
    assert created_before >= 1
    ledger = Ledger(get_engine(world.database_url))
    assert ledger.counts("bc_jira")["intent"] >= 1

    # Re-execute the failed run (same inbox rows): the JQL lookup finds the issues, nothing is created twice.
    failed_run = first.runs[0]
    job = world.defs.resolve_job_def("bc_jira__notification_job")
    again = job.execute_in_process(run_config=failed_run.dagster_run.run_config, instance=world.instance)
    assert again.success
    found = by_ext(world)
    assert set(found) == {f"bc:vendors:{seeded['blocked']['id']}", f"bc:purchaseInvoices:{seeded['invoice']['id']}"}
    assert all(len(v) == 1 for v in found.values())   # the issue created before the crash was found, not re-created
    assert ledger.counts("bc_jira")["intent"] == 0
    assert len(found[f"bc:purchaseInvoices:{seeded['invoice']['id']}"]) == 1


def test_run_and_asset_metadata_show_counts_and_links(world):
    seeded = run_flow(world)
    assert_one_issue_each(world, seeded)
    records = world.instance.fetch_materializations(
        dg.AssetKey(["business_central", "stuck_purchase_orders"]), limit=5).records
    md = records[0].asset_materialization.metadata
    assert md["created"].value == 1 and md["failed"].value == 0
    assert "/browse/FIN-" in md["first_issue"].value
    assert md["api_calls_jira"].value >= 1


def test_an_invoice_someone_already_posted_is_not_posted_again_and_the_outcome_says_already(world):
    """The status re-check before a non-idempotent action: someone posted the draft invoice in BC while its
    issue was open; Done must read the status and not send the post at all (the sandbox would refuse a
    second post, so only the number of post *requests* shows whether the status was read first)."""
    seeded = run_flow(world)
    cid = world.stack.company_id
    invoice_issue = assert_one_issue_each(world, seeded)[f"bc:purchaseInvoices:{seeded['invoice']['id']}"]
    world.bc.update_record(cid, "purchaseInvoices", seeded["invoice"]["id"], status="Open")  # posted by a person
    post_path = ("POST", "/api/v2.0/companies({id})/purchaseInvoices({id})/Microsoft.NAV.post")
    before = world.bc.calls[post_path]

    transition_done(world.stack, invoice_issue["key"])
    [run] = world.driver.tick(JIRA_SENSOR).runs

    assert run.success
    assert world.bc.calls[post_path] == before == 0       # no post request at all
    assert world.bc.action_calls("post") == 0
    outcome = Ledger(get_engine(world.database_url)).get(
        "bc_jira", f"bc:purchaseInvoices:{seeded['invoice']['id']}#resolve")
    assert outcome.state == "done" and outcome.context["outcome"] == "already"
    assert any("already posted" in c for c in comments(world.stack, invoice_issue["key"]))
