"""A monday.com GraphQL API sandbox (API version 2026-10): ``POST /v2`` validated against the official SDL,
boards / groups / typed columns / items, paging with expiring cursors, column-value writes, complexity and rate
limits, webhooks with the challenge and app JWTs, and a people page. Facts followed: ../shared/API-FACTS.md §6;
behaviour resting on an UNCONFIRMED fact (or an ASSUMPTION) says so where it is built.

Python surface::

    sb = MondaySandbox(api_versions=("2026-10",))
    sb.add_token("tok", user_id="1", account_id="1", kind="personal")     # or kind="app" (JWT-signed webhooks)
    board = sb.add_board("Exceptions", [{"id": "status", "title": "Status", "type": "status",
                                         "settings": {"labels": {"0": "Working on it", "1": "Done"}}}])
    sb.change_column_as_user(item_id, "status", {"label": "Done"})        # a person; fires webhooks
    sb.deliver_webhooks()

Layout:
    errors.py     monday's error shapes (MondayError: HTTP 200 errors[]; HttpFailure: 4xx)
    schema.py     the SDL (built once), parse + validate cached by query text, the complexity model
    executor.py   the document walker (field plans cached per selection set)
    columns.py    column types: settings, write shapes and validation, text, webhook values
    model.py      the store: boards, groups, items, updates, webhooks, the lookup index
    views.py      SDL object types over the store (Board, Group, Column, Item, ColumnValue types, Update)
    resolvers.py  root queries and mutations
    paging.py     items_page / next_items_page / items_page_by_column_values, cursors, ItemsQuery rules
    limits.py     complexity budget, minute / daily limits, board lock, per-board mutation cap (ASSUMPTION)
    webhooks.py   subscriptions, challenge, events, JWT signing, delivery with retries
    ui.py         /_sandbox people page
    app.py        MondaySandbox: state, Python API, POST /v2
"""

from sandboxes.monday.app import MondayFaults, MondaySandbox
from sandboxes.monday.errors import HttpFailure, MondayError
from sandboxes.monday.limits import Limits

__all__ = ["HttpFailure", "Limits", "MondayError", "MondayFaults", "MondaySandbox"]
