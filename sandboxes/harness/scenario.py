"""The BC ⇄ Jira story, step by step, shared by the smoke run, the demo and the end-to-end tests.

A blocked vendor, a draft purchase invoice and a purchase order stuck in Draft for ten days are the
exceptions; a vendor in good standing, a posted invoice and a fresh PO are not.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sandboxes.harness.dagster_driver import DagsterDriver
from sandboxes.harness.stack import CLOUD_ID, LEGAL_ENTITY, Stack

BC_SENSOR = "bc_jira__business_central_inbox_sensor"
JIRA_SENSOR = "bc_jira__jira_inbox_sensor"
FO_SENSOR = "d365_jira__finance_operations_inbox_sensor"
FO_JIRA_SENSOR = "d365_jira__jira_inbox_sensor"


def seed_exceptions(stack: Stack, suffix: str = "") -> dict[str, dict[str, Any]]:
    bc, cid = stack.bc, stack.company_id
    today = date.today()
    blocked = bc.add_vendor(cid, number=f"V10000{suffix}", displayName="Fabrikam Supplies", blocked="All")
    fine = bc.add_vendor(cid, number=f"V20000{suffix}", displayName="Contoso Paper", blocked=" ")
    common = {"vendorId": fine["id"], "vendorNumber": fine["number"], "vendorName": "Contoso Paper",
              "currencyCode": "USD"}
    invoice = bc.add_purchase_invoice(cid, number=f"PI-108001{suffix}", status="Draft",
                                      totalAmountIncludingTax=1234.5, invoiceDate=today.isoformat(),
                                      vendorInvoiceNumber=f"F-2026-{suffix or '0001'}", **common)
    posted = bc.add_purchase_invoice(cid, number=f"PI-108002{suffix}", status="Open",
                                     totalAmountIncludingTax=99.0, **common)
    stuck_po = bc.add_purchase_order(cid, number=f"PO-106001{suffix}", status="Draft",
                                     orderDate=(today - timedelta(days=10)).isoformat(),
                                     totalAmountIncludingTax=5000.0, **common)
    fresh_po = bc.add_purchase_order(cid, number=f"PO-106002{suffix}", status="Draft",
                                     orderDate=today.isoformat(), totalAmountIncludingTax=10.0, **common)
    return {"blocked": blocked, "fine_vendor": fine, "invoice": invoice, "posted": posted,
            "stuck_po": stuck_po, "fresh_po": fresh_po}


def new_draft_invoice(stack: Stack, n: int) -> dict[str, Any]:
    """The demo's generator: one more draft invoice awaiting review (the demo adds one a minute). Its issue is
    opened by the notification run its webhook starts, seconds later: a reconcile reading BC meanwhile sees
    it in flight, not missing (integrations.sync.reconcile)."""
    return stack.bc.add_purchase_invoice(stack.company_id, number=f"PI-2{n:05d}", status="Draft",
                                         vendorName="Northwind Traders", totalAmountIncludingTax=250.0 * n,
                                         currencyCode="USD", invoiceDate=date.today().isoformat())


def expected_external_ids(seeded: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {"blocked vendor": f"bc:vendors:{seeded['blocked']['id']}",
            "invoice awaiting review": f"bc:purchaseInvoices:{seeded['invoice']['id']}",
            "stuck purchase order": f"bc:purchaseOrders:{seeded['stuck_po']['id']}"}


def ext_field_id(stack: Stack) -> str:
    site = stack.jira.sites[CLOUD_ID]
    return next(f.id for f in site.custom_fields.values() if f.name == "ERP External ID")


def issues(stack: Stack) -> list[dict[str, Any]]:
    return list(stack.jira.issues(CLOUD_ID))


def issues_by_external_id(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    fid = ext_field_id(stack)
    out: dict[str, list[dict[str, Any]]] = {}
    for issue in issues(stack):
        out.setdefault(issue["fields"].get(fid), []).append(issue)
    return out


def comments(stack: Stack, key: str) -> list[str]:
    from connector_pipelines.core.adf import plain_text

    return [plain_text(c.body) for c in stack.jira.sites[CLOUD_ID].issue(key).comments]


def register_webhooks(driver: DagsterDriver) -> None:
    """What the renewal schedules do on their first tick: BC subscriptions and the Jira webhook."""
    driver.run_job("bc_jira__subscription_renewal_job")
    driver.run_job("bc_jira__jira_webhook_renewal_job")


def poll_now(driver: DagsterDriver, when: datetime | None = None):
    """What the poll schedule does: materialize the current hour's window."""
    key = driver.current_partition(["business_central", "stuck_purchase_orders"], when or datetime.now(UTC))
    return driver.run_job("bc_jira__poll_job", partition_key=key)


def transition_done(stack: Stack, issue_key: str) -> None:
    """A person moves the issue to Done in Jira; Jira delivers the webhook."""
    stack.jira.transition_as_user(CLOUD_ID, issue_key, "Done")
    stack.jira.deliver_pending()


# -- Dynamics 365 F&O: a posted invoice, a confirmed PO, a PO rejected by its approval workflow -----------
# Financial master and GL values the seeded documents carry; none of them may ever reach Jira.
FO_SENSITIVE = {"vendor bank account": "BANK-7731-0042", "invoice bank account": "USBANK-99-4471",
                "invoice dimensions": "110180-001-022-CC77", "line main account": "600150-MAIN-ACCT",
                "order dimensions": "220190-003-044-CC88"}


def seed_fo_documents(stack: Stack, suffix: str = "", area: str = LEGAL_ENTITY) -> dict[str, Any]:
    """Documents in F&O (no events yet): the business flows below fire the events. Plus one posted general
    journal voucher (a freight accrual: two ledger lines, ``journal_entries``), which no event announces."""
    fo = stack.fo
    assert fo is not None
    today = date.today().isoformat()
    fo.add_vendor(area, VendorAccountNumber=f"US-101{suffix}", VendorOrganizationName="Fabrikam Electronics",
                  CurrencyCode="USD", BankAccountId=FO_SENSITIVE["vendor bank account"])
    invoice = fo.add_vendor_invoice(area, VendorAccount=f"US-101{suffix}", VendorName="Fabrikam Electronics",
                                    InvoiceNumber=f"INV-2026-{suffix or '0001'}", InvoiceDate=today, Currency="USD",
                                    BankAccount=FO_SENSITIVE["invoice bank account"],
                                    DimensionDisplayValue=FO_SENSITIVE["invoice dimensions"],
                                    lines=[{"Amount": 1200.0, "LineDescription": "Monitors",
                                            "MainAccountDisplayValue": FO_SENSITIVE["line main account"]},
                                           {"Amount": 34.5, "LineDescription": "Freight"}])
    confirmed = fo.add_purchase_order(area, PurchaseOrderNumber=f"PO-00071{suffix}", PurchaseOrderName="Monitors",
                                      OrderVendorAccountNumber=f"US-101{suffix}", CurrencyCode="USD",
                                      DocumentApprovalStatus="Approved", AccountingDate=today,
                                      DefaultLedgerDimensionDisplayValue=FO_SENSITIVE["order dimensions"],
                                      lines=[{"LineAmount": 2500.0, "ItemNumber": "M-27"}])
    rejected = fo.add_purchase_order(area, PurchaseOrderNumber=f"PO-00072{suffix}", PurchaseOrderName="Laptops",
                                     OrderVendorAccountNumber=f"US-101{suffix}", CurrencyCode="USD",
                                     DocumentApprovalStatus="InReview", AccountingDate=today,
                                     lines=[{"LineAmount": 9800.0, "ItemNumber": "L-14"}])
    journal = fo.post_general_journal(area, [
        {"LedgerAccount": "605100", "AccountDisplayValue": "605100-001-022", "TransactionCurrencyAmount": 1500.0},
        {"LedgerAccount": "200150", "AccountDisplayValue": "200150", "TransactionCurrencyAmount": -1500.0}],
        journal_number=f"GJ-2026-{suffix or '0001'}", accounting_date=f"{today}T12:00:00Z",
        description="Freight accrual")
    return {"invoice": invoice, "confirmed_po": confirmed, "rejected_po": rejected, "journal_entries": journal}


def fire_fo_events(stack: Stack, seeded: dict[str, Any], area: str = LEGAL_ENTITY) -> None:
    """People work in F&O: post the invoice, confirm one PO, the workflow rejects the other."""
    fo = stack.fo
    assert fo is not None
    fo.post_vendor_invoice(area, seeded["invoice"]["HeaderReference"])
    fo.confirm_purchase_order(area, seeded["confirmed_po"]["PurchaseOrderNumber"])
    fo.reject_purchase_order_workflow(area, seeded["rejected_po"]["PurchaseOrderNumber"])


def fo_external_ids(seeded: dict[str, Any], area: str = LEGAL_ENTITY) -> dict[str, str]:
    inv = seeded["invoice"]
    return {"vendor invoice posted": f"fo:vendor_invoices_posted:{area}:{inv['VendorAccount']}:{inv['InvoiceNumber']}",
            "purchase order confirmed":
                f"fo:purchase_orders_confirmed:{area}:{seeded['confirmed_po']['PurchaseOrderNumber']}",
            "purchase order rejected in workflow":
                f"fo:purchase_orders_rejected_in_workflow:{area}:{seeded['rejected_po']['PurchaseOrderNumber']}"}


# -- Acumatica: bills, a vendor payment and a purchase order that need a person ------------------------------
ACU_SENSOR = "acumatica_jira__acumatica_inbox_sensor"
ACU_JIRA_SENSOR = "acumatica_jira__jira_inbox_sensor"
ACU_ENTITIES = {"Bill": "bills_needing_attention", "Check": "vendor_payments_needing_attention",
                "PurchaseOrder": "purchase_orders_needing_attention"}


def seed_acumatica_documents(stack: Stack) -> dict[str, dict[str, Any]]:
    """A held bill, an unbalanced one (its lines miss 200.00), a held vendor payment, a held purchase order
    and a balanced bill (not an exception)."""
    acu = stack.acumatica
    assert acu is not None
    acu.add_vendor(VendorID="V-FAB", VendorName="Fabrikam Supplies")
    return {
        "held_bill": acu.add_bill(vendor="V-FAB", amount=1250.0, VendorRef="FAB-INV-881", Description="Packaging"),
        "unbalanced_bill": acu.add_bill(vendor="V-FAB", amount=700.0, lines=[500.0], VendorRef="FAB-INV-882"),
        "balanced_bill": acu.add_bill(vendor="V-FAB", amount=90.0, hold=False, VendorRef="FAB-INV-883"),
        "held_check": acu.add_check(vendor="V-FAB", amount=640.0),
        "held_order": acu.add_purchase_order(vendor="V-FAB", lines=[400.0, 180.0]),
    }


def acumatica_external_id(entity: str, doc: dict[str, Any]) -> str:
    number = doc["OrderNbr"] if entity == "PurchaseOrder" else doc["ReferenceNbr"]
    return f"acu:{entity}:{doc['Type']}/{number}"


def poll_acumatica(driver: DagsterDriver, when: datetime | None = None):
    """What acumatica_jira's poll schedule does: materialize the current hour's window of every entity."""
    key = driver.current_partition(["acumatica", "bills_needing_attention"], when or datetime.now(UTC))
    return driver.run_job("acumatica_jira__poll_job", partition_key=key)
