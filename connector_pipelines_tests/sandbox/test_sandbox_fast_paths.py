"""The sandboxes' cheaper paths give the answers the plain ones gave (issue 10: the emulators' CPU per call is
what a benchmark waits for beyond the injected latency). Each check compares the fast path with the reference on
the same inputs: every validation still refuses what it refused."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import fastjsonschema
import httpx
import pytest

from connector_pipelines.core import adf as product_adf
from sandboxes.common import sync_transport
from sandboxes.jira import JiraSandbox
from sandboxes.jira.adf import ADF_SPEC, adf_validator, text_adf
from sandboxes.jira.routing import jira_spec
from sandboxes.openapi import OpenApiValidator, RequestValidationError
from sandboxes.specs import load_json_spec

CLOUD = "11111111-aaaa-bbbb-cccc-00000000000f"
API = f"/ex/jira/{CLOUD}/rest/api/3"


# -- ADF: verdict-only compiled code ---------------------------------------------------------------------------
def _valid_documents() -> list[dict[str, Any]]:
    """What the product writes (its description builder), REST v2's plain-text form, and richer documents."""
    rows = [["Field", "Value"], ["number", "PI-00017"], ["vendorName", "Bench Vendor"], ["amount", "117.00"]]
    return [
        product_adf.doc(product_adf.paragraph("Purchase invoice needs attention"), product_adf.table(rows),
                        product_adf.paragraph(product_adf.link("Open in Business Central", "https://bc.test/x"))),
        product_adf.doc(product_adf.heading("Rejected"), product_adf.bullet_list(["one", "two"]),
                        product_adf.code_block("x = 1", "python"), product_adf.rule(),
                        product_adf.paragraph(product_adf.text("bold", strong=True), product_adf.hard_break(),
                                              product_adf.text("code", code=True))),
        text_adf("first line\nsecond line\n\nnext paragraph"),
        {"type": "doc", "version": 1, "content": []},
        {"type": "doc", "version": 1, "content": [
            {"type": "panel", "attrs": {"panelType": "info"}, "content": [
                {"type": "paragraph", "content": [{"type": "text", "text": "note", "marks": [{"type": "em"}]}]}]},
            {"type": "orderedList", "attrs": {"order": 1}, "content": [
                {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "a"}]}]}]},
            {"type": "blockquote", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "q"}]}]},
            {"type": "heading", "attrs": {"level": 3}, "content": [{"type": "text", "text": "h"}]}]},
    ]


def _mutations(node: Any) -> list[Any]:
    """Copies of ``node`` each broken (or merely changed) in one place: every dict in it gets its type renamed or
    dropped, an unknown key, its content or attrs of the wrong type, its text emptied; every list loses an item or
    gains a stray one."""
    out: list[Any] = []
    paths: list[tuple] = []

    def walk(n: Any, path: tuple) -> None:
        paths.append(path)
        if isinstance(n, dict):
            for k, v in n.items():
                walk(v, (*path, k))
        elif isinstance(n, list):
            for i, v in enumerate(n):
                walk(v, (*path, i))

    def at(root: Any, path: tuple) -> Any:
        for p in path:
            root = root[p]
        return root

    walk(node, ())
    for path in paths:
        target = at(node, path)
        if isinstance(target, dict):
            changes = [("type", "bogus"), ("type", None), ("zzz", 1), ("content", "x"), ("attrs", []),
                       ("text", ""), ("text", 5), ("marks", {}), ("version", 2)]
            for key, value in changes:
                doc = copy.deepcopy(node)
                t = at(doc, path)
                if value is None:
                    t.pop(key, None)
                else:
                    t[key] = value
                out.append(doc)
        elif isinstance(target, list):
            for change in ("drop", "stray", "dup"):
                doc = copy.deepcopy(node)
                t = at(doc, path)
                if change == "drop" and t:
                    t.pop()
                elif change == "stray":
                    t.append("stray")
                elif t:
                    t.append(copy.deepcopy(t[0]))
                out.append(doc)
        else:
            doc = copy.deepcopy(node)
            if path:
                parent = at(doc, path[:-1])
                parent[path[-1]] = [target]
                out.append(doc)
    return out


def _verdict(validate, value: Any) -> bool:
    try:
        validate(value)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def test_adf_verdicts_match_the_reference_validator():
    reference = fastjsonschema.compile(load_json_spec(ADF_SPEC))   # the validator the sandbox used before
    fast = adf_validator()
    checked = refused = 0
    for document in _valid_documents():
        assert _verdict(reference, document) and _verdict(fast, document)
        for broken in _mutations(document):
            expected = _verdict(reference, broken)
            assert _verdict(fast, broken) == expected, json.dumps(broken)[:500]
            checked += 1
            refused += not expected
    for not_a_document in (None, "text", 5, [], {}, {"type": "doc"}, {"type": "doc", "version": 1}):
        assert _verdict(fast, not_a_document) == _verdict(reference, not_a_document) is False
    assert checked > 500 and refused > checked // 2      # the corpus exercises refusals, not only acceptances


def test_adf_verdicts_of_one_shape_follow_the_strings_the_schema_constrains():
    """Documents that differ only in their texts and links share a verdict; an empty text, a hardBreak whose text
    is not "\\n", a link that is not a string still get their own (the reference validator's)."""
    reference = fastjsonschema.compile(load_json_spec(ADF_SPEC))
    fast = adf_validator()

    def doc(text: Any, brk: Any, href: Any) -> dict[str, Any]:
        return {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
            {"type": "text", "text": text}, {"type": "hardBreak", "attrs": {"text": brk}},
            {"type": "text", "text": "link", "marks": [{"type": "link", "attrs": {"href": href}}]}]}]}

    cases = [doc(t, b, h) for t in ("a", "b", "", "\n", "x\ny", 'q"uote\\', 5, None)
             for b in ("\n", "x", "", "\n\n") for h in ("https://a.test/1", "https://b.test/2?x=\"y\"", "", 7)]
    for document in cases + cases:                        # the second pass answers from the shapes seen
        assert _verdict(fast, document) == _verdict(reference, document), json.dumps(document)
    assert sum(_verdict(reference, d) for d in cases) >= 8 and not all(_verdict(reference, d) for d in cases)


# -- Jira request validation: fastjsonschema first, jsonschema words the refusals ------------------------------
@pytest.mark.parametrize(("path", "body"), [
    ("/rest/api/3/issue/bulk", {"issueUpdates": [{"fields": {"summary": "x"}}]}),
    ("/rest/api/3/issue/bulk", {"issueUpdates": "nope"}),
    ("/rest/api/3/issue/bulk", {"issueUpdates": [{"fields": {"summary": "x"}, "update": {"labels": "x"}}]}),
    ("/rest/api/3/issue/bulk", ["not", "an", "object"]),
    ("/rest/api/3/search/jql", {"jql": "project = FIN", "maxResults": "fifty"}),
    ("/rest/api/3/search/jql", {"jql": "project = FIN", "fields": "summary"}),
    ("/rest/api/3/search/jql", {"jql": 5}),
    ("/rest/api/3/search/jql", {"jql": "project = FIN", "fields": ["summary"], "maxResults": 50}),
    ("/rest/api/3/issue", {"fields": {"summary": "x"}, "transition": {"id": 5}}),
])
def test_jira_fast_request_validation_answers_as_jsonschema_alone(path, body):
    spec = jira_spec()
    answers = []
    for validator in (OpenApiValidator(spec), OpenApiValidator(spec, fast=True)):
        try:
            validator.validate_request("post", path, {}, body, has_body=True)
            answers.append(None)
        except RequestValidationError as exc:
            answers.append((exc.messages, exc.field_errors))
    assert answers[0] == answers[1]


# -- Jira webhooks: the payload is built only for an event some webhook takes ----------------------------------
class _Capture:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.read()))
        return httpx.Response(200)


def test_an_event_no_webhook_takes_is_not_rendered_and_one_that_is_taken_is_delivered_whole(monkeypatch):
    capture = _Capture()
    jira = JiraSandbox(validate_responses=True, delivery_transport=httpx.MockTransport(capture))
    jira.add_site(CLOUD, "acme", "https://acme.atlassian.net")
    jira.add_project(CLOUD, "FIN", "Finance")
    ext = jira.add_custom_field(CLOUD, "ERP External ID", "textfield")
    jira.register_app("app", "app-secret")
    jira.add_token("tok", client_id="app", account_id="acc-1")
    rendered = []
    original = JiraSandbox._issue_payload

    def counting(self, site, issue):
        rendered.append(issue.key)
        return original(self, site, issue)

    monkeypatch.setattr(JiraSandbox, "_issue_payload", counting)
    with httpx.Client(transport=sync_transport(jira.app), base_url="http://jira.test",
                      headers={"Authorization": "Bearer tok"}) as http:
        r = http.post(f"{API}/webhook", json={"url": "https://receiver.test/jira", "webhooks": [
            {"events": ["jira:issue_updated"], "jqlFilter": "project = FIN"}]})
        assert r.status_code == 200, r.text
        description = product_adf.doc(product_adf.paragraph("Review"), product_adf.table([["a", "b"], ["c", "d"]]))
        r = http.post(f"{API}/issue/bulk", json={"issueUpdates": [
            {"fields": {"project": {"key": "FIN"}, "issuetype": {"name": "Task"}, "summary": f"S{n}",
                        "description": description, ext: f"bc:{n}"}} for n in range(3)]})
        assert r.status_code == 201, r.text
        assert rendered == []                      # issue_created: no webhook listens, nothing rendered
        assert jira.pending_deliveries == []
        key = r.json()["issues"][0]["key"]
        r = http.put(f"{API}/issue/{key}", json={"fields": {"summary": "S0 changed"}})
        assert r.status_code == 204, r.text
    assert rendered == [key]
    assert jira.deliver_pending() == 1
    [body] = capture.bodies
    assert body["webhookEvent"] == "jira:issue_updated" and body["matchedWebhookIds"] == [1]
    assert body["issue"]["key"] == key and body["issue"]["fields"]["summary"] == "S0 changed"
    assert body["issue"]["fields"]["description"].startswith("Review")     # ADF as text, as Jira's payload has it
    assert body["issue"]["fields"][ext] == "bc:0"
    assert body["changelog"]["items"][0]["field"] == "summary"
    assert body["user"]["accountId"] == "acc-1"
    jira.close()



# -- JQL: quoted strings scanned by runs, escapes as before ----------------------------------------------------
@pytest.mark.parametrize(("jql", "tokens"), [
    ('cf[10030] ~ "\\"bc:purchaseInvoices:1\\""',
     [("WORD", "cf[10030]"), ("OP", "~"), ("STRING", '"bc:purchaseInvoices:1"'), ("EOF", "")]),
    ("summary ~ 'it\\'s a \\\\ path\\n'", [("WORD", "summary"), ("OP", "~"), ("STRING", "it's a \\ path\n"), ("EOF", "")]),
    ('x = "a\\qb" OR y = \'"\'', [("WORD", "x"), ("OP", "="), ("STRING", "a\\qb"), ("WORD", "OR"), ("WORD", "y"),
                                  ("OP", "="), ("STRING", '"'), ("EOF", "")]),
    ('x = ""', [("WORD", "x"), ("OP", "="), ("STRING", ""), ("EOF", "")]),
])
def test_jql_strings_tokenize_as_before(jql, tokens):
    from sandboxes.jira.jql import tokenize_jql

    assert [(t.kind, t.text) for t in tokenize_jql(jql)] == tokens


@pytest.mark.parametrize("jql", ['x = "tail\\', 'x = "open', "x = 'a\\'"])
def test_jql_unterminated_strings_are_still_refused(jql):
    from sandboxes.jira import JqlError
    from sandboxes.jira.jql import tokenize_jql

    with pytest.raises(JqlError, match="has not been completed"):
        tokenize_jql(jql)


# -- Business Central: typed values of stored texts parsed once ------------------------------------------------
def test_bc_typed_values_are_the_same_parsed_or_cached():
    from sandboxes.business_central import coerce
    from sandboxes.odata import ODataError

    rid = str(uuid.uuid4())
    assert coerce(rid, "GUID") == uuid.UUID(rid) == coerce(rid.upper(), "GUID") == coerce(uuid.UUID(rid), "GUID")
    assert coerce("2019-08-18T20:05:51Z", "datetime") == coerce("2019-08-18T20:05:51.0000000Z", "datetime")
    assert coerce("2019-08-18T20:05:51Z", "datetime").tzinfo is not None
    for bad, typ in (("not-a-guid", "GUID"), ("yesterday", "datetime")):
        for _ in range(2):                           # a refusal is never cached as an answer
            with pytest.raises(ODataError):
                coerce(bad, typ)


# -- F&O: a filter that names every key is answered by key lookups ---------------------------------------------
class _FoEntra:
    def validate(self, token: str, audience: str) -> dict | None:
        return {"aud": audience} if token == "good" else None


@pytest.fixture
def fo_world():
    from sandboxes.finance_operations import FinanceOperationsSandbox

    fo = FinanceOperationsSandbox(_FoEntra(), environment_host="contoso.operations.dynamics.com")
    for area in ("usmf", "demf"):
        fo.add_legal_entity(area)
    for i in range(40):
        fo.add_purchase_order("usmf" if i % 4 else "demf", PurchaseOrderNumber=f"PO-{i:03d}",
                              OrderVendorAccountNumber="US-101", DocumentApprovalStatus="Approved" if i % 3 else "Draft",
                              lines=[{"LineAmount": 10.0 + i}, {"LineAmount": 1.5}])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transport = sync_transport(fo.app)
    with httpx.Client(transport=transport, base_url="http://fo.test/data",
                      headers={"Authorization": "Bearer good"}) as http:
        yield fo, http


@pytest.mark.parametrize(("flt", "params"), [
    # the product's lookup: company and key, an OR of key values (mixed case, one unknown, one of another company)
    (("dataAreaId eq 'usmf' and (PurchaseOrderNumber eq 'PO-001' or PurchaseOrderNumber eq 'po-002' or "
      "PurchaseOrderNumber eq 'PO-999' or PurchaseOrderNumber eq 'PO-004')"), {"cross-company": "true"}),
    (("dataAreaId eq 'usmf' and (PurchaseOrderNumber eq 'PO-001' or PurchaseOrderNumber eq 'PO-005') and "
      "DocumentApprovalStatus eq Microsoft.Dynamics.DataEntities.VersioningDocumentState'Approved'"),
     {"cross-company": "true", "$expand": "PurchaseOrderLinesV2"}),
    (("(dataAreaId eq 'usmf' or dataAreaId eq 'DEMF') and (PurchaseOrderNumber eq 'PO-000' or "
      "PurchaseOrderNumber eq 'PO-003' or PurchaseOrderNumber eq 'PO-004')"), {"cross-company": "true"}),
    ("PurchaseOrderNumber eq 'PO-001' or PurchaseOrderNumber eq 'PO-004'", {}),   # no company named: a scan
    ("dataAreaId eq 'usmf' and PurchaseOrderNumber eq 'PO-006'", {}),            # default company only
])
def test_fo_lookup_by_keys_answers_as_a_scan(fo_world, monkeypatch, flt, params):
    import sandboxes.finance_operations as fo_module

    _fo, http = fo_world

    def get() -> list[dict[str, Any]]:
        r = http.get("/PurchaseOrderHeadersV2", params={"$filter": flt, **params})
        assert r.status_code == 200, r.text
        return r.json()["value"]

    looked_up = get()
    monkeypatch.setattr(fo_module, "_hinted_keys", lambda *a: None)   # every row a candidate: the reference
    scanned = get()
    assert looked_up == scanned
    assert all(len(row.get("PurchaseOrderLinesV2", [1, 2])) == 2 for row in looked_up)


def test_fo_lookup_by_keys_runs_the_filter_on_the_named_rows_only(fo_world, monkeypatch):
    import sandboxes.finance_operations as fo_module

    _fo, http = fo_world
    evaluated = [0]
    original = fo_module.FOFilter.parse

    def counting(self):
        pred = original(self)

        def counted(row):
            evaluated[0] += 1
            return pred(row)
        counted.equality_hint = getattr(pred, "equality_hint", {})
        return counted

    monkeypatch.setattr(fo_module.FOFilter, "parse", counting)
    r = http.get("/PurchaseOrderHeadersV2", params={"cross-company": "true", "$filter": (
        "dataAreaId eq 'usmf' and (PurchaseOrderNumber eq 'PO-001' or PurchaseOrderNumber eq 'PO-002')")})
    assert [row["PurchaseOrderNumber"] for row in r.json()["value"]] == ["PO-001", "PO-002"]
    assert evaluated[0] == 2                     # not 40: the keys picked the rows
