"""Every link the product writes in the sandbox world (the one `make demo` runs) opens a page that shows the document.

The flows run through the product's own path (sensors, jobs, the ledger): BC, F&O and Acumatica exceptions become
Jira issues, F&O documents become monday.com items, a person moves the BC invoice's issue to Done and the connector
posts it and writes back. Then every link is followed over loopback: the issue links in the ledger
(``<site>/browse/<KEY>``, ``<account>/boards/<b>/pulses/<i>``), the ERP links in the issues' descriptions and in the
items' link column. Each must answer 200 with a page naming its document, its state and its history — and the
invoice's issue page must show the comment the connector wrote back.
"""

from __future__ import annotations

import html
import re
from typing import Any

import httpx

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.ledger import DONE, Ledger
from sandboxes.harness import scenario as sc
from sandboxes.harness.stack import CLOUD_ID

MONDAY_SENSOR = "d365_monday__finance_operations_inbox_sensor"


def adf_links(node: Any) -> list[str]:
    """Every link mark's href in an ADF document."""
    if isinstance(node, list):
        return [h for n in node for h in adf_links(n)]
    if not isinstance(node, dict):
        return []
    found = [m["attrs"]["href"] for m in node.get("marks") or [] if m.get("type") == "link"]
    return found + adf_links(node.get("content") or [])


def text_of(page: httpx.Response) -> str:
    """The page's text as a person reads it (tags dropped, entities decoded, spaces collapsed)."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page.text.split("</style>")[-1])))


def open_page(url: str) -> str:
    page = httpx.get(url, timeout=10, follow_redirects=True)
    assert page.status_code == 200, f"{url} -> {page.status_code}: {page.text[:300]}"
    assert page.headers["content-type"].startswith("text/html")
    return text_of(page)


def test_every_link_the_product_writes_opens_a_sandbox_page_with_the_document_its_state_and_history(world):
    stack, driver = world.stack, world.driver
    # BC -> Jira (notifications and the poll), then a person resolves the invoice's issue: BC posts it
    sc.register_webhooks(driver)
    bc_seeded = sc.seed_exceptions(stack)
    stack.deliver_all()
    assert all(r.success for r in driver.tick(sc.BC_SENSOR).runs)
    assert sc.poll_now(driver).success
    found = sc.issues_by_external_id(stack)
    invoice_issue = found[sc.expected_external_ids(bc_seeded)["invoice awaiting review"]][0]["key"]
    sc.transition_done(stack, invoice_issue)
    assert all(r.success for r in driver.tick(sc.JIRA_SENSOR).runs)
    written_back = sc.comments(stack, invoice_issue)
    assert written_back, "the connector wrote nothing back on the resolved issue"
    # F&O -> Jira and F&O -> monday.com (each pair reads the business events through its own reader)
    driver.run_job("d365_jira__jira_webhook_renewal_job")
    fo_seeded = sc.seed_fo_documents(stack)
    sc.fire_fo_events(stack, fo_seeded)
    stack.fo.deliver_events()
    assert all(r.success for r in driver.tick(sc.FO_SENSOR).runs)
    assert all(r.success for r in driver.tick(MONDAY_SENSOR).runs)
    # Acumatica -> Jira by polling
    driver.run_job("acumatica_jira__jira_webhook_renewal_job")
    acu_seeded = sc.seed_acumatica_documents(stack)
    assert sc.poll_acumatica(driver).success

    # the issue and item links the product keeps (ledger target_url) resolve to the issue / item page
    ledger = Ledger(get_engine(world.database_url))
    issue_links = {e.target_key: e.target_url for pair in ("bc_jira", "d365_jira", "acumatica_jira")
                   for e in ledger.in_state(pair, DONE) if e.target_url}
    assert len(issue_links) >= 10
    for key, url in issue_links.items():
        assert url == f"{stack.site_url}/browse/{key}"
        page = open_page(url)
        issue = stack.jira.sites[CLOUD_ID].issue(key)
        assert key in page and issue.fields["summary"] in page
    invoice_page = open_page(issue_links[invoice_issue])
    assert "Done" in invoice_page and all(re.sub(r"\s+", " ", c).strip() in invoice_page for c in written_back)
    item_links = [e.target_url for e in ledger.in_state("d365_monday", DONE)]
    assert item_links and all(u.startswith(f"{stack.urls['monday']}/boards/") for u in item_links)
    for url in item_links:
        item_id = url.rsplit("/", 1)[-1]
        page = open_page(url)
        assert stack.monday.get_item(item_id)["name"] in page and "Activity log" in page

    # the ERP links the product wrote into every issue's description and every item's link column
    erp_links = [h for i in sc.issues(stack) for h in adf_links(i["fields"].get("description"))]
    for board in ("4815162341", "4815162342", "4815162343", "4815162344"):
        erp_links += [i["column_values"]["erp_link"]["value"]["url"] for i in stack.monday.items(board)
                      if i["column_values"]["erp_link"]["value"]]
    pages = {url: open_page(url) for url in erp_links}
    by_system = {name: [p for u, p in pages.items() if u.startswith(stack.urls[name])]
                 for name in ("business_central", "finance_operations", "acumatica")}
    assert all(by_system.values()), {k: len(v) for k, v in by_system.items()}
    assert len(pages) == sum(map(len, by_system.values())), "a link points outside the sandboxes"

    # BC: the invoice the person resolved shows Draft -> Open by the bound action, the vendor still blocked
    [bc_invoice] = [p for u, p in pages.items() if "PI-108001" in u.replace("%27", "'")]
    assert "PI-108001" in bc_invoice and "status Draft → Open" in bc_invoice
    assert "posted by bound action Microsoft.NAV.post" in bc_invoice
    [bc_vendor] = [p for u, p in pages.items() if "V10000" in u.replace("%27", "'")]
    assert "blocked — → All · created in Business Central" in bc_vendor
    # F&O: the form of each document, in its legal entity, with the posting and the workflow's rejection
    fo_invoices = next(p for u, p in pages.items() if "mi=VendorInvoiceJournal" in u)
    assert fo_seeded["invoice"]["InvoiceNumber"] in fo_invoices and "Posted" in fo_invoices
    assert "posted in F&O (VendorInvoicePostedBusinessEvent)" in fo_invoices
    fo_orders = next(p for u, p in pages.items() if "mi=PurchTable" in u)
    assert "DocumentApprovalStatus InReview → Rejected" in fo_orders
    # Acumatica: the held bill's screen names it and its state
    held = acu_seeded["held_bill"]["ReferenceNbr"]
    [acu_bill] = [p for u, p in pages.items() if "ScreenId=AP301000" in u and f"RefNbr={held}" in u]
    assert held in acu_bill and "On Hold" in acu_bill and "created in Acumatica" in acu_bill
