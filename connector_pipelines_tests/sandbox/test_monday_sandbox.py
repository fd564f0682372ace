"""monday.com sandbox, driven over HTTP the way monday's docs show: ``POST /v2`` with a raw token, JSON-encoded
column values, items_page / next_items_page / items_page_by_column_values, validation against the SDL, the error
shapes, and the Python API other tests use."""

from __future__ import annotations

import json
from contextlib import closing

import httpx
import pytest

from sandboxes.common import sync_transport
from sandboxes.monday import MondaySandbox
from sandboxes.monday.schema import prepare

STATUS_LABELS = {"0": "Working on it", "1": "Done", "2": "Stuck"}
COLUMNS = [
    {"id": "status", "title": "Status", "type": "status", "settings": {"labels": STATUS_LABELS}},
    {"id": "ext_id", "title": "External ID", "type": "text"},
    {"id": "amount", "title": "Amount", "type": "numbers"},
    {"id": "due", "title": "Due", "type": "date"},
    {"id": "link", "title": "Link", "type": "link"},
    {"id": "tags", "title": "Tags", "type": "dropdown", "settings": {"labels": ["red", "blue"]}},
    {"id": "vendor", "title": "Vendor", "type": "board_relation"},
    {"id": "notes", "title": "Notes", "type": "long_text"},
]
CREATE = """mutation ($board: ID!, $name: String!, $group: String, $values: JSON) {
  create_item(board_id: $board, item_name: $name, group_id: $group, column_values: $values) {
    id name group { id }
    column_values { id type text value ... on BoardRelationValue { linked_item_ids } }
  }
}"""
CHANGE = """mutation ($board: ID!, $item: ID!, $values: JSON!) {
  change_multiple_column_values(board_id: $board, item_id: $item, column_values: $values) {
    id column_values(ids: ["status", "ext_id"]) { id text value }
  }
}"""
LOOKUP = """query ($board: ID!, $col: String!, $values: [String]!) {
  items_page_by_column_values(board_id: $board, limit: 50, columns: [{column_id: $col, column_values: $values}]) {
    cursor items { id name }
  }
}"""


@pytest.fixture
def sb() -> MondaySandbox:
    sb = MondaySandbox(api_versions=("2026-10",))
    sb.add_token("tok-1", user_id="11", account_id="5")
    return sb


@pytest.fixture
def board(sb) -> str:
    return sb.add_board("Exceptions", COLUMNS)


@pytest.fixture
def client(sb):
    with closing(httpx.Client(transport=sync_transport(sb.app), base_url="http://monday.test")) as c:
        yield c


def post(client, query, variables=None, *, token="tok-1", version="2026-10", **kw):
    headers = {"Authorization": token} if token is not None else {}
    if version:
        headers["API-Version"] = version
    body = {"query": query, "variables": variables or {}, **kw}
    return client.post("/v2", json=body, headers=headers)


def gql(client, query, variables=None, **kw):
    r = post(client, query, variables, **kw)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def create(client, board, name, values=None, group=None):
    data = gql(client, CREATE, {"board": board, "name": name, "group": group,
                                "values": json.dumps(values) if values is not None else None})
    return data["create_item"]


def error_of(r):
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["errors"], body
    return body["errors"][0]


# ------------------------------------------------------------------------------------------------------
# transport, auth, versions
# ------------------------------------------------------------------------------------------------------
def test_raw_token_and_bearer_are_accepted_and_a_bad_token_gets_401(sb, client):
    assert gql(client, "{ me { id } }")["me"]["id"] == "11"
    assert gql(client, "{ me { id } }", token="Bearer tok-1")["me"]["id"] == "11"
    for token in (None, "nope"):
        r = post(client, "{ me { id } }", token=token)
        assert r.status_code == 401
        assert r.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_api_version_header(sb, client):
    assert gql(client, "{ me { id } }", version=None)["me"]["id"] == "11"
    r = post(client, "{ me { id } }", version="2019-01")
    assert r.status_code == 400
    assert r.json()["errors"][0]["extensions"]["code"] == "InvalidVersionException"


def test_answers_carry_account_id_and_request_id(sb, client):
    body = post(client, "{ me { id } }").json()
    assert body["account_id"] == 5 and body["extensions"]["request_id"]


def test_a_body_without_query_is_400(sb, client):
    r = client.post("/v2", content=b"not json", headers={"Authorization": "tok-1"})
    assert r.status_code == 400 and r.json()["errors"]


# ------------------------------------------------------------------------------------------------------
# validation against the SDL
# ------------------------------------------------------------------------------------------------------
def test_unknown_field_is_rejected_before_running_with_monday_shape(sb, board, client):
    err = error_of(post(client, "{ boards { id pos } }"))
    assert err["message"] == "Field 'pos' doesn't exist on type 'Board'"
    assert err["extensions"] == {"code": "undefinedField", "typeName": "Board", "fieldName": "pos"}
    assert err["locations"] == [{"line": 1, "column": 15}]
    assert "data" not in post(client, "{ boards { id pos } }").json()


def test_missing_argument_unknown_argument_parse_error_and_bad_variables(sb, board, client):
    assert error_of(post(client, "mutation { create_item(board_id: 1) { id } }"))["extensions"]["code"] == \
        "missingRequiredArguments"
    assert error_of(post(client, "{ boards(nope: 1) { id } }"))["extensions"]["code"] == "argumentNotAccepted"
    assert error_of(post(client, "{ boards { id "))["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    err = error_of(post(client, "query ($b: [ID!]) { boards(ids: $b) { id } }", {"b": [{"x": 1}]}))
    assert err["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    # a mutation the schema rejects changes nothing
    post(client, "mutation { create_item(board_id: 1, item_name: \"x\") { id nope } }")
    assert sb.items(board) == []


def test_documents_are_parsed_and_validated_once_per_query_text():
    q = "{ me { id name } }"
    assert prepare(q) is prepare(q)


def test_operation_name_picks_one_of_several(sb, board, client):
    doc = "query A { me { id } } query B { boards { id } }"
    assert gql(client, doc, operationName="B")["boards"][0]["id"] == board
    assert error_of(post(client, doc))["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


# ------------------------------------------------------------------------------------------------------
# boards, columns, groups
# ------------------------------------------------------------------------------------------------------
def test_boards_columns_settings_and_groups(sb, board, client):
    g = sb.add_group(board, "Escalated")
    data = gql(client, "query ($ids: [ID!]) { boards(ids: $ids) { id name state columns { id title type "
                       "settings_str } groups { id title } top_group { id } } }", {"ids": [board]})
    b = data["boards"][0]
    assert b["id"] == board and b["name"] == "Exceptions" and b["state"] == "active"
    cols = {c["id"]: c for c in b["columns"]}
    assert cols["name"]["type"] == "name"
    assert cols["status"]["type"] == "status"
    assert json.loads(cols["status"]["settings_str"])["labels"] == STATUS_LABELS
    assert json.loads(cols["tags"]["settings_str"])["labels"] == [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    assert [x["id"] for x in b["groups"]] == ["topics", g] and b["top_group"]["id"] == "topics"
    assert gql(client, "{ boards(ids: [1]) { id } }")["boards"] == []
    q = "query ($b: [ID!]) { boards(ids: $b) { columns(types: [status]) { id } } }"
    assert gql(client, q, {"b": [board]})["boards"][0]["columns"] == [{"id": "status"}]


def test_add_board_rejects_unsupported_column_types(sb):
    with pytest.raises(ValueError):
        sb.add_board("x", [{"id": "p", "title": "People", "type": "people"}])


# ------------------------------------------------------------------------------------------------------
# column values: writes, validation, reads
# ------------------------------------------------------------------------------------------------------
def test_create_item_with_every_column_type(sb, board, client):
    vendor = create(client, board, "Acme")["id"]
    it = create(client, board, "Invoice 1", {
        "status": {"label": "Stuck"}, "ext_id": "INV-1", "amount": "12.50", "due": {"date": "2026-03-01"},
        "link": {"url": "https://erp.example/inv/1", "text": "open"}, "tags": {"labels": ["blue"]},
        "vendor": {"item_ids": [int(vendor)]}, "notes": {"text": "two\nlines"}})
    cv = {c["id"]: c for c in it["column_values"]}
    assert "name" not in cv
    assert (cv["status"]["text"], json.loads(cv["status"]["value"])["index"]) == ("Stuck", 2)
    assert cv["ext_id"]["text"] == "INV-1" and json.loads(cv["ext_id"]["value"]) == "INV-1"
    assert cv["amount"]["text"] == "12.50" and cv["amount"]["type"] == "numbers"
    assert cv["due"]["text"] == "2026-03-01" and json.loads(cv["due"]["value"])["date"] == "2026-03-01"
    assert cv["link"]["text"] == "open - https://erp.example/inv/1"
    assert cv["tags"]["text"] == "blue" and json.loads(cv["tags"]["value"])["ids"] == [2]
    assert cv["vendor"]["value"] is None and cv["vendor"]["linked_item_ids"] == [vendor]
    assert cv["vendor"]["text"] == "Acme"
    assert cv["notes"]["text"] == "two\nlines"
    got = sb.get_item(it["id"])
    assert got["column_values"]["vendor"]["linked_item_ids"] == [vendor]
    assert got["column_values"]["status"]["value"]["index"] == 2


def test_typed_column_value_fields(sb, board, client):
    it = create(client, board, "T", {"status": {"index": 1}, "due": {"date": "2026-01-02", "time": "10:30:00"},
                                     "link": {"url": "https://x.test", "text": "x"}, "amount": 3,
                                     "tags": {"ids": [1, "2"]}})
    q = """query ($ids: [ID!]) { items(ids: $ids) { column_values {
      ... on StatusValue { index label is_done }
      ... on DateValue { date time }
      ... on LinkValue { url url_text }
      ... on NumbersValue { number }
      ... on DropdownValue { values { id label } }
      id __typename } } }"""
    cvs = {c["id"]: c for c in gql(client, q, {"ids": [it["id"]]})["items"][0]["column_values"]}
    assert cvs["status"] == {"index": 1, "label": "Done", "is_done": True, "id": "status",
                             "__typename": "StatusValue"}
    assert (cvs["due"]["date"], cvs["due"]["time"]) == ("2026-01-02", "10:30:00")
    assert cvs["link"]["url_text"] == "x" and cvs["amount"]["number"] == 3.0
    assert cvs["tags"]["values"] == [{"id": "1", "label": "red"}, {"id": "2", "label": "blue"}]
    assert cvs["ext_id"]["__typename"] == "TextValue"


@pytest.mark.parametrize(("values", "column_type"), [
    ({"status": {"label": "Nope"}}, "color"),
    ({"status": {"index": 9}}, "color"),
    ({"due": {"date": "2026-13-01"}}, "date"),
    ({"due": {"date": "01/02/2026"}}, "date"),
    ({"amount": "twelve"}, "numbers"),
    ({"tags": {"labels": ["green"]}}, "dropdown"),
    ({"vendor": {"item_ids": [123]}}, "board_relation"),
    ({"link": 5}, "link"),
])
def test_bad_column_values_get_column_value_exception(sb, board, client, values, column_type):
    r = post(client, CREATE, {"board": board, "name": "x", "values": json.dumps(values)})
    err = error_of(r)
    assert err["extensions"]["code"] == "ColumnValueException"
    assert err["extensions"]["error_data"]["column_type"] == column_type
    assert err["path"] == ["create_item"] and r.json()["data"] == {"create_item": None}
    assert "change-column-values" in err["message"]
    assert sb.items(board) == []


def test_unknown_label_message_and_create_labels_if_missing(sb, board, client):
    err = error_of(post(client, CREATE, {"board": board, "name": "x", "values": '{"status": {"label": "Held"}}'}))
    assert err["message"].startswith("invalid value - label does not exist in column.")
    q = ('mutation ($b: ID!) { create_item(board_id: $b, item_name: "x", create_labels_if_missing: true, '
         'column_values: "{\\"status\\": {\\"label\\": \\"Held\\"}, \\"tags\\": \\"green\\"}") { id } }')
    item = gql(client, q, {"b": board})["create_item"]["id"]
    assert sb.get_item(item)["column_values"]["status"]["text"] == "Held"
    assert sb.get_item(item)["column_values"]["tags"]["text"] == "green"
    cols = gql(client, 'query ($b: [ID!]) { boards(ids: $b) { columns(ids: ["status"]) { settings_str } } }',
               {"b": [board]})
    assert json.loads(cols["boards"][0]["columns"][0]["settings_str"])["labels"]["3"] == "Held"


def test_unknown_column_group_board_and_item(sb, board, client):
    assert error_of(post(client, CREATE, {"board": board, "name": "x", "values": '{"nope": "1"}'}))[
        "extensions"]["code"] == "InvalidColumnIdException"
    assert error_of(post(client, CREATE, {"board": board, "name": "x", "group": "nope"}))[
        "extensions"]["code"] == "InvalidGroupIdException"
    assert error_of(post(client, CREATE, {"board": "42", "name": "x"}))["extensions"]["code"] == \
        "InvalidBoardIdException"
    assert error_of(post(client, CHANGE, {"board": board, "item": "42", "values": "{}"}))["extensions"]["code"] == \
        "InvalidItemIdException"
    assert error_of(post(client, CREATE, {"board": board, "name": "x" * 256}))["extensions"]["code"] == \
        "ItemNameTooLongException"


def test_partial_data_with_aliases(sb, board, client):
    q = ('mutation ($b: ID!) { ok: create_item(board_id: $b, item_name: "a") { id } '
         'bad: create_item(board_id: $b, item_name: "b", column_values: "{\\"due\\": {\\"date\\": \\"x\\"}}") { id } }')
    body = post(client, q, {"b": board}).json()
    assert body["data"]["ok"]["id"] and body["data"]["bad"] is None
    assert body["errors"][0]["path"] == ["bad"]
    assert sb.mutation_calls("create_item") == 2


def test_change_multiple_simple_and_single_column_values(sb, board, client):
    it = create(client, board, "Invoice", {"ext_id": "INV-9"}, group=sb.add_group(board, "G2"))["id"]
    out = gql(client, CHANGE, {"board": board, "item": it, "values": json.dumps({"status": {"label": "Done"}})})
    assert out["change_multiple_column_values"]["column_values"][0]["text"] == "Done"
    gql(client, 'mutation ($b: ID!, $i: ID!) { change_simple_column_value(board_id: $b, item_id: $i, '
                'column_id: "status", value: "Stuck") { id } }', {"b": board, "i": it})
    assert sb.get_item(it)["column_values"]["status"]["text"] == "Stuck"
    gql(client, 'mutation ($b: ID!, $i: ID!, $v: JSON!) { change_column_value(board_id: $b, item_id: $i, '
                'column_id: "due", value: $v) { id } }', {"b": board, "i": it, "v": '{"date": "2026-05-06"}'})
    assert sb.get_item(it)["column_values"]["due"]["text"] == "2026-05-06"
    # name and clearing
    gql(client, CHANGE, {"board": board, "item": it, "values": '{"name": "Renamed", "ext_id": null, "due": {}}'})
    got = sb.get_item(it)
    assert got["name"] == "Renamed" and got["column_values"]["ext_id"]["value"] is None
    assert got["column_values"]["due"]["text"] == ""
    assert sb.mutation_calls("change_multiple_column_values") == 2


def test_json_object_variables_are_taken_for_column_values(sb, board, client):
    it = gql(client, CREATE, {"board": board, "name": "x", "values": {"ext_id": "A"}})["create_item"]
    assert sb.get_item(it["id"])["column_values"]["ext_id"]["text"] == "A"


def test_create_update_archive_delete_and_move(sb, board, client):
    it = create(client, board, "Invoice")["id"]
    up = gql(client, 'mutation ($i: ID!) { create_update(item_id: $i, body: "<p>Held by AP</p>") { id body '
                     'text_body item_id } }', {"i": it})["create_update"]
    assert up["text_body"] == "Held by AP" and up["item_id"] == it
    assert gql(client, "query ($i: [ID!]) { items(ids: $i) { updates { body } } }", {"i": [it]})["items"][0][
        "updates"] == [{"body": "<p>Held by AP</p>"}]
    g = sb.add_group(board, "Done")
    gql(client, 'mutation ($i: ID!, $g: String!) { move_item_to_group(item_id: $i, group_id: $g) { id } }',
        {"i": it, "g": g})
    assert sb.get_item(it)["group_id"] == g
    out = gql(client, "mutation ($i: ID!) { archive_item(item_id: $i) { id state } }", {"i": it})
    assert out["archive_item"]["state"] == "archived"
    assert sb.items(board) == [] and [x["id"] for x in sb.items(board, archived=True)] == [it]
    other = create(client, board, "Other")["id"]
    gql(client, "mutation ($i: ID!) { delete_item(item_id: $i) { id } }", {"i": other})
    assert gql(client, "query ($i: [ID!]) { items(ids: $i) { id } }", {"i": [other]})["items"] == []


# ------------------------------------------------------------------------------------------------------
# reads: items, items_page, cursors, lookups
# ------------------------------------------------------------------------------------------------------
PAGE = """query ($b: [ID!], $limit: Int!) { boards(ids: $b) { items_page(limit: $limit) { cursor items { id } } } }"""
NEXT = """query ($c: String!, $limit: Int!) { next_items_page(cursor: $c, limit: $limit) { cursor items { id } } }"""


def test_items_page_and_next_items_page_walk_the_board(sb, board, client):
    ids = [create(client, board, f"i{n}")["id"] for n in range(7)]
    page = gql(client, PAGE, {"b": [board], "limit": 3})["boards"][0]["items_page"]
    seen = [i["id"] for i in page["items"]]
    while page["cursor"]:
        page = gql(client, NEXT, {"c": page["cursor"], "limit": 3})["next_items_page"]
        seen += [i["id"] for i in page["items"]]
    assert seen == ids


def test_items_page_limit_is_at_most_500(sb, board, client):
    err = error_of(post(client, PAGE, {"b": [board], "limit": 501}))
    assert err["path"] == ["boards", 0, "items_page"]
    assert gql(client, PAGE, {"b": [board], "limit": 500})["boards"][0]["items_page"]["items"] == []


def test_cursors_expire_after_an_hour_or_at_once(sb, board, client):
    for n in range(3):
        create(client, board, f"i{n}")
    cursor = gql(client, PAGE, {"b": [board], "limit": 1})["boards"][0]["items_page"]["cursor"]
    sb.clock.advance(seconds=3599)
    cursor = gql(client, NEXT, {"c": cursor, "limit": 1})["next_items_page"]["cursor"]
    sb.clock.advance(seconds=3601)
    err = error_of(post(client, NEXT, {"c": cursor, "limit": 1}))
    assert err["message"].startswith("CursorExpiredError")
    cursor = gql(client, PAGE, {"b": [board], "limit": 1})["boards"][0]["items_page"]["cursor"]
    sb.expire_cursors()
    assert error_of(post(client, NEXT, {"c": cursor, "limit": 1}))["extensions"]["code"] == "CURSOR_EXPIRED"


def test_items_page_query_params(sb, board, client):
    a = create(client, board, "a", {"status": {"label": "Done"}, "amount": "5"})["id"]
    b = create(client, board, "b", {"status": {"label": "Stuck"}, "amount": "50"})["id"]
    c = create(client, board, "c", {"amount": "7"})["id"]
    q = ("query ($b: [ID!], $qp: ItemsQuery) { boards(ids: $b) { items_page(limit: 10, query_params: $qp) "
         "{ items { id } } } }")

    def run(qp):
        return [i["id"] for i in gql(client, q, {"b": [board], "qp": qp})["boards"][0]["items_page"]["items"]]

    assert run({"rules": [{"column_id": "status", "compare_value": [1]}]}) == [a]
    assert run({"rules": [{"column_id": "status", "compare_value": [1, 2]}]}) == [a, b]
    assert run({"rules": [{"column_id": "status", "compare_value": [], "operator": "is_empty"}]}) == [c]
    assert run({"rules": [{"column_id": "amount", "compare_value": [6], "operator": "greater_than"}]}) == [b, c]
    assert run({"rules": [{"column_id": "amount", "compare_value": [6], "operator": "greater_than"},
                          {"column_id": "status", "compare_value": [1]}], "operator": "or"}) == [a, b, c]
    assert run({"ids": [c, a]}) == [a, c]
    assert run({"order_by": [{"column_id": "amount", "direction": "desc"}]}) == [b, c, a]


def test_items_page_by_column_values_or_within_and_across_columns(sb, board, client):
    a = create(client, board, "a", {"ext_id": "X-1", "status": {"label": "Done"}})["id"]
    b = create(client, board, "b", {"ext_id": "X-2", "status": {"label": "Stuck"}})["id"]
    create(client, board, "c", {"ext_id": "X-3"})

    def look(columns):
        q = ("query ($b: ID!, $cols: [ItemsPageByColumnValuesQuery!]) { items_page_by_column_values("
             "board_id: $b, limit: 10, columns: $cols) { cursor items { id } } }")
        return [i["id"] for i in gql(client, q, {"b": board, "cols": columns})["items_page_by_column_values"]["items"]]

    assert look([{"column_id": "ext_id", "column_values": ["X-1", "X-2", "nope"]}]) == [a, b]
    assert look([{"column_id": "ext_id", "column_values": ["X-1", "X-2"]},
                 {"column_id": "status", "column_values": ["Stuck"]}]) == [b]
    assert look([{"column_id": "name", "column_values": ["a"]}]) == [a]
    # the index follows writes
    gql(client, CHANGE, {"board": board, "item": a, "values": '{"ext_id": "X-9"}'})
    assert look([{"column_id": "ext_id", "column_values": ["X-1"]}]) == []
    assert look([{"column_id": "ext_id", "column_values": ["X-9"]}]) == [a]
    gql(client, "mutation ($i: ID!) { archive_item(item_id: $i) { id } }", {"i": a})
    assert look([{"column_id": "ext_id", "column_values": ["X-9"]}]) == []
    assert sb.calls_by_operation["items_page_by_column_values"] == 6


def test_items_page_by_column_values_pages_with_its_cursor(sb, board, client):
    ids = [create(client, board, f"i{n}", {"ext_id": "same"})["id"] for n in range(5)]
    q = ('query ($b: ID!, $c: String) { items_page_by_column_values(board_id: $b, limit: 2, cursor: $c, '
         'columns: [{column_id: "ext_id", column_values: ["same"]}]) { cursor items { id } } }')
    page = gql(client, q, {"b": board})["items_page_by_column_values"]
    seen = [i["id"] for i in page["items"]]
    while page["cursor"]:
        page = gql(client, NEXT, {"c": page["cursor"], "limit": 2})["next_items_page"]
        seen += [i["id"] for i in page["items"]]
    assert seen == ids


def test_items_by_ids(sb, board, client):
    ids = [create(client, board, f"i{n}")["id"] for n in range(3)]
    got = gql(client, "query ($i: [ID!]) { items(ids: $i) { id name board { id } group { id title } } }",
              {"i": [ids[2], ids[0]]})["items"]
    assert [g["id"] for g in got] == [ids[2], ids[0]]
    assert got[0]["board"]["id"] == board and got[0]["group"] == {"id": "topics", "title": "Group Title"}
    err = error_of(post(client, "query ($i: [ID!]) { items(ids: $i) { id } }", {"i": [str(n) for n in range(101)]}))
    assert err["path"] == ["items"]


# ------------------------------------------------------------------------------------------------------
# Python API
# ------------------------------------------------------------------------------------------------------
def test_python_api_items_and_person_edits(sb, board, client):
    it = create(client, board, "Invoice", {"ext_id": "INV-1"})["id"]
    sb.change_column_as_user(it, "status", {"label": "Done"})
    sb.change_column_as_user(it, "status", {"index": 2})
    got = sb.items(board)
    assert [x["id"] for x in got] == [it]
    assert got[0]["column_values"]["status"]["text"] == "Stuck"
    assert got[0]["column_values"]["ext_id"] == {"text": "INV-1", "value": "INV-1", "linked_item_ids": []}
    assert sb.calls == 1 and sb.calls_by_operation == {"create_item": 1}
    assert sb.complexity_used > 10_000


def test_people_page_changes_a_status(sb, board, client):
    it = create(client, board, "Invoice <1>")["id"]
    page = client.get("/_sandbox/")
    assert page.status_code == 200 and "Invoice &lt;1&gt;" in page.text and "change_status" in page.text
    r = client.post("/_sandbox/change_status", data={"item_id": it, "column_id": "status", "label": "Done",
                                                     "redirect": "1"}, follow_redirects=False)
    assert r.status_code == 303
    assert sb.get_item(it)["column_values"]["status"]["text"] == "Done"
    r = client.post("/_sandbox/change_status", json={"item_id": it, "column_id": "status", "label": "Nope"})
    assert r.status_code == 400
    assert client.get(f"/_sandbox/items?board_id={board}").json()[board][0]["id"] == it
