"""Acumatica sandbox, driven with plain httpx the way Acumatica's docs show: sign-in (cookie and OAuth), value
objects, $filter with URL-encoded datetimeoffset literals, $select/$expand, $top/$skip paging, document states,
actions with 202 -> Location polling, endpoint versions, licence limits and faults, spec validation."""

from __future__ import annotations

import threading
from contextlib import closing
from datetime import timedelta
from itertools import pairwise
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from sandboxes.acumatica import AcumaticaSandbox
from sandboxes.acumatica.model import parse_datetime
from sandboxes.common import SandboxServer, sync_transport
from sandboxes.openapi import ResponseValidationError

EP = "/entity/Default/24.200.001"
GUID = "0a5f3b8e-2c61-4f5e-9a1b-7d1e0c9b4a11"


def vo(**fields):
    return {k: {"value": v} for k, v in fields.items()}


@pytest.fixture
def sb() -> AcumaticaSandbox:
    sb = AcumaticaSandbox(tenant="Company")
    sb.add_user("admin", "123")
    sb.add_vendor(VendorID="ACME", VendorName="Acme Supplies")
    return sb


def make_client(sb: AcumaticaSandbox, *, login: bool = True) -> httpx.Client:
    c = httpx.Client(transport=sync_transport(sb.app), base_url="http://acu.test")
    if login:
        r = c.post("/entity/auth/login", json={"name": "admin", "password": "123", "company": "Company",
                                               "branch": "HEADOFFICE"})
        assert r.status_code == 204
    return c


@pytest.fixture
def client(sb):
    with closing(make_client(sb)) as c:
        yield c


def http_error_shape(body: dict) -> None:
    assert isinstance(body["message"], str)
    assert set(body) <= {"message", "exceptionMessage", "exceptionType", "stackTrace", "modelState", "messageDetail"}


# ------------------------------------------------------------------------------------------------------
# sign-in
# ------------------------------------------------------------------------------------------------------
def test_unauthenticated_calls_get_401_and_the_cookie_session_works(sb):
    with closing(make_client(sb, login=False)) as c:
        r = c.get(f"{EP}/Bill")
        assert r.status_code == 401
        http_error_shape(r.json())
        bad = c.post("/entity/auth/login", json={"name": "admin", "password": "nope", "company": "Company"})
        assert bad.status_code == 500 and "Invalid credentials" in bad.json()["exceptionMessage"]
        ok = c.post("/entity/auth/login", json={"name": "admin", "password": "123", "company": "Company"})
        assert ok.status_code == 204
        assert ".ASPXAUTH" in ok.cookies and "ASP.NET_SessionId" in ok.cookies
        assert c.get(f"{EP}/Bill").status_code == 200
        assert c.post("/entity/auth/logout").status_code == 204
        assert c.get(f"{EP}/Bill").status_code == 401
        assert c.post("/entity/auth/logout").status_code == 204   # no session: still 204


def token_form(client_id: str, **extra) -> dict:
    return {"client_id": client_id, "client_secret": "s3cret", **extra}


def test_oauth_password_grant_refresh_rotation_and_expiry(sb):
    client_id = sb.register_connected_app(GUID, "s3cret")
    assert client_id == f"{GUID}@Company"
    with closing(make_client(sb, login=False)) as c:
        discovery = c.get("/identity/.well-known/openid-configuration").json()
        assert discovery["token_endpoint"].endswith("/identity/connect/token")
        r = c.post("/identity/connect/token", data=token_form(client_id, grant_type="password", username="admin",
                                                                  password="123", scope="api offline_access"))
        assert r.status_code == 200, r.text
        tok = r.json()
        assert tok["token_type"] == "Bearer" and tok["expires_in"] == 3600 and tok["refresh_token"]
        auth = {"Authorization": f"Bearer {tok['access_token']}"}
        assert c.get(f"{EP}/Vendor", headers=auth).status_code == 200
        # without offline_access: no refresh token
        r2 = c.post("/identity/connect/token", data=token_form(client_id, grant_type="password", username="admin",
                                                                   password="123", scope="api"))
        assert "refresh_token" not in r2.json()
        # rotating refresh tokens
        r3 = c.post("/identity/connect/token", data=token_form(client_id, grant_type="refresh_token",
                                                                   refresh_token=tok["refresh_token"]))
        assert r3.status_code == 200 and r3.json()["refresh_token"] != tok["refresh_token"]
        reused = c.post("/identity/connect/token", data=token_form(client_id, grant_type="refresh_token",
                                                                       refresh_token=tok["refresh_token"]))
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
        assert sb.refreshes == 2
        # expiry on the sandbox clock, and all at once
        sb.clock.advance(seconds=3601)
        assert c.get(f"{EP}/Vendor", headers=auth).status_code == 401
        r4 = c.post("/identity/connect/token", data=token_form(client_id, grant_type="refresh_token",
                                                                   refresh_token=r3.json()["refresh_token"]))
        new_auth = {"Authorization": f"Bearer {r4.json()['access_token']}"}
        assert c.get(f"{EP}/Vendor", headers=new_auth).status_code == 200
        sb.expire_access_tokens()
        assert c.get(f"{EP}/Vendor", headers=new_auth).status_code == 401
        # errors
        cc = c.post("/identity/connect/token", data=token_form(client_id, grant_type="client_credentials"))
        assert cc.status_code == 400 and cc.json()["error"] == "unsupported_grant_type"
        wrong = c.post("/identity/connect/token", data={"client_id": client_id, "client_secret": "x",
                                                        "grant_type": "password", "username": "admin",
                                                        "password": "123", "scope": "api"})
        assert wrong.json()["error"] == "invalid_client"
        badpw = c.post("/identity/connect/token", data=token_form(client_id, grant_type="password", username="admin",
                                                                      password="bad", scope="api"))
        assert badpw.json()["error"] == "invalid_grant"


def test_oauth_short_ttl(sb):
    client_id = sb.register_connected_app(GUID, "s3cret")
    sb.access_token_ttl_s = 5
    with closing(make_client(sb, login=False)) as c:
        tok = c.post("/identity/connect/token", data=token_form(client_id, grant_type="password", username="admin",
                                                                    password="123", scope="api")).json()
        assert tok["expires_in"] == 5
        auth = {"Authorization": f"Bearer {tok['access_token']}"}
        assert c.get(f"{EP}/Vendor", headers=auth).status_code == 200
        sb.clock.advance(seconds=6)
        assert c.get(f"{EP}/Vendor", headers=auth).status_code == 401


def test_oauth_authorization_code_flow(sb):
    redirect = "https://app.example/callback"
    client_id = sb.register_connected_app(GUID, "s3cret", [redirect])
    with closing(make_client(sb, login=False)) as c:
        r = c.get("/identity/connect/authorize", params={"client_id": client_id, "redirect_uri": redirect,
                                                         "response_type": "code", "scope": "api offline_access",
                                                         "state": "xyz"})
        assert r.status_code == 302
        loc = urlsplit(r.headers["location"])
        q = parse_qs(loc.query)
        assert f"{loc.scheme}://{loc.netloc}{loc.path}" == redirect and q["state"] == ["xyz"]
        form = token_form(client_id, grant_type="authorization_code", code=q["code"][0], redirect_uri=redirect)
        tok = c.post("/identity/connect/token", data=form)
        assert tok.status_code == 200 and tok.json()["refresh_token"]
        again = c.post("/identity/connect/token", data=form)
        assert again.json()["error"] == "invalid_grant"
        bad = c.get("/identity/connect/authorize", params={"client_id": client_id, "redirect_uri": "https://evil",
                                                           "response_type": "code"})
        assert bad.status_code == 400


# ------------------------------------------------------------------------------------------------------
# endpoints
# ------------------------------------------------------------------------------------------------------
def test_endpoint_versions(sb, client):
    listing = client.get("/entity").json()
    assert listing["endpoints"] == [{"name": "Default", "version": "24.200.001",
                                     "href": "/entity/Default/24.200.001/"}]
    r = client.get("/entity/Default/23.200.001/Bill")
    assert r.status_code == 404 and "23.200.001" in r.json()["message"]
    assert client.get("/entity/Other/24.200.001/Bill").status_code == 404
    assert client.get(f"{EP}/NoSuchEntity").status_code == 404
    assert client.get(f"{EP}/SalesOrder").status_code == 501     # in the spec, not emulated
    assert client.get(f"{EP}/swagger.json").json()["openapi"] == "3.0.1"
    two = AcumaticaSandbox(tenant="Company", endpoint_versions=("23.200.001", "24.200.001"))
    two.add_user("admin", "123")
    with closing(make_client(two)) as c2:
        assert [e["version"] for e in c2.get("/entity").json()["endpoints"]] == ["23.200.001", "24.200.001"]
        assert c2.get("/entity/Default/23.200.001/Vendor").status_code == 200


# ------------------------------------------------------------------------------------------------------
# records, value objects, queries
# ------------------------------------------------------------------------------------------------------
def test_vendor_put_get_by_keys_and_id_and_delete(sb, client):
    r = client.put(f"{EP}/Vendor", json={**vo(VendorID="NEWCO", VendorName="New Co", CashAccount="10200"),
                                         "F1099Box": {}})
    assert r.status_code == 200
    v = r.json()
    assert v["VendorID"] == {"value": "NEWCO"} and v["Status"] == {"value": "Active"}
    assert "F1099Box" not in v
    assert {"id", "rowNumber", "note", "custom", "_links"} <= set(v)
    assert client.get(f"{EP}/Vendor/NEWCO").json()["id"] == v["id"]
    assert client.get(f"{EP}/Vendor/{v['id']}").json()["VendorName"] == {"value": "New Co"}
    # update by key: {} leaves a field as it is; a value replaces it
    upd = client.put(f"{EP}/Vendor", json={"VendorID": {"value": "NEWCO"}, "VendorName": {},
                                           "CashAccount": {"value": "10300"}}).json()
    assert upd["id"] == v["id"] and upd["VendorName"] == {"value": "New Co"} and upd["CashAccount"]["value"] == "10300"
    assert parse_datetime(upd["LastModifiedDateTime"]["value"]) > parse_datetime(v["LastModifiedDateTime"]["value"])
    # update by id
    by_id = client.put(f"{EP}/Vendor", json={"id": v["id"], **vo(VendorName="Renamed")}).json()
    assert by_id["VendorName"]["value"] == "Renamed" and len(sb.documents("Vendor")) == 2
    # If-None-Match: * refuses an existing record; If-Match: * a missing one
    assert client.put(f"{EP}/Vendor", json=vo(VendorID="NEWCO"), headers={"If-None-Match": "*"}).status_code == 412
    assert client.put(f"{EP}/Vendor", json=vo(VendorID="NONE"), headers={"If-Match": "*"}).status_code == 412
    assert client.delete(f"{EP}/Vendor/NEWCO").status_code == 204
    assert client.get(f"{EP}/Vendor/NEWCO").status_code == 404
    assert client.delete(f"{EP}/Vendor/NEWCO").status_code == 404


def test_bill_by_keys_expand_and_select(sb, client):
    b = sb.add_bill(vendor="ACME", amount=150.0, lines=[100.0, 50.0], Description="Paper")
    assert b["ReferenceNbr"] == "000001" and b["Type"] == "Bill" and b["Status"] == "On Hold"
    r = client.get(f"{EP}/Bill/Bill/000001")
    assert r.status_code == 200
    bill = r.json()
    assert "Details" not in bill and bill["Amount"] == {"value": 150.0} and bill["Status"]["value"] == "On Hold"
    expanded = client.get(f"{EP}/Bill/Bill/000001", params={"$expand": "Details"}).json()
    assert [d["Amount"]["value"] for d in expanded["Details"]] == [100.0, 50.0]
    assert all("id" in d for d in expanded["Details"])
    sel = client.get(f"{EP}/Bill", params={"$select": "ReferenceNbr,Status,Details/Amount",
                                           "$expand": "Details"}).json()[0]
    assert set(sel) - {"id", "rowNumber", "note", "custom", "_links"} == {"ReferenceNbr", "Status", "Details"}
    assert set(sel["Details"][0]) - {"id", "rowNumber", "note", "custom"} == {"Amount"}
    assert client.get(f"{EP}/Bill/Bill/999999").status_code == 404
    assert client.get(f"{EP}/Bill/{GUID}").status_code == 404
    assert client.get(f"{EP}/Bill", params={"$select": "NoSuchField"}).status_code == 500
    assert client.get(f"{EP}/Bill", params={"$custom": "Document.UsrThing"}).status_code == 200


def test_filters(sb, client):
    sb.add_vendor(VendorID="BETA", VendorName="Beta's Goods", CashAccount="10200TG")
    sb.add_vendor(VendorID="GAMMA", VendorName="Gamma Ltd", Status="Inactive")
    for amount in (10.0, 20.0, 30.0):
        sb.add_bill(vendor="ACME", amount=amount)
    sb.add_bill(vendor="BETA", amount=40.0, hold=False)

    def refs(entity, flt, key="ReferenceNbr"):
        r = client.get(f"{EP}/{entity}", params={"$filter": flt})
        assert r.status_code == 200, r.text
        return [x[key]["value"] for x in r.json()]

    assert refs("Bill", "Amount gt 15 and Amount le 30") == ["000002", "000003"]
    assert refs("Bill", "(Amount eq 10 or Amount eq 40) and Vendor eq 'BETA'") == ["000004"]
    assert refs("Bill", "not (Hold eq true)") == ["000004"]
    assert refs("Bill", "Hold eq false") == ["000004"]
    assert refs("Bill", "Status ne 'On Hold'") == ["000004"]
    assert refs("Bill", "Amount ge 20.5") == ["000003", "000004"]
    assert refs("Vendor", "VendorName eq 'Beta''s Goods'", "VendorID") == ["BETA"]
    assert refs("Vendor", "substringof('amm', VendorName)", "VendorID") == ["GAMMA"]
    assert refs("Vendor", "startswith(VendorName,'Acme')", "VendorID") == ["ACME"]
    assert refs("Vendor", "endswith(VendorName, 'Ltd') eq true", "VendorID") == ["GAMMA"]
    assert refs("Vendor", "CashAccount eq '10200TG'", "VendorID") == ["BETA"]
    assert refs("Vendor", "Status eq 'Active' and VendorID ne 'ACME'", "VendorID") == ["BETA"]


def test_filter_on_last_modified_with_url_encoded_datetimeoffset(sb, client):
    first = sb.add_bill(vendor="ACME", amount=1.0)
    sb.clock.advance(seconds=10)
    second = sb.add_bill(vendor="ACME", amount=2.0)
    since = parse_datetime(first["LastModifiedDateTime"]).astimezone().isoformat(timespec="milliseconds")
    encoded = quote(since, safe="")
    assert "%3A" in encoded and ("%2B" in encoded or "-" in since[-6:])
    r = client.get(f"{EP}/Bill?$filter=LastModifiedDateTime%20gt%20datetimeoffset'{encoded}'")
    assert r.status_code == 200
    assert [x["ReferenceNbr"]["value"] for x in r.json()] == [second["ReferenceNbr"]]
    r = client.get(f"{EP}/Bill?$filter=LastModifiedDateTime%20ge%20datetimeoffset'{encoded}'")
    assert len(r.json()) == 2
    # a plain string against a date-time field: the OData type error, as HttpError
    bad = client.get(f"{EP}/Bill", params={"$filter": f"LastModifiedDateTime gt '{since}'"})
    assert bad.status_code == 500
    http_error_shape(bad.json())
    assert "incompatible types" in bad.json()["exceptionMessage"]
    assert client.get(f"{EP}/Bill", params={"$filter": "Amount eq 'ten'"}).status_code == 500
    # a detail field: not supported
    det = client.get(f"{EP}/Bill", params={"$filter": "Details/Amount gt 1"})
    assert det.status_code == 500 and "detail" in det.json()["exceptionMessage"]
    # syntax errors and unknown fields
    assert client.get(f"{EP}/Bill", params={"$filter": "Amount gt"}).status_code == 500
    assert client.get(f"{EP}/Bill", params={"$filter": "Nope eq 1"}).status_code == 500
    assert client.get(f"{EP}/Bill", params={"$filter": "(Amount eq 1"}).status_code == 500


def test_last_modified_is_strictly_increasing_even_within_a_millisecond(sb):
    stamps = [parse_datetime(sb.add_bill(vendor="ACME", amount=1.0)["LastModifiedDateTime"]) for _ in range(20)]
    assert all(b > a for a, b in pairwise(stamps))


def test_top_skip_paging_in_key_order_without_next_link(sb, client):
    for i in range(7):
        sb.add_bill(vendor="ACME", amount=float(i + 1))
    seen, skip = [], 0
    pages: list[tuple[str, int]] = []
    sb.on_page = lambda entity, s: pages.append((entity, s))
    while True:
        r = client.get(f"{EP}/Bill", params={"$top": "3", "$skip": str(skip)})
        body = r.json()
        assert isinstance(body, list) and "nextLink" not in r.text
        if not body:
            break
        assert [x["rowNumber"] for x in body] == list(range(1, len(body) + 1))
        seen += [x["ReferenceNbr"]["value"] for x in body]
        skip += 3
    assert seen == [f"{i:06d}" for i in range(1, 8)]
    assert pages == [("Bill", 0), ("Bill", 3), ("Bill", 6), ("Bill", 9)]


def test_on_page_lets_a_test_change_records_between_pages(sb, client):
    for i in range(4):
        sb.add_bill(vendor="ACME", amount=float(i + 1))

    def change(entity, skip):
        if skip == 0:
            sb.update_document("Bill", ("Bill", "000004"), Description="changed between pages")

    sb.on_page = change
    client.get(f"{EP}/Bill", params={"$top": "2"})
    page2 = client.get(f"{EP}/Bill", params={"$top": "2", "$skip": "2"}).json()
    assert page2[-1]["Description"]["value"] == "changed between pages"


def test_request_validation_against_the_spec(sb, client):
    r = client.put(f"{EP}/Bill", json={"Amount": {"value": "a lot"}})
    assert r.status_code == 400
    body = r.json()
    http_error_shape(body)
    assert body["modelState"] and "number" in body["exceptionMessage"]
    assert client.get(f"{EP}/Bill", params={"$top": "ten"}).status_code == 500
    assert client.put(f"{EP}/Bill", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert client.put(f"{EP}/Bill").status_code == 400    # the body is required
    assert client.post(f"{EP}/Bill/ReleaseBill", json={"parameters": {}}).status_code == 400  # entity required


def test_a_response_that_does_not_match_the_spec_raises(sb, client, monkeypatch):
    import sandboxes.acumatica.app as app_module

    sb.add_bill(vendor="ACME", amount=5.0)
    real_wrap = app_module.wrap

    def broken(*args, **kwargs):
        out = real_wrap(*args, **kwargs)
        out["Amount"] = {"value": "five"}
        return out

    monkeypatch.setattr(app_module, "wrap", broken)
    with pytest.raises(ResponseValidationError):
        client.get(f"{EP}/Bill/Bill/000001")


# ------------------------------------------------------------------------------------------------------
# document states
# ------------------------------------------------------------------------------------------------------
def test_bill_hold_balance_and_approval(sb, client):
    sb.add_bill(vendor="ACME", amount=120.0, lines=[100.0], tax_total=10.0)   # 100 + 10 != 120
    r = client.put(f"{EP}/Bill", json=vo(Type="Bill", ReferenceNbr="000001", Hold=False))
    assert r.status_code == 422
    body = r.json()
    assert body["Amount"]["error"] == "The document is out of balance." and body["Amount"]["value"] == 120.0
    assert sb.get_document("Bill", ("Bill", "000001"))["Status"] == "On Hold"
    with pytest.raises(ValueError, match="out of balance"):
        sb.update_document("Bill", ("Bill", "000001"), Hold=False)
    ok = client.put(f"{EP}/Bill", json=vo(Type="Bill", ReferenceNbr="000001", Hold=False, Amount=110.0))
    assert ok.status_code == 200 and ok.json()["Status"]["value"] == "Balanced"
    # back on hold, then approval on
    assert sb.update_document("Bill", ("Bill", "000001"), Hold=True)["Status"] == "On Hold"
    sb.approval_required = {"Bill"}
    pending = client.put(f"{EP}/Bill", json=vo(Type="Bill", ReferenceNbr="000001", Hold=False)).json()
    assert pending["Status"]["value"] == "Pending Approval"
    assert sb.approve("Bill", ("Bill", "000001"))["Status"] == "Balanced"
    with pytest.raises(ValueError):
        sb.approve("Bill", ("Bill", "000001"))
    # an edit that unbalances a balanced bill fails as well
    r = client.put(f"{EP}/Bill", json=vo(Type="Bill", ReferenceNbr="000001", Amount=1.0))
    assert r.status_code == 422
    # reject
    b2 = sb.add_bill(vendor="ACME", amount=5.0, hold=False)
    assert b2["Status"] == "Pending Approval"
    assert sb.reject("Bill", b2["id"])["Status"] == "Rejected"
    assert sb.update_document("Bill", b2["id"], Hold=True)["Status"] == "On Hold"


def test_bill_created_through_put_with_details(sb, client):
    r = client.put(f"{EP}/Bill?$expand=Details", json={
        **vo(Vendor="ACME", VendorRef="INV-1", Description="API bill", Amount=75.0, Date="2024-05-01"),
        "Details": [vo(Qty=3.0, UnitCost=20.0, Description="widgets"), vo(Amount=15.0)]})
    assert r.status_code == 200, r.text
    bill = r.json()
    assert bill["ReferenceNbr"]["value"] == "000001" and bill["Status"]["value"] == "On Hold"
    assert [d["Amount"]["value"] for d in bill["Details"]] == [60.0, 15.0]
    assert bill["Date"]["value"].startswith("2024-05-01T00:00:00")
    line = bill["Details"][0]["id"]
    upd = client.put(f"{EP}/Bill?$expand=Details", json={
        **vo(Type="Bill", ReferenceNbr="000001", Hold=False),
        "Details": [{"id": line, **vo(Qty=3.0)}, {"id": bill["Details"][1]["id"], "delete": True},
                    vo(Amount=15.0, Description="new line")]}).json()
    assert [d["Amount"]["value"] for d in upd["Details"]] == [60.0, 15.0]
    assert upd["Details"][1]["Description"]["value"] == "new line" and upd["Status"]["value"] == "Balanced"


def test_purchase_order_control_total(sb, client):
    po = sb.add_purchase_order(vendor="ACME", lines=[10.0, 5.0], control_total=20.0)
    assert po["Type"] == "Normal" and po["OrderTotal"] == 15.0 and po["Status"] == "On Hold"
    r = client.put(f"{EP}/PurchaseOrder", json=vo(Type="Normal", OrderNbr=po["OrderNbr"], Hold=False))
    assert r.status_code == 422 and r.json()["ControlTotal"]["error"] == "The document is out of balance."
    r = client.put(f"{EP}/PurchaseOrder", json=vo(Type="Normal", OrderNbr=po["OrderNbr"], Hold=False,
                                                  ControlTotal=15.0))
    assert r.json()["Status"]["value"] == "Open"
    sb.approval_required = {"PurchaseOrder"}
    po2 = sb.add_purchase_order(vendor="ACME", lines=[1.0], hold=False)
    assert po2["Status"] == "Pending Approval"
    assert sb.approve("PurchaseOrder", ("Normal", po2["OrderNbr"]))["Status"] == "Open"


def test_check_states_and_release_from_the_ui(sb):
    chk = sb.add_check(vendor="ACME", amount=50.0)
    assert chk["Type"] == "Payment" and chk["Status"] == "On Hold" and chk["PaymentAmount"] == 50.0
    with pytest.raises(ValueError, match="invalid"):
        sb.release("Check", chk["id"])
    assert sb.update_document("Check", chk["id"], Hold=False)["Status"] == "Balanced"
    assert sb.release("Check", ("Payment", chk["ReferenceNbr"]))["Status"] == "Closed"
    with pytest.raises(ValueError):
        sb.update_document("Check", chk["id"], PaymentAmount=1.0)


# ------------------------------------------------------------------------------------------------------
# actions
# ------------------------------------------------------------------------------------------------------
def release(client, entity, action, type_, nbr):
    return client.post(f"{EP}/{entity}/{action}",
                       json={"entity": vo(Type=type_, ReferenceNbr=nbr), "parameters": {}})


def test_release_bill_202_location_polling(sb, client):
    sb.add_bill(vendor="ACME", amount=10.0, hold=False)
    sb.action_polls = 2
    r = release(client, "Bill", "ReleaseBill", "Bill", "000001")
    assert r.status_code == 202
    loc = r.headers["Location"]
    assert loc.startswith(f"{EP}/Bill/ReleaseBill/status/")
    assert [client.get(loc).status_code for _ in range(3)] == [202, 202, 204]
    done = client.get(loc)
    assert done.status_code == 204
    assert client.get(done.headers["Location"]).json()["Status"]["value"] == "Open"
    assert sb.action_calls("Bill", "ReleaseBill") == 1
    assert client.get(f"{EP}/Bill/ReleaseBill/status/{GUID}").status_code == 404


def test_release_in_the_wrong_state_fails_through_the_status(sb, client):
    sb.add_bill(vendor="ACME", amount=10.0)   # on hold
    r = release(client, "Bill", "ReleaseBill", "Bill", "000001")
    assert r.status_code == 202
    loc = r.headers["Location"]
    assert client.get(loc).status_code == 202
    failed = client.get(loc)
    assert failed.status_code == 500
    http_error_shape(failed.json())
    assert "status is invalid" in failed.json()["exceptionMessage"].lower()
    assert sb.get_document("Bill", ("Bill", "000001"))["Status"] == "On Hold"
    # action_polls = 0: the POST answers itself
    sb.action_polls = 0
    r = release(client, "Bill", "ReleaseBill", "Bill", "000001")
    assert r.status_code == 500 and "invalid" in r.json()["exceptionMessage"]
    sb.update_document("Bill", ("Bill", "000001"), Hold=False)
    r = release(client, "Bill", "ReleaseBill", "Bill", "000001")
    assert r.status_code == 204 and sb.get_document("Bill", ("Bill", "000001"))["Status"] == "Open"
    assert sb.action_calls("Bill", "ReleaseBill") == 3


def test_release_check_void_check_unknown_actions(sb, client):
    chk = sb.add_check(vendor="ACME", amount=5.0, hold=False)
    sb.action_polls = 0
    assert release(client, "Check", "ReleaseCheck", "Payment", chk["ReferenceNbr"]).status_code == 204
    assert sb.get_document("Check", chk["id"])["Status"] == "Closed"
    void = release(client, "Check", "VoidCheck", "Payment", chk["ReferenceNbr"])
    assert void.status_code == 500 and "not emulate" in void.json()["exceptionMessage"]
    unknown = client.post(f"{EP}/Bill/MakeItRain", json={"entity": vo(Type="Bill", ReferenceNbr="000001")})
    assert unknown.status_code == 404
    http_error_shape(unknown.json())
    missing = release(client, "Bill", "ReleaseBill", "Bill", "424242")
    assert missing.status_code == 500
    assert sb.action_calls("Check", "VoidCheck") == 1


def test_approve_action_answers_204_with_the_record_location(sb, client):
    sb.approval_required = {"Bill"}
    sb.add_bill(vendor="ACME", amount=10.0, hold=False)
    r = client.post(f"{EP}/Bill/Approve", json={"entity": vo(Type="Bill", ReferenceNbr="000001"), "parameters": {}})
    assert r.status_code == 204
    assert client.get(r.headers["Location"]).json()["Status"]["value"] == "Balanced"
    again = client.post(f"{EP}/Bill/Approve", json={"entity": vo(Type="Bill", ReferenceNbr="000001")})
    assert again.status_code == 500


# ------------------------------------------------------------------------------------------------------
# limits and faults
# ------------------------------------------------------------------------------------------------------
def test_requests_per_minute_budget(sb, client):
    sb.limits.requests_per_minute = 3
    codes = [client.get(f"{EP}/Vendor").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = client.get(f"{EP}/Vendor")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    http_error_shape(r.json())
    assert sb.served_429 == 3
    sb.clock.advance(seconds=61)
    assert client.get(f"{EP}/Vendor").status_code == 200
    sb.limits.requests_per_minute = None
    assert all(client.get(f"{EP}/Vendor").status_code == 200 for _ in range(5))
    assert sb.calls >= 12 and sb.calls_by_path[f"{EP}/Vendor"] >= 11


def test_concurrent_request_cap(sb):
    sb.limits.max_concurrent = 2
    sb.faults.latency_s = 0.5
    with SandboxServer(sb.app) as server:
        with httpx.Client(base_url=server.base_url) as c:
            assert c.post("/entity/auth/login", json={"name": "admin", "password": "123"}).status_code == 204
            cookies = dict(c.cookies)
        codes: list[int] = []

        def call():
            with httpx.Client(base_url=server.base_url, cookies=cookies) as c2:
                codes.append(c2.get(f"{EP}/Vendor").status_code)

        threads = [threading.Thread(target=call) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(codes) == [200, 200, 429, 429, 429]
    assert sb.served_429 == 3


def test_common_faults(sb, client):
    sb.faults.rate_limit_next = 1
    r = client.get(f"{EP}/Vendor")
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    sb.faults.server_error_next = 1
    assert client.get(f"{EP}/Vendor").status_code == 503
    assert client.get(f"{EP}/Vendor").status_code == 200
    assert sb.served_429 == 1


def test_seeding_api_contract(sb):
    v = sb.add_vendor(VendorName="Auto numbered")
    assert v["VendorID"] and v["id"] and v["Status"] == "Active"
    b = sb.add_bill(vendor=v["VendorID"], amount=30.0, lines=[10.0, 20.0])
    assert [d["Amount"] for d in b["Details"]] == [10.0, 20.0]
    assert sb.get_document("Bill", b["id"])["ReferenceNbr"] == b["ReferenceNbr"]
    assert [d["ReferenceNbr"] for d in sb.documents("Bill")] == [b["ReferenceNbr"]]
    b2 = sb.add_bill(vendor=v["VendorID"], amount=1.0, hold=False)
    assert b2["ReferenceNbr"] == "000002" and b2["Status"] == "Balanced"
    assert sb.release("Bill", ("Bill", "000002"))["Status"] == "Open"
    with pytest.raises(ValueError):
        sb.add_bill(vendor="ACME", amount=5.0, lines=[4.0], hold=False)
    with pytest.raises(KeyError):
        sb.get_document("Bill", ("Bill", "999999"))
    t0 = parse_datetime(sb.get_document("Bill", b["id"])["LastModifiedDateTime"])
    sb.clock.advance(timedelta(minutes=5).total_seconds())
    t1 = parse_datetime(sb.update_document("Bill", b["id"], Description="x")["LastModifiedDateTime"])
    assert t1 - t0 >= timedelta(minutes=5) - timedelta(milliseconds=50)   # stamps may run a few ms ahead
