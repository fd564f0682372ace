"""The receiver's F&O business-event endpoint: shared secret in constant time, one row per ControlNumber."""

from __future__ import annotations

import json
import logging

import pytest
from starlette.testclient import TestClient

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.receiver.app import FO_PATH, ReceiverSettings, create_app

SECRET = "fo-endpoint-secret-0123456789abcdef"
HEADER = "X-Connector-Secret"


@pytest.fixture
def inbox(tmp_path) -> Inbox:
    return Inbox(get_engine(f"sqlite:///{tmp_path}/db.sqlite"))


def app(inbox: Inbox, **overrides) -> TestClient:
    values = {"fo_events_secret": SECRET, "max_body_bytes": 20_000}
    return TestClient(create_app(inbox, ReceiverSettings(**{**values, **overrides})))


def envelope(control: int, po: str = "PO-000071", **extra) -> dict:
    return {"BusinessEventId": "PurchaseOrderConfirmedBusinessEvent", "BusinessEventLegalEntity": "USMF",
            "ContextRecordSubject": "", "ControlNumber": control, "EventId": "0B7C7E52-2C59-4C2A-9F1A-2D1E3F4A5B6C",
            "EventTime": "/Date(1763870400000)/", "EventTimeIso8601": "2025-11-23T04:00:00.1234567Z",
            "InitiatingUserAADObjectId": "{8E5F3C2B-1A0D-4E9F-8B7A-6C5D4E3F2A1B}", "MajorVersion": 0,
            "MinorVersion": 0, "ParentContextRecordSubjects": [], "PurchaseOrderNumber": po,
            "PurchaseJournal": "PJ-001", "VendorAccount": "US-101", **extra}


def post(client: TestClient, body, secret: str | None = SECRET, header: str = HEADER):
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[header] = secret
    return client.post(FO_PATH, content=json.dumps(body), headers=headers)


def test_an_event_delivered_three_times_is_stored_once(inbox):
    client = app(inbox)
    answers = [post(client, envelope(5637144580)) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [a.json() for a in answers] == [{"stored": 1, "duplicates": 0}] + [{"stored": 0, "duplicates": 1}] * 2
    [row] = inbox.read_after("finance_operations", 0, 10)
    assert row.dedupe_key == "5637144580" and row.payload == envelope(5637144580)


def test_events_out_of_order_and_in_an_array_are_each_stored(inbox):
    client = app(inbox)
    assert post(client, envelope(5637144590)).status_code == 202
    assert post(client, [envelope(5637144583), envelope(5637144587, po="PO-2")]).json() == {"stored": 2,
                                                                                            "duplicates": 0}
    keys = [r.dedupe_key for r in inbox.read_after("finance_operations", 0, 10)]
    assert keys == ["5637144590", "5637144583", "5637144587"]


@pytest.mark.parametrize("secret", [None, "", "fo-endpoint-secret-0123456789abcdeX", SECRET + "x"])
def test_a_missing_or_wrong_secret_is_401_counted_and_stores_nothing(inbox, secret, caplog):
    client = app(inbox)
    with caplog.at_level(logging.WARNING, logger="connector_pipelines.receiver"):
        r = post(client, envelope(1), secret=secret)
    assert r.status_code == 401 and r.json() == {"error": "bad_secret"}
    assert inbox.count("finance_operations") == 0 and inbox.rejections("finance_operations") == 1
    assert SECRET not in caplog.text


def test_the_secret_header_name_is_a_setting(inbox):
    client = app(inbox, fo_events_secret_header="X-Fo-Key")
    assert post(client, envelope(7), header=HEADER).status_code == 401
    assert post(client, envelope(7), header="X-Fo-Key").status_code == 202


def test_an_unconfigured_secret_is_503_with_retry_after_so_f_and_o_retries(inbox):
    r = post(app(inbox, fo_events_secret=None), envelope(1))
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert inbox.count("finance_operations") == 0


@pytest.mark.parametrize("body", [
    {"BusinessEventId": "PurchaseOrderConfirmedBusinessEvent"},                 # no ControlNumber
    {"ControlNumber": 5},                                                         # no BusinessEventId
    {"BusinessEventId": "X", "ControlNumber": "five"},
    [],
    "just text",
    [{"BusinessEventId": "X", "ControlNumber": 1}, {"ControlNumber": 2}],          # one bad envelope refuses all
])
def test_malformed_envelopes_are_400_and_nothing_is_stored(inbox, body):
    r = post(app(inbox), body)
    assert r.status_code == 400 and r.json() == {"error": "malformed_body"}
    assert inbox.count("finance_operations") == 0


def test_not_json_is_400(inbox):
    r = app(inbox).post(FO_PATH, content=b"{not json", headers={HEADER: SECRET, "Content-Type": "application/json"})
    assert r.status_code == 400


def test_settings_never_print_the_secret():
    text = repr(ReceiverSettings(fo_events_secret=SECRET))
    assert SECRET not in text and "fo_events_secret=set" in text
