"""The pieces every sandbox shares: the delivery pump behind BC's, F&O's and Jira's start_auto_delivery."""

import threading
import time

from sandboxes.common import DeliveryPump


def test_the_delivery_pump_keeps_delivering_after_a_failure_and_stops_when_told():
    calls = []
    delivered = threading.Event()

    def deliver():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("receiver down")          # the vendor keeps trying; the pump must not die
        if len(calls) >= 3:
            delivered.set()

    pump = DeliveryPump("test-pump", deliver)
    pump.start(0.01)
    pump.start(0.01)                                     # a second start is a no-op, not a second thread
    assert delivered.wait(5)
    assert sum(t.name == "test-pump" for t in threading.enumerate()) == 1
    pump.stop()
    stopped_at = len(calls)
    time.sleep(0.05)
    assert len(calls) == stopped_at                      # nothing after stop
    assert not any(t.name == "test-pump" for t in threading.enumerate())
    pump.start(0.01)                                     # and it can start again (the demo restarts it)
    deadline = time.monotonic() + 5
    while len(calls) == stopped_at and time.monotonic() < deadline:
        time.sleep(0.01)
    pump.stop()
    assert len(calls) > stopped_at
