"""JiraClient against the Jira sandbox on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from connector_pipelines.core.http import ApiError, RetrySettings
from connector_pipelines.systems.jira import (
    BulkCreateResult,
    CreatedIssue,
    JiraClient,
    JiraConfigError,
    JiraField,
    JiraWebhookError,
)
from connector_pipelines.systems.jira.client import parse_expiration
from sandboxes.common import SandboxServer
from sandboxes.jira import JiraSandbox

CLOUD = "22222222-aaaa-bbbb-cccc-000000000002"
SITE_URL = "https://acme.atlassian.net"
ADF = {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [{"type": "text", "text": "ok"}]}]}
FAST = RetrySettings(max_attempts=6, initial_backoff_s=0.01, max_backoff_s=0.05, max_total_wait_s=10)


class StaticTokens:
    """A TokenProvider with a list of tokens: each invalidate() moves to the next one."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.invalidated: list[str] = []

    def get_token(self) -> str:
        return self.tokens[0]

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)
        if len(self.tokens) > 1 and self.tokens[0] == token:
            self.tokens.pop(0)


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[JiraSandbox, SandboxServer]]:
    sb = JiraSandbox(validate_responses=True)
    sb.add_site(CLOUD, "acme", SITE_URL)
    sb.add_user(CLOUD, "acc-1", "Integration User", "int@example.com")
    sb.add_token("good", client_id="app", account_id="acc-1")
    sb.register_app("app", "secret")
    with SandboxServer(sb.app) as server:
        yield sb, server
    sb.close()
    assert sb.response_errors == []


@pytest.fixture
def sandbox(world: tuple[JiraSandbox, SandboxServer]) -> JiraSandbox:
    sb = world[0]
    sb.faults.rate_limit_next = sb.faults.server_error_next = 0
    return sb


@pytest.fixture
def project(sandbox: JiraSandbox, request: pytest.FixtureRequest) -> str:
    """A fresh project per test (the module shares one site and one server)."""
    key = "P" + str(abs(hash(request.node.name)) % 100000)
    sandbox.add_project(CLOUD, key, request.node.name)
    return key


@pytest.fixture
def jira(world: tuple[JiraSandbox, SandboxServer]) -> Iterator[JiraClient]:
    client = JiraClient.connect(world[1].base_url, CLOUD, SITE_URL, StaticTokens("good"), retry=FAST)
    yield client
    client.close()


@pytest.fixture(scope="module")
def fields(world: tuple[JiraSandbox, SandboxServer]) -> dict[str, str]:
    sb = world[0]
    return {"ext": sb.add_custom_field(CLOUD, "ERP External ID", "textfield"),
            "amount": sb.add_custom_field(CLOUD, "Invoice Amount", "float"),
            "cc1": sb.add_custom_field(CLOUD, "Cost Center", "textfield"),
            "cc2": sb.add_custom_field(CLOUD, "Cost Center", "select", options=["A"])}


def issue_fields(project: str, summary: str, **extra) -> dict:
    return {"project": {"key": project}, "issuetype": {"name": "Task"}, "summary": summary, **extra}


def test_fields_and_resolve_by_exact_name(jira: JiraClient, fields: dict[str, str]) -> None:
    all_fields = {f.id: f for f in jira.fields()}
    ext = all_fields[fields["ext"]]
    assert isinstance(ext, JiraField) and ext.custom and ext.schema_type == "string"
    assert ext.schema_custom == "com.atlassian.jira.plugin.system.customfieldtypes:textfield"
    assert ext.clause_names[0] == f"cf[{fields['ext'].removeprefix('customfield_')}]" == ext.jql_clause

    resolved = jira.resolve_fields(["ERP External ID", "Invoice Amount", "Summary"])
    assert resolved["ERP External ID"].id == fields["ext"] and resolved["Summary"].id == "summary"

    with pytest.raises(JiraConfigError) as err:
        jira.resolve_fields(["ERP External ID", "Cost Center", "Nope Field", "erp external id"])
    assert err.value.missing == ["Nope Field", "erp external id"]  # exact names only
    assert err.value.ambiguous == {"Cost Center": [fields["cc1"], fields["cc2"]]}
    assert "Nope Field" in str(err.value) and fields["cc1"] in str(err.value) and fields["cc2"] in str(err.value)


def test_search_follows_next_page_token(jira: JiraClient, sandbox: JiraSandbox, project: str) -> None:
    result = jira.bulk_create([issue_fields(project, f"Issue {i}") for i in range(7)])
    assert all(result.created)
    before = jira.http.calls_by_endpoint["POST /rest/api/3/search/jql"]
    issues = list(jira.search_jql(f"project = {project} ORDER BY key ASC", ["summary"], page_size=3))
    assert [i["fields"]["summary"] for i in issues] == [f"Issue {i}" for i in range(7)]
    assert jira.http.calls_by_endpoint["POST /rest/api/3/search/jql"] - before == 3
    ids_only = list(jira.search_jql(f"project = {project}"))
    assert len(ids_only) == 7 and all(set(i) == {"id"} for i in ids_only)

    sandbox.search_lag_s = 60
    sandbox.clock.advance(61)  # the seven are indexed; the next one is not yet
    try:
        fresh = jira.create_issue(issue_fields(project, "fresh"))
        assert len(list(jira.search_jql(f"project = {project}"))) == 7
        seen = list(jira.search_jql(f"project = {project}", reconcile_issue_ids=[int(fresh.id)]))
        assert str(fresh.id) in {i["id"] for i in seen}
    finally:
        sandbox.search_lag_s = 0
    with pytest.raises(ApiError) as err:
        list(jira.search_jql("order by key desc"))
    assert err.value.status == 400 and "Unbounded" in str(err.value)


def test_jql_text_any_escaping() -> None:
    assert JiraClient.jql_text_any("cf[10050]", ["v1", "v2"]) == \
        '(cf[10050] ~ "\\"v1\\"" OR cf[10050] ~ "\\"v2\\"")'
    assert JiraClient.jql_text_any("cf[1]", ['a"b\\c']) == '(cf[1] ~ "\\"a\\\\\\"b\\\\\\\\c\\"")'


def test_find_by_external_ids_is_exact(jira: JiraClient, fields: dict[str, str], project: str) -> None:
    ext = jira.resolve_fields(["ERP External ID"])["ERP External ID"]
    values = ["BC-PI-1001", "BC-PI-1001-A", "1001 PI BC", "BC-PI-1002", 'odd "quoted" id']
    created = jira.bulk_create([issue_fields(project, f"x{i}", **{ext.id: v}) for i, v in enumerate(values)])
    dup = jira.create_issue(issue_fields(project, "dup", **{ext.id: "BC-PI-1002"}))
    wanted = ["BC-PI-1001", "BC-PI-1002", "BC-PI-9999", 'odd "quoted" id'] + [f"BC-X-{i}" for i in range(60)]
    found = jira.find_by_external_ids(ext, wanted, project, ["summary", "status"])
    assert set(found) == set(wanted)
    assert [i["key"] for i in found["BC-PI-1001"]] == [created.created[0].key]   # not BC-PI-1001-A, not "1001 PI BC"
    assert sorted(i["key"] for i in found["BC-PI-1002"]) == sorted([created.created[3].key, dup.key])
    assert found["BC-PI-9999"] == [] and [i["key"] for i in found['odd "quoted" id']] == [created.created[4].key]
    issue = found["BC-PI-1001"][0]
    assert issue["fields"]["status"]["name"] == "To Do" and issue["fields"][ext.id] == "BC-PI-1001"
    # 64 ids -> two searches of at most 50 ids each
    assert jira.http.calls_by_endpoint["POST /rest/api/3/search/jql"] == 2


def test_bulk_create_one_failing_element_aligned(jira: JiraClient, fields: dict[str, str], project: str) -> None:
    batch = [issue_fields(project, f"ok {i}", **{fields["ext"]: f"E-{i}"}) for i in range(53)]
    batch[51] = issue_fields(project, "bad", customfield_999="x")
    batch[2] = issue_fields(project, "bad description", description="plain string")
    result = jira.bulk_create(batch)
    assert isinstance(result, BulkCreateResult) and len(result.created) == 53
    assert result.failed_indices == [2, 51]
    assert "customfield_999" in result.errors[51] and "Atlassian Document" in result.errors[2]
    assert result.created[2] is None and result.created[51] is None
    for i in (0, 1, 3, 50, 52):
        c = result.created[i]
        assert isinstance(c, CreatedIssue)
        assert jira.get_issue(c.key, [fields["ext"]])["fields"][fields["ext"]] == f"E-{i}"
    assert jira.http.calls_by_endpoint["POST /rest/api/3/issue/bulk"] == 2

    all_bad = jira.bulk_create([issue_fields(project, "x", customfield_999=1)])  # Jira answers 400
    assert all_bad.created == [None] and 0 in all_bad.errors


def test_rate_limit_storm_ends_in_success(jira: JiraClient, sandbox: JiraSandbox) -> None:
    sandbox.faults.rate_limit_next = 5
    sandbox.faults.retry_after = "0"
    served_before = sandbox.faults.served_429
    assert jira.myself()["accountId"] == "acc-1"
    assert sandbox.faults.served_429 - served_before == 5
    assert jira.http.retries == 5 and jira.http.calls == 6


def test_rate_limit_exhaustion_carries_reason(world: tuple[JiraSandbox, SandboxServer], sandbox: JiraSandbox) -> None:
    client = JiraClient.connect(world[1].base_url, CLOUD, SITE_URL, StaticTokens("good"),
                                retry=RetrySettings(max_attempts=2, initial_backoff_s=0.01))
    sandbox.faults.rate_limit_next = 2
    sandbox.faults.retry_after = "0"
    with pytest.raises(ApiError) as err:
        client.myself()
    assert err.value.status == 429 and err.value.reason == "jira-burst-based"
    client.close()


def test_401_invalidates_once_and_retries(world: tuple[JiraSandbox, SandboxServer]) -> None:
    tokens = StaticTokens("expired-token", "good")
    client = JiraClient.connect(world[1].base_url, CLOUD, SITE_URL, tokens, retry=FAST)
    assert client.myself()["accountId"] == "acc-1"
    assert tokens.invalidated == ["expired-token"]
    client.close()

    dead = StaticTokens("revoked")
    client = JiraClient.connect(world[1].base_url, CLOUD, SITE_URL, dead, retry=FAST)
    with pytest.raises(ApiError) as err:
        client.myself()
    assert err.value.status == 401 and dead.invalidated == ["revoked"] and client.http.calls == 2
    client.close()


def test_issue_lifecycle(jira: JiraClient, sandbox: JiraSandbox, project: str) -> None:
    created = jira.create_issue(issue_fields(project, "Lifecycle", description=ADF))
    assert created.key.startswith(project + "-") and created.self_url.endswith(f"/issue/{created.id}")
    jira.edit_issue(created.key, {"summary": "Lifecycle (edited)"})
    assert jira.get_issue(created.key, ["summary"])["fields"] == {"summary": "Lifecycle (edited)"}
    done = next(t for t in jira.transitions(created.key) if t["to"]["statusCategory"]["key"] == "done")
    jira.transition(created.key, done["id"])
    assert jira.get_issue(created.key)["fields"]["status"]["name"] == "Done"
    with pytest.raises(ApiError) as err:
        jira.transition(created.key, done["id"])
    assert err.value.status == 400
    comment = jira.add_comment(created.key, ADF)
    assert comment["body"] == ADF and comment["author"]["accountId"] == "acc-1"
    assert jira.get_user("acc-1")["displayName"] == "Integration User"
    with pytest.raises(ApiError) as err:
        jira.get_user("nobody")
    assert err.value.status == 404
    assert jira.browse_url(created.key) == f"{SITE_URL}/browse/{created.key}"


def test_get_comment(jira: JiraClient, project: str) -> None:
    key = jira.create_issue(issue_fields(project, "Commented")).key
    posted = jira.add_comment(key, ADF)
    assert jira.get_comment(key, posted["id"]) == posted
    other = jira.create_issue(issue_fields(project, "Other")).key
    for issue_key, comment_id, message in (
            (key, "99999", "Can not find a comment for the id: 99999."),
            (other, posted["id"], f"Can not find a comment for the id: {posted['id']}."),
            (f"{project}-999", posted["id"], "Issue does not exist or you do not have permission to see it.")):
        with pytest.raises(ApiError) as err:
            jira.get_comment(issue_key, comment_id)
        assert err.value.status == 404 and err.value.body["errorMessages"] == [message]


def test_issue_link_types_and_link_issues(jira: JiraClient, project: str) -> None:
    types = {t["name"]: t for t in jira.issue_link_types()}
    assert (types["Blocks"]["inward"], types["Blocks"]["outward"]) == ("is blocked by", "blocks")
    assert {"Cloners", "Duplicate", "Relates"} <= set(types)

    blocker = jira.create_issue(issue_fields(project, "Blocker")).key
    blocked = jira.create_issue(issue_fields(project, "Blocked")).key
    assert jira.link_issues("Blocks", blocker, blocked) is None
    jira.link_issues("Blocks", blocker, blocked)  # Jira answers a repeated link as created; stored once
    (out,) = jira.get_issue(blocker, ["issuelinks"])["fields"]["issuelinks"]
    (back,) = jira.get_issue(blocked, ["issuelinks"])["fields"]["issuelinks"]
    assert out["type"]["outward"] == "blocks" and out["outwardIssue"]["key"] == blocked
    assert back["type"]["inward"] == "is blocked by" and back["inwardIssue"]["key"] == blocker
    assert jira.http.calls_by_endpoint["POST /rest/api/3/issueLink"] == 2

    with pytest.raises(ApiError) as err:
        jira.link_issues("Blockz", blocker, blocked)
    assert err.value.status == 404 and "No issue link type with name 'Blockz' found." in str(err.value)
    with pytest.raises(ApiError) as err:
        jira.link_issues("Duplicate", blocker, f"{project}-999")
    assert err.value.status == 404


def test_webhook_management(jira: JiraClient, sandbox: JiraSandbox, project: str) -> None:
    url = "https://receiver.example/jira"
    wid = jira.register_webhook(url, ["jira:issue_updated"], f"project = {project} AND issuetype = Task")
    listed = {w["id"]: w for w in jira.list_webhooks()}
    assert listed[wid]["url"] == url and listed[wid]["events"] == ["jira:issue_updated"]
    with pytest.raises(JiraWebhookError) as err:
        jira.register_webhook(url, ["jira:issue_updated"], 'cf[10050] ~ "x"')
    assert err.value.errors == ["The clause cf[10050] is unsupported"]
    with pytest.raises(JiraWebhookError) as err:
        jira.register_webhook("https://other.example/jira", ["jira:issue_updated"], f"project = {project}")
    assert "single URL" in str(err.value)

    sandbox.clock.advance(days=20)
    try:
        expires = jira.refresh_webhooks([wid])
        assert abs(expires - (sandbox.clock.now() + timedelta(days=30))) < timedelta(seconds=5)
        jira.delete_webhooks([wid])
        assert wid not in {w["id"] for w in jira.list_webhooks()}
    finally:
        sandbox.clock.advance(days=-20)


def test_parse_expiration_accepts_both_forms() -> None:
    expected = datetime(2019, 6, 1, 12, 42, 30, tzinfo=UTC)
    assert parse_expiration("2019-06-01T12:42:30.000+0000") == expected
    assert parse_expiration(int(expected.timestamp() * 1000)) == expected
    assert parse_expiration(str(int(expected.timestamp() * 1000))) == expected
    assert parse_expiration("2019-06-01T12:42:30Z") == expected
