"""The Jira sandbox behaves like Jira Cloud REST v3 as far as the spec and API-FACTS §4 go."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest

from sandboxes.common import sync_transport
from sandboxes.jira import (
    WEBHOOK_EVENTS,
    JiraSandbox,
    JqlError,
    parse_jql,
    text_matches,
)
from sandboxes.openapi import (
    OpenApiValidator,
    RequestValidationError,
    ResponseValidationError,
    translate_nullable,
)
from sandboxes.specs import load_json_spec

CLOUD = "11111111-aaaa-bbbb-cccc-000000000001"
API = f"/ex/jira/{CLOUD}/rest/api/3"
TOKEN = "tok-1"
APP, SECRET = "app-client-id", "app-client-secret"
ADF = {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [{"type": "text", "text": "hi"}]}]}


class Capture:
    """Records webhook deliveries (an httpx MockTransport handler); answers with ``statuses`` in turn."""

    def __init__(self, statuses: list[int] | None = None):
        self.requests: list[httpx.Request] = []
        self.statuses = list(statuses or [])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return httpx.Response(self.statuses.pop(0) if self.statuses else 200)

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]


@pytest.fixture
def capture() -> Capture:
    return Capture()


@pytest.fixture
def sandbox(capture: Capture) -> JiraSandbox:
    sb = JiraSandbox(validate_responses=True, delivery_transport=httpx.MockTransport(capture))
    sb.add_site(CLOUD, "acme", "https://acme.atlassian.net")
    sb.add_project(CLOUD, "OPS", "Operations")
    sb.add_user(CLOUD, "acc-alice", "Alice", "alice@example.com")
    sb.add_user(CLOUD, "acc-bob", "Bob")
    sb.ext = sb.add_custom_field(CLOUD, "ERP External ID", "textfield")
    sb.notes = sb.add_custom_field(CLOUD, "Notes", "textarea")
    sb.amount = sb.add_custom_field(CLOUD, "Amount", "float")
    sb.color = sb.add_custom_field(CLOUD, "Color", "select", options=["red", "blue"])
    sb.register_app(APP, SECRET)
    sb.add_token(TOKEN, client_id=APP, account_id="acc-alice")
    yield sb
    sb.close()
    assert sb.response_errors == []


@pytest.fixture
def client(sandbox: JiraSandbox) -> httpx.Client:
    with httpx.Client(transport=sync_transport(sandbox.app), base_url="http://jira.test",
                      headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def cf_num(fid: str) -> str:
    return fid.removeprefix("customfield_")


def create(client: httpx.Client, summary: str, **extra) -> dict:
    fields = {"project": {"key": "OPS"}, "issuetype": {"name": "Task"}, "summary": summary, **extra}
    r = client.post(f"{API}/issue", json={"fields": fields})
    assert r.status_code == 201, r.text
    return r.json()


def search(client: httpx.Client, jql: str, **body) -> httpx.Response:
    return client.post(f"{API}/search/jql", json={"jql": jql, **body})


def keys(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [i["key"] for i in r.json()["issues"]]


# ---------------------------------------------------------------------------------------------
# Spec validation, ADF, field rules
# ---------------------------------------------------------------------------------------------
def test_spec_rejects_malformed_bodies_with_error_collection(client: httpx.Client) -> None:
    r = client.post(f"{API}/issue", json={"fields": "not an object"})
    assert r.status_code == 400
    assert set(r.json()) == {"errorMessages", "errors"}
    assert "is not of type 'object'" in r.json()["errorMessages"][0]

    r = client.post(f"{API}/search/jql", json={"jql": "project = OPS", "maxResults": "ten"})
    assert r.status_code == 400 and "'ten' is not of type 'integer'" in " ".join(r.json()["errorMessages"])

    r = client.post(f"{API}/webhook", json={"webhooks": []})  # url is required by the spec
    assert r.status_code == 400 and "'url' is a required property" in r.json()["errorMessages"][0]

    r = client.get(f"{API}/search/jql", params={"jql": "project = OPS", "maxResults": "x"})
    assert r.status_code == 400 and "maxResults" in r.json()["errors"]

    r = client.post(f"{API}/issue", json={})  # valid per schema, but Jira wants project/issuetype/summary
    assert r.status_code == 400
    assert set(r.json()["errors"]) == {"project", "issuetype", "summary"}


def test_adf_required_for_rich_text(client: httpx.Client, sandbox: JiraSandbox) -> None:
    r = client.post(f"{API}/issue", json={"fields": {"project": {"key": "OPS"}, "issuetype": {"name": "Task"},
                                                     "summary": "x", "description": "plain text"}})
    assert r.status_code == 400
    assert r.json()["errors"]["description"].startswith("Operation value must be an Atlassian Document")

    bad_adf = {"type": "doc", "version": 1, "content": [{"type": "no-such-node"}]}
    r = client.post(f"{API}/issue", json={"fields": {"project": {"key": "OPS"}, "issuetype": {"name": "Task"},
                                                     "summary": "x", sandbox.notes: bad_adf}})
    assert r.status_code == 400 and sandbox.notes in r.json()["errors"]

    created = create(client, "with adf", description=ADF, **{sandbox.notes: ADF})
    issue = client.get(f"{API}/issue/{created['key']}").json()
    assert issue["fields"]["description"] == ADF and issue["fields"][sandbox.notes] == ADF

    r = client.post(f"{API}/issue/{created['key']}/comment", json={"body": "plain"})
    assert r.status_code == 400 and "Atlassian Document" in r.json()["errors"]["comment"]
    r = client.post(f"{API}/issue/{created['key']}/comment", json={"body": ADF})
    assert r.status_code == 201 and r.json()["body"] == ADF
    assert client.get(f"{API}/issue/{created['key']}/comment").json()["total"] == 1


def test_field_rules_like_jira(client: httpx.Client, sandbox: JiraSandbox) -> None:
    base = {"project": {"key": "OPS"}, "issuetype": {"name": "Task"}, "summary": "ok"}
    cases = [
        ({"customfield_999": "x"}, "customfield_999",
         "Field 'customfield_999' cannot be set. It is not on the appropriate screen, or unknown."),
        ({"summary": "a" * 256}, "summary", "Summary must be less than 255 characters."),
        ({"summary": "two\nlines"}, "summary", "The summary is invalid because it contains newline characters."),
        ({sandbox.ext: "x" * 256}, sandbox.ext, None),
        ({sandbox.ext: 5}, sandbox.ext, None),
        ({sandbox.amount: "12"}, sandbox.amount, None),
        ({sandbox.color: {"value": "green"}}, sandbox.color, None),
        ({"project": {"key": "NOPE"}}, "project", "Specify a valid project ID or key"),
        ({"issuetype": {"name": "Epic"}}, "issuetype", None),
    ]
    for extra, field_id, message in cases:
        r = client.post(f"{API}/issue", json={"fields": {**base, **extra}})
        assert r.status_code == 400, (extra, r.text)
        assert field_id in r.json()["errors"], (extra, r.json())
        if message:
            assert r.json()["errors"][field_id] == message
    ok = create(client, "typed", **{sandbox.amount: 12.5, sandbox.color: {"value": "red"}, sandbox.ext: "E-1"})
    fields = client.get(f"{API}/issue/{ok['id']}").json()["fields"]
    assert fields[sandbox.amount] == 12.5 and fields[sandbox.color]["value"] == "red"
    assert fields[sandbox.ext] == "E-1" and fields["status"]["statusCategory"]["key"] == "new"


def test_fields_endpoint_and_per_site_custom_field_ids(client: httpx.Client, sandbox: JiraSandbox) -> None:
    sandbox.add_site("cloud-2", "other", "https://other.atlassian.net")
    other_ext = sandbox.add_custom_field("cloud-2", "ERP External ID", "textfield")
    assert other_ext != sandbox.ext
    fields = {f["id"]: f for f in client.get(f"{API}/field").json()}
    ext = fields[sandbox.ext]
    n = int(cf_num(sandbox.ext))
    assert ext["clauseNames"] == [f"cf[{n}]", "ERP External ID"] and ext["custom"] is True
    assert ext["schema"] == {"type": "string", "customId": n,
                             "custom": "com.atlassian.jira.plugin.system.customfieldtypes:textfield"}
    assert fields[sandbox.amount]["schema"]["type"] == "number"
    assert "summary" in fields and fields["summary"]["custom"] is False


# ---------------------------------------------------------------------------------------------
# JQL
# ---------------------------------------------------------------------------------------------
def test_jql_parser_shapes_and_errors() -> None:
    q = parse_jql('project in (OPS, "FIN") AND NOT (status = Done OR cf[10050] is not EMPTY) '
                  'ORDER BY key DESC, created')
    assert q.order_by == [("key", "desc"), ("created", "asc")]
    assert q.where.op == "and" and q.where.parts[0].values == ["OPS", "FIN"]
    assert q.where.parts[1].part.op == "or"
    assert parse_jql("order by key desc").where is None
    assert parse_jql('"ERP External ID" ~ "x"').where.quoted_field is True
    assert parse_jql("status not in (Done, 'To Do')").where.op == "not in"
    for bad in ["project = ", "(project = OPS", "project OPS", "project = OPS AND", 'summary ~ "open',
                "project = OPS ORDER key"]:
        with pytest.raises(JqlError) as err:
            parse_jql(bad)
        assert err.value.status == 400 and err.value.messages[0].startswith("Error in the JQL Query")


def test_text_match_is_token_based_and_over_matches() -> None:
    assert text_matches("BC-PI-1001", '"BC-PI-1001"')
    assert text_matches("BC-PI-1001-A", '"BC-PI-1001"')        # over-match: faithful to Jira's ~
    assert text_matches("1001 pi bc", "BC-PI-1001")            # unquoted: all tokens, any order
    assert not text_matches("1001 pi bc", '"BC-PI-1001"')      # a phrase needs them consecutive
    assert not text_matches("BC-PI-100", '"BC-PI-1001"')       # tokens, not substrings
    assert text_matches("Invoice approval", "approv*")


def test_jql_search_semantics(client: httpx.Client, sandbox: JiraSandbox) -> None:
    n = cf_num(sandbox.ext)
    a = create(client, "Alpha invoice", **{sandbox.ext: "BC-PI-1001", sandbox.amount: 10})
    b = create(client, "Beta", **{sandbox.ext: "BC-PI-1001-A", sandbox.amount: 20})
    c = create(client, "Gamma", issuetype={"name": "Bug"})
    sandbox.transition_as_user(CLOUD, c["key"], "Done")

    assert keys(search(client, f'cf[{n}] ~ "\\"BC-PI-1001\\""', fields=["summary"])) == [a["key"], b["key"]]
    assert keys(search(client, f'cf[{n}] = "BC-PI-1001"', fields=["summary"])) == [a["key"]]
    assert keys(search(client, '"ERP External ID" ~ "BC-PI-1001-A"', fields=["summary"])) == [b["key"]]
    assert keys(search(client, f"cf[{n}] is EMPTY", fields=["summary"])) == [c["key"]]
    assert keys(search(client, f"project = OPS AND cf[{n}] is not EMPTY ORDER BY key DESC",
                       fields=["summary"])) == [b["key"], a["key"]]
    assert keys(search(client, "statusCategory = Done", fields=["summary"])) == [c["key"]]
    assert keys(search(client, 'status != "Done" AND issuetype = Task', fields=["summary"])) == [a["key"], b["key"]]
    assert keys(search(client, "statusCategory in (new, indeterminate)", fields=["summary"])) == [a["key"], b["key"]]
    assert keys(search(client, f"key in ({a['key']}, {c['key']}) OR cf[{n}] = x", fields=["summary"])) == \
        [a["key"], c["key"]]
    assert keys(search(client, "NOT issuetype = Task", fields=["summary"])) == [c["key"]]
    assert keys(search(client, 'summary ~ "invoice"', fields=["summary"])) == [a["key"]]
    assert keys(search(client, f"cf[{cf_num(sandbox.amount)}] > 15", fields=["summary"])) == [b["key"]]
    assert keys(search(client, f"project = OPS ORDER BY cf[{cf_num(sandbox.amount)}] DESC",
                       fields=["summary"])) == [b["key"], a["key"], c["key"]]

    for jql, fragment in [
        (f"customfield_{n} = x", f"Field 'customfield_{n}' does not exist or you do not have permission"),
        ("order by key desc", "Unbounded JQL queries are not allowed here"),
        ("", "Unbounded JQL"),
        ("project = NOPE", "The value 'NOPE' does not exist for the field 'project'."),
        ("status = Done ORDER BY key, id, created, updated, summary, status, project, issuetype",
         "at most 7"),
        ("summary = Alpha", "The operator '=' is not supported by the 'summary' field."),
    ]:
        r = search(client, jql)
        assert r.status_code == 400, jql
        assert fragment in " ".join(r.json()["errorMessages"]), (jql, r.json())


def test_search_paging_has_next_page_token_and_no_total(client: httpx.Client) -> None:
    created = [create(client, f"Issue {i}")["id"] for i in range(7)]
    seen, token, pages = [], None, 0
    while True:
        body = {"maxResults": 3, **({"nextPageToken": token} if token else {})}
        r = search(client, "project = OPS", **body)
        assert r.status_code == 200
        page = r.json()
        assert "total" not in page
        assert all(set(i) == {"id"} for i in page["issues"])  # fields default: id only
        seen += [i["id"] for i in page["issues"]]
        pages += 1
        if page["isLast"]:
            assert "nextPageToken" not in page
            break
        token = page["nextPageToken"]
    assert seen == created and pages == 3

    r = search(client, "project = OPS", nextPageToken="garbage!")
    assert r.status_code == 400
    r = search(client, "project = OPS", maxResults=3)
    r2 = search(client, "issuetype = Task", nextPageToken=r.json()["nextPageToken"])  # token of another query
    assert r2.status_code == 400

    r = client.get(f"{API}/search/jql", params={"jql": "project = OPS", "fields": "summary,status", "maxResults": 2})
    issue = r.json()["issues"][0]
    assert set(issue["fields"]) == {"summary", "status"} and issue["key"] == "OPS-1"
    assert client.get(f"{API}/search", params={"jql": "project = OPS"}).status_code == 410


def test_search_lag_and_reconcile_issues(client: httpx.Client, sandbox: JiraSandbox) -> None:
    sandbox.search_lag_s = 5
    a = create(client, "Fresh")
    assert keys(search(client, "project = OPS", fields=["summary"])) == []
    assert keys(search(client, "project = OPS", fields=["summary"], reconcileIssues=[int(a["id"])])) == [a["key"]]
    sandbox.clock.advance(6)
    assert keys(search(client, "project = OPS", fields=["summary"])) == [a["key"]]
    assert search(client, "project = OPS", reconcileIssues=list(range(51))).status_code == 400


# ---------------------------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------------------------
def test_bulk_create_partial_failure_and_limits(client: httpx.Client, sandbox: JiraSandbox) -> None:
    good = {"project": {"key": "OPS"}, "issuetype": {"name": "Task"}}
    updates = [{"fields": {**good, "summary": "one"}},
               {"fields": {**good, "summary": "two", "customfield_999": 1}},
               {"fields": {**good, "summary": "three"}}]
    r = client.post(f"{API}/issue/bulk", json={"issueUpdates": updates})
    assert r.status_code == 201
    body = r.json()
    assert [i["key"] for i in body["issues"]] == ["OPS-1", "OPS-2"]
    assert body["errors"] == [{"status": 400, "failedElementNumber": 1, "elementErrors": {
        "errorMessages": [], "errors": {"customfield_999": "Field 'customfield_999' cannot be set. It is not on "
                                                           "the appropriate screen, or unknown."}}}]
    r = client.post(f"{API}/issue/bulk", json={"issueUpdates": [{"fields": {"summary": "x"}}]})
    assert r.status_code == 400 and r.json()["issues"] == [] and r.json()["errors"][0]["failedElementNumber"] == 0
    r = client.post(f"{API}/issue/bulk", json={"issueUpdates": [{"fields": {**good, "summary": "x"}}] * 51})
    assert r.status_code == 400 and len(sandbox.issues(CLOUD)) == 2


def test_transitions_and_edit(client: httpx.Client, sandbox: JiraSandbox) -> None:
    issue = create(client, "Move me")
    r = client.get(f"{API}/issue/{issue['key']}/transitions")
    assert {t["id"]: t["to"]["name"] for t in r.json()["transitions"]} == {"21": "In Progress", "31": "Done"}
    assert client.post(f"{API}/issue/{issue['key']}/transitions", json={"transition": {"id": "31"}}).status_code == 204
    fields = client.get(f"{API}/issue/{issue['key']}", params={"fields": "status,resolution"}).json()["fields"]
    assert fields["status"]["name"] == "Done" and fields["resolution"]["name"] == "Done"
    r = client.post(f"{API}/issue/{issue['key']}/transitions", json={"transition": {"id": "31"}})
    assert r.status_code == 400 and "not valid for this issue" in r.json()["errorMessages"][0]
    assert client.post(f"{API}/issue/OPS-99/transitions", json={"transition": {"id": "11"}}).status_code == 404

    assert client.put(f"{API}/issue/{issue['key']}", json={"fields": {"summary": "Renamed"}}).status_code == 204
    assert client.get(f"{API}/issue/{issue['key']}").json()["fields"]["summary"] == "Renamed"
    r = client.put(f"{API}/issue/{issue['key']}", json={"fields": {"description": "plain"}})
    assert r.status_code == 400


def test_get_single_comment_and_404s(client: httpx.Client) -> None:
    issue, other = create(client, "Commented"), create(client, "Other")
    posted = client.post(f"{API}/issue/{issue['key']}/comment", json={"body": ADF}).json()
    r = client.get(f"{API}/issue/{issue['key']}/comment/{posted['id']}")
    assert r.status_code == 200 and r.json() == posted  # the same Comment JSON (response checked by the spec)
    assert client.get(f"{API}/issue/{issue['id']}/comment/{posted['id']}").json() == posted
    assert client.get(f"{API}/issue/{issue['key']}/comment").json()["comments"] == [posted]
    for path, message in [
        (f"OPS-99/comment/{posted['id']}", "Issue does not exist or you do not have permission to see it."),
        (f"{issue['key']}/comment/99999", "Can not find a comment for the id: 99999."),
        (f"{issue['key']}/comment/abc", "Can not find a comment for the id: abc."),
        (f"{other['key']}/comment/{posted['id']}", f"Can not find a comment for the id: {posted['id']}."),
    ]:
        r = client.get(f"{API}/issue/{path}")
        assert r.status_code == 404, path
        assert r.json() == {"errorMessages": [message], "errors": {}}


V2 = f"/ex/jira/{CLOUD}/rest/api/2"


def as_v3_comment(sandbox: JiraSandbox, v2: dict, key: str) -> None:
    """A v2 Comment has v3's shape but for the string body and the /rest/api/2 links: check it by hand
    against v3's Comment schema (there is no v2 spec in shared/specs)."""
    assert isinstance(v2["body"], str) and "/rest/api/2/" in v2["self"] and "/rest/api/2/" in v2["author"]["self"]
    twin = json.loads(json.dumps({**v2, "body": ADF}).replace("/rest/api/2/", "/rest/api/3/"))
    sandbox.spec.validate_response("GET", f"/rest/api/3/issue/{key}/comment/{v2['id']}", 200, twin)


def test_v2_comments_take_and_give_plain_strings(client: httpx.Client, sandbox: JiraSandbox,
                                                 capture: Capture) -> None:
    sandbox.add_admin_webhook(CLOUD, "https://admin.example/h", None, ["comment_created"])
    issue = create(client, "Commented in v2")
    text = "Line one\nline *two*\n\nh2. Second block"
    r = client.post(f"{V2}/issue/{issue['key']}/comment", json={"body": text})
    assert r.status_code == 201, r.text
    posted = r.json()
    assert posted["body"] == text and posted["author"]["accountId"] == "acc-alice"
    assert posted["self"].endswith(f"/rest/api/2/issue/{issue['id']}/comment/{posted['id']}")
    as_v3_comment(sandbox, posted, issue["key"])
    assert client.get(f"{V2}/issue/{issue['key']}/comment/{posted['id']}").json() == posted
    assert client.get(f"{V2}/issue/{issue['id']}/comment").json() == {
        "startAt": 0, "maxResults": 100, "total": 1, "comments": [posted]}

    # v3 reads the same comment as ADF (checked by the spec); its text is the string's
    v3 = client.get(f"{API}/issue/{issue['key']}/comment/{posted['id']}").json()
    assert v3["body"] == {"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": "Line one"}, {"type": "hardBreak"},
                                          {"type": "text", "text": "line *two*"}]},
        {"type": "paragraph", "content": [{"type": "text", "text": "h2. Second block"}]}]}
    assert {k: v for k, v in v3.items() if k not in ("body", "self", "author", "updateAuthor")} == \
        {k: v for k, v in posted.items() if k not in ("body", "self", "author", "updateAuthor")}

    # a v3 comment read through v2 gives its text; orderBy and paging work as in v3
    client.post(f"{API}/issue/{issue['key']}/comment", json={"body": ADF})
    page = client.get(f"{V2}/issue/{issue['key']}/comment", params={"orderBy": "-created", "maxResults": 1}).json()
    assert (page["total"], page["maxResults"], [c["body"] for c in page["comments"]]) == (2, 1, ["hi"])
    as_v3_comment(sandbox, page["comments"][0], issue["key"])

    # the webhook is the v3 one: comment_created with the comment as v3 gives it
    sandbox.deliver_pending()
    events = capture.bodies()
    assert [e["webhookEvent"] for e in events] == ["comment_created", "comment_created"]
    assert events[0]["comment"]["id"] == posted["id"] and events[0]["comment"]["body"] == v3["body"]
    assert set(events[0]) == set(events[1]) and set(events[0]["comment"]) == set(events[1]["comment"])
    assert sandbox.calls[("POST", "/ex/jira/{cloudId}/rest/api/2/issue/{issueIdOrKey}/comment")] == 1


def test_v2_comments_refuse_what_jira_refuses(client: httpx.Client, sandbox: JiraSandbox) -> None:
    issue = create(client, "Strict")
    url = f"{V2}/issue/{issue['key']}/comment"
    r = client.post(url, json={"body": ADF})   # v3's ADF is not a string
    assert r.status_code == 400 and r.json()["errors"] == {}
    assert r.json()["errorMessages"][0].startswith(
        "Can not deserialize instance of java.lang.String out of START_OBJECT token")
    assert 'CommentJsonBean["body"]' in r.json()["errorMessages"][0]
    for body in ({"body": ""}, {"body": "  \n "}, {}, {"body": None}):
        r = client.post(url, json=body)
        assert r.status_code == 400, body
        assert r.json() == {"errorMessages": [], "errors": {"comment": "Comment body can not be empty!"}}
    r = client.post(url, json="just a string")
    assert r.status_code == 400 and "from JSON String" in r.json()["errorMessages"][0]
    assert client.post(url, json={"body": "x", "visibility": {"type": "team"}}).status_code == 400
    assert client.post(url, content=b"").status_code == 400
    assert client.post(f"{V2}/issue/OPS-99/comment", json={"body": "x"}).status_code == 404
    assert client.post(f"{V2}/issue/OPS-99/comment", json={"body": ADF}).status_code == 400   # binding comes first
    assert client.get(f"{V2}/issue/{issue['key']}/comment").json()["total"] == 0   # nothing was stored

    r = client.get(url, params={"orderBy": "sideways"})
    assert r.status_code == 400 and "orderBy" in r.json()["errors"]
    assert client.get(url, params={"startAt": "x"}).status_code == 400
    posted = client.post(url, json={"body": 42}).json()   # Jackson reads a scalar as text
    assert posted["body"] == "42"
    other = create(client, "Other")
    r = client.get(f"{V2}/issue/{other['key']}/comment/{posted['id']}")
    assert r.status_code == 404 and r.json()["errorMessages"] == [f"Can not find a comment for the id: {posted['id']}."]
    # v2 twins of v3 operations the sandbox does not serve say so; paths v3 lacks are 404
    r = client.delete(f"{V2}/issue/{issue['key']}/comment/{posted['id']}")
    assert r.status_code == 501 and "/rest/api/2/issue/{issueIdOrKey}/comment/{id}" in r.json()["errorMessages"][0]
    assert client.get(f"{V2}/no/such/resource").status_code == 404
    assert client.put(f"{V2}/issue/{issue['key']}/comment", json={"body": "x"}).status_code == 405


def test_issue_link_types(client: httpx.Client) -> None:
    r = client.get(f"{API}/issueLinkType")
    assert r.status_code == 200 and set(r.json()) == {"issueLinkTypes"}
    types = {t["name"]: t for t in r.json()["issueLinkTypes"]}
    assert {"Blocks", "Cloners", "Duplicate", "Relates"} <= set(types)
    assert (types["Blocks"]["inward"], types["Blocks"]["outward"]) == ("is blocked by", "blocks")
    assert (types["Duplicate"]["inward"], types["Duplicate"]["outward"]) == ("is duplicated by", "duplicates")
    assert types["Relates"]["inward"] == types["Relates"]["outward"] == "relates to"
    for t in types.values():
        assert set(t) == {"id", "name", "inward", "outward", "self"}
        assert t["self"].endswith(f"/rest/api/3/issueLinkType/{t['id']}")
    assert len({t["id"] for t in types.values()}) == len(types)


def linked(client: httpx.Client, key: str) -> list[dict]:
    r = client.get(f"{API}/issue/{key}", params={"fields": "issuelinks"})
    assert r.status_code == 200 and set(r.json()["fields"]) == {"issuelinks"}
    return r.json()["fields"]["issuelinks"]


def test_link_issues_shows_the_link_on_both_issues(client: httpx.Client, sandbox: JiraSandbox,
                                                   capture: Capture) -> None:
    sandbox.add_admin_webhook(CLOUD, "https://admin.example/h", None, list(WEBHOOK_EVENTS))
    a, b, c = create(client, "Blocker"), create(client, "Blocked"), create(client, "Copy")
    sandbox.deliver_pending()
    capture.requests.clear()
    r = client.post(f"{API}/issueLink", json={"type": {"name": "Blocks"}, "inwardIssue": {"key": a["key"]},
                                              "outwardIssue": {"key": b["key"]}})
    assert r.status_code == 201 and r.content == b""
    (on_a,), (on_b,) = linked(client, a["key"]), linked(client, b["key"])
    assert on_a["id"] == on_b["id"] and on_a["self"].endswith(f"/rest/api/3/issueLink/{on_a['id']}")
    assert on_a["type"]["name"] == on_b["type"]["name"] == "Blocks"
    assert "inwardIssue" not in on_a and on_a["outwardIssue"]["key"] == b["key"]      # "A blocks B"
    assert "outwardIssue" not in on_b and on_b["inwardIssue"]["key"] == a["key"]      # "B is blocked by A"
    target = on_a["outwardIssue"]
    assert target["id"] == b["id"] and target["self"].endswith(f"/rest/api/3/issue/{b['id']}")
    assert target["fields"]["summary"] == "Blocked" and target["fields"]["status"]["name"] == "To Do"
    # each entry plus the issue it sits on is a whole IssueLink (the schema of GET /issueLink/{linkId})
    for entry, here in ((on_a, {"inwardIssue": on_b["inwardIssue"]}), (on_b, {"outwardIssue": target})):
        sandbox.spec.validate_response("GET", f"/rest/api/3/issueLink/{entry['id']}", 200, {**entry, **here})
    assert linked(client, c["key"]) == []
    assert [lk["outwardIssue"]["key"] for lk in sandbox.issues(CLOUD)[0]["fields"]["issuelinks"]] == [b["key"]]
    found = search(client, f"key = {a['key']}", fields=["issuelinks"]).json()["issues"]
    assert found[0]["fields"]["issuelinks"] == [on_a]
    fields = {f["id"]: f for f in client.get(f"{API}/field").json()}
    assert fields["issuelinks"]["name"] == "Linked Issues" and fields["issuelinks"]["schema"]["type"] == "array"

    # by type id and issue ids; a repeated link is answered 201 and not stored twice; the comment goes to
    # the inward ("from") issue
    body = {"type": {"id": "10001"}, "inwardIssue": {"id": c["id"]}, "outwardIssue": {"key": a["key"]}}
    assert client.post(f"{API}/issueLink", json=body).status_code == 201
    assert client.post(f"{API}/issueLink", json={**body, "comment": {"body": ADF}}).status_code == 201
    assert [lk["outwardIssue"]["key"] for lk in linked(client, c["key"])] == [a["key"]]
    assert [lk["type"]["name"] for lk in linked(client, a["key"])] == ["Blocks", "Cloners"]
    assert linked(client, a["key"])[1]["inwardIssue"]["key"] == c["key"]
    assert client.get(f"{API}/issue/{c['key']}/comment").json()["comments"][0]["body"] == ADF
    assert client.get(f"{API}/issue/{a['key']}/comment").json()["total"] == 0

    sandbox.deliver_pending()  # links emit no webhook; the comment is an ordinary comment_created
    assert [(e["webhookEvent"], e["issue"]["key"]) for e in capture.bodies()] == [("comment_created", c["key"])]


def test_link_issues_errors(client: httpx.Client, sandbox: JiraSandbox) -> None:
    a, b = create(client, "One"), create(client, "Two")
    ok = {"type": {"name": "Duplicate"}, "inwardIssue": {"key": a["key"]}, "outwardIssue": {"key": b["key"]}}
    for body, message in [
        ({**ok, "outwardIssue": {"key": "OPS-99"}}, "Issue does not exist or you do not have permission to see it."),
        ({**ok, "inwardIssue": {"id": "99999"}}, "Issue does not exist or you do not have permission to see it."),
        ({**ok, "type": {"name": "Nope"}}, "No issue link type with name 'Nope' found."),
        ({**ok, "type": {"name": "duplicate"}}, "No issue link type with name 'duplicate' found."),
        ({**ok, "type": {"id": "424242"}}, "No issue link type with id '424242' found."),
    ]:
        r = client.post(f"{API}/issueLink", json=body)
        assert r.status_code == 404, body
        assert r.json() == {"errorMessages": [message], "errors": {}}
    for body, fragment in [  # the spec rejects these
        ({"type": ok["type"], "inwardIssue": ok["inwardIssue"]}, "'outwardIssue' is a required property"),
        ({**ok, "type": {"name": "Duplicate", "colour": "red"}}, "Additional properties are not allowed"),
        ({**ok, "inwardIssue": {"key": 7}}, "7 is not of type 'string'"),
    ]:
        r = client.post(f"{API}/issueLink", json=body)
        assert r.status_code == 400 and fragment in " ".join(r.json()["errorMessages"]), (body, r.json())
    r = client.post(f"{API}/issueLink", json={**ok, "comment": {"body": "plain text"}})
    assert r.status_code == 400 and "Atlassian Document" in r.json()["errors"]["comment"]
    r = client.post(f"{API}/issueLink", json={**ok, "outwardIssue": {"key": a["key"]}})
    assert r.status_code == 400 and r.json()["errorMessages"] == ["You cannot link an issue to itself."]
    assert linked(client, a["key"]) == linked(client, b["key"]) == []  # nothing was linked by a failed request


def test_users_myself_server_info(client: httpx.Client) -> None:
    assert client.get(f"{API}/myself").json()["accountId"] == "acc-alice"
    user = client.get(f"{API}/user", params={"accountId": "acc-bob"}).json()
    assert user["displayName"] == "Bob" and user["active"] is True
    assert client.get(f"{API}/user", params={"accountId": "nobody"}).status_code == 404
    assert client.get(f"{API}/serverInfo").json()["baseUrl"] == "https://acme.atlassian.net"


# ---------------------------------------------------------------------------------------------
# Auth, sites, rate limits
# ---------------------------------------------------------------------------------------------
def test_auth_and_accessible_resources(sandbox: JiraSandbox) -> None:
    sandbox.add_site("cloud-2", "beta", "https://beta.atlassian.net")
    sandbox.add_token("only-2", client_id=APP, account_id="acc-bob", cloud_ids=["cloud-2"])
    with httpx.Client(transport=sync_transport(sandbox.app), base_url="http://jira.test") as c:
        assert c.get(f"{API}/myself").status_code == 401
        assert c.get(f"{API}/myself", headers={"Authorization": "Bearer wrong"}).status_code == 401
        sites = c.get("/oauth/token/accessible-resources", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert {s["id"]: s["url"] for s in sites} == {CLOUD: "https://acme.atlassian.net",
                                                       "cloud-2": "https://beta.atlassian.net"}
        assert set(sites[0]) == {"id", "name", "url", "scopes", "avatarUrl"}
        limited = c.get("/oauth/token/accessible-resources", headers={"Authorization": "Bearer only-2"}).json()
        assert [s["id"] for s in limited] == ["cloud-2"]
        assert c.get(f"{API}/myself", headers={"Authorization": "Bearer only-2"}).status_code == 404
        assert c.get("/oauth/token/accessible-resources").status_code == 401


def test_injected_token_validator_decides(capture: Capture) -> None:
    seen = []

    def validator(token: str) -> dict | None:
        seen.append(token)
        return {"client_id": APP, "account_id": "acc-x", "scopes": ["read:jira-work"]} if token == "ok" else None

    sb = JiraSandbox(token_validator=validator)
    sb.add_site(CLOUD, "acme", "https://acme.atlassian.net")
    with httpx.Client(transport=sync_transport(sb.app), base_url="http://jira.test") as c:
        assert c.get(f"{API}/myself", headers={"Authorization": "Bearer ok"}).json()["accountId"] == "acc-x"
        assert c.get(f"{API}/myself", headers={"Authorization": "Bearer expired"}).status_code == 401
        r = c.get(f"{API}/webhook", headers={"Authorization": "Bearer ok"})  # no manage:jira-webhook scope
        assert r.status_code == 403
    assert seen == ["ok", "expired", "ok"]


def test_rate_limit_and_503_headers(client: httpx.Client, sandbox: JiraSandbox) -> None:
    sandbox.faults.rate_limit_next = 1
    sandbox.faults.retry_after = "7"
    r = client.get(f"{API}/myself")
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "7" and r.headers["RateLimit-Reason"] == "jira-burst-based"
    assert r.headers["X-RateLimit-Remaining"] == "0" and int(r.headers["X-RateLimit-Limit"]) > 0
    reset = datetime.fromisoformat(r.headers["X-RateLimit-Reset"])
    assert timedelta(0) < reset - datetime.now(UTC) <= timedelta(seconds=8)
    assert r.json() == {"errorMessages": ["Rate limit exceeded."], "errors": {}}
    sandbox.faults.server_error_next = 1
    r = client.get(f"{API}/myself")
    assert r.status_code == 503 and r.headers["Retry-After"] == "7"
    assert client.get(f"{API}/myself").status_code == 200
    assert sandbox.calls[("GET", "/ex/jira/{cloudId}/rest/api/3/myself")] == 3
    assert sandbox.calls_total == 3


# ---------------------------------------------------------------------------------------------
# Webhooks
# ---------------------------------------------------------------------------------------------
def register(client: httpx.Client, url: str, *hooks: dict) -> httpx.Response:
    return client.post(f"{API}/webhook", json={"url": url, "webhooks": list(hooks)})


def test_webhook_registration_rules(client: httpx.Client) -> None:
    r = register(client, "https://app.example/hook",
                 {"events": ["jira:issue_created"], "jqlFilter": "project = OPS AND issuetype in (Task, Bug)"},
                 {"events": ["jira:issue_created"], "jqlFilter": "watchCount > 1"},
                 {"events": ["jira:issue_updated"], "jqlFilter": 'cf[10030] ~ "x"'},
                 {"events": ["jira:issue_updated"], "jqlFilter": "status ~ Done"})
    assert r.status_code == 200
    results = r.json()["webhookRegistrationResult"]
    assert "createdWebhookId" in results[0]
    assert results[1] == {"errors": ["The clause watchCount is unsupported"]}
    assert results[2] == {"errors": ["The clause cf[10030] is unsupported"]}
    assert "errors" in results[3]
    r = register(client, "https://elsewhere.example/hook", {"events": ["jira:issue_created"], "jqlFilter": "project = OPS"})
    assert r.status_code == 400 and "single URL" in r.json()["errorMessages"][0]


def test_webhooks_expire_after_30_days_unless_refreshed(client: httpx.Client, sandbox: JiraSandbox,
                                                        capture: Capture) -> None:
    url = "https://app.example/hook"
    first = register(client, url, {"events": ["jira:issue_created"], "jqlFilter": "project = OPS"}).json()
    second = register(client, url, {"events": ["jira:issue_created"], "jqlFilter": "project = OPS"}).json()
    w1 = first["webhookRegistrationResult"][0]["createdWebhookId"]
    w2 = second["webhookRegistrationResult"][0]["createdWebhookId"]
    listed = client.get(f"{API}/webhook").json()
    expiry = {v["id"]: v["expirationDate"] for v in listed["values"]}
    now_ms = sandbox.clock.timestamp() * 1000
    assert abs(expiry[w1] - (now_ms + 30 * 86400_000)) < 5000

    sandbox.clock.advance(days=29)
    r = client.put(f"{API}/webhook/refresh", json={"webhookIds": [w1, 99999]})
    assert r.status_code == 200
    assert abs(r.json()["expirationDate"] - (sandbox.clock.timestamp() * 1000 + 30 * 86400_000)) < 5000
    sandbox.clock.advance(days=2)
    assert [v["id"] for v in client.get(f"{API}/webhook").json()["values"]] == [w1]

    create(client, "after expiry of w2")
    sandbox.deliver_pending()
    assert [b["matchedWebhookIds"] for b in capture.bodies()] == [[w1]]
    assert w2 not in [v["id"] for v in client.get(f"{API}/webhook").json()["values"]]

    assert client.request("DELETE", f"{API}/webhook", json={"webhookIds": [w1]}).status_code == 202
    assert client.get(f"{API}/webhook").json()["values"] == []


def test_dynamic_webhook_jwt_and_changelog(client: httpx.Client, sandbox: JiraSandbox, capture: Capture) -> None:
    url = "https://app.example/hook"
    register(client, url, {"events": ["jira:issue_created", "jira:issue_updated", "comment_created"],
                           "jqlFilter": "project = OPS"})
    issue = create(client, "Hooked", **{sandbox.ext: "BC-1"})
    sandbox.transition_as_user(CLOUD, issue["key"], "Done", account_id="acc-bob")
    sandbox.comment_as_user(CLOUD, issue["key"], "done here", account_id="acc-bob")
    assert sandbox.deliver_pending() == 3
    events = capture.bodies()
    assert [e["webhookEvent"] for e in events] == ["jira:issue_created", "jira:issue_updated", "comment_created"]
    created, updated, commented = events
    assert created["issue"]["key"] == issue["key"] and created["issue"]["fields"][sandbox.ext] == "BC-1"
    assert created["user"]["accountId"] == "acc-alice"
    assert updated["user"] == {**updated["user"], "accountId": "acc-bob", "displayName": "Bob"}
    assert updated["issue"]["fields"]["status"]["statusCategory"]["key"] == "done"
    assert {"field": "status", "fieldtype": "jira", "from": "10000", "fromString": "To Do", "to": "10002",
            "toString": "Done"}.items() <= updated["changelog"]["items"][0].items()
    assert commented["comment"]["body"]["content"][0]["content"][0]["text"] == "done here"

    identifiers = set()
    for req in capture.requests:
        assert req.url == url and req.headers["Content-Type"] == "application/json"
        assert req.headers["X-Atlassian-Webhook-Flow"] == "Primary"
        assert req.headers["X-Atlassian-Webhook-Retry"] == "0"
        assert "X-Hub-Signature" not in req.headers
        token = req.headers["Authorization"].removeprefix("Bearer ")
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        assert claims["iss"] == APP and claims["exp"] - claims["iat"] == 300
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, "wrong-secret", algorithms=["HS256"])
        identifiers.add(req.headers["X-Atlassian-Webhook-Identifier"])
    assert len(identifiers) == 3


def test_admin_webhook_hmac_and_jql_filter(client: httpx.Client, sandbox: JiraSandbox, capture: Capture) -> None:
    sandbox.add_admin_webhook(CLOUD, "https://admin.example/signed", "s3cr3t", ["jira:issue_created"],
                              jql_filter="issuetype = Bug")
    sandbox.add_admin_webhook(CLOUD, "https://admin.example/unsigned", None, ["jira:issue_created"])
    create(client, "a task")
    create(client, "a bug", issuetype={"name": "Bug"})
    sandbox.deliver_pending()
    signed = [r for r in capture.requests if r.url.path == "/signed"]
    unsigned = [r for r in capture.requests if r.url.path == "/unsigned"]
    assert len(signed) == 1 and len(unsigned) == 2
    expected = "sha256=" + hmac.new(b"s3cr3t", signed[0].content, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signed[0].headers["X-Hub-Signature"], expected)
    assert json.loads(signed[0].content)["issue"]["fields"]["summary"] == "a bug"
    assert all("X-Hub-Signature" not in r.headers and "Authorization" not in r.headers for r in unsigned)


def test_redelivery_retries_and_duplicates(client: httpx.Client, sandbox: JiraSandbox) -> None:
    cap = Capture(statuses=[503, 500, 200])
    sandbox._delivery_transport = httpx.MockTransport(cap)
    sandbox.add_admin_webhook(CLOUD, "https://admin.example/h", None, ["jira:issue_created"])
    create(client, "retry me")
    assert sandbox.deliver_pending() == 0
    assert sandbox.deliver_pending() == 0
    assert sandbox.deliver_pending() == 1
    assert sandbox.deliver_pending() == 0  # nothing left
    ident = {r.headers["X-Atlassian-Webhook-Identifier"] for r in cap.requests}
    assert len(ident) == 1
    assert [r.headers["X-Atlassian-Webhook-Retry"] for r in cap.requests] == ["0", "1", "2"]
    (identifier,) = ident
    assert sandbox.redeliver(identifier) == 200
    assert cap.requests[-1].headers["X-Atlassian-Webhook-Identifier"] == identifier
    assert cap.requests[-1].headers["X-Atlassian-Webhook-Retry"] == "3"
    assert cap.requests[-1].content == cap.requests[0].content
    assert [s for (_u, i, s) in sandbox.delivery_log if i == identifier] == [503, 500, 200, 200]

    sandbox.faults.duplicate_deliveries = True
    create(client, "twice")
    sandbox.deliver_pending()
    last_two = cap.requests[-2:]
    assert last_two[0].headers["X-Atlassian-Webhook-Identifier"] == last_two[1].headers[
        "X-Atlassian-Webhook-Identifier"] != identifier

    sandbox.faults.duplicate_deliveries = False
    sandbox.faults.drop_deliveries_next = 1
    before = len(cap.requests)
    create(client, "dropped")
    sandbox.deliver_pending()
    assert len(cap.requests) == before and sandbox.delivery_log[-1][2] == "dropped"


def test_people_simulation_over_http_and_demo_page(client: httpx.Client, sandbox: JiraSandbox,
                                                   capture: Capture) -> None:
    sandbox.add_admin_webhook(CLOUD, "https://admin.example/h", None, ["jira:issue_updated", "comment_created"])
    issue = create(client, "Demo <issue>")
    page = client.get("/_sandbox/")
    assert page.status_code == 200 and "Demo &lt;issue&gt;" in page.text and "Move to Done" in page.text
    r = client.post("/_sandbox/transition", data={"cloud_id": CLOUD, "key": issue["key"], "status": "Done",
                                                 "redirect": "1"})
    assert r.status_code == 303
    assert sandbox.issues(CLOUD)[0]["fields"]["status"]["name"] == "Done"
    assert "Move to Done" not in client.get("/_sandbox/").text
    r = client.post("/_sandbox/comment", json={"cloud_id": CLOUD, "key": issue["key"], "text": "hello"})
    assert r.status_code == 201
    sandbox.deliver_pending()
    assert [b["webhookEvent"] for b in capture.bodies()] == ["jira:issue_updated", "comment_created"]


# ---------------------------------------------------------------------------------------------
# openapi.py on its own
# ---------------------------------------------------------------------------------------------
def test_openapi_validator_units() -> None:
    v = OpenApiValidator(load_json_spec("jira-cloud-platform-swagger-v3.v3.json"))
    assert v.find_operation("POST", "/rest/api/3/issue/bulk").template == "/rest/api/3/issue/bulk"
    op = v.find_operation("GET", "/rest/api/3/issue/OPS-1/transitions")
    assert op.template == "/rest/api/3/issue/{issueIdOrKey}/transitions" and op.path_params == {"issueIdOrKey": "OPS-1"}
    assert v.find_operation("PATCH", "/rest/api/3/issue/OPS-1") is None
    with pytest.raises(RequestValidationError) as err:
        v.validate_request("GET", "/rest/api/3/issue/OPS-1/comment", {"orderBy": ["sideways"]})
    assert "orderBy" in err.value.field_errors
    v.validate_request("GET", "/rest/api/3/issue/OPS-1/comment", {"orderBy": ["-created"]})
    with pytest.raises(ResponseValidationError):
        v.validate_response("GET", "/rest/api/3/search/jql", 200, {"issues": [], "isLast": True, "total": 0})
    with pytest.raises(ResponseValidationError):
        v.validate_response("POST", "/rest/api/3/issue", 299, {})
    # nullable: the Visibility.identifier property accepts null once translated
    comment = {"body": ADF, "visibility": {"type": "role", "value": "Admins", "identifier": None}}
    v.validate_request("POST", "/rest/api/3/issue/OPS-1/comment", {}, comment, has_body=True)
    assert translate_nullable({"type": "string", "nullable": True}) == {"type": ["string", "null"]}
    assert translate_nullable({"$ref": "#/x", "nullable": True}) == {"anyOf": [{"$ref": "#/x"}, {"type": "null"}]}
