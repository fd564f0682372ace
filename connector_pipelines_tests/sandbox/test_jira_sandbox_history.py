"""Issue history in the Jira sandbox: expand=changelog, GET /changelog, POST /changelog/list.

Every response here is checked against Jira-OAS (the fixtures' sandbox has ``validate_responses=True``)."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx

from connector_pipelines_tests.sandbox import test_jira_sandbox as base
from connector_pipelines_tests.sandbox.test_jira_sandbox import API, CLOUD, Capture, create, search
from sandboxes.jira import WEBHOOK_EVENTS, JiraSandbox

capture, sandbox, client = base.capture, base.sandbox, base.client   # the same fixtures


def at(created: str, when: datetime) -> bool:
    """A Jira timestamp within a second of ``when`` (the sandbox clock runs on wall time plus an offset)."""
    return abs(datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%f%z") - when) < timedelta(seconds=1)


def changelog(client: httpx.Client, key: str, **params) -> dict:
    r = client.get(f"{API}/issue/{key}/changelog", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def edit_three_times(client: httpx.Client, sandbox: JiraSandbox, key: str) -> list[datetime]:
    """A PUT (alice), a REST transition (alice), a person's transition (bob); returns their times."""
    times = []
    sandbox.clock.advance(60)
    assert client.put(f"{API}/issue/{key}", json={"fields": {"summary": "Renamed", "labels": ["a", "b"]}}
                      ).status_code == 204
    times.append(sandbox.clock.now())
    sandbox.clock.advance(60)
    assert client.post(f"{API}/issue/{key}/transitions", json={"transition": {"id": "31"}}).status_code == 204
    times.append(sandbox.clock.now())
    sandbox.clock.advance(60)
    sandbox.transition_as_user(CLOUD, key, "To Do", account_id="acc-bob")
    times.append(sandbox.clock.now())
    return times


def test_expand_changelog_holds_every_edit_newest_first(client: httpx.Client, sandbox: JiraSandbox) -> None:
    issue = create(client, "Tracked", **{sandbox.ext: "E-1"})
    plain = client.get(f"{API}/issue/{issue['key']}").json()
    assert "changelog" not in plain and "changelog" in plain["expand"].split(",")
    assert client.get(f"{API}/issue/{issue['key']}", params={"expand": "changelog"}).json()["changelog"] == {
        "startAt": 0, "maxResults": 0, "total": 0, "histories": []}   # creating an issue records no history

    times = edit_three_times(client, sandbox, issue["key"])
    assert client.put(f"{API}/issue/{issue['key']}", json={"fields": {"summary": "Renamed"}}).status_code == 204
    r = client.get(f"{API}/issue/{issue['key']}", params={"expand": "names,changelog", "fields": "summary"})
    assert r.status_code == 200
    body = r.json()
    assert body["names"] == {"summary": "Summary"} and set(body["fields"]) == {"summary"}
    log = body["changelog"]
    assert (log["startAt"], log["maxResults"], log["total"]) == (0, 3, 3)   # an edit changing nothing is no entry
    moved_back, done, renamed = log["histories"]                          # "starting from the most recent"
    assert all(at(h["created"], t) for h, t in zip((renamed, done, moved_back), times, strict=True))
    assert [h["author"]["accountId"] for h in (renamed, done, moved_back)] == ["acc-alice", "acc-alice", "acc-bob"]
    assert moved_back["author"]["displayName"] == "Bob"
    assert renamed["items"] == [
        {"field": "summary", "fieldtype": "jira", "fieldId": "summary", "from": None, "fromString": "Tracked",
         "to": None, "toString": "Renamed"},
        {"field": "labels", "fieldtype": "jira", "fieldId": "labels", "from": None, "fromString": "",
         "to": None, "toString": "a b"}]
    assert done["items"] == [
        {"field": "status", "fieldtype": "jira", "fieldId": "status", "from": "10000", "fromString": "To Do",
         "to": "10002", "toString": "Done"},
        {"field": "resolution", "fieldtype": "jira", "fieldId": "resolution", "from": None, "fromString": None,
         "to": "10000", "toString": "Done"}]
    assert [i["field"] for i in moved_back["items"]] == ["status", "resolution"]
    assert moved_back["items"][1]["toString"] is None
    assert len({h["id"] for h in log["histories"]}) == 3 and all(h["id"].isdigit() for h in log["histories"])

    # a custom field change names the field and says it is custom
    assert client.put(f"{API}/issue/{issue['id']}", json={"fields": {sandbox.ext: "E-2"}}).status_code == 204
    latest = client.get(f"{API}/issue/{issue['id']}", params={"expand": "changelog"}).json()["changelog"]
    assert latest["total"] == 4 and latest["histories"][0]["items"] == [
        {"field": "ERP External ID", "fieldtype": "custom", "fieldId": sandbox.ext, "from": None,
         "fromString": "E-1", "to": None, "toString": "E-2"}]


def test_webhook_changelog_and_stored_history_agree(client: httpx.Client, sandbox: JiraSandbox,
                                                    capture: Capture) -> None:
    sandbox.add_admin_webhook(CLOUD, "https://admin.example/h", None, list(WEBHOOK_EVENTS))
    issue = create(client, "Hooked")
    edit_three_times(client, sandbox, issue["key"])
    client.post(f"{API}/issue/{issue['key']}/comment", json={"body": {
        "type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [{"type": "text", "text": "c"}]}]}})
    sandbox.deliver_pending()
    updates = [b for b in capture.bodies() if b["webhookEvent"] == "jira:issue_updated"]
    stored = changelog(client, issue["key"])["values"]           # oldest first
    assert [u["changelog"] for u in updates] == [{"id": h["id"], "items": h["items"]} for h in stored]
    assert [u["user"]["accountId"] for u in updates] == [h["author"]["accountId"] for h in stored]
    assert len(stored) == 3   # comments are not history


def test_get_changelog_pages_oldest_first(client: httpx.Client, sandbox: JiraSandbox) -> None:
    issue = create(client, "Paged")
    for n in range(5):
        assert client.put(f"{API}/issue/{issue['key']}", json={"fields": {"summary": f"v{n}"}}).status_code == 204
    pages, start = [], 0
    while True:
        page = changelog(client, issue["id"], startAt=start, maxResults=2)
        assert (page["startAt"], page["maxResults"], page["total"]) == (start, 2, 5)
        assert page["self"].endswith(f"/rest/api/3/issue/{issue['key']}/changelog?startAt={start}&maxResults=2")
        pages.append(page)
        if page["isLast"]:
            assert "nextPage" not in page
            break
        assert page["nextPage"].endswith(f"changelog?startAt={start + 2}&maxResults=2")
        start += 2
    values = [v for p in pages for v in p["values"]]
    assert [len(p["values"]) for p in pages] == [2, 2, 1]
    assert [v["items"][0]["toString"] for v in values] == ["v0", "v1", "v2", "v3", "v4"]
    expanded = client.get(f"{API}/issue/{issue['key']}", params={"expand": "changelog"}).json()["changelog"]
    assert expanded["histories"] == values[::-1]

    whole = changelog(client, issue["key"])
    assert whole["maxResults"] == 100 and whole["isLast"] is True and whole["values"] == values
    assert changelog(client, issue["key"], maxResults=5000)["maxResults"] == sandbox.changelog_page_cap
    assert changelog(client, issue["key"], startAt=9)["values"] == []
    assert changelog(client, create(client, "Untouched")["key"]) == {
        "self": whole["self"].replace(issue["key"], "OPS-2"), "maxResults": 100, "startAt": 0, "total": 0,
        "isLast": True, "values": []}

    r = client.get(f"{API}/issue/OPS-99/changelog")
    assert r.status_code == 404
    assert r.json() == {"errorMessages": ["Issue does not exist or you do not have permission to see it."],
                        "errors": {}}
    r = client.get(f"{API}/issue/{issue['key']}/changelog", params={"startAt": "x"})
    assert r.status_code == 400 and "startAt" in r.json()["errors"]


def test_changelog_by_ids(client: httpx.Client, sandbox: JiraSandbox) -> None:
    a, b = create(client, "A"), create(client, "B")
    for n in range(3):
        client.put(f"{API}/issue/{a['key']}", json={"fields": {"summary": f"A{n}"}})
    client.put(f"{API}/issue/{b['key']}", json={"fields": {"summary": "B0"}})
    ids = [v["id"] for v in changelog(client, a["key"])["values"]]
    (b_id,) = [v["id"] for v in changelog(client, b["key"])["values"]]

    r = client.post(f"{API}/issue/{a['key']}/changelog/list",
                    json={"changelogIds": [int(ids[2]), int(ids[0]), int(b_id), 999999]})
    assert r.status_code == 200
    body = r.json()
    assert (body["startAt"], body["maxResults"], body["total"]) == (0, 2, 2)
    assert [h["id"] for h in body["histories"]] == [ids[0], ids[2]]          # oldest first; others skipped
    assert [h["items"][0]["toString"] for h in body["histories"]] == ["A0", "A2"]

    for payload, fragment in [({}, "'changelogIds' is a required property"),
                              ({"changelogIds": ["x"]}, "'x' is not of type 'integer'"),
                              ({"changelogIds": [1, 1]}, "has non-unique elements")]:
        r = client.post(f"{API}/issue/{a['key']}/changelog/list", json=payload)
        assert r.status_code == 400 and fragment in " ".join(r.json()["errorMessages"]), (payload, r.json())
    assert client.post(f"{API}/issue/OPS-99/changelog/list", json={"changelogIds": [1]}).status_code == 404


def test_search_expand_changelog_and_expand_cap(client: httpx.Client, sandbox: JiraSandbox) -> None:
    a, b = create(client, "A"), create(client, "B")
    for n in range(4):
        client.put(f"{API}/issue/{a['key']}", json={"fields": {"summary": f"A{n}"}})
    r = search(client, "project = OPS ORDER BY key", expand="changelog")
    assert r.status_code == 200
    found = {i["id"]: i for i in r.json()["issues"]}
    assert set(found[a["id"]]) == {"id", "changelog"}     # fields default to id only; the expansion still comes
    assert found[a["id"]]["changelog"]["total"] == 4 and found[b["id"]]["changelog"]["histories"] == []
    r = client.get(f"{API}/search/jql", params={"jql": f"key = {a['key']}", "fields": "summary",
                                                 "expand": "changelog"})
    assert r.json()["issues"][0]["changelog"]["histories"][0]["items"][0]["toString"] == "A3"
    assert "changelog" not in search(client, "project = OPS").json()["issues"][0]

    sandbox.changelog_expand_cap = 2
    log = client.get(f"{API}/issue/{a['key']}", params={"expand": "changelog"}).json()["changelog"]
    assert (log["maxResults"], log["total"]) == (2, 4)
    assert [h["items"][0]["toString"] for h in log["histories"]] == ["A3", "A2"]   # the most recent ones
    assert changelog(client, a["key"])["total"] == 4                                # the paged endpoint has all
