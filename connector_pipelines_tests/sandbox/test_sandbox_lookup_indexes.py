"""Lookups by key in the sandboxes cost the same over 100 or 100,000 records (benchmarks/backlog.py seeds
100k): BC's ``id eq … or id eq …`` and Jira's ``textfield ~ "phrase"`` OR-lists are answered from an index
of candidates, and give the same answers as a scan (the full filter still runs on the candidates)."""

from __future__ import annotations

import warnings

import httpx

import sandboxes.business_central as bc_module
from sandboxes.business_central import BusinessCentralSandbox
from sandboxes.common import sync_transport
from sandboxes.jira import JiraSandbox

TENANT, ENV = "72f988bf-86f1-41af-91ab-2d7cd011db47", "production"
BC_BASE = f"http://bc.test/v2.0/{TENANT}/{ENV}/api/v2.0"
CLOUD = "11111111-2222-3333-4444-555555555555"
API = f"/ex/jira/{CLOUD}/rest/api/3"


class _Entra:
    def validate(self, token: str, audience: str) -> dict | None:
        return {"aud": audience} if token == "good" else None


def _counting(monkeypatch, cls, attr: str) -> list[int]:
    """Wrap the predicate ``cls.attr`` returns so every evaluation is counted."""
    calls = [0]
    original = getattr(cls, attr)

    def wrapped(self, *args, **kwargs):
        pred = original(self, *args, **kwargs)

        def counted(row):
            calls[0] += 1
            return pred(row)
        return counted

    monkeypatch.setattr(cls, attr, wrapped)
    return calls


def test_bc_lookup_by_ids_evaluates_the_filter_on_those_records_only(monkeypatch):
    bc = BusinessCentralSandbox(_Entra())
    bc.register_environment(TENANT, ENV)
    cid = bc.add_company("CRONUS USA, Inc.")
    ids = [bc.add_purchase_invoice(cid, number=f"PI-{i}", status="Draft")["id"] for i in range(300)]
    evaluated = _counting(monkeypatch, bc_module.FilterParser, "parse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transport = sync_transport(bc.app)
    with httpx.Client(transport=transport, base_url=BC_BASE, headers={"Authorization": "Bearer good"}) as http:
        wanted = [ids[7], ids[150].upper(), ids[299], "00000000-0000-0000-0000-000000000000"]
        r = http.get(f"/companies({cid})/purchaseInvoices",
                     params={"$filter": " or ".join(f"id eq {i}" for i in wanted)})
        assert r.status_code == 200, r.text
        assert [v["number"] for v in r.json()["value"]] == ["PI-7", "PI-150", "PI-299"]
        assert evaluated[0] == 3                    # not 300: the key picked the candidates
        # Anything else is still a scan with the same semantics.
        r = http.get(f"/companies({cid})/purchaseInvoices",
                     params={"$filter": f"id eq {ids[7]} or number eq 'PI-8'"})
        assert [v["number"] for v in r.json()["value"]] == ["PI-7", "PI-8"]
        assert evaluated[0] == 3 + 300


def test_jira_external_id_search_evaluates_jql_on_candidates_only_and_follows_edits(monkeypatch):
    sb = JiraSandbox()
    sb.add_site(CLOUD, "acme", "https://acme.atlassian.net")
    sb.add_project(CLOUD, "OPS", "Operations")
    ext = sb.add_custom_field(CLOUD, "ERP External ID", "textfield")
    sb.register_app("app", "secret")
    sb.add_token("tok", client_id="app", account_id="acc")
    n = ext.removeprefix("customfield_")
    with httpx.Client(transport=sync_transport(sb.app), base_url="http://jira.test",
                      headers={"Authorization": "Bearer tok"}) as http:
        keys = []
        for i in range(200):
            r = http.post(f"{API}/issue", json={"fields": {"project": {"key": "OPS"}, "issuetype": {"name": "Task"},
                                                           "summary": f"Issue {i}", ext: f"bc:inv:{i:04d}"}})
            assert r.status_code == 201, r.text
            keys.append(r.json()["key"])
        r = http.post(f"{API}/issue", json={"fields": {"project": {"key": "OPS"}, "issuetype": {"name": "Task"},
                                                       "summary": "Over-match", ext: "bc:inv:0007:A"}})
        over = r.json()["key"]
        evaluated = _counting(monkeypatch, type(sb), "_compile_jql")

        def search(jql: str) -> list[str]:
            r = http.post(f"{API}/search/jql", json={"jql": jql, "fields": ["key"], "maxResults": 100})
            assert r.status_code == 200, r.text
            return [i["key"] for i in r.json()["issues"]]

        jql = f'project = OPS AND (cf[{n}] ~ "\\"bc:inv:0007\\"" OR cf[{n}] ~ "\\"bc:inv:0150\\"")'
        assert search(jql) == [keys[7], keys[150], over]        # ~ is a token match: it over-matches, as in Jira
        assert evaluated[0] == 3                                 # not 201

        assert http.put(f"{API}/issue/{keys[150]}", json={"fields": {ext: "bc:inv:9999"}}).status_code == 204
        assert search(jql) == [keys[7], over]
        assert search(f'cf[{n}] ~ "\\"bc:inv:9999\\""') == [keys[150]]
        r = http.post(f"{API}/issue/{keys[7]}/transitions", json={"transition": {"id": "31"},
                                                                  "fields": {ext: "bc:inv:8888"}})
        assert r.status_code == 204, r.text
        assert search(jql) == [over]                             # a transition's field change is seen too
        assert search(f'cf[{n}] ~ "\\"bc:inv:8888\\""') == [keys[7]]
        new = http.post(f"{API}/issue", json={"fields": {"project": {"key": "OPS"}, "issuetype": {"name": "Task"},
                                                         "summary": "Late", ext: "bc:inv:0150"}}).json()["key"]
        assert search(jql) == [over, new]                        # and an issue created since the last search
        assert search("project = OPS AND summary ~ \"Issue\"")[:2] == [keys[0], keys[1]]   # no index: a scan


def test_fo_lookup_by_key_groups_evaluates_the_filter_on_those_records_only(monkeypatch):
    """F&O's product lookups are ``dataAreaId eq 'x' and (K eq 'a' or K eq 'b' …)``: the filter's equality hint
    picks the candidates, the full filter runs on them, and the answer is the scan's."""
    import sandboxes.finance_operations as fo_module
    import sandboxes.odata as odata_module
    from sandboxes.finance_operations import FinanceOperationsSandbox

    fo = FinanceOperationsSandbox(None, environment_host="fo.test")
    fo.add_token("good")
    for area in ("usmf", "demf"):
        fo.add_legal_entity(area)
    for i in range(200):
        fo.add_purchase_order("usmf", PurchaseOrderNumber=f"PO-{i}", OrderVendorAccountNumber="US-1")
    fo.add_purchase_order("demf", PurchaseOrderNumber="PO-7", OrderVendorAccountNumber="DE-1")
    calls = [0]
    original = fo_module.FOFilter.parse

    def counting_parse(self):
        pred = original(self)

        def counted(row):
            calls[0] += 1
            return pred(row)
        return odata_module.with_hint(counted, odata_module.equality_hint(pred))

    monkeypatch.setattr(fo_module.FOFilter, "parse", counting_parse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transport = sync_transport(fo.app)

    def numbers(flt: str) -> list[tuple[str, str]]:
        with httpx.Client(transport=transport, base_url="http://fo.test/data",
                          headers={"Authorization": "Bearer good"}) as http:
            r = http.get("/PurchaseOrderHeadersV2", params={"$filter": flt, "cross-company": "true"})
        assert r.status_code == 200, r.text
        return [(v["dataAreaId"], v["PurchaseOrderNumber"]) for v in r.json()["value"]]

    lookup = "dataAreaId eq 'usmf' and (PurchaseOrderNumber eq 'PO-7' or PurchaseOrderNumber eq 'po-150' " \
             "or PurchaseOrderNumber eq 'PO-999')"
    assert numbers(lookup) == [("usmf", "PO-150"), ("usmf", "PO-7")]
    assert calls[0] == 2                     # not 201: the key values picked the candidates
    calls[0] = 0
    assert numbers("PurchaseOrderNumber eq 'PO-7' or OrderVendorAccountNumber eq 'DE-1'") == \
        [("demf", "PO-7"), ("usmf", "PO-7")]
    assert calls[0] == 201                   # an OR over two properties names no key: a scan, same semantics
    calls[0] = 0
    assert numbers("not (PurchaseOrderNumber ne 'PO-3')") == [("usmf", "PO-3")] and calls[0] == 201
    calls[0] = 0
    assert len(numbers("PurchaseOrderNumber eq 'PO-1*'")) == 111 and calls[0] == 201   # wildcard: no hint
    # The hint never changes an answer: with hints off, the same filters give the same rows.
    monkeypatch.setattr(fo_module, "equality_hint", lambda pred: {})
    assert numbers(lookup) == [("usmf", "PO-150"), ("usmf", "PO-7")]
