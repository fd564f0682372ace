"""Acumatica sandbox push notifications: payload shape (Inserted/Deleted rows, Query, CompanyId, Id, TimeStamp),
the shared-secret header, retries up to 5 attempts then drop, redelivery, reordering and auto delivery."""

from __future__ import annotations

import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandboxes.acumatica import AcumaticaSandbox
from sandboxes.common import SandboxServer


class Receiver:
    def __init__(self) -> None:
        self.status = 200
        self.bodies: list[dict] = []
        self.headers: list[dict] = []

        async def hook(request: Request) -> Response:
            self.bodies.append(await request.json())
            self.headers.append(dict(request.headers))
            return Response(status_code=self.status)

        self.server = SandboxServer(Starlette(routes=[Route("/push", hook, methods=["POST"])]))

    @property
    def url(self) -> str:
        return f"{self.server.base_url}/push"


@pytest.fixture
def receiver():
    r = Receiver()
    r.server.start()
    yield r
    r.server.stop()


@pytest.fixture
def sb(receiver) -> AcumaticaSandbox:
    sb = AcumaticaSandbox(tenant="Company")
    sb.add_push_destination("bills", receiver.url, query="APBillsForSync", entity="Bill",
                            fields=["Type", "ReferenceNbr", "Status", "Amount", "LastModifiedDateTime"],
                            header_name="X-Push-Secret", header_value="hush")
    return sb


def test_insert_update_delete_payloads_and_secret_header(sb, receiver):
    b = sb.add_bill(vendor="ACME", amount=10.0)
    sb.update_document("Bill", b["id"], Hold=False)
    sb.delete_document("Bill", b["id"])
    sb.add_vendor(VendorID="V1")          # not watched
    assert sb.pending_notifications() == 3
    assert sb.deliver_notifications() == {"delivered": 3, "failed": 0, "dropped": 0, "posts": 3}
    assert sb.pending_notifications() == 0
    ins, upd, dele = receiver.bodies
    assert set(ins) == {"Query", "CompanyId", "Id", "TimeStamp", "Inserted", "Deleted", "AdditionalInfo"}
    assert ins["Query"] == "APBillsForSync" and ins["CompanyId"] == "Company" and ins["AdditionalInfo"] == {}
    assert ins["Deleted"] == [] and ins["Inserted"][0] == {
        "Type": "Bill", "ReferenceNbr": "000001", "Status": "On Hold", "Amount": 10.0,
        "LastModifiedDateTime": b["LastModifiedDateTime"]}
    assert upd["Deleted"][0]["Status"] == "On Hold" and upd["Inserted"][0]["Status"] == "Balanced"
    assert dele["Inserted"] == [] and dele["Deleted"][0]["ReferenceNbr"] == "000001"
    assert len({x["Id"] for x in receiver.bodies}) == 3
    stamps = [x["TimeStamp"] for x in receiver.bodies]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3 and all(isinstance(s, int) for s in stamps)
    assert all(h["x-push-secret"] == "hush" for h in receiver.headers)


def test_changes_through_the_api_are_pushed(sb, receiver):
    from contextlib import closing

    import httpx

    from sandboxes.common import sync_transport

    sb.add_user("admin", "123")
    with closing(httpx.Client(transport=sync_transport(sb.app), base_url="http://acu.test")) as c:
        c.post("/entity/auth/login", json={"name": "admin", "password": "123"})
        c.put("/entity/Default/24.200.001/Bill", json={"Vendor": {"value": "ACME"}, "Amount": {"value": 0.0}})
        c.put("/entity/Default/24.200.001/Bill", json={"Type": {"value": "Bill"}, "ReferenceNbr": {"value": "000001"},
                                                       "Hold": {"value": False}})
        c.put("/entity/Default/24.200.001/Bill", json={"Type": {"value": "Bill"}, "ReferenceNbr": {"value": "000001"},
                                                       "Hold": {"value": False}})
    assert sb.pending_notifications() == 2   # an update that changes nothing pushes nothing
    sb.deliver_notifications()
    assert [b["Inserted"][0]["Status"] for b in receiver.bodies] == ["On Hold", "Balanced"]


def test_failed_deliveries_are_retried_up_to_five_attempts_then_dropped(sb, receiver):
    sb.add_bill(vendor="ACME", amount=1.0)
    receiver.status = 500
    for attempt in range(1, 5):
        assert sb.deliver_notifications() == {"delivered": 0, "failed": 1, "dropped": 0, "posts": 1}
        assert sb.pending_notifications() == 1
    assert sb.deliver_notifications() == {"delivered": 0, "failed": 0, "dropped": 1, "posts": 1}
    assert sb.pending_notifications() == 0 and sb.dropped_notifications == 1
    assert len(receiver.bodies) == 5 and len({b["Id"] for b in receiver.bodies}) == 1
    # a retry that succeeds
    sb.add_bill(vendor="ACME", amount=2.0)
    sb.deliver_notifications()
    receiver.status = 204
    assert sb.deliver_notifications()["delivered"] == 1


def test_redeliver_and_reorder(sb, receiver):
    for amount in (1.0, 2.0, 3.0):
        sb.add_bill(vendor="ACME", amount=amount)
    sb.redeliver = 2
    sb.reorder = True
    summary = sb.deliver_notifications()
    assert summary["delivered"] == 3 and summary["posts"] == 6
    refs = [b["Inserted"][0]["ReferenceNbr"] for b in receiver.bodies]
    assert refs == ["000003", "000003", "000002", "000002", "000001", "000001"]
    assert receiver.bodies[0]["Id"] == receiver.bodies[1]["Id"]


def test_unreachable_destination_counts_as_failure(receiver):
    sb = AcumaticaSandbox()
    sb.add_push_destination("dead", "http://127.0.0.1:9/push", query="Q", entity="Vendor", fields=["VendorID"])
    sb.add_vendor(VendorID="V1")
    assert sb.deliver_notifications()["failed"] == 1
    with pytest.raises(ValueError):
        sb.add_push_destination("bad", receiver.url, query="Q", entity="Vendor", fields=["NoSuchField"])
    with pytest.raises(ValueError):
        sb.add_push_destination("bad", receiver.url, query="Q", entity="SalesOrder", fields=["OrderNbr"])


def test_auto_delivery(sb, receiver):
    sb.start_auto_delivery(0.05)
    try:
        sb.add_bill(vendor="ACME", amount=1.0)
        deadline = time.monotonic() + 5
        while not receiver.bodies and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sb.stop_auto_delivery()
    assert len(receiver.bodies) == 1 and sb.pending_notifications() == 0


def test_an_update_of_fields_a_destination_does_not_carry_pushes_nothing(receiver):
    sb = AcumaticaSandbox()
    sb.add_push_destination("status", receiver.url, query="BillStatus", entity="Bill",
                            fields=["ReferenceNbr", "Status"])
    b = sb.add_bill(vendor="ACME", amount=1.0)
    sb.update_document("Bill", b["id"], Description="not carried")
    assert sb.pending_notifications() == 1
    sb.update_document("Bill", b["id"], Hold=False)
    assert sb.pending_notifications() == 2
