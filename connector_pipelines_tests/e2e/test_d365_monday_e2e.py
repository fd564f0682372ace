"""Dynamics 365 F&O -> Monday.com, end to end (the flow model with a second target).

The F&O sandbox posts business events to the receiver; the d365_monday pair reads them through its own
inbox reader (d365_jira reads the same events through its own), re-reads the documents over OData and
writes items on the Monday sandbox's boards through the generic write path: the external-id column is
looked up before any create, so re-deliveries and re-runs never duplicate an item.
"""

from __future__ import annotations

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.ledger import DONE, Ledger
from sandboxes.harness.scenario import FO_SENSOR, fire_fo_events, fo_external_ids, seed_fo_documents
from sandboxes.harness.stack import LEGAL_ENTITY

PAIR = "d365_monday"
RECONCILE_CHECK = "every_exception_has_one_open_issue"
SENSOR = "d365_monday__finance_operations_inbox_sensor"
INVOICES, ORDERS = "4815162342", "4815162343"


def process(world) -> list:
    world.stack.fo.deliver_events()
    runs = []
    while True:
        tick = world.driver.tick(SENSOR)
        if not tick.runs:
            return runs
        assert all(r.success for r in tick.runs)
        runs.extend(tick.runs)


def by_external_id(world, board: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in world.stack.monday.items(board):
        ext = item["column_values"]["external_id"]["text"]
        out.setdefault(ext, []).append(item)
    return out


def test_posted_invoices_and_confirmed_orders_become_one_item_each_with_typed_columns(world):
    seeded = seed_fo_documents(world.stack)
    fire_fo_events(world.stack, seeded)

    runs = process(world)

    assert len(runs) == 1
    ids = fo_external_ids(seeded)
    invoice_key = ids["vendor invoice posted"].replace("fo:vendor_invoices_posted", "fo:vendor_invoice_items")
    invoices = by_external_id(world, INVOICES)
    assert list(invoices) == [invoice_key] and len(invoices[invoice_key]) == 1
    item = invoices[invoice_key][0]
    columns = item["column_values"]
    assert item["name"] == "INV-2026-0001 Fabrikam Electronics"
    assert columns["amount"]["text"] in ("1234.5", "1,234.5")
    assert columns["vendor"]["text"] == "US-101 Fabrikam Electronics"
    assert columns["invoice_date"]["value"]["date"] == seeded["invoice"]["InvoiceDate"][:10]
    assert "mi=VendorInvoiceJournal" in columns["erp_link"]["value"]["url"]
    orders = by_external_id(world, ORDERS)
    [order_key] = orders
    assert orders[order_key][0]["column_values"]["status"]["text"] == "Confirmed"
    assert order_key == ids["purchase order confirmed"].replace("purchase_orders_confirmed",
                                                                "purchase_order_items")
    # the rejected order is not a flow of this pair: no item for it
    assert not any(seeded["rejected_po"]["PurchaseOrderNumber"] in k for k in orders)
    ledger = Ledger(get_engine(world.database_url))
    assert ledger.counts(PAIR).get(DONE) == 2
    # d365_jira reads the same events through its own reader: they are still there for it, and become its issues
    assert not ledger.counts("d365_jira").get(DONE)
    tick = world.driver.tick(FO_SENSOR)
    assert len(tick.runs) == 1 and tick.runs[0].success
    assert ledger.counts("d365_jira").get(DONE) == 3 and ledger.counts(PAIR).get(DONE) == 2


def test_an_event_delivered_three_times_and_a_changed_document_give_one_updated_item(world):
    seeded = seed_fo_documents(world.stack)
    fo = world.stack.fo
    po = seeded["confirmed_po"]["PurchaseOrderNumber"]
    fo.confirm_purchase_order(LEGAL_ENTITY, po)
    fo.deliver_events()
    fo.redeliver()
    fo.redeliver()
    assert len(process(world)) == 1
    creates = world.stack.monday.mutation_calls("create_item")

    orders = by_external_id(world, ORDERS)
    assert len(orders) == 1 and all(len(v) == 1 for v in orders.values())   # three deliveries: one item

    # F&O renames the order and confirms it again: the same item is updated, nothing is created
    fo.update_record("PurchaseOrderHeadersV2", {"dataAreaId": LEGAL_ENTITY, "PurchaseOrderNumber": po},
                     PurchaseOrderName="Monitors and stands")
    fo.confirm_purchase_order(LEGAL_ENTITY, po)
    changes = world.stack.monday.mutation_calls("change_multiple_column_values")
    process(world)

    [items] = by_external_id(world, ORDERS).values()
    assert len(items) == 1 and items[0]["name"] == f"{po} Monitors and stands"
    assert world.stack.monday.mutation_calls("create_item") == creates
    assert world.stack.monday.mutation_calls("change_multiple_column_values") == changes + 1


VENDORS = "4815162341"


def mirror(world):
    result = world.driver.run_job(f"{PAIR}__mirror_job", partition_key=LEGAL_ENTITY)
    assert result.success
    return result


def test_vendors_are_mirrored_per_legal_entity_and_documents_link_to_their_vendor_s_item(world):
    from sandboxes.harness.dagster_driver import check_evaluations

    fo = world.stack.fo
    seeded = seed_fo_documents(world.stack)                      # vendor US-101 in usmf
    fo.add_vendor(LEGAL_ENTITY, VendorAccountNumber="US-102", VendorOrganizationName="Northwind", CurrencyCode="EUR")
    fo.add_vendor("demf", VendorAccountNumber="DE-001", VendorOrganizationName="Contoso GmbH", CurrencyCode="EUR")

    mirror(world)

    vendors = by_external_id(world, VENDORS)
    assert sorted(vendors) == ["fo:vendor_items:usmf:US-101", "fo:vendor_items:usmf:US-102"]   # usmf only
    assert all(len(v) == 1 for v in vendors.values())
    assert vendors["fo:vendor_items:usmf:US-102"][0]["name"] == "US-102 Northwind"
    vendor_item = vendors["fo:vendor_items:usmf:US-101"][0]["id"]

    # every invoice and order of the legal entity is on its board too (the rejected order included: a mirror
    # keeps the whole set), each linked to its vendor's item; the events that follow update, never add
    fire_fo_events(world.stack, seeded)
    process(world)
    [invoice] = [i for v in by_external_id(world, INVOICES).values() for i in v]
    assert invoice["column_values"]["vendor_link"]["linked_item_ids"] == [vendor_item]
    orders = [i for v in by_external_id(world, ORDERS).values() for i in v]
    assert len(orders) == 2 and len(by_external_id(world, ORDERS)) == 2
    assert all(o["column_values"]["vendor_link"]["linked_item_ids"] == [vendor_item] for o in orders)

    # the nightly mirror brings what no event announced (the order rejected in its workflow: one update); run
    # again with nothing changed it makes no Monday write; a renamed vendor is one update
    mirror(world)
    assert by_external_id(world, ORDERS)[f"fo:purchase_order_items:usmf:{seeded['rejected_po']['PurchaseOrderNumber']}"][0][
        "column_values"]["status"]["text"] == "Rejected"
    writes = world.stack.monday.mutation_calls("create_item") + world.stack.monday.mutation_calls(
        "change_multiple_column_values")
    mirror(world)
    assert world.stack.monday.mutation_calls("create_item") + world.stack.monday.mutation_calls(
        "change_multiple_column_values") == writes
    fo.update_record("VendorsV2", {"dataAreaId": LEGAL_ENTITY, "VendorAccountNumber": "US-102"},
                     VendorOrganizationName="Northwind Traders")
    mirror(world)
    assert by_external_id(world, VENDORS)["fo:vendor_items:usmf:US-102"][0]["name"] == "US-102 Northwind Traders"
    assert len(by_external_id(world, VENDORS)) == 2

    # reconciliation: every record of each mirrored set has exactly one item
    checks = {str(c.asset_key.path[-1]): c for c in
              check_evaluations(world.driver.run_job(f"{PAIR}__reconcile_job", raise_on_error=False),
                                RECONCILE_CHECK)}
    for entity in ("vendor_items", "vendor_invoice_items", "purchase_order_items"):
        assert checks[entity].passed, (entity, checks[entity].metadata)


def test_a_note_on_a_pending_invoice_is_written_to_f_and_o(world):
    """The nightly mirror brings the invoices no event announces (pending ones); a reviewer's note on one is
    written to its header, which F&O accepts before posting."""
    fo, monday = world.stack.fo, world.stack.monday
    seeded = seed_fo_documents(world.stack)          # the invoice is not posted yet
    world.driver.run_job(f"{PAIR}__monday_webhook_renewal_job")
    mirror(world)
    monday.deliver_webhooks()
    world.driver.tick(MONDAY_SENSOR)
    [invoice] = [i for v in by_external_id(world, INVOICES).values() for i in v]

    people_change(world, invoice["id"], "note", "Freight agreed with Fabrikam")

    header = fo.get_record("VendorInvoiceHeaders", {"dataAreaId": LEGAL_ENTITY,
                                                    "HeaderReference": seeded["invoice"]["HeaderReference"]})
    assert header["InvoiceDescription"] == "Freight agreed with Fabrikam" and fo_patches(world) == 1
    assert not [u for u in monday.get_item(invoice["id"])["updates"] if "refused" in u]


MONDAY_SENSOR = "d365_monday__monday_inbox_sensor"


def fo_patches(world) -> int:
    return sum(n for (method, _), n in world.stack.fo.calls.items() if method == "PATCH")


def people_change(world, item_id: str, column: str, value) -> list:
    """A reviewer changes a column on the board; monday delivers the webhook; the sensor launches the run."""
    world.stack.monday.change_column_as_user(item_id, column, value)
    world.stack.monday.deliver_webhooks()
    tick = world.driver.tick(MONDAY_SENSOR)
    assert all(r.success for r in tick.runs)
    return tick.runs


def test_a_reviewer_s_change_is_written_to_f_and_o_once_and_the_connector_s_own_writes_never_bounce(world):
    fo, monday = world.stack.fo, world.stack.monday
    seeded = seed_fo_documents(world.stack)
    world.driver.run_job(f"{PAIR}__monday_webhook_renewal_job")      # one change_column_value webhook per board
    mirror(world)
    monday.deliver_webhooks()                     # the connector's own creates: no column-change event acts
    assert all(r.success for r in world.driver.tick(MONDAY_SENSOR).runs)
    assert fo_patches(world) == 0
    vendor_item = by_external_id(world, VENDORS)["fo:vendor_items:usmf:US-101"][0]["id"]
    keys = {"dataAreaId": LEGAL_ENTITY, "VendorAccountNumber": "US-101"}

    runs = people_change(world, vendor_item, "hold", {"label": "All"})

    assert len(runs) == 1
    assert fo.get_record("VendorsV2", keys)["OnHoldStatus"] == "All" and fo_patches(world) == 1
    [out] = [e.event_specific_data.metadata for e in runs[0].all_events if e.event_type_value == "STEP_OUTPUT"]
    assert out["acted"].value == 1

    # the nightly mirror writes the vendor back to the item (now "All" in F&O too): its webhook is an echo
    fo.update_record("VendorsV2", keys, VendorOrganizationName="Fabrikam Electronics Inc.", OnHoldStatus="Never")
    mirror(world)                                  # writes "Never" to the item's hold column: the connector's own write
    assert monday.get_item(vendor_item)["column_values"]["hold"]["text"] == "Never"
    monday.deliver_webhooks()
    for run in world.driver.tick(MONDAY_SENSOR).runs:
        assert run.success
    assert fo.get_record("VendorsV2", keys)["OnHoldStatus"] == "Never" and fo_patches(world) == 1   # no bounce

    # a reviewer's note on a posted invoice: F&O refuses it, the item says why, nothing changes in F&O
    fire_fo_events(world.stack, seeded)
    process(world)
    [invoice] = [i for v in by_external_id(world, INVOICES).values() for i in v]
    people_change(world, invoice["id"], "note", "Check the freight line")
    assert fo_patches(world) == 2                  # refused by F&O: the PATCH was tried, nothing changed
    after = monday.get_item(invoice["id"])
    assert any("F&O refused the change of InvoiceDescription" in u and "before posting" in u for u in after["updates"])


def test_a_change_delivered_three_times_is_written_once(world):
    fo, monday = world.stack.fo, world.stack.monday
    seed_fo_documents(world.stack)
    world.driver.run_job(f"{PAIR}__monday_webhook_renewal_job")
    mirror(world)
    monday.deliver_webhooks()
    world.driver.tick(MONDAY_SENSOR)
    vendor_item = by_external_id(world, VENDORS)["fo:vendor_items:usmf:US-101"][0]["id"]
    monday.redeliver = 3
    people_change(world, vendor_item, "hold", {"label": "Payment"})
    for _ in range(2):
        for run in world.driver.tick(MONDAY_SENSOR).runs:
            assert run.success
    keys = {"dataAreaId": LEGAL_ENTITY, "VendorAccountNumber": "US-101"}
    assert fo.get_record("VendorsV2", keys)["OnHoldStatus"] == "Payment"
    assert fo_patches(world) == 1


def test_a_rate_limit_storm_and_a_locked_board_end_in_success(world):
    """monday answers 429s (minute limit, FIELD_LIMIT_EXCEEDED) and 423 (a board locked by a concurrent update)
    in the middle of a batch: the client and its governor wait as told, the run succeeds, nothing is duplicated."""
    monday = world.stack.monday
    seeded = seed_fo_documents(world.stack)
    fire_fo_events(world.stack, seeded)
    monday.faults.retry_after = "1"
    monday.faults.rate_limit_next = 2
    monday.faults.field_limit_next = 1
    monday.faults.field_limit_retry_s = 1
    monday.lock_board(INVOICES, 1.0)

    runs = process(world)

    assert len(runs) == 1 and runs[0].success
    assert monday.served_429 >= 2
    assert len(by_external_id(world, INVOICES)) == 1 and len(by_external_id(world, ORDERS)) == 1
    assert all(len(v) == 1 for b in (INVOICES, ORDERS) for v in by_external_id(world, b).values())


JOURNALS = "4815162344"
JOURNAL_SET = "GeneralJournalAccountEntries"


def journal_key(entry: dict) -> str:
    return f"fo:journal_entry_items:{entry['dataAreaId']}:{entry['GeneralJournalAccountEntryRecId']}"


def fo_writes(world) -> list:
    """Every F&O request that is not a read (POST, PATCH, DELETE), by method and route."""
    return [(method, route, n) for (method, route), n in world.stack.fo.calls.items() if method != "GET"]


def test_posted_journal_entries_are_mirrored_read_only_one_item_each_with_typed_columns(world):
    from datetime import date

    from sandboxes.harness.dagster_driver import check_evaluations

    fo, monday = world.stack.fo, world.stack.monday
    seeded = seed_fo_documents(world.stack)                          # one posted voucher, two ledger lines, usmf
    seed_fo_documents(world.stack, suffix="-DE", area="demf")        # another legal entity's: not this pair's
    debit, credit = seeded["journal_entries"]

    mirror(world)

    entries = by_external_id(world, JOURNALS)
    assert sorted(entries) == sorted([journal_key(debit), journal_key(credit)])   # usmf's lines only
    assert all(len(v) == 1 for v in entries.values())
    item = entries[journal_key(debit)][0]
    columns = item["column_values"]
    assert item["name"] == f"{debit['Voucher']} 605100"
    assert columns["journal_number"]["text"] == "GJ-2026-0001" and columns["voucher"]["text"] == debit["Voucher"]
    assert columns["account"]["text"] == "605100-001-022" and columns["currency"]["text"] == "USD"
    assert columns["amount"]["value"] is not None and float(columns["amount"]["text"].replace(",", "")) == 1500.0
    assert float(entries[journal_key(credit)][0]["column_values"]["amount"]["text"].replace(",", "")) == -1500.0
    assert columns["posting_date"]["value"]["date"] == date.today().isoformat()
    assert columns["description"]["text"] == "Freight accrual"
    assert "cmp=usmf" in columns["erp_link"]["value"]["url"] and "mi=LedgerTransVoucher" in columns["erp_link"]["value"]["url"]

    # a second mirror run with nothing posted: no duplicate, no Monday write at all
    writes = monday.mutation_calls("create_item") + monday.mutation_calls("change_multiple_column_values")
    mirror(world)
    assert monday.mutation_calls("create_item") + monday.mutation_calls("change_multiple_column_values") == writes
    assert sorted(by_external_id(world, JOURNALS)) == sorted(entries)
    assert all(len(v) == 1 for v in by_external_id(world, JOURNALS).values())

    # a new posting: its lines are added, the others stay one item each
    reversal = fo.post_general_journal(LEGAL_ENTITY, [
        {"LedgerAccount": "605100", "AccountDisplayValue": "605100-001-022", "TransactionCurrencyAmount": -200.0},
        {"LedgerAccount": "200150", "AccountDisplayValue": "200150", "TransactionCurrencyAmount": 200.0}],
        description="Freight accrual correction")
    mirror(world)
    after = by_external_id(world, JOURNALS)
    assert sorted(after) == sorted([journal_key(e) for e in (debit, credit, *reversal)])
    assert all(len(v) == 1 for v in after.values())

    checks = {str(c.asset_key.path[-1]): c for c in
              check_evaluations(world.driver.run_job(f"{PAIR}__reconcile_job", raise_on_error=False),
                                RECONCILE_CHECK)}
    assert checks["journal_entry_items"].passed, checks["journal_entry_items"].metadata
    # the ledger was only read
    assert not [w for w in fo_writes(world) if JOURNAL_SET in w[1]] and fo_patches(world) == 0


def test_a_person_s_change_on_a_journal_item_never_reaches_f_and_o(world):
    """The journal board has no write-back column: the webhook upkeep leaves it unwatched, and even a column-change
    webhook someone adds to it by hand delivers events that launch no run and write nothing to F&O, while a
    reviewer's change on a write-back board in the same world is still written (the return path is live)."""
    from connector_pipelines.core.inbox import Inbox
    from connector_pipelines.systems.monday import MondayClient

    fo, monday, stack = world.stack.fo, world.stack.monday, world.stack
    seeded = seed_fo_documents(stack)
    entry = seeded["journal_entries"][0]
    keys = {"dataAreaId": LEGAL_ENTITY, "GeneralJournalAccountEntryRecId": entry["GeneralJournalAccountEntryRecId"]}
    world.driver.run_job(f"{PAIR}__monday_webhook_renewal_job")
    mirror(world)
    monday.deliver_webhooks()
    assert all(r.success for r in world.driver.tick(MONDAY_SENSOR).runs)
    assert not [w for w in monday.store.webhooks.values() if w.board_id == JOURNALS]   # only write-back boards

    # an administrator adds a column-change webhook to the journal board, to the receiver's Monday endpoint
    url = f"{stack.env['CONNECTOR_RECEIVER_PUBLIC_URL']}/webhooks/monday/{stack.secrets['monday_path_secret']}"
    client = MondayClient.connect(stack.env["CONNECTOR_MONDAY_API_URL"], token=stack.secrets["monday_token"])
    try:
        client.create_webhook(JOURNALS, url, "change_column_value")
    finally:
        client.close()
    [item] = by_external_id(world, JOURNALS)[journal_key(entry)]
    delivered = len(monday.webhook_deliveries)
    inbox = Inbox(get_engine(world.database_url))
    stored = inbox.count("monday")

    runs = people_change(world, item["id"], "amount", "9999")
    runs += people_change(world, item["id"], "description", "Reclass to 605200")

    # monday delivered both changes and the receiver stored them ...
    posts = [d for d in monday.webhook_deliveries[delivered:] if not d.get("challenge")]
    assert len(posts) == 2 and all(d["status"] in (200, 202) for d in posts)
    assert all(d["body"]["event"]["boardId"] in (int(JOURNALS), JOURNALS) for d in posts)
    assert inbox.count("monday") == stored + 2
    # ... but they are no write-back: no run, no F&O write, the posted entry as it was, nothing said on the item
    assert runs == []
    assert fo_writes(world) == [] and fo_patches(world) == 0
    record = fo.get_record(JOURNAL_SET, keys)
    assert record["TransactionCurrencyAmount"] == 1500.0 and record["Description"] == "Freight accrual"
    assert monday.get_item(item["id"])["updates"] == []
    assert monday.get_item(item["id"])["column_values"]["description"]["text"] == "Reclass to 605200"  # still there

    # the same world's write-back path works: a vendor put on hold is one PATCH, on VendorsV2 only
    vendor_item = by_external_id(world, VENDORS)["fo:vendor_items:usmf:US-101"][0]["id"]
    runs = people_change(world, vendor_item, "hold", {"label": "All"})
    assert len(runs) == 1
    assert [(m, r) for m, r, _ in fo_writes(world)] == [("PATCH", "/data/VendorsV2({keys})")] and fo_patches(world) == 1
    assert fo.get_record(JOURNAL_SET, keys)["TransactionCurrencyAmount"] == 1500.0
