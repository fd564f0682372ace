"""Acumatica -> Jira -> back into Acumatica, end to end.

The product's Dagster definitions run against a real instance and the sandboxes on loopback ports: the
poll job reads each entity's window on LastModifiedDateTime through the contract-based API (OAuth grant
in the vault), the writer opens one issue per held / unbalanced / unapproved / rejected document; push
notifications reach the receiver (header secret), the Acumatica inbox sensor batches them and the
notification run re-reads the documents; a person's Done comes back through the Jira webhook and the
resolution run releases the document (or takes the order off hold) after re-reading its Status.
"""

from __future__ import annotations

import dagster as dg

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from sandboxes.harness.scenario import (
    ACU_JIRA_SENSOR,
    ACU_SENSOR,
    acumatica_external_id,
    comments,
    issues_by_external_id,
    poll_acumatica,
    seed_acumatica_documents,
)
from sandboxes.harness.stack import ACU_PROJECT, CLOUD_ID

PAIR = "acumatica_jira"
EXCEPTIONS = (("Bill", "held_bill"), ("Bill", "unbalanced_bill"), ("Check", "held_check"),
              ("PurchaseOrder", "held_order"))


def fields_by_name(world, issue: dict) -> dict[str, object]:
    names = {f.id: f.name for f in world.stack.jira.sites[CLOUD_ID].custom_fields.values()}
    return {names.get(k, k): v for k, v in issue["fields"].items()}


def acu_issues(world) -> dict[str, list[dict]]:
    return {k: v for k, v in issues_by_external_id(world.stack).items() if k and k.startswith("acu:")}


def one_issue_each(world, seeded) -> dict[str, dict]:
    found = acu_issues(world)
    expected = {acumatica_external_id(entity, seeded[name]) for entity, name in EXCEPTIONS}
    assert set(found) == expected, sorted(found)
    assert all(len(v) == 1 for v in found.values()), {k: [i["key"] for i in v] for k, v in found.items()}
    return {k: v[0] for k, v in found.items()}


def materialization_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """Per entity asset, the metadata its materialization recorded."""
    return {e.asset_key.path[-1]: e.event_specific_data.materialization.metadata
            for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"}


def issue_key(world, entity: str, doc: dict) -> str:
    return acu_issues(world)[acumatica_external_id(entity, doc)][0]["key"]


def watch_jira(world) -> None:
    world.driver.run_job(f"{PAIR}__jira_webhook_renewal_job")


def done(world, key: str) -> list[dg.ExecuteInProcessResult]:
    world.stack.jira.transition_as_user(CLOUD_ID, key, "Done")
    world.stack.jira.deliver_pending()
    tick = world.driver.tick(ACU_JIRA_SENSOR)
    assert tick.runs and all(r.success for r in tick.runs)
    return tick.runs


# ------------------------------------------------------------------------------------------------------
def test_each_exception_becomes_one_issue_with_the_context_to_act_and_re_reads_change_nothing(world):
    seeded = seed_acumatica_documents(world.stack)

    result = poll_acumatica(world.driver)

    assert result.success
    by_ext = one_issue_each(world, seeded)   # the balanced bill is not an exception
    bill = fields_by_name(world, by_ext[acumatica_external_id("Bill", seeded["held_bill"])])
    number = seeded["held_bill"]["ReferenceNbr"]
    assert bill["project"]["key"] == ACU_PROJECT and bill["issuetype"]["name"] == "Task"
    assert bill["summary"] == f"Bill {number} from V-FAB: 1,250.00 USD (On Hold)"
    assert bill["ERP Document Number"] == number and bill["ERP Vendor"] == "V-FAB"
    assert bill["ERP Amount"] == 1250.0 and bill["ERP Status"] == "On Hold"
    assert "ScreenId=AP301000" in str(bill["description"]) and f"RefNbr={number}" in str(bill["description"])
    order = fields_by_name(world, by_ext[acumatica_external_id("PurchaseOrder", seeded["held_order"])])
    assert order["ERP Amount"] == 580.0 and "ScreenId=PO301000" in str(order["description"])
    payment = fields_by_name(world, by_ext[acumatica_external_id("Check", seeded["held_check"])])
    assert payment["summary"].startswith("Payment ") and payment["ERP Amount"] == 640.0
    md = materialization_metadata(result)
    assert md["bills_needing_attention"]["created"].value == 2
    assert md["bills_needing_attention"]["not_exceptions"].value == 1
    # a window read is one paged call per entity, not one per document
    assert all(m["api_calls_acumatica"].value <= 2 for m in md.values()), {k: m["api_calls_acumatica"] for k, m in md.items()}

    # the same documents read three more times: one issue each, no edit, no comment
    world.stack.jira.calls.clear()
    for _ in range(3):
        assert poll_acumatica(world.driver).success
    one_issue_each(world, seeded)
    assert all(not comments(world.stack, issue["key"]) for found in acu_issues(world).values() for issue in found)
    writes = {k: n for k, n in world.stack.jira.calls.items() if k[0] in ("POST", "PUT") and "search" not in k[1]}
    assert writes == {}, writes


def test_a_change_of_state_is_one_update_and_one_comment(world):
    seeded = seed_acumatica_documents(world.stack)
    acu = world.stack.acumatica
    acu.approval_required = {"Bill"}
    assert poll_acumatica(world.driver).success
    held = seeded["held_bill"]
    key = issue_key(world, "Bill", held)

    acu.update_document("Bill", (held["Type"], held["ReferenceNbr"]), Hold=False)   # -> Pending Approval
    for _ in range(3):                                                              # re-read: still one comment
        assert poll_acumatica(world.driver).success

    stored = fields_by_name(world, acu_issues(world)[acumatica_external_id("Bill", held)][0])
    assert stored["ERP Status"] == "Pending Approval"
    notes = comments(world.stack, key)
    assert notes == [f"Bill {held['ReferenceNbr']} changed in Acumatica: On Hold → Pending Approval"], notes

    acu.approve("Bill", (held["Type"], held["ReferenceNbr"]))                      # -> Balanced: no longer one
    assert poll_acumatica(world.driver).success
    assert comments(world.stack, key)[-1] == (f"Bill {held['ReferenceNbr']} changed in Acumatica: Pending Approval "
                                              "→ Balanced (no longer an exception)")
    assert len(comments(world.stack, key)) == 2


def test_done_releases_the_bill_once_after_checking_its_status(world):
    seeded = seed_acumatica_documents(world.stack)
    acu = world.stack.acumatica
    assert poll_acumatica(world.driver).success
    watch_jira(world)
    held = seeded["held_bill"]
    keys = (held["Type"], held["ReferenceNbr"])
    key = issue_key(world, "Bill", held)

    # Done while the bill is still on hold: nothing is called, the issue says why
    done(world, key)
    assert acu.action_calls("Bill", "ReleaseBill") == 0
    assert any("Status is 'On Hold'" in c and "ReleaseBill was not done" in c for c in comments(world.stack, key))

    # the AP lead takes it off hold in Acumatica, reopens the issue and moves it to Done again
    acu.update_document("Bill", keys, Hold=False)
    world.stack.jira.transition_as_user(CLOUD_ID, key, "To Do")
    done(world, key)
    assert acu.action_calls("Bill", "ReleaseBill") == 1
    assert acu.get_document("Bill", keys)["Status"] == "Open"
    assert any("ReleaseBill done in Acumatica (Status was Balanced, now Open)" in c for c in comments(world.stack, key))

    # reopened and done again: the ledger knows it acted, and the bill is Open anyway: never a second release
    world.stack.jira.transition_as_user(CLOUD_ID, key, "To Do")
    done(world, key)
    assert acu.action_calls("Bill", "ReleaseBill") == 1


def test_done_on_a_document_someone_already_released_does_nothing_and_says_so(world):
    seeded = seed_acumatica_documents(world.stack)
    acu = world.stack.acumatica
    assert poll_acumatica(world.driver).success
    watch_jira(world)
    check = seeded["held_check"]
    keys = (check["Type"], check["ReferenceNbr"])
    key = issue_key(world, "Check", check)
    acu.update_document("Check", keys, Hold=False)
    acu.release("Check", keys)                       # released in Acumatica by a person

    done(world, key)

    assert acu.action_calls("Check", "ReleaseCheck") == 0
    assert any("Status is already Closed; nothing to do" in c for c in comments(world.stack, key)), \
        comments(world.stack, key)


def test_done_releases_the_vendor_payment_and_takes_the_order_off_hold(world):
    seeded = seed_acumatica_documents(world.stack)
    acu = world.stack.acumatica
    assert poll_acumatica(world.driver).success
    watch_jira(world)
    check, order = seeded["held_check"], seeded["held_order"]
    acu.update_document("Check", (check["Type"], check["ReferenceNbr"]), Hold=False)

    done(world, issue_key(world, "Check", check))
    done(world, issue_key(world, "PurchaseOrder", order))

    assert acu.action_calls("Check", "ReleaseCheck") == 1
    assert acu.get_document("Check", (check["Type"], check["ReferenceNbr"]))["Status"] == "Closed"
    now = acu.get_document("PurchaseOrder", (order["Type"], order["OrderNbr"]))
    assert now["Hold"] is False and now["Status"] == "Open"
    assert any("update of Hold = no done in Acumatica (Status was On Hold, now Open)" in c
               for c in comments(world.stack, issue_key(world, "PurchaseOrder", order)))


def test_a_429_storm_and_an_expired_token_mid_run_end_in_success(world):
    seeded = seed_acumatica_documents(world.stack)
    acu = world.stack.acumatica
    assert poll_acumatica(world.driver).success          # a grant is in the vault now
    acu.expire_access_tokens()                           # the stored access token dies
    acu.faults.retry_after = "0"
    acu.faults.rate_limit_next = 5
    acu.add_bill(vendor="V-FAB", amount=10.0)            # one more exception in the window

    result = poll_acumatica(world.driver)

    assert result.success and acu.faults.served_429 == 5 and acu.refreshes >= 1
    found = acu_issues(world)
    assert len(found) == 5 and all(len(v) == 1 for v in found.values())
    one = {k for k in found if k not in {acumatica_external_id(e, seeded[n]) for e, n in EXCEPTIONS}}
    assert len(one) == 1


def test_a_push_notification_delivered_three_times_and_out_of_order_is_one_run_of_work(world):
    import httpx

    seeded = seed_acumatica_documents(world.stack)      # each new document queued an Inserted notification
    acu = world.stack.acumatica
    acu.redeliver = 3                                   # each one is sent three times...
    acu.reorder = True                                  # ...newest first
    assert acu.deliver_notifications()["delivered"] == 5 and acu.pending_notifications() == 0

    inbox = Inbox(get_engine(world.database_url))
    assert inbox.count("acumatica") == 5                # stored once each (Id + Query)
    tick = world.driver.tick(ACU_SENSOR)
    assert len(tick.runs) == 1 and tick.runs[0].success
    one_issue_each(world, seeded)
    [out] = [e.event_specific_data.metadata for e in tick.runs[0].all_events if e.event_type_value == "STEP_OUTPUT"]
    assert out["notifications"].value == 5 and out["created"].value == 4 and out["not_exceptions"].value == 1
    # the notifications name keys only: the run re-read the documents, one OR-filter read per entity
    assert out["api_calls_acumatica"].value <= 4

    # Acumatica sends them all again later (at least once): stored once, no run, nothing new in Jira
    for d in list(acu.notification_deliveries):
        httpx.post(d["url"], json=d["body"], headers={"X-Connector-Secret": world.stack.secrets["acumatica_push_secret"]})
    assert inbox.count("acumatica") == 5
    assert world.driver.tick(ACU_SENSOR).runs == []
    one_issue_each(world, seeded)


def test_a_forged_push_notification_is_refused_and_a_genuine_one_is_only_a_signal(world):
    import httpx

    seeded = seed_acumatica_documents(world.stack)
    held = seeded["held_bill"]
    url = world.stack.servers["receiver"].base_url + "/webhooks/acumatica"
    body = {"Query": "ConnectorBills", "CompanyId": "Company", "Id": "forged-1", "TimeStamp": 1,
            "Inserted": [{"Type": "Bill", "ReferenceNbr": held["ReferenceNbr"], "Status": "Balanced"}], "Deleted": []}
    assert httpx.post(url, json=body, headers={"X-Connector-Secret": "guess"}).status_code == 401
    # a genuine notification whose row says "Balanced": the run reads the bill (On Hold) and opens its issue
    genuine = dict(body, Id="genuine-1")
    assert httpx.post(url, json=genuine, headers={
        "X-Connector-Secret": world.stack.secrets["acumatica_push_secret"]}).status_code == 202
    tick = world.driver.tick(ACU_SENSOR)
    assert len(tick.runs) == 1 and tick.runs[0].success
    [issue] = acu_issues(world)[acumatica_external_id("Bill", held)]
    assert fields_by_name(world, issue)["ERP Status"] == "On Hold"
