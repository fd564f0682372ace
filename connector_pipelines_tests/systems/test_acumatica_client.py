"""AcumaticaClient: value objects both ways, literals, stable $top/$skip paging (a mock server and the sandbox),
reads by key in few calls, PUT with 422, actions (202 + Location polling, 204), the endpoint check, 429 storms,
the licence's concurrency cap and a token that expires mid-run; OAuth and the cookie session."""

from __future__ import annotations

import json
import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.http import RetrySettings
from connector_pipelines.core.vault import Vault
from connector_pipelines.systems.acumatica import (
    KEY_FIELDS,
    SCREENS,
    AcumaticaActionError,
    AcumaticaApiError,
    AcumaticaClient,
    AcumaticaCookieSession,
    AcumaticaEndpointError,
    AcumaticaError,
    AcumaticaTokenProvider,
    AcumaticaValidationError,
    datetimeoffset,
    field_errors,
    filter_eq_any,
    literal,
    record_url,
    unwrap,
    wrap,
)
from sandboxes.acumatica import AcumaticaSandbox
from sandboxes.common import sync_transport

INSTANCE = "http://acumatica.test"
TENANT = "Company"
SECRET = "connected-app-secret~0123"
USER, PASSWORD = "admin", "123"
CRED = "acumatica:company"
TINY_RETRY = RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.05, max_retry_after_s=0.05)


# ================================================================================================
# value objects, literals, links (no server)
# ================================================================================================

WIRE_BILL = {
    "id": "0cdfa550-e33c-4c0c-940e-10758d3a0df6",
    "rowNumber": 1,
    "note": {"value": ""},
    "Status": {"value": "On Hold"},
    "Hold": {"value": True},
    "Amount": {"value": 100.5},
    "Description": {},
    "Details": [
        {"id": "d1", "rowNumber": 1, "Qty": {"value": 1.0}, "Description": {"value": "Line 1"}, "Project": {}},
        {"id": "d2", "rowNumber": 2, "Qty": {"value": 2.0}, "Description": {}},
    ],
    "MainContact": {"id": "c1", "Email": {"value": "ap@example.com"}, "Address": {"City": {"value": "Oslo"}}},
    "custom": {"Document": {"UsrRoute": {"type": "CustomStringField", "value": "A-1"}}},
    "files": [{"id": "f1", "filename": "Bill/000001/scan.pdf", "href": "/files/f1"}],
    "_links": {"self": "/entity/Default/24.200.001/Bill/0cdfa550"},
}

FLAT_BILL = {
    "id": "0cdfa550-e33c-4c0c-940e-10758d3a0df6",
    "rowNumber": 1,
    "note": "",
    "Status": "On Hold",
    "Hold": True,
    "Amount": 100.5,
    "Description": None,
    "Details": [
        {"id": "d1", "rowNumber": 1, "Qty": 1.0, "Description": "Line 1", "Project": None},
        {"id": "d2", "rowNumber": 2, "Qty": 2.0, "Description": None},
    ],
    "MainContact": {"id": "c1", "Email": "ap@example.com", "Address": {"City": "Oslo"}},
    "custom": {"Document": {"UsrRoute": "A-1"}},
    "files": [{"id": "f1", "filename": "Bill/000001/scan.pdf", "href": "/files/f1"}],
    "_links": {"self": "/entity/Default/24.200.001/Bill/0cdfa550"},
}


def test_unwrap_turns_value_objects_into_a_flat_record():
    assert unwrap(WIRE_BILL) == FLAT_BILL
    assert unwrap({"Status": {"value": "On Hold"}}) == {"Status": "On Hold"}
    assert unwrap({}) is None and unwrap({"value": 0}) == 0 and unwrap([{"A": {"value": False}}]) == [{"A": False}]
    assert unwrap({"Vendor": {"value": "X", "error": "'X' cannot be found."}}) == {"Vendor": "X"}


def test_wrap_is_the_inverse_for_writes():
    wire = wrap(FLAT_BILL)
    assert wire["Status"] == {"value": "On Hold"} and wire["Hold"] == {"value": True}
    assert wire["Description"] == {"value": None}   # a None clears the field (leave the key out to keep it)
    assert wire["id"] == FLAT_BILL["id"] and wire["rowNumber"] == 1 and wire["files"] == FLAT_BILL["files"]
    assert wire["Details"][0] == {"id": "d1", "rowNumber": 1, "Qty": {"value": 1.0},
                                  "Description": {"value": "Line 1"}, "Project": {"value": None}}
    assert wire["MainContact"] == {"id": "c1", "Email": {"value": "ap@example.com"},
                                   "Address": {"City": {"value": "Oslo"}}}
    assert wire["custom"] == {"Document": {"UsrRoute": {"type": "CustomStringField", "value": "A-1"}}}
    assert unwrap(wire) == FLAT_BILL                       # round trip
    assert wrap(wire) == wire                              # wrapping twice changes nothing
    moment = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    guid = uuid.UUID("0cdfa550-e33c-4c0c-940e-10758d3a0df6")
    typed = wrap({"Date": moment, "DueDate": date(2026, 12, 31), "Amount": Decimal("12.50"), "Qty": Decimal(3),
                  "NoteID": guid, "Details": [{"id": "d9", "delete": True}],
                  "custom": {"Document": {"UsrFlag": True, "UsrCount": 3, "UsrRate": 1.5, "UsrWhen": moment}}})
    assert typed["Date"] == {"value": "2026-12-03T10:00:00+00:00"} and typed["DueDate"] == {"value": "2026-12-31"}
    assert typed["Amount"] == {"value": 12.5} and typed["Qty"] == {"value": 3}
    assert typed["NoteID"] == {"value": str(guid)}
    assert typed["Details"] == [{"id": "d9", "delete": True}]   # delete a detail line
    assert {k: v["type"] for k, v in typed["custom"]["Document"].items()} == {
        "UsrFlag": "CustomBooleanField", "UsrCount": "CustomIntField", "UsrRate": "CustomDecimalField",
        "UsrWhen": "CustomDateTimeField"}
    json.dumps(typed)   # everything is JSON now


def test_field_errors_collects_every_error_of_a_refused_record():
    body = {"id": "x", "error": "Inserting 'Bill' record raised at least one error.",
            "Amount": {"value": 10, "error": "The document is out of balance."}, "Vendor": {"value": "V1"},
            "Details": [{"Qty": {"value": 1}}, {"Qty": {"value": -1, "error": "Must be positive."}}],
            "custom": {"Document": {"UsrX": {"type": "CustomStringField", "value": "", "error": "Required."}}}}
    assert field_errors(body) == {"": "Inserting 'Bill' record raised at least one error.",
                                  "Amount": "The document is out of balance.",
                                  "Details[1].Qty": "Must be positive.", "custom.Document.UsrX": "Required."}


def test_literals_and_filters():
    assert literal("O'Brien") == "'O''Brien'" and literal(True) == "true" and literal(False) == "false"
    assert literal(12) == "12" and literal(Decimal("1.50")) == "1.50" and literal(None) == "null"
    assert literal(datetime(2026, 12, 3, 10, 0, tzinfo=UTC)) == "datetimeoffset'2026-12-03T10:00:00.000+00:00'"
    assert datetimeoffset(datetime(2026, 12, 3, 12, 0, 0, 5000, tzinfo=timezone(timedelta(hours=2)))) == \
        "datetimeoffset'2026-12-03T10:00:00.005+00:00'"
    assert literal(datetime(2026, 12, 3, 10, 0)) == "datetimeoffset'2026-12-03T10:00:00.000+00:00'"  # naive = UTC
    assert filter_eq_any("VendorID", ["A", "B'C", "A"]) == "(VendorID eq 'A' or VendorID eq 'B''C')"
    with pytest.raises(ValueError):
        filter_eq_any("VendorID", [])
    # the literal travels URL-encoded (a raw '+' would arrive as a space)
    url = httpx.Request("GET", INSTANCE, params={"$filter": f"X ge {literal(datetime(2026, 1, 1, tzinfo=UTC))}"}).url
    assert "%2B00%3A00" in str(url) and parse_qs(urlsplit(str(url)).query)["$filter"] == [
        "X ge datetimeoffset'2026-01-01T00:00:00.000+00:00'"]


def test_record_url_links_back_to_the_screen():
    assert SCREENS == {"Bill": "AP301000", "Check": "AP302000", "PurchaseOrder": "PO301000", "Vendor": "AP303000"}
    assert KEY_FIELDS["Bill"] == ("Type", "ReferenceNbr") and KEY_FIELDS["Vendor"] == ("VendorID",)
    assert record_url("https://erp.example.com/AcumaticaERP/", "Bill", {"Type": "Bill", "ReferenceNbr": "000123"}) \
        == "https://erp.example.com/AcumaticaERP/Main?ScreenId=AP301000&DocType=INV&RefNbr=000123"
    assert record_url("https://erp.example.com", "PurchaseOrder", {"Type": "Normal", "OrderNbr": "PO0001"},
                      tenant="Company") == \
        "https://erp.example.com/Main?CompanyID=Company&ScreenId=PO301000&OrderType=RO&OrderNbr=PO0001"
    assert record_url("https://e", "Vendor", {"VendorID": "V&1"}) == "https://e/Main?ScreenId=AP303000&AcctCD=V%261"
    with pytest.raises(ValueError):
        record_url("https://e", "Bill", {"Type": "Bill"})
    with pytest.raises(ValueError):
        record_url("https://e", "Invoice", {})


# ================================================================================================
# stable paging against a scripted server (MockTransport)
# ================================================================================================

class FakeListing:
    """A key-ordered listing served with $top/$skip; ``between_pages(skip)`` changes it after a page is served."""

    def __init__(self, n: int) -> None:
        self.rows = [f"V{i:03d}" for i in range(n)]
        self.requests: list[tuple[int, int]] = []
        self.between_pages = lambda skip: None

    def handler(self, request: httpx.Request) -> httpx.Response:
        q = request.url.params
        skip, top = int(q.get("$skip", "0")), int(q.get("$top", "1000000"))
        self.requests.append((skip, top))
        page = [{"id": f"id-{v}", "VendorID": {"value": v}} for v in self.rows[skip:skip + top]]
        self.between_pages(skip)
        return httpx.Response(200, json=page)


class StaticTokens:
    def get_token(self) -> str:
        return "token"

    def invalidate(self, token: str) -> None:
        pass


def fake_client(listing: FakeListing, page_size: int) -> AcumaticaClient:
    return AcumaticaClient.connect(INSTANCE, auth=StaticTokens(), page_size=page_size, retry=TINY_RETRY,
                                   transport=httpx.MockTransport(listing.handler))


def naive_read(listing: FakeListing, page_size: int) -> list[str]:
    """What plain $skip paging reads (the bug the client must not have)."""
    out, skip = [], 0
    while True:
        page = listing.handler(httpx.Request("GET", f"{INSTANCE}/x?$top={page_size}&$skip={skip}")).json()
        out += [r["VendorID"]["value"] for r in page]
        if len(page) < page_size:
            return out
        skip += page_size


def leave_after_first_page(listing: FakeListing, who: list[str]):
    def change(skip: int) -> None:
        if skip == 0:
            for v in who:
                if v in listing.rows:
                    listing.rows.remove(v)
    return change


@pytest.mark.parametrize("leaving", [["V002"], ["V004"], ["V000", "V001", "V002", "V003", "V004"], ["V003", "V004"]])
def test_rows_leaving_between_pages_are_neither_skipped_nor_repeated(leaving):
    before = FakeListing(23)
    everything = list(before.rows)
    before.between_pages = leave_after_first_page(before, leaving)
    naive = naive_read(before, 5)
    assert set(everything) - set(leaving) - set(naive)                 # plain $skip loses rows that never left ...
    listing = FakeListing(23)
    listing.between_pages = leave_after_first_page(listing, leaving)
    client = fake_client(listing, 5)
    got = [r["VendorID"] for r in client.list("Vendor")]
    assert got == everything                                           # ... the client reads each exactly once
    assert client.stats["backoffs"] >= 1
    client.close()


def test_rows_entering_ahead_are_not_repeated_and_stable_listings_cost_one_overlap_row():
    listing = FakeListing(12)
    client = fake_client(listing, 5)
    assert [r["VendorID"] for r in client.list("Vendor")] == listing.rows
    assert [s for s, _ in listing.requests] == [0, 4, 8]          # one row of overlap per page
    listing.requests.clear()

    def insert_before(skip: int) -> None:                          # two rows enter before the read position
        if skip == 0:
            listing.rows[1:1] = ["V000a", "V000b"]
    listing.rows = [f"V{i:03d}" for i in range(12)]
    listing.between_pages = insert_before
    got = [r["VendorID"] for r in client.list("Vendor")]
    assert len(got) == len(set(got)) and set(got) >= {f"V{i:03d}" for i in range(12)}
    client.close()


def test_random_departures_between_pages_never_lose_a_remaining_row():
    rng = random.Random(7)
    for _ in range(40):
        n, page = rng.randint(1, 60), rng.randint(2, 9)
        listing = FakeListing(n)
        everything = list(listing.rows)
        gone: set[str] = set()

        def depart(skip: int, listing: FakeListing = listing, gone: set[str] = gone) -> None:
            for v in rng.sample(listing.rows, k=min(len(listing.rows), rng.randint(0, 3))):
                listing.rows.remove(v)
                gone.add(v)
        listing.between_pages = depart
        client = fake_client(listing, page)
        got = [r["VendorID"] for r in client.list("Vendor")]
        client.close()
        assert len(got) == len(set(got))                             # never twice
        assert set(everything) - gone <= set(got)                    # every row still there at the end: read
        assert got == sorted(got)                                    # in the listing's (key) order


def test_an_action_status_location_off_the_instance_is_not_followed():
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(202, headers={"Location": "https://elsewhere.example/entity/Default/24.200.001/Bill/"
                                                        "ReleaseBill/status/1"})

    client = AcumaticaClient.connect(INSTANCE, auth=StaticTokens(), transport=httpx.MockTransport(handler))
    with pytest.raises(AcumaticaActionError, match="points off the instance"):
        client.invoke_action("Bill", "ReleaseBill", {"Type": "Bill", "ReferenceNbr": "1"}, poll_interval_s=0.001)
    assert seen == [f"{INSTANCE}/entity/Default/24.200.001/Bill/ReleaseBill"]   # the bearer token stayed home
    client.close()


# ================================================================================================
# against the Acumatica sandbox
# ================================================================================================

@pytest.fixture
def vault(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return Vault(get_engine(f"sqlite:///{tmp_path}/vault.sqlite"), [Vault.generate_key()])


@pytest.fixture
def sb():
    sandbox = AcumaticaSandbox(tenant=TENANT, endpoint_versions=("24.200.001",))
    sandbox.add_user(USER, PASSWORD)
    sandbox.faults.retry_after = "0"
    return sandbox


@pytest.fixture
def transport(sb):
    return sync_transport(sb.app)


def oauth_client(sb, vault, transport, **kw) -> tuple[AcumaticaClient, AcumaticaTokenProvider]:
    client_id = sb.register_connected_app(str(uuid.uuid4()).upper(), SECRET)
    provider = AcumaticaTokenProvider(vault, CRED, INSTANCE, client_id, SECRET, username=USER, password=PASSWORD,
                                      transport=transport)
    kw.setdefault("retry", TINY_RETRY)
    client = AcumaticaClient.connect(INSTANCE, tenant=TENANT, auth=provider, transport=transport, **kw)
    return client, provider


@pytest.fixture
def client(sb, vault, transport):
    c, provider = oauth_client(sb, vault, transport)
    yield c
    c.close()
    provider.close()


def seed_bills(sb, n: int, vendor: str = "V001") -> list[dict]:
    if not any(v["VendorID"] == vendor for v in sb.documents("Vendor")):
        sb.add_vendor(VendorID=vendor, VendorName=f"{vendor} O'Brien")
    return [sb.add_bill(vendor=vendor, amount=10.0 + i, Description=f"bill {i}") for i in range(n)]


def test_ping_reads_one_vendor(client, sb):
    assert client.ping()["vendor"] is None
    sb.add_vendor(VendorID="V001", VendorName="Acme")
    sb.add_vendor(VendorID="V002", VendorName="Bolt")
    found = client.ping()
    assert found["endpoint"] == "Default/24.200.001" and found["vendor"]["VendorID"] == "V001"
    assert isinstance(found["vendor"]["VendorName"], str)   # flat, not a value object
    assert repr(client) == "AcumaticaClient(instance='http://acumatica.test', endpoint='Default/24.200.001', " \
                           "tenant='Company')"


def test_wrong_endpoint_version_names_the_versions_the_instance_has(vault):
    sandbox = AcumaticaSandbox(tenant=TENANT, endpoint_versions=("23.200.001", "24.200.001"))
    sandbox.add_user(USER, PASSWORD)
    transport = sync_transport(sandbox.app)
    client, provider = oauth_client(sandbox, vault, transport, endpoint_version="22.200.001")
    with pytest.raises(AcumaticaEndpointError) as info:
        client.ping()
    assert str(info.value) == ("endpoint Default/22.200.001 is not on this instance; it has Default/24.200.001, "
                               "Default/23.200.001")
    assert info.value.available == ["Default/23.200.001", "Default/24.200.001"] and info.value.status == 404
    assert isinstance(info.value, AcumaticaError)
    client.close()
    good = AcumaticaClient.connect(INSTANCE, tenant=TENANT, auth=provider, transport=transport,
                                   endpoint_version="23.200.001")
    assert good.ping()["endpoint"] == "Default/23.200.001"
    good.close()
    provider.close()


def test_list_unwraps_records_and_details_and_filters_with_literals(client, sb):
    bills = seed_bills(sb, 3)
    sb.add_vendor(VendorID="V002", VendorName="Plain")
    rows = client.list("Bill", expand="Details")
    assert [r["ReferenceNbr"] for r in rows] == [b["ReferenceNbr"] for b in bills]
    first = rows[0]
    assert first["Status"] == "On Hold" and first["Hold"] is True and first["Amount"] == 10.0
    assert first["Details"][0]["Amount"] == 10.0 and first["Details"][0]["Description"] == "Line 1"
    assert first["id"] == bills[0]["id"]
    vendors = client.list("Vendor", filter=f"VendorName eq {literal('V001 O' + chr(39) + 'Brien')}")
    assert [v["VendorID"] for v in vendors] == ["V001"]
    few = client.list("Bill", filter=f"Amount ge {literal(11)}", select=["Amount"])
    assert [r["Amount"] for r in few] == [11.0, 12.0]
    assert {"Type", "ReferenceNbr", "Amount"} <= set(few[0]) and "Status" not in few[0]   # keys always selected


def _naive_window(client: AcumaticaClient, entity: str, flt: str, top: int) -> list[str]:
    out, skip = [], 0
    while True:
        page = client.http.get(client._path(entity), params={"$filter": flt, "$top": str(top),
                                                             "$skip": str(skip)}).json()
        out += [r["ReferenceNbr"]["value"] for r in page]
        if len(page) < top:
            return out
        skip += top


def _stamp_window(sb, refs: list[str], round_: int) -> tuple[datetime, datetime]:
    """Modify every bill of ``refs`` now: they make up the window [start, end); later changes fall after it.
    (The sandbox stamps strictly increasing milliseconds, which may run ahead of its clock: read them.)"""
    stamps = [sb.update_document("Bill", ("Bill", ref), Description=f"round {round_}")["LastModifiedDateTime"]
              for ref in refs]
    return datetime.fromisoformat(stamps[0]), datetime.fromisoformat(stamps[-1]) + timedelta(milliseconds=1)


def _edit_read_rows(sb, refs: list[str]):
    """After the first page, a person edits two bills it held; after a later page, one more. Each edited bill
    leaves the window, and every row after it shifts one place left."""
    done: set[str] = set()

    def hook(entity: str, skip: int) -> None:
        todo = [refs[1], refs[3]] if skip == 0 else [refs[2]] if skip >= 8 else []
        for ref in todo:
            if ref not in done:
                done.add(ref)
                sb.update_document("Bill", ("Bill", ref), Description="edited between pages")
    return hook


def test_modified_between_reads_every_row_once_while_records_change_between_pages(sb, vault, transport):
    client, provider = oauth_client(sb, vault, transport, page_size=5)
    seed_bills(sb, 2)                                  # before the window
    inside = [b["ReferenceNbr"] for b in seed_bills(sb, 23)]
    start, end = _stamp_window(sb, inside, 1)
    window = f"LastModifiedDateTime ge {datetimeoffset(start)} and LastModifiedDateTime lt {datetimeoffset(end)}"
    sb.on_page = _edit_read_rows(sb, inside)
    naive = _naive_window(client, "Bill", window, 5)
    assert len(naive) == len(set(naive)) == len(inside) - 3   # plain $skip paging misses three rows here ...

    start, end = _stamp_window(sb, inside, 2)          # the same story in a fresh window
    sb.on_page = _edit_read_rows(sb, inside)
    calls = client.http.calls
    rows = client.modified_between("Bill", start, end)
    sb.on_page = None
    assert [r["ReferenceNbr"] for r in rows] == inside   # ... the client reads every row exactly once, in key order
    assert client.stats["backoffs"] >= 2 and client.http.calls - calls <= 10
    assert all(start <= datetime.fromisoformat(r["LastModifiedDateTime"]) < end for r in rows)

    # consecutive windows neither miss nor repeat; select keeps the keys and the modified field
    middle = datetime.fromisoformat(rows[10]["LastModifiedDateTime"])
    earlier = client.modified_between("Bill", start, middle, select="Amount")
    later = client.modified_between("Bill", middle, datetime.now(UTC) + timedelta(hours=1), select="Amount")
    assert {r["ReferenceNbr"] for r in earlier}.isdisjoint(r["ReferenceNbr"] for r in later)
    assert {r["ReferenceNbr"] for r in earlier + later} == set(inside)
    assert set(later[0]) >= {"Type", "ReferenceNbr", "Amount", "LastModifiedDateTime"} and "Status" not in later[0]
    start, end = _stamp_window(sb, inside, 3)
    only_big = client.modified_between("Bill", start, end, filter=f"Amount gt {literal(30)}")
    assert [r["Amount"] for r in only_big] == [31.0, 32.0]
    with pytest.raises(ValueError):
        client.modified_between("Bill", end, start)
    client.close()
    provider.close()


def test_get_and_get_many_in_few_calls(sb, vault, transport):
    client, provider = oauth_client(sb, vault, transport, max_concurrent=3)
    bills = seed_bills(sb, 40)
    one = client.get("Bill", {"ReferenceNbr": bills[3]["ReferenceNbr"], "Type": "Bill"}, expand="Details")
    assert one["ReferenceNbr"] == bills[3]["ReferenceNbr"] and one["Details"][0]["Amount"] == 13.0
    assert client.get("Bill", {"Type": "Bill", "ReferenceNbr": "999999"}) is None
    assert client.get("Bill", {"id": bills[5]["id"]})["ReferenceNbr"] == bills[5]["ReferenceNbr"]
    assert client.get("Vendor", {"VendorID": "V001"})["VendorName"] == "V001 O'Brien"
    with pytest.raises(ValueError):
        client.get("Bill", {"ReferenceNbr": "000001"})   # a Bill key needs its Type
    keys = [{"Type": "Bill", "ReferenceNbr": b["ReferenceNbr"]} for b in reversed(bills)]
    asked = [*keys, {"Type": "Bill", "ReferenceNbr": "999999"}, keys[0]]
    calls = client.http.calls
    found = client.get_many("Bill", asked)
    assert [r["ReferenceNbr"] for r in found] == [k["ReferenceNbr"] for k in keys]   # asked order, missing absent
    assert client.http.calls - calls == 3              # 41 distinct keys, 20 per OR-filter of <= 1,000 characters
    calls = client.http.calls
    small = client.get_many("Bill", keys, max_filter_chars=200, select="Amount")   # 10 chunks, 3 at a time
    assert len(small) == 40 and client.http.calls - calls == 10 and set(small[0]) >= {"Type", "ReferenceNbr"}
    assert [v["VendorID"] for v in client.get_many("Vendor", [{"VendorID": "V001"}])] == ["V001"]
    assert client.get_many("Bill", []) == []
    client.close()
    provider.close()


def test_put_wraps_values_and_a_422_carries_the_field_errors(client, sb):
    sb.add_vendor(VendorID="V001", VendorName="Acme")
    made = client.put("Bill", {"Type": "Bill", "Vendor": "V001", "Amount": Decimal("30.00"), "Description": "new",
                               "Details": [{"Description": "a", "Qty": 1, "UnitCost": 10},
                                           {"Description": "b", "Qty": 2, "UnitCost": 10}]})
    assert made["Status"] == "On Hold" and [d["Amount"] for d in made["Details"]] == [10.0, 20.0]
    keys = {"Type": "Bill", "ReferenceNbr": made["ReferenceNbr"]}
    assert sb.get_document("Bill", ("Bill", made["ReferenceNbr"]))["Description"] == "new"
    with pytest.raises(AcumaticaValidationError) as info:
        client.put("Bill", {**keys, "Amount": 99.0, "Hold": False})   # out of balance: refused
    err = info.value
    assert err.status == 422 and err.fields == {"Amount": "The document is out of balance."}
    assert "Amount: The document is out of balance." in str(err)
    assert err.record["Amount"] == 99.0 and isinstance(err, AcumaticaApiError)
    ok = client.put("Bill", {**keys, "Hold": False}, select=["Status"])
    assert ok["Status"] == "Balanced" and ok["ReferenceNbr"] == made["ReferenceNbr"]


def test_invoke_action_polls_the_location_until_204(client, sb):
    bill = seed_bills(sb, 1)[0]
    keys = {"Type": "Bill", "ReferenceNbr": bill["ReferenceNbr"]}
    client.put("Bill", {**keys, "Hold": False})
    sb.action_polls = 2                                   # 202 twice on the status, then 204
    calls = client.http.calls
    client.invoke_action("Bill", "ReleaseBill", keys, poll_interval_s=0.001)
    assert sb.get_document("Bill", ("Bill", bill["ReferenceNbr"]))["Status"] == "Open"
    assert sb.action_calls("Bill", "ReleaseBill") == 1
    assert client.stats["polls"] == 3 and client.http.calls - calls == 4   # the POST + 3 status GETs
    # again: Acumatica refuses (the bill is released) -> the vendor's reason, at the end of the polling
    with pytest.raises(AcumaticaActionError) as info:
        client.invoke_action("Bill", "ReleaseBill", keys, poll_interval_s=0.001)
    assert info.value.exception_message == "Document Status is invalid for processing."
    assert "Document Status is invalid for processing." in str(info.value) and not info.value.timed_out
    assert sb.action_calls("Bill", "ReleaseBill") == 2   # never re-sent


def test_invoke_action_answered_204_at_once_and_refusals(client, sb):
    bill, other = seed_bills(sb, 2)
    keys = {"Type": "Bill", "ReferenceNbr": bill["ReferenceNbr"]}
    client.put("Bill", {**keys, "Hold": False})
    sb.action_polls = 0
    calls = client.http.calls
    client.invoke_action("Bill", "ReleaseBill", keys, {})
    assert client.http.calls - calls == 1 and sb.get_document("Bill", ("Bill", bill["ReferenceNbr"]))["Status"] == "Open"
    with pytest.raises(AcumaticaActionError, match="Document Status is invalid for processing"):
        client.invoke_action("Bill", "ReleaseBill", {"Type": "Bill", "ReferenceNbr": other["ReferenceNbr"]})
    with pytest.raises(AcumaticaActionError) as info:
        client.invoke_action("Bill", "NoSuchAction", keys)
    assert info.value.status == 404
    with pytest.raises(AcumaticaActionError, match="No entity satisfies the condition"):
        client.invoke_action("Bill", "ReleaseBill", {"Type": "Bill", "ReferenceNbr": "999999"})
    assert sb.action_calls("Bill", "ReleaseBill") == 3   # each refusal (HTTP 500) sent once, never re-sent


def test_invoke_action_times_out(client, sb):
    bill = seed_bills(sb, 1)[0]
    keys = {"Type": "Bill", "ReferenceNbr": bill["ReferenceNbr"]}
    client.put("Bill", {**keys, "Hold": False})
    sb.action_polls = 10_000
    with pytest.raises(AcumaticaActionError) as info:
        client.invoke_action("Bill", "ReleaseBill", keys, timeout_s=0.05, poll_interval_s=0.01)
    assert info.value.timed_out and info.value.status == 408 and "still running" in str(info.value)


def test_a_429_storm_is_ridden_out(client, sb):
    seed_bills(sb, 7)
    client.ping()                                             # the token first: the storm hits the API only
    sb.faults.rate_limit_next = 5
    rows = client.list("Bill")
    assert len(rows) == 7 and sb.served_429 == 5 and client.http.retries == 5


def test_bounded_concurrency_stays_within_the_licence_cap(sb, vault, transport):
    seed_bills(sb, 30)
    keys = [{"Type": "Bill", "ReferenceNbr": b["ReferenceNbr"]} for b in sb.documents("Bill")]
    sb.limits.max_concurrent = 2
    sb.faults.latency_s = 0.02
    polite, provider = oauth_client(sb, vault, transport, max_concurrent=2)
    polite.ping()                                            # token obtained outside the measurement
    with ThreadPoolExecutor(3) as pool:                      # three callers share the client at once
        results = list(pool.map(lambda _: polite.get_many("Bill", keys, max_filter_chars=150), range(3)))
    assert [len(r) for r in results] == [30, 30, 30]
    assert sb.served_429 == 0                                # 2 slots for all of them: never over the cap
    greedy = AcumaticaClient.connect(INSTANCE, tenant=TENANT, auth=provider, transport=transport, max_concurrent=8,
                                     retry=RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.05,
                                                         max_retry_after_s=0.05, max_attempts=30))
    assert len(greedy.get_many("Bill", keys, max_filter_chars=150)) == 30
    assert sb.served_429 > 0                                 # over the cap: refused, retried, still complete
    for c in (polite, greedy):
        c.close()
    provider.close()


def test_an_access_token_expiring_mid_run_is_refreshed_and_the_rotation_stored(client, sb, vault):
    seed_bills(sb, 3)
    assert len(client.list("Bill")) == 3
    before = vault.get(CRED)
    sb.expire_access_tokens()                                 # the vault still believes it has an hour left
    assert len(client.list("Bill")) == 3
    after = vault.get(CRED)
    assert sb.refreshes == 1 and after["refresh_token"] != before["refresh_token"]
    assert after["access_token"] != before["access_token"]


def test_errors_carry_acumaticas_message_and_no_secret(client, sb):
    client.ping()
    sb.faults.server_error_next = 50
    sb.faults.server_error_status = 500
    with pytest.raises(AcumaticaApiError) as info:
        client.list("Bill")
    text = str(info.value)
    assert info.value.status == 500 and "An error has occurred.: The service is unavailable." in text
    assert info.value.exception_message == "The service is unavailable."
    for secret in (SECRET, PASSWORD, client.http.auth.get_token()):
        assert secret not in text
    sb.faults.server_error_next = 0


# -- the cookie session ---------------------------------------------------------------------------------

class ForgetfulServer(httpx.BaseTransport):
    """The sandbox, plus ``forget()``: the server drops the caller's session before the next request (a
    timed-out or recycled session), so that request meets a 401."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self._forget = False

    def forget(self) -> None:
        self._forget = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._forget and request.url.path.startswith("/entity/Default"):
            self._forget = False
            self.inner.handle_request(httpx.Request("POST", f"{INSTANCE}/entity/auth/logout",
                                                    headers={"Cookie": request.headers.get("Cookie", "")})).read()
        return self.inner.handle_request(request)


def test_the_cookie_session_client(sb, transport):
    seed_bills(sb, 4)
    server = ForgetfulServer(transport)
    session = AcumaticaCookieSession(INSTANCE, USER, PASSWORD, transport=transport)
    client = AcumaticaClient.connect(INSTANCE, tenant=TENANT, auth=session, transport=server, retry=TINY_RETRY)
    assert session.company == TENANT and not session.signed_in
    assert len(client.list("Bill")) == 4 and session.logins == 1 and session.signed_in
    bill = client.list("Bill")[0]
    keys = {"Type": "Bill", "ReferenceNbr": bill["ReferenceNbr"]}
    assert client.put("Bill", {**keys, "Hold": False})["Status"] == "Balanced"
    server.forget()                                            # the session dies on the server
    sb.action_polls = 1
    client.invoke_action("Bill", "ReleaseBill", keys, poll_interval_s=0.001)
    assert session.logins == 2                                 # signed in again once, the POST re-sent once
    assert sb.action_calls("Bill", "ReleaseBill") == 1
    assert sb.get_document("Bill", ("Bill", bill["ReferenceNbr"]))["Status"] == "Open"
    client.close()                                             # signs out: the licence slot is free
    assert not session.signed_in
    assert sb.calls_by_path["/entity/auth/logout"] >= 2
    assert PASSWORD not in repr(session)
    session.close()
