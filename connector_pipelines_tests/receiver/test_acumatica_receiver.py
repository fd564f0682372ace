"""The receiver's Acumatica push-notification endpoint: the destination's header secret in constant time,
one inbox row per (Id, Query) however often and in whatever order Acumatica resends."""

from __future__ import annotations

import json
import logging

import pytest
from starlette.testclient import TestClient

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.receiver.app import ACUMATICA_PATH, ReceiverSettings, create_app

SECRET = "acumatica-push-secret-0123456789abcdef"
HEADER = "X-Connector-Secret"


@pytest.fixture
def inbox(tmp_path) -> Inbox:
    return Inbox(get_engine(f"sqlite:///{tmp_path}/db.sqlite"))


def app(inbox: Inbox, **overrides) -> TestClient:
    values = {"acumatica_push_secret": SECRET, "max_body_bytes": 20_000}
    return TestClient(create_app(inbox, ReceiverSettings(**{**values, **overrides})))


def notification(ident: str, query: str = "HeldBills", ref: str = "000123", **extra) -> dict:
    return {"Query": query, "CompanyId": "Company", "Id": ident, "TimeStamp": 637_700_000_000_000_000,
            "Inserted": [{"Type": "Bill", "ReferenceNbr": ref, "Status": "Pending Approval"}],
            "Deleted": [{"Type": "Bill", "ReferenceNbr": ref, "Status": "On Hold"}], "AdditionalInfo": {}, **extra}


def post(client: TestClient, body, secret: str | None = SECRET, header: str = HEADER):
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[header] = secret
    return client.post(ACUMATICA_PATH, content=json.dumps(body), headers=headers)


def test_a_notification_delivered_three_times_is_stored_once(inbox):
    client = app(inbox)
    answers = [post(client, notification("9b1c0f7e-1")) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [a.json()["stored"] for a in answers] == [1, 0, 0]
    [row] = inbox.read_after("acumatica", 0, 10)
    assert row.dedupe_key == "9b1c0f7e-1|HeldBills" and row.payload == notification("9b1c0f7e-1")


def test_the_same_id_under_another_query_is_another_notification(inbox):
    client = app(inbox)
    post(client, notification("7", query="HeldBills"))
    post(client, notification("7", query="HeldChecks"))
    assert inbox.count("acumatica") == 2


def test_out_of_order_deliveries_are_each_stored(inbox):
    client = app(inbox)
    for ident in ("3", "1", "2"):
        assert post(client, notification(ident, ref=f"00012{ident}")).status_code == 202
    assert [r.dedupe_key for r in inbox.read_after("acumatica", 0, 10)] == ["3|HeldBills", "1|HeldBills", "2|HeldBills"]


@pytest.mark.parametrize("secret", [None, "", SECRET[:-1] + "X", SECRET + "x"])
def test_a_missing_or_wrong_secret_is_401_counted_and_stores_nothing(inbox, secret, caplog):
    with caplog.at_level(logging.WARNING, logger="connector_pipelines.receiver"):
        r = post(app(inbox), notification("1"), secret=secret)
    assert r.status_code == 401 and r.json() == {"error": "bad_secret"}
    assert inbox.count("acumatica") == 0 and inbox.rejections("acumatica") == 1
    assert SECRET not in caplog.text


def test_the_header_name_is_a_setting(inbox):
    client = app(inbox, acumatica_push_secret_header="X-Acu-Key")
    assert post(client, notification("1")).status_code == 401
    assert post(client, notification("1"), header="X-Acu-Key").status_code == 202


def test_an_unconfigured_secret_is_503_so_acumatica_resends(inbox):
    r = post(app(inbox, acumatica_push_secret=None), notification("1"))
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert inbox.count("acumatica") == 0


@pytest.mark.parametrize("body", [
    {"Id": "1", "Inserted": []},                            # no Query
    {"Query": "HeldBills", "Inserted": []},                 # no Id
    {"Query": "HeldBills", "Id": {"x": 1}},
    {"Query": "HeldBills", "Id": "1", "Inserted": "row"},
    {"Query": "HeldBills", "Id": "1", "Inserted": ["row"]},
    [notification("1")],
    "text",
])
def test_malformed_notifications_are_400_and_nothing_is_stored(inbox, body):
    r = post(app(inbox), body)
    assert r.status_code == 400 and r.json() == {"error": "malformed_body"}
    assert inbox.count("acumatica") == 0


def test_settings_never_print_the_secret():
    text = repr(ReceiverSettings(acumatica_push_secret=SECRET))
    assert SECRET not in text and "acumatica_push_secret=set" in text
