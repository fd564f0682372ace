"""Monday.com as a target (integrations.registry): one item per source record on the board the customer
chose for the entity, found by an external-id text column.

``MondayBackend`` is the Monday side of the generic write path (integrations.target.RecordWriter): the item
name (the entity's ``summary`` template) and typed column values (each mapped field's template rendered,
then turned into the column type's value and encoded by the client's codecs, which know the board's
column types), ``items_page_by_column_values`` on the external-id column before any create, several
``create_item`` mutations per request, ``change_multiple_column_values`` for updates, ``create_update`` for
comments, and for reconcile/repair every item of the board carrying an external key and archiving a newer
duplicate. Calls are paced by the client's per-token rate governor (systems.monday.governor).
"""

from __future__ import annotations

from typing import Any

from connector_pipelines.integrations.definition import EntitySync, IntegrationDefinition, render, to_number
from connector_pipelines.integrations.sources.base import SourceRecord
from connector_pipelines.integrations.target import CreateOutcome, RecordWriter, TargetItem
from connector_pipelines.integrations.write_back import (
    FIELDS,
    OUR_PREFIX,
    Change,
    Refused,
    Signal,
    WriteBackProcessor,
)
from connector_pipelines.systems.monday.client import MondayClient
from connector_pipelines.systems.monday.codecs import raw
from connector_pipelines.systems.monday.errors import MondayError

NAME_LIMIT = 255


def column_value(kind: str, text: str) -> Any:
    """A rendered template as the Python value the column type's codec takes (None clears the column)."""
    if text == "":
        return None
    if kind == "numbers":
        return to_number(text)
    if kind == "dropdown":
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


class MondayBackend:
    """The boards of one monday.com account, as the flow machinery writes to them."""

    system = "monday"
    label = "Monday.com"

    def __init__(self, client: MondayClient, integration: IntegrationDefinition, account_url: str | None = None) -> None:
        self.client = client
        self.integration = integration
        self.settings = integration.target
        # the deployment's account (MondayResource.account_url, CONNECTOR_MONDAY_ACCOUNT_URL) before the pair's own
        self.account_url = account_url or self.settings.account_url
        self.batch_size = client.batch_size
        self._board_of_item: dict[str, str] = {}

    def board(self, entity: EntitySync) -> str:
        try:
            return str(self.settings.boards[entity.name])
        except KeyError:
            raise MondayError(f"no Monday board is configured for entity {entity.name!r} (target.boards)") from None

    def check(self) -> dict[str, str]:
        """Every configured board has the external-id column and each mapped column with the kind declared
        (what `connector-pipelines ping` reports); raises naming what is missing or of another type."""
        out = {}
        for entity in self.integration.entities:
            expected = {self.settings.external_id_column: "text"}
            expected.update({f.name: f.kind for f in entity.fields})
            if self.settings.link_column:
                expected[self.settings.link_column] = "link"
            board = self.client.check_board(self.board(entity), expected)
            out[entity.name] = getattr(board, "name", None) or self.board(entity)
        return out

    # -- what a record becomes --------------------------------------------------------------------------
    def desired(self, entity: EntitySync, record: SourceRecord) -> dict[str, Any]:
        values: dict[str, Any] = {self.settings.external_id_column: record.external_id}
        for mapping in entity.fields:
            if mapping.relates_to:   # the related record's item (board_relation), once it exists
                linked = record.links.get(mapping.name)
                values[mapping.name] = [int(linked)] if linked else None
                continue
            values[mapping.name] = column_value(mapping.kind, render(mapping.template, record.data))
        if self.settings.link_column and record.url:
            values[self.settings.link_column] = {"url": record.url, "text": f"Open in {self.integration.capabilities.label}"}
        name = render(entity.summary, record.data)[:NAME_LIMIT] or f"{entity.document_label} {record.record_id}"
        return {"name": name, "column_values": values}

    def written_values(self, entity: EntitySync, payload: dict[str, Any]) -> dict[str, str | None]:
        """The write-back columns' values in ``payload``, as text (what echo suppression compares)."""
        values = payload.get("column_values") or {}
        return {w.column: _text(values.get(w.column)) for w in entity.write_back}

    def read_columns(self, entity: EntitySync, item_id: str) -> dict[str, Any] | None:
        """One item's decoded columns, read through the API now (a webhook is only a signal); None if gone."""
        board = self.board(entity)
        for item in self.client.items_page(board, query_params={"ids": [item_id]}):
            self._board_of_item[str(item["id"])] = board
            return item.get("columns") or {}
        return None

    # -- finding ----------------------------------------------------------------------------------------
    def _item(self, item: dict[str, Any], board: str) -> TargetItem:
        key = str(item["id"])
        self._board_of_item[key] = board
        external = (item.get("columns") or {}).get(self.settings.external_id_column)
        return TargetItem(key, int(key), bool(item.get("archived")) or item.get("state") == "archived",
                          external if isinstance(external, str) else None)

    def find(self, entity: EntitySync, external_ids: list[str]) -> dict[str, list[TargetItem]]:
        board = self.board(entity)
        found = self.client.items_by_column_values(board, self.settings.external_id_column, external_ids,
                                                   columns=[self.settings.external_id_column])
        return {k: [self._item(i, board) for i in items] for k, items in found.items()}

    def read(self, key: str) -> TargetItem | None:
        board = self._board_of_item.get(key)
        if board is None:
            return None
        for item in self.client.items_page(board, columns=[self.settings.external_id_column],
                                           query_params={"ids": [key]}):
            return self._item(item, board)
        return None

    def open_items(self, entity: EntitySync, prefix: str) -> dict[str, list[TargetItem]]:
        board = self.board(entity)
        out: dict[str, list[TargetItem]] = {}
        for item in self.client.items_page(board, columns=[self.settings.external_id_column]):
            found = self._item(item, board)
            if (found.external_id or "").startswith(prefix) and not found.done:
                out.setdefault(found.external_id or "", []).append(found)
        return out

    # -- writing ----------------------------------------------------------------------------------------
    def create_many(self, entity: EntitySync, payloads: list[dict[str, Any]]) -> CreateOutcome:
        board = self.board(entity)
        group = self.settings.groups.get(entity.name)
        created = self.client.create_items(board, [{**p, "group_id": group} if group else p for p in payloads])
        outcome = CreateOutcome()
        for i, c in enumerate(created):
            outcome.created.append(c.item_id)
            if c.item_id is not None:
                self._board_of_item[c.item_id] = board
            else:
                outcome.errors[i] = str(c.error or "monday did not create the item")
                if c.error is not None and isinstance(c.error.status, int):
                    outcome.error_status[i] = c.error.status
        return outcome

    def update(self, entity: EntitySync, key: str, payload: dict[str, Any]) -> None:
        board = self.board(entity)
        self._board_of_item[key] = board
        # The item's name travels with its columns ({"name": …} renames the item; sent as it is, not encoded).
        self.client.change_multiple_column_values(board, key, {**payload["column_values"], "name": raw(payload["name"])})

    def comment(self, key: str, text: str) -> None:
        self.client.create_update(key, text, board_id=self._board_of_item.get(key))

    def close_duplicate(self, duplicate: str, keep: str, external_id: str) -> None:
        self.client.create_update(duplicate, f"connector_pipelines: archived as a duplicate of item {keep} (both "
                                             f"carry ERP record {external_id}); work continues there.",
                                  board_id=self._board_of_item.get(duplicate))
        self.client.archive_item(duplicate, board_id=self._board_of_item.get(duplicate))

    def url(self, key: str) -> str:
        base = (self.account_url or "https://monday.com").rstrip("/")
        board = self._board_of_item.get(key)
        return f"{base}/boards/{board}/pulses/{key}" if board else f"{base}/pulses/{key}"

    def api_calls(self) -> int:
        return self.client.http.calls


def _text(value: Any) -> str | None:
    """A column value as comparable text (status label, number, date string)."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return str(value.get("label") or value.get("text") or value.get("date") or value.get("url") or value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- the return flow: a person's column change -> the source record (integrations.registry.target_module) -----
RESOLUTION_EVENTS = "changes of write-back columns"
# The payload names a column change "update_column_value" (the webhook event is change_column_value).
CHANGE_EVENTS = frozenset({"update_column_value", "change_column_value", "change_status_column_value",
                           "change_specific_column_value"})


def _write_back_columns(integration: IntegrationDefinition) -> dict[str, tuple[EntitySync, set[str]]]:
    """Board id -> (its entity, the columns written back)."""
    out = {}
    for entity in integration.entities:
        board = integration.target.boards.get(entity.name)
        if board and entity.write_back:
            out[str(board)] = (entity, {w.column for w in entity.write_back})
    return out


def _watched_entity(watched: dict[str, tuple[EntitySync, set[str]]], event: dict[str, Any]) -> EntitySync | None:
    """The entity whose write-back column ``event`` changed, or None (another event, board or column)."""
    hit = watched.get(str(event.get("boardId")))
    if event.get("type") not in CHANGE_EVENTS or hit is None or event.get("columnId") not in hit[1]:
        return None
    return hit[0]


def inbox_row_filter(integration: IntegrationDefinition):
    """Monday events this pair acts on: a column change on a write-back column of one of its boards. Other
    events stay in the inbox as audit but launch no run."""
    watched = _write_back_columns(integration)

    def belongs(row) -> bool:
        return _watched_entity(watched, (row.payload or {}).get("event") or {}) is not None

    return belongs


class MondayTrigger:
    """A person's change of a write-back column on an item writes the changed fields to the source record
    (integrations.write_back). Before acting the item is read again through the API (the webhook is a signal)
    and each write-back column compared with what the connector last wrote there: equal = the connector's own
    write coming back. Only what the source refuses is answered on the item (an update saying why)."""

    system = "monday"
    writes = FIELDS
    announce = False
    retry_hint = "Fix the record in the system of record, then change the column again."

    def __init__(self, backend: MondayBackend, integration: IntegrationDefinition) -> None:
        self.backend = backend
        self.watched = _write_back_columns(integration)

    def signal(self, event: dict[str, Any]) -> Signal | None:
        entity = _watched_entity(self.watched, event)
        if entity is None or not event.get("pulseId"):
            return None
        return Signal(str(event["pulseId"]), entity.name)

    def confirm(self, entity: EntitySync, signal: Signal, event: dict[str, Any], entry: Any) -> Change | None:
        columns = self.backend.read_columns(entity, signal.target_key)
        if columns is None:
            raise Refused(f"monday has no item {signal.target_key} on the {entity.name} board")
        written = (entry.context or {}).get("written") or {}
        now = {w.field: (w.column, _text(columns.get(w.column))) for w in entity.write_back}
        changes = {f: (column, value) for f, (column, value) in now.items() if value != written.get(column)}
        if not changes:
            return None
        return Change(fields={f: value for f, (_, value) in changes.items()},
                      written={column: value for column, value in changes.values()})

    def comment(self, item_id: str, text: str) -> None:
        self.backend.comment(item_id, f"{OUR_PREFIX}{text}")

    def url(self, item_id: str) -> str:
        return self.backend.url(item_id)


def resolution_processor(integration: IntegrationDefinition, source: Any, resources: Any,
                         run_id: str | None) -> WriteBackProcessor:
    store = resources.connector_store
    trigger = MondayTrigger(MondayBackend(resources.monday.client(store.vault()), integration,
                                          account_url=resources.monday.account_url), integration)
    return WriteBackProcessor(integration, source, trigger, store.ledger(), run_id, leases=store.leases(),
                              settings=store.write_settings())


def ensure_webhook(integration: IntegrationDefinition, resources: Any) -> dict[str, Any]:
    """One ``change_column_value`` webhook per board with write-back columns, to the receiver's Monday endpoint
    (the personal-token path carries its secret, read from the environment at use time, never stored)."""
    import os

    base = os.environ.get("CONNECTOR_RECEIVER_PUBLIC_URL")
    secret = os.environ.get("CONNECTOR_MONDAY_PATH_SECRET")
    if not base:
        raise MondayError("CONNECTOR_RECEIVER_PUBLIC_URL is not set: monday has nowhere to send column changes")
    url = f"{base.rstrip('/')}/webhooks/monday" + (f"/{secret}" if secret else "")
    client = resources.monday.client(resources.connector_store.vault())
    actions = []
    for board in sorted(_write_back_columns(integration)):
        existing = [w for w in client.webhooks(board) if w.get("event") == "change_column_value"]
        if existing:
            actions.append("kept")
            continue
        client.create_webhook(board, url, "change_column_value")
        actions.append("created")
    action = "created" if "created" in actions else "kept"
    return {"webhook_id": ",".join(sorted(_write_back_columns(integration))) or "-", "action": action,
            "expires": "never (monday webhooks do not expire)", "boards": len(actions)}


def from_resources(integration: IntegrationDefinition, resources: Any, run_id: str | None) -> RecordWriter:
    """The writer for one run (integrations.registry): the Monday resource's client (its token read from the
    vault at use time), the store's ledger and leases."""
    store = resources.connector_store
    client = resources.monday.client(store.vault())
    return RecordWriter(MondayBackend(client, integration, account_url=resources.monday.account_url), store.ledger(),
                        integration, run_id, leases=store.leases(), settings=store.write_settings())


__all__ = ["MondayBackend", "column_value", "from_resources"]
