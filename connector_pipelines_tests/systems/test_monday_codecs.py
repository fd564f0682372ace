"""monday column-value codecs: each type encodes to monday's JSON and decodes monday's ``{text, value}`` back."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from connector_pipelines.systems.monday import (
    CODECS,
    Column,
    ColumnCodecError,
    UnsupportedColumnType,
    codec_for,
    decode_column_value,
    encode_column_values,
    flat_item,
    raw,
)
from connector_pipelines.systems.monday.codecs import DateCodec, parse_settings
from connector_pipelines.systems.monday.models import Board


def wire(value):
    """monday sends ``value`` as a JSON string."""
    return None if value is None else json.dumps(value)


# (type, python value, encoded, text monday shows, value monday stores) -> decode(text, value) == python value
ROUND_TRIPS = [
    ("status", "Done", {"label": "Done"}, "Done", {"index": 1, "post_id": None}),
    ("text", "INV-0042", "INV-0042", "INV-0042", "INV-0042"),
    ("numbers", Decimal("1234.5"), "1234.5", "1234.5", "1234.5"),
    ("numbers", Decimal(-3), "-3", "-3", "-3"),
    ("date", date(2026, 12, 3), {"date": "2026-12-03"}, "2026-12-03", {"date": "2026-12-03", "changed_at": "x"}),
    ("link", {"url": "https://erp.example/x?id=1", "text": "Bill 1"},
     {"url": "https://erp.example/x?id=1", "text": "Bill 1"}, "Bill 1 - https://erp.example/x?id=1",
     {"url": "https://erp.example/x?id=1", "text": "Bill 1"}),
    ("dropdown", ["EU", "Urgent"], {"labels": ["EU", "Urgent"]}, "EU, Urgent", None),
    ("long_text", "line 1\nline 2", {"text": "line 1\nline 2"}, "line 1\nline 2", {"text": "line 1\nline 2"}),
    ("checkbox", True, {"checked": "true"}, "v", {"checked": "true", "changed_at": "x"}),
]


@pytest.mark.parametrize(("ctype", "py", "encoded", "text", "stored"), ROUND_TRIPS,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(ROUND_TRIPS)])
def test_encode_and_decode_round_trip(ctype, py, encoded, text, stored):
    codec = codec_for(ctype)
    assert codec.encode(py) == encoded
    json.dumps(encoded)   # what goes into column_values must be JSON
    assert codec.decode(text, wire(stored)) == py
    assert codec.decode(text, stored) == py   # already parsed works too


def test_board_relation_writes_item_ids_and_reads_linked_item_ids():
    codec = codec_for("board_relation")
    assert codec.encode([101, "102"]) == {"item_ids": [101, 102]}
    assert codec.encode("7") == {"item_ids": [7]}
    # value is null from 2025-04 on: linked_item_ids is the truth
    assert codec.decode("Item A, Item B", None, linked_item_ids=["101", "102"]) == ["101", "102"]
    assert codec.decode(None, wire({"linkedPulseIds": [{"linkedPulseId": 5}]})) == ["5"]
    assert codec.decode(None, None) == []
    with pytest.raises(ColumnCodecError, match="item ids"):
        codec.encode(["abc"])


def test_status_by_index_and_settings():
    settings = json.dumps({"labels": {"0": "Working on it", "1": "Done", "2": "Stuck"}})   # settings_str shape
    codec = codec_for("status", settings)
    assert codec.encode(2) == {"index": 2}
    assert codec.index_of("Stuck") == 2
    assert codec.decode(None, wire({"index": 1})) == "Done"   # no text: the index names the label
    assert codec.decode("", None) is None
    with pytest.raises(ColumnCodecError, match="'Shipped' is not on the column"):
        codec.encode("Shipped")
    assert codec_for("status").encode("Shipped") == {"label": "Shipped"}   # without settings: monday decides
    with pytest.raises(ColumnCodecError):
        codec.encode(True)


def test_dropdown_with_settings_writes_the_confirmed_ids_form():
    codec = codec_for("dropdown", {"labels": [{"id": 1, "name": "EU"}, {"id": 2, "name": "US"}]})
    assert codec.encode(["US", "EU"]) == {"ids": [2, 1]}
    assert codec.decode("US, EU", wire({"ids": [2, 1]})) == ["US", "EU"]
    assert codec.encode([3]) == {"ids": [3]}
    assert codec.encode([]) is None
    with pytest.raises(ColumnCodecError, match="'APAC'"):
        codec.encode(["APAC"])
    with pytest.raises(ColumnCodecError):
        codec.encode(["EU", 2])


def test_numbers_take_any_numeric_kind_and_refuse_the_rest():
    codec = codec_for("numbers")
    assert codec.encode(42) == "42"
    assert codec.encode(0.1) == "0.1"
    assert codec.encode(Decimal("1E+3")) == "1000"
    assert codec.encode(" 12.50 ") == "12.5"
    assert codec.decode("", None) is None
    assert codec.decode("7", None) == Decimal(7)
    for bad in (True, "12 EUR", float("nan"), float("inf"), [1]):
        with pytest.raises(ColumnCodecError, match="numbers"):
            codec.encode(bad)


def test_dates_from_datetimes_and_iso_strings():
    codec = codec_for("date")
    # a datetime sends its own calendar date: no time-zone shift moves an invoice to the day before
    assert codec.encode(datetime(2026, 1, 5, 0, 30, tzinfo=timezone(timedelta(hours=2)))) == {"date": "2026-01-05"}
    assert codec.encode("2026-01-05") == {"date": "2026-01-05"}
    assert codec.encode("2026-01-05T10:00:00Z") == {"date": "2026-01-05"}
    with_time = DateCodec(with_time=True)
    assert with_time.encode(datetime(2026, 1, 5, 0, 30, tzinfo=timezone(timedelta(hours=2)))) == {
        "date": "2026-01-04", "time": "22:30:00"}
    assert codec.decode("", wire({"date": "2026-01-04", "time": "22:30:00"})) == datetime(2026, 1, 4, 22, 30,
                                                                                         tzinfo=UTC)
    assert codec.decode("2026-01-04", None) == date(2026, 1, 4)
    assert codec.decode("", None) is None
    with pytest.raises(ColumnCodecError, match="ISO-8601"):
        codec.encode("next tuesday")


def test_link_text_checkbox_long_text_shapes_and_clearing():
    assert codec_for("link").encode("https://x.test/a") == {"url": "https://x.test/a", "text": "https://x.test/a"}
    assert codec_for("link").encode(("https://x.test/a", "A")) == {"url": "https://x.test/a", "text": "A"}
    assert codec_for("checkbox").encode(False) is None   # unchecking clears the column
    assert codec_for("checkbox").decode("", None) is False
    assert codec_for("text").decode("", wire("")) is None
    for ctype in CODECS:
        assert codec_for(ctype).encode(None) is None, ctype   # None clears every column
    with pytest.raises(ColumnCodecError, match="long_text"):
        codec_for("long_text").encode(3)


def test_unknown_column_type_is_a_clear_error():
    with pytest.raises(UnsupportedColumnType, match="no codec for monday column type 'mirror'.*status"):
        codec_for("mirror")
    # reading an unsupported type gives its text
    assert decode_column_value({"id": "m", "type": "mirror", "text": "x", "value": None}) == "x"


def test_encode_column_values_uses_the_board_types_and_names_the_column():
    columns = {"status": Column(id="status", title="Status", type="status"),
               "amount": Column(id="amount", title="Amount", type="numbers"),
               "ext": Column(id="ext", title="External id", type="text")}
    out = encode_column_values(columns, {"status": "Done", "amount": Decimal("9.90"), "ext": "K-1",
                                         "custom": raw({"anything": 1})} | {})
    assert out == {"status": {"label": "Done"}, "amount": "9.9", "ext": "K-1", "custom": {"anything": 1}}
    with pytest.raises(ColumnCodecError, match="column 'amount': a numbers column"):
        encode_column_values(columns, {"amount": "a lot"})
    with pytest.raises(ColumnCodecError, match="'nope' is not on the board"):
        encode_column_values(columns, {"nope": 1})
    assert encode_column_values({"d": "date"}, {"d": date(2026, 2, 1)}) == {"d": {"date": "2026-02-01"}}


def test_settings_parse_both_shapes():
    assert parse_settings('{"labels": {"1": "Done"}}') == {"labels": {"1": "Done"}}
    assert parse_settings({"labels": []}) == {"labels": []}
    assert parse_settings("not json") == {}
    assert parse_settings(None) == {}


def test_flat_item_decodes_by_type_and_keeps_linked_ids():
    board = Board(id="1", name="B", columns={
        "status": Column(id="status", title="Status", type="status", settings={"labels": {"1": "Done"}})})
    item = {"id": "11", "name": "Bill 1", "group": {"id": "topics"}, "column_values": [
        {"id": "status", "type": "status", "text": None, "value": wire({"index": 1})},
        {"id": "amount", "type": "numbers", "text": "12", "value": wire("12")},
        {"id": "rel", "type": "board_relation", "text": "A", "value": None, "linked_item_ids": ["5", "6"]},
        {"id": "people", "type": "people", "text": "Ann", "value": wire({"personsAndTeams": []})},
    ]}
    assert flat_item(item, board) == {
        "id": "11", "name": "Bill 1", "group_id": "topics",
        "columns": {"status": "Done", "amount": Decimal(12), "rel": ["5", "6"], "people": "Ann"},
        "linked_item_ids": {"rel": ["5", "6"]}}
