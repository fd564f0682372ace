"""Exactly-once under the world's worst, end to end (sandboxes on loopback, the receiver, the product's
Dagster definitions on a real instance): a failing Jira heals through the ledger retry sensor, a
duplicate that slipped through is named by reconciliation and closed by the repair job, and a
replayed or forged Jira delivery never makes the ERP act while the issue is not done in Jira.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import jwt

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.core.ledger import DONE, Ledger
from sandboxes.harness.dagster_driver import check_evaluations
from sandboxes.harness.scenario import (
    BC_SENSOR,
    JIRA_SENSOR,
    comments,
    expected_external_ids,
    issues_by_external_id,
    poll_now,
    register_webhooks,
    seed_exceptions,
)
from sandboxes.harness.stack import CLOUD_ID, JIRA_CLIENT_ID

RETRY_SENSOR = "bc_jira__ledger_retry_sensor"


def opened(world) -> dict[str, dict]:
    register_webhooks(world.driver)
    seeded = seed_exceptions(world.stack)
    world.stack.deliver_all()
    assert all(r.success for r in world.driver.tick(BC_SENSOR).runs)
    assert poll_now(world.driver).success
    found = issues_by_external_id(world.stack)
    return {name: found[ext][0] for name, ext in expected_external_ids(seeded).items()} | {"_seeded": seeded}


def test_a_jira_outage_fails_the_batch_and_the_inbox_sensor_retries_it_once_jira_is_back(world, monkeypatch):
    monkeypatch.setenv("CONNECTOR_RETRY_BASE_S", "0")          # due at once (default: 60 s, doubling)
    register_webhooks(world.driver)
    seeded = seed_exceptions(world.stack)
    world.stack.deliver_all()
    world.jira.faults.retry_after = "0"
    world.jira.faults.server_error_next = 1000                  # Jira answers nothing but 503

    [failed] = world.driver.tick(BC_SENSOR, raise_on_error=False).runs
    assert not failed.success and issues_by_external_id(world.stack) == {}
    dispatch = Inbox(get_engine(world.database_url)).dispatch("bc_jira:business_central")
    assert dispatch.counts()["retry"] >= 1 and dispatch.counts()["dead"] == 0

    world.jira.faults.server_error_next = 0
    retry = world.driver.tick(BC_SENSOR)
    assert [r.success for r in retry.runs] == [True]
    assert retry.runs[0].dagster_run.tags["connector/dispatch"] == "retry"
    found = issues_by_external_id(world.stack)
    assert {k: len(v) for k, v in found.items()} == {
        f"bc:vendors:{seeded['blocked']['id']}": 1, f"bc:purchaseInvoices:{seeded['invoice']['id']}": 1}
    assert dispatch.counts()["retry"] == 0 and dispatch.counts()["processed"] >= 2


def test_a_create_that_failed_transiently_is_healed_by_the_ledger_retry_sensor(world, monkeypatch):
    """Jira answers the searches but its bulk create fails beyond the HTTP retries (a 503 may hide a create):
    the run stays green, the records wait as uncertain intents, and the ledger retry sensor verifies after
    the search lag bound, then creates — once."""
    from connector_pipelines.core.http import ApiError
    from connector_pipelines.systems.jira.client import JiraClient

    monkeypatch.setenv("CONNECTOR_SEARCH_LAG_BOUND_S", "0.5")
    register_webhooks(world.driver)
    seeded = seed_exceptions(world.stack)
    world.stack.deliver_all()
    real = JiraClient.bulk_create
    down = {"on": True}

    def bulk_create(self, issues):
        if down["on"]:
            raise ApiError("jira", "POST", "/rest/api/3/issue/bulk", 503, {"errorMessages": ["down"]})
        return real(self, issues)

    monkeypatch.setattr(JiraClient, "bulk_create", bulk_create)
    [run] = world.driver.tick(BC_SENSOR).runs
    assert run.success                                          # transient: no person needed, retried by itself
    ledger = Ledger(get_engine(world.database_url))
    due = [e for e in ledger.in_state("bc_jira", "intent") if e.retry_after]
    assert len(due) == 2 and all("503" in e.last_error and e.verify_after for e in due)
    assert world.driver.tick(RETRY_SENSOR).runs == []           # not before the verification time

    down["on"] = False
    time.sleep(0.6)
    tick = world.driver.tick(RETRY_SENSOR)
    assert [r.success for r in tick.runs] == [True]
    found = issues_by_external_id(world.stack)
    assert {k: len(v) for k, v in found.items()} == {
        f"bc:vendors:{seeded['blocked']['id']}": 1, f"bc:purchaseInvoices:{seeded['invoice']['id']}": 1}
    # the retry run re-evaluated the sets' ledger checks: the asset pages show nothing waiting any more
    assert {(c.asset_key.path[-1], c.passed) for c in check_evaluations(tick.runs[0], "no_record_needs_a_person")} \
        == {("blocked_vendors", True), ("purchase_invoices_awaiting_review", True)}
    assert world.driver.tick(RETRY_SENSOR).runs == []           # nothing due any more
    assert ledger.counts("bc_jira")["done"] == 2


def test_a_duplicate_is_named_by_reconciliation_and_the_repair_closes_the_newer_one_with_a_link(world):
    issues = opened(world)
    original = issues["blocked vendor"]
    ext = world.stack.jira.sites[CLOUD_ID].issue(original["key"]).fields
    fid = next(f.id for f in world.stack.jira.sites[CLOUD_ID].custom_fields.values() if f.name == "ERP External ID")
    copy = world.stack.jira.create_issue_as_user(CLOUD_ID, {
        "project": {"key": "FIN"}, "issuetype": {"name": "Task"}, "summary": "the same vendor, again",
        fid: ext[fid]})

    checks = {c.asset_key.path[-1]: c for c in check_evaluations(
        world.driver.run_job("bc_jira__reconcile_job", raise_on_error=False), "every_exception_has_one_open_issue")}
    vendors = checks["blocked_vendors"]
    assert not vendors.passed and vendors.metadata["duplicates"].value == 1
    assert vendors.metadata["details"].value["duplicates"] == {ext[fid]: [original["key"], copy["key"]]}

    assert world.driver.run_job("bc_jira__repair_job").success
    closed = next(i for i in world.stack.jira.issues(CLOUD_ID) if i["key"] == copy["key"])
    assert closed["fields"]["status"]["statusCategory"]["key"] == "done"
    assert [(link["type"]["name"], link["outwardIssue"]["key"]) for link in closed["fields"]["issuelinks"]] \
        == [("Duplicate", original["key"])]                     # "<copy> duplicates <original>"
    assert any("duplicate of" in c for c in comments(world.stack, copy["key"]))
    ledger = Ledger(get_engine(world.database_url))
    assert ledger.get("bc_jira", ext[fid]).target_key == original["key"]
    # the duplicate's Done webhook acts on nothing at the source
    world.stack.jira.deliver_pending()
    for run in world.driver.tick(JIRA_SENSOR).runs:
        assert run.success
    assert world.bc.get_record(world.stack.company_id, "vendors", issues["_seeded"]["blocked"]["id"])["blocked"] \
        == "All"
    checks = check_evaluations(world.driver.run_job("bc_jira__reconcile_job", raise_on_error=False))
    assert all(c.passed for c in checks), [(c.asset_key, c.metadata) for c in checks]


def _receiver(world) -> str:
    return world.stack.urls["receiver"] + "/webhooks/jira"


def test_a_replayed_jira_jwt_with_a_forged_body_makes_the_erp_do_nothing(world):
    """Finding 3: a captured dynamic-webhook JWT, sent again with a new body (Done for the invoice and the
    vendor) and a new identifier. The captured delivery itself cannot be replayed (401); a forged body under
    the captured token — or signed afresh, as with a leaked secret — gets in only as a signal (Jira's JWT
    claims are UNCONFIRMED, so a known token with a new body cannot be told from a genuine same-second
    delivery), and the resolution run, re-reading the issues from Jira, refuses to act: both are To Do."""
    issues = opened(world)
    invoice, vendor = issues["invoice awaiting review"], issues["blocked vendor"]
    world.stack.jira.comment_as_user(CLOUD_ID, invoice["key"], "checking the amounts")
    [captured] = world.stack.jira.pending_deliveries
    headers = world.stack.jira.delivery_headers(captured, 0)
    assert world.stack.jira.deliver_pending() == 1            # the genuine delivery, stored

    def done_body(issue: dict) -> bytes:
        return json.dumps({"timestamp": int(time.time() * 1000), "webhookEvent": "jira:issue_updated",
                           "issue": {"key": issue["key"], "fields": {
                               "project": {"key": "FIN"},
                               "status": {"name": "Done", "statusCategory": {"key": "done"}}}},
                           "changelog": {"items": [{"field": "status", "toString": "Done"}]}}).encode()

    replayed = httpx.post(_receiver(world), content=captured.body, headers={
        **headers, "X-Atlassian-Webhook-Identifier": str(uuid.uuid4())})
    assert replayed.status_code == 401 and replayed.json()["error"] == "replayed_signature"

    def freshly_signed(n: int) -> str:   # what a leaked client secret would let anyone sign
        now = int(time.time())
        return jwt.encode({"iss": JIRA_CLIENT_ID, "iat": now, "exp": now + 300, "jti": n},
                          world.stack.secrets["jira_client_secret"], algorithm="HS256")

    forged = [httpx.post(_receiver(world), content=done_body(invoice), headers={
                  **headers, "X-Atlassian-Webhook-Identifier": str(uuid.uuid4())}),
              httpx.post(_receiver(world), content=done_body(vendor), headers={
                  "Authorization": f"Bearer {freshly_signed(1)}", "Content-Type": "application/json",
                  "X-Atlassian-Webhook-Identifier": str(uuid.uuid4())})]
    assert [r.status_code for r in forged] == [202, 202]

    tick = world.driver.tick(JIRA_SENSOR)
    assert [r.success for r in tick.runs] == [True]
    cid = world.stack.company_id
    seeded = issues["_seeded"]
    assert world.bc.get_record(cid, "purchaseInvoices", seeded["invoice"]["id"])["status"] == "Draft"
    assert world.bc.get_record(cid, "vendors", seeded["blocked"]["id"])["blocked"] == "All"
    assert world.bc.action_calls("post") == 0
    [op_output] = [e for e in tick.runs[0].all_events if e.event_type_value == "STEP_OUTPUT"]
    md = op_output.event_specific_data.metadata
    assert md["refused_not_confirmed_by_jira"].value == 2 and md["acted"].value == 0
    assert "not done in Jira" in md["refused"].value
    ledger = Ledger(get_engine(world.database_url))
    assert ledger.get("bc_jira", f"bc:purchaseInvoices:{seeded['invoice']['id']}#resolve") is None

    # and when a person really moves the invoice to Done, it is posted once
    world.stack.jira.transition_as_user(CLOUD_ID, invoice["key"], "Done")
    world.stack.jira.deliver_pending()
    assert all(r.success for r in world.driver.tick(JIRA_SENSOR).runs)
    assert world.bc.action_calls("post") == 1
    assert ledger.get("bc_jira", f"bc:purchaseInvoices:{seeded['invoice']['id']}#resolve").state == DONE
