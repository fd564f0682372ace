"""The monday.com sandbox driven from outside by monday.com's own Python SDK (``monday-api-python-sdk``, published
by monday.com; a test-only dependency of the ``[sandbox]`` extra), unmodified: only its endpoint points at the
sandbox on a loopback port. Its query templates (string-built documents with inline fragments on MirrorValue /
BoardRelationValue / DependencyValue, ``complexity { query after }``, ``subitems``, ``updates``) must validate
against the 2026-10 SDL and its dataclasses must deserialize the answers."""

from __future__ import annotations

import pytest

from sandboxes.common import SandboxServer
from sandboxes.monday import MondaySandbox

monday_sdk = pytest.importorskip("monday_sdk")
from monday_sdk import MondayClient
from monday_sdk.modules.boards import is_cursor_expired_error

LABELS = {"0": "Working on it", "1": "Done", "2": "Stuck"}


@pytest.fixture
def server():
    sb = MondaySandbox(api_versions=("2026-10", "2026-01"))   # the SDK pins 2026-01 by default
    sb.add_token("sdk-token", user_id="21", account_id="9")
    board = sb.add_board("SDK board", [
        {"id": "status", "title": "Status", "type": "status", "settings": {"labels": LABELS}},
        {"id": "ext_id", "title": "External ID", "type": "text"},
        {"id": "due", "title": "Due", "type": "date"},
        {"id": "vendor", "title": "Vendor", "type": "board_relation"},
    ])
    with SandboxServer(sb.app) as srv:
        yield sb, board, srv


@pytest.fixture
def client(server):
    sb, board, srv = server
    c = MondayClient(token="sdk-token", max_retry_attempts=1)
    c._graphql_client.endpoint = f"{srv.base_url}/v2"        # the SDK's base URL, pointed at the sandbox
    return sb, board, c


def test_sdk_creates_changes_finds_and_pages_items(client):
    sb, board, c = client
    created = c.items.create_item(board, "topics", "Invoice 7", {"ext_id": "INV-7", "status": {"label": "Stuck"}})
    item = created.data.create_item.id
    c.items.change_status_column_value(board, item, "status", "Done")
    c.items.change_simple_column_value(board, item, "ext_id", "INV-7b")
    c.items.change_multiple_column_values(board, item, {"due": {"date": "2026-04-01"}})
    c.updates.create_update(item, "Held by AP")

    answer = c.items.fetch_items_by_column_value(board, "ext_id", "INV-7b")
    assert [i.id for i in answer.data.items_page_by_column_values.items] == [item]
    raw = answer.response_data["data"]["items_page_by_column_values"]["items"][0]
    assert raw["updates"][0]["body"] == "Held by AP"

    for n in range(4):
        c.items.create_item(board, "topics", f"More {n}")
    everything = c.boards.fetch_all_items_by_board_id(board, limit=2)
    assert len(everything) == 5 and everything[0].id == item
    values = {v.column.id: v for v in everything[0].column_values}
    assert values["status"].text == "Done" and values["ext_id"].text == "INV-7b"
    assert values["due"].text == "2026-04-01" and values["vendor"].display_value == ""

    by_id = c.items.fetch_items_by_id([item])
    assert by_id[0].name == "Invoice 7" and by_id[0].state == "active"
    assert sb.mutation_calls("create_item") == 5 and sb.calls_by_operation["next_items_page"] == 2


def test_sdk_reads_boards_and_columns(client):
    _, board, c = client
    b = c.boards.fetch_columns_by_board_id(board).data.boards[0]
    assert [col.id for col in b.columns][:3] == ["name", "status", "ext_id"]
    assert [g.id for g in b.groups] == ["topics"]


def test_sdk_sees_monday_errors(client):
    _, board, c = client
    with pytest.raises(Exception, match="label does not exist in column"):
        c.items.create_item(board, "topics", "Bad", {"status": {"label": "Nope"}})
    with pytest.raises(Exception, match="Field 'nope' doesn't exist on type 'Board'"):
        c._graphql_client.execute("{ boards { nope } }")


def test_sdk_recognises_the_expired_cursor_error(client):
    sb, board, c = client
    for n in range(3):
        c.items.create_item(board, "topics", f"Page {n}")
    page = c._graphql_client.execute(
        "{ boards(ids: [" + board + "]) { items_page(limit: 1) { cursor items { id } } } }")
    cursor = page.data.boards[0].items_page.cursor
    sb.expire_cursors()
    with pytest.raises(Exception) as exc:
        c._graphql_client.execute('{ next_items_page(cursor: "' + cursor + '", limit: 1) { cursor items { id } } }')
    assert is_cursor_expired_error(exc.value)
