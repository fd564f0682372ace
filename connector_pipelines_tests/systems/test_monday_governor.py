"""The monday rate governor: complexity budget waits, retry_in_seconds, per-board serialisation and pacing,
one governor per token per process. An injected clock: nothing really sleeps."""

from __future__ import annotations

import threading
import time

import pytest

from connector_pipelines.systems.monday import RateGovernor, governor_for, reset_governors
from connector_pipelines.systems.monday.governor import token_key


class FakeClock:
    """A clock that moves only when someone sleeps (thread-safe)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self.t

    def sleep(self, s: float) -> None:
        with self._lock:
            self.sleeps.append(s)
            self.t += s


@pytest.fixture
def clock():
    return FakeClock()


def gov(clock: FakeClock, **kw) -> RateGovernor:
    kw.setdefault("reset_margin_s", 0.0)
    return RateGovernor(clock=clock.now, sleep=clock.sleep, **kw)


def test_no_wait_until_the_budget_is_known_then_wait_for_the_reset(clock):
    g = gov(clock, budget_per_minute=1_000)
    assert g.acquire(500) == 0.0   # nothing observed yet: go
    g.observe({"before": 1000, "after": 300, "query": 700, "reset_in_x_seconds": 40}, shape="q")
    assert g.estimate("q") == 700
    assert g.acquire(200) == 0.0   # fits: 300 left
    assert g.remaining() == 100
    waited = g.acquire(700)        # does not fit: wait for the reset, then the budget is full again
    assert waited == pytest.approx(40.0)
    assert g.remaining() == 300
    assert g.waited_s == pytest.approx(40.0) and g.waits["complexity"] == pytest.approx(40.0)


def test_an_estimate_above_the_whole_budget_waits_one_reset_only(clock):
    g = gov(clock, budget_per_minute=1_000)
    g.observe({"before": 1000, "after": 0, "query": 1000, "reset_in_x_seconds": 10})
    assert g.acquire(5_000) == pytest.approx(10.0)   # never an endless wait


def test_retry_in_seconds_holds_every_caller_back(clock):
    g = gov(clock)
    g.note_retry_in(15)
    assert g.acquire(1) == pytest.approx(15.0)
    assert g.acquire(1) == 0.0
    assert g.waits["retry_in"] == pytest.approx(15.0)
    g.note_retry_in(None)   # no advice: nothing changes
    assert g.acquire(1) == 0.0


def test_the_budget_limit_is_learned_from_before(clock):
    g = gov(clock, budget_per_minute=None)
    g.observe({"before": 5_000_000, "after": 4_000_000, "query": 1_000_000, "reset_in_x_seconds": 30})
    assert g.budget_per_minute is None and g._budget("read").limit == 5_000_000
    clock.sleep(31)
    assert g.acquire(1) == 0.0 and g.remaining() == 5_000_000 - 1


def test_split_read_write_keeps_two_budgets(clock):
    g = gov(clock, split_read_write=True, budget_per_minute=5_000_000)
    g.observe({"before": 100, "after": 0, "query": 100, "reset_in_x_seconds": 20}, kind="write")
    assert g.acquire(10, kind="read") == 0.0
    assert g.acquire(10, kind="write") == pytest.approx(20.0)


def test_mutations_are_paced_per_board_when_configured(clock):
    g = gov(clock, mutations_per_minute_per_board=3)
    for _ in range(3):
        with g.mutation("b1"):
            pass
    with g.mutation("b2"):   # another board is not held back
        pass
    assert g.waited_s == 0
    with g.mutation("b1"):   # the 4th within 60 s waits for the 1st to leave the window
        pass
    assert g.waits["board_pacing"] == pytest.approx(60.0)
    with g.mutation("b1", count=2):   # the window holds 1 now: a batch of two fits
        pass
    assert g.waits["board_pacing"] == pytest.approx(60.0)
    with g.mutation("b1", count=2):   # full (3): a batch of two waits until two have left
        pass
    assert g.waits["board_pacing"] == pytest.approx(120.0)


def test_pacing_is_off_by_default(clock):
    g = gov(clock)
    for _ in range(500):
        with g.mutation("b1"):
            pass
    assert g.waited_s == 0


def test_mutations_on_one_board_never_run_concurrently():
    g = RateGovernor()
    active: dict[str, int] = {"b1": 0, "b2": 0}
    peak: dict[str, int] = {"b1": 0, "b2": 0}
    lock = threading.Lock()

    def work(board: str) -> None:
        for _ in range(5):
            with g.mutation(board):
                with lock:
                    active[board] += 1
                    peak[board] = max(peak[board], active[board])
                time.sleep(0.002)
                with lock:
                    active[board] -= 1

    threads = [threading.Thread(target=work, args=(b,)) for b in ("b1", "b2") for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == {"b1": 1, "b2": 1}
    assert g.waits["board_lock"] > 0   # the serialisation is counted as waiting


def test_concurrent_callers_reserve_the_budget(clock):
    g = gov(clock, budget_per_minute=1_000)
    g.observe({"before": 1000, "after": 1000, "query": 0, "reset_in_x_seconds": 60})
    results = []
    threads = [threading.Thread(target=lambda: results.append(g.acquire(300))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results)[:3] == [0.0, 0.0, 0.0]   # three fit the 1,000 points
    assert sorted(results)[3] == pytest.approx(60.0)   # the fourth waits for the reset


def test_one_governor_per_token_per_process():
    reset_governors()
    a = governor_for("tok-A")
    assert governor_for("tok-A") is a
    assert governor_for("tok-B") is not a
    governor_for("tok-A", mutations_per_minute_per_board=40)   # settings given later apply to the shared one
    assert a.mutations_per_minute_per_board == 40
    assert "tok-A" not in repr(a) and token_key("tok-A") != "tok-A"
    reset_governors()
    assert governor_for("tok-A") is not a


def test_pause_is_counted(clock):
    g = gov(clock)
    g.pause(1.5)
    g.pause(0)
    assert clock.sleeps == [1.5] and g.stats()["waits"] == {"backoff": 1.5}
    with pytest.raises(ValueError):
        RateGovernor(mutations_per_minute_per_board=0)


def test_the_reset_wait_keeps_a_margin_and_a_new_window_starts(clock):
    g = RateGovernor(clock=clock.now, sleep=clock.sleep, budget_per_minute=1_000)   # default margin: 1 s
    g.observe({"before": 1000, "after": 100, "query": 900, "reset_in_x_seconds": 10})
    assert g.acquire(600) == pytest.approx(11.0)   # reset_in is whole seconds and the window slides
    assert g.acquire(300) == 0.0 and g.remaining() == 100
    assert g.acquire(600) == pytest.approx(61.0)   # the assumed new window lasts 60 s, not forever
