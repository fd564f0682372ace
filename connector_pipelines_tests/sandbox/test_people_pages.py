"""The sandboxes' people pages: each lists its documents with their state and history, the changes made through the
API named as such (PATCH, bound action, PUT, the connector's updates), at the URL form the product's links use —
outside the API's faults."""

from __future__ import annotations

import html
import re
from contextlib import closing

import httpx
import pytest

from sandboxes.acumatica import AcumaticaSandbox
from sandboxes.business_central import BusinessCentralSandbox
from sandboxes.common import sync_transport
from sandboxes.finance_operations import FinanceOperationsSandbox
from sandboxes.jira import JiraSandbox
from sandboxes.monday import MondaySandbox


def text(r: httpx.Response) -> str:
    """What a person reads: tags dropped, entities decoded, spaces collapsed."""
    assert r.headers["content-type"].startswith("text/html"), r.headers
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", r.text.split("</style>")[-1])))


def client_for(app, base: str, **headers: str) -> httpx.Client:
    return httpx.Client(transport=sync_transport(app), base_url=base, headers=headers)


# -- Business Central -------------------------------------------------------------------------------------
def test_bc_web_client_page_shows_each_document_with_its_state_and_how_it_changed():
    bc = BusinessCentralSandbox()
    bc.register_environment("t1", "production")
    bc.add_token("tok")
    cid = bc.add_company("CRONUS USA, Inc.")
    vendor = bc.add_vendor(cid, number="V1", displayName="Fabrikam", blocked="All")
    invoice = bc.add_purchase_invoice(cid, number="PI-1", status="Draft", vendorName="Fabrikam",
                                      totalAmountIncludingTax=1234.5)
    with closing(client_for(bc.app, "http://bc.test", Authorization="Bearer tok")) as c:
        api = f"/v2.0/t1/production/api/v2.0/companies({cid})"
        etag = c.get(f"{api}/vendors({vendor['id']})").headers["ETag"]
        assert c.patch(f"{api}/vendors({vendor['id']})", json={"blocked": "_x0020_"},
                       headers={"If-Match": etag}).status_code == 200
        assert c.post(f"{api}/purchaseInvoices({invoice['id']})/Microsoft.NAV.post").status_code == 204

        # the product's link form: <web client>/?company=…&page=51&filter='No.' IS '…'
        card = c.get("/t1/production/", params={"company": "CRONUS USA, Inc.", "page": "51",
                                                "filter": "'No.' IS 'PI-1'"})
        assert card.status_code == 200
        page = text(card)
        assert "PI-1" in page and "Fabrikam" in page and "1234.5" in page and "Open" in page
        assert "status — → Draft · created in Business Central" in page
        assert "status Draft → Open · posted by bound action Microsoft.NAV.post (API)" in page
        assert "V1" not in page.replace("PI-1", "")          # one document: the one the link names
        vendors = text(c.get("/t1/production/", params={"company": "CRONUS USA, Inc.", "page": "26",
                                                         "filter": "'No.' IS 'V1'"}))
        assert 'blocked All → " " · by PATCH (API)' in vendors
        everything = text(c.get("/_sandbox/"))
        assert all(s in everything for s in ("Vendors (1)", "Purchase invoices (1)", "Purchase orders (0)", "PI-1"))
        # a link to something that is not there is a 404, not an empty page
        assert c.get("/t1/production/", params={"filter": "'No.' IS 'PI-404'"}).status_code == 404
        assert c.get("/t1/staging/").status_code == 404
        # people read pages outside the API's faults and call counters
        bc.faults.rate_limit_next = 3
        calls = bc.calls_total
        assert c.get("/_sandbox/").status_code == 200
        assert bc.faults.rate_limit_next == 3 and bc.calls_total == calls


# -- Finance and Operations -------------------------------------------------------------------------------
def test_fo_web_client_page_lists_a_form_s_documents_in_a_legal_entity_with_their_history():
    fo = FinanceOperationsSandbox()
    for area in ("usmf", "demf"):
        fo.add_legal_entity(area)
    fo.add_token("tok")
    fo.deploy_workflow_resubmit()
    fo.add_vendor("usmf", VendorAccountNumber="US-101", VendorOrganizationName="Fabrikam", OnHoldStatus="All")
    fo.add_vendor("demf", VendorAccountNumber="DE-1", VendorOrganizationName="Contoso GmbH")
    invoice = fo.add_vendor_invoice("usmf", VendorAccount="US-101", InvoiceNumber="INV-7", lines=[{"Amount": 5.0}])
    fo.add_purchase_order("usmf", PurchaseOrderNumber="PO-72", DocumentApprovalStatus="InReview")
    fo.post_vendor_invoice("usmf", invoice["HeaderReference"])
    fo.reject_purchase_order_workflow("usmf", "PO-72")
    with closing(client_for(fo.app, "http://fo.test", Authorization="Bearer tok")) as c:
        assert c.patch("/data/VendorsV2(dataAreaId='usmf',VendorAccountNumber='US-101')",
                       json={"OnHoldStatus": "Never"}).status_code == 204
        assert c.post("/data/PurchaseOrderHeadersV2(dataAreaId='usmf',PurchaseOrderNumber='PO-72')"
                      "/Microsoft.Dynamics.DataEntities.SubmitToWorkflow", json={"Comment": "fixed"}).status_code == 204

        vendors = text(c.get("/", params={"cmp": "usmf", "mi": "VendTableListPage"}))
        assert "US-101" in vendors and "DE-1" not in vendors
        assert "OnHoldStatus — → All · created in Finance and Operations" in vendors
        assert "OnHoldStatus All → Never · by PATCH (API)" in vendors
        invoices = text(c.get("/", params={"cmp": "usmf", "mi": "VendorInvoiceJournal"}))
        assert "INV-7" in invoices and "Posted" in invoices
        assert "Posted No → Yes · posted in F&O (VendorInvoicePostedBusinessEvent)" in invoices
        orders = text(c.get("/", params={"cmp": "USMF", "mi": "PurchTable"}))
        assert "DocumentApprovalStatus InReview → Rejected · rejected by the approval workflow" in orders
        assert "DocumentApprovalStatus Rejected → InReview · by bound action SubmitToWorkflow (API) · comment: fixed" \
            in orders
        everything = text(c.get("/_sandbox/"))
        assert "US-101" in everything and "DE-1" in everything and "Voucher transactions (0)" in everything
        assert c.get("/", params={"mi": "NoSuchForm"}).status_code == 404
        assert c.get("/", params={"cmp": "xxxx"}).status_code == 404
        fo.faults.server_error_next = 2
        assert c.get("/", params={"cmp": "usmf"}).status_code == 200 and fo.faults.server_error_next == 2


# -- Acumatica --------------------------------------------------------------------------------------------
def test_acumatica_screen_page_shows_the_document_its_status_and_the_api_s_changes():
    acu = AcumaticaSandbox(tenant="Company")
    acu.add_user("admin", "123")
    acu.add_vendor(VendorID="V-FAB", VendorName="Fabrikam")
    bill = acu.add_bill(vendor="V-FAB", amount=700.0, VendorRef="FAB-1")
    other = acu.add_bill(vendor="V-FAB", amount=90.0, hold=False)
    with closing(client_for(acu.app, "http://acu.test")) as c:
        assert c.post("/entity/auth/login", json={"name": "admin", "password": "123", "company": "Company"}
                      ).status_code == 204
        body = {"Type": {"value": "Bill"}, "ReferenceNbr": {"value": bill["ReferenceNbr"]}, "Hold": {"value": False}}
        assert c.put("/entity/Default/24.200.001/Bill", json=body).status_code == 200

        page = c.get("/Main", params={"CompanyID": "Company", "ScreenId": "AP301000", "DocType": "INV",
                                      "RefNbr": bill["ReferenceNbr"]})
        assert page.status_code == 200
        shown = text(page)
        assert bill["ReferenceNbr"] in shown and "FAB-1" in shown and other["ReferenceNbr"] not in shown
        assert "Status — → On Hold , Hold — → True · created in Acumatica" in shown
        assert "Hold True → False , Status On Hold → Balanced · by PUT (API)" in shown
        assert "V-FAB" in text(c.get("/Main", params={"ScreenId": "AP303000", "AcctCD": "V-FAB"}))
        assert c.get("/Main", params={"ScreenId": "AP301000", "RefNbr": "999999"}).status_code == 404
        assert c.get("/Main", params={"CompanyID": "Elsewhere", "ScreenId": "AP301000"}).status_code == 404
        everything = text(c.get("/_sandbox/"))
        assert "Bills and adjustments (2)" in everything and "Vendors (1)" in everything


# -- Jira -------------------------------------------------------------------------------------------------
CLOUD = "cloud-1"


@pytest.fixture
def jira() -> JiraSandbox:
    sb = JiraSandbox()
    sb.add_site(CLOUD, "acme", "http://jira.test")
    sb.add_project(CLOUD, "FIN", "Finance")
    sb.add_custom_field(CLOUD, "ERP Document Number", "textfield")
    sb.add_user(CLOUD, "acc-1", "Avery Accounts")
    sb.add_token("tok", account_id="acc-1")
    return sb


def test_jira_browse_page_shows_the_issue_its_fields_live_links_and_every_comment(jira):
    field = next(iter(jira.sites[CLOUD].custom_fields))
    description = {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
        {"type": "text", "text": "Open the record in the ERP",
         "marks": [{"type": "link", "attrs": {"href": "http://bc.test/t/production/?page=51"}}]}]}]}
    with closing(client_for(jira.app, "http://jira.test", Authorization="Bearer tok")) as c:
        api = f"/ex/jira/{CLOUD}/rest/api/3"
        created = c.post(f"{api}/issue", json={"fields": {
            "project": {"key": "FIN"}, "issuetype": {"name": "Task"}, "summary": "PI-108001 awaiting review",
            "description": description, field: "PI-108001"}}).json()
        key = created["key"]
        jira.transition_as_user(CLOUD, key, "Done")
        comment = {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
            {"type": "text", "text": "connector_pipelines: Purchase invoice PI-108001 posted (was Draft)"}]}]}
        assert c.post(f"{api}/issue/{key}/comment", json={"body": comment}).status_code == 201

        people = c.get("/_sandbox/")
        assert f"href='/browse/{key}'" in people.text        # the people page links each issue
        page = c.get(f"/browse/{key}")
        assert page.status_code == 200
        shown = text(page)
        assert all(s in shown for s in (key, "PI-108001 awaiting review", "Done", "ERP Document Number",
                                        "Comments (1)", "connector_pipelines: Purchase invoice PI-108001 posted",
                                        "status To Do → Done", "Avery Accounts"))
        assert "href='http://bc.test/t/production/?page=51'" in page.text   # the description's link is live
        assert "Move to Done" not in page.text                                # it is done
        # a person comments from the page and comes back to it
        r = c.post("/_sandbox/comment", data={"cloud_id": CLOUD, "key": key, "text": "thanks",
                                              "redirect": f"/browse/{key}"})
        assert r.status_code == 303 and r.headers["location"] == f"/browse/{key}"
        assert "Comments (2)" in text(c.get(f"/browse/{key}"))
        assert c.get("/browse/FIN-999").status_code == 404
        # never a redirect to another host
        r = c.post("/_sandbox/comment", data={"cloud_id": CLOUD, "key": key, "text": "x",
                                              "redirect": "//evil.example/"})
        assert r.headers["location"] == "/_sandbox/"
        jira.faults.rate_limit_next = 2
        assert c.get(f"/browse/{key}").status_code == 200 and jira.faults.rate_limit_next == 2


# -- monday.com -------------------------------------------------------------------------------------------
def test_monday_item_page_shows_columns_live_links_updates_and_the_activity_log():
    sb = MondaySandbox(api_versions=("2026-10",))
    sb.add_token("tok", user_id="9001")
    board = sb.add_board("Vendor invoices", [
        {"id": "status", "title": "Status", "type": "status", "settings": {"labels": {"0": "Posted", "1": "Query"}}},
        {"id": "erp_link", "title": "ERP link", "type": "link"}], board_id="4815162342")
    with closing(client_for(sb.app, "http://monday.test", Authorization="tok", **{"API-Version": "2026-10"})) as c:
        made = c.post("/v2", json={"query": """mutation ($b: ID!, $v: JSON!) {
            create_item(board_id: $b, item_name: "INV-7 Fabrikam", column_values: $v) { id } }""",
                                   "variables": {"b": board, "v": {"status": {"label": "Posted"}, "erp_link": {
                                       "url": "http://fo.test/?cmp=usmf&mi=VendorInvoiceJournal",
                                       "text": "Open in F&O"}}}}).json()
        item = made["data"]["create_item"]["id"]
        c.post("/v2", json={"query": 'mutation ($i: ID!) { create_update(item_id: $i, body: "note refused: posted") '
                                     '{ id } }', "variables": {"i": item}})
        sb.change_column_as_user(item, "status", {"label": "Query"})

        assert f"href='/boards/{board}/pulses/{item}'" in c.get("/_sandbox/").text
        page = c.get(f"/boards/{board}/pulses/{item}")
        assert page.status_code == 200
        shown = text(page)
        assert all(s in shown for s in ("INV-7 Fabrikam", "Updates (1)", "note refused: posted",
                                        "created by API (user 9001)", "Status Posted → Query · changed by a person",
                                        "update posted by API (user 9001)"))
        assert "href='http://fo.test/?cmp=usmf&amp;mi=VendorInvoiceJournal'" in page.text
        r = c.get(f"/pulses/{item}")
        assert r.status_code == 302 and r.headers["location"] == f"/boards/{board}/pulses/{item}"
        assert c.get(f"/boards/{board}/pulses/1").status_code == 404
        assert "INV-7 Fabrikam" in text(c.get(f"/boards/{board}"))
