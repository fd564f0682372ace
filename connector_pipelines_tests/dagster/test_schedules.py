"""The poll schedule: the current hour's window every tick, and the previous one early in each hour.

Polling is the safety net under the webhooks: a record changed at 09:59 whose notification was lost
is still in the 09:00 window at 10:05. Run keys carry the tick time, so the same window is polled
again on every tick instead of being deduplicated away after the first run.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

PAIR = "bc_jira"
POLL = f"{PAIR}__poll_schedule"


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def evaluate(defs: dg.Definitions, instance, name: str, at: datetime):
    ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=at,
                                    repository_def=defs.get_repository_def())
    return defs.resolve_schedule_def(name).evaluate_tick(ctx)


def at(hour: int, minute: int, day: int = 20, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def partitions(result) -> list[str]:
    return [r.partition_key for r in result.run_requests or []]


def test_early_in_the_hour_polls_the_previous_and_the_current_window(defs, instance):
    result = evaluate(defs, instance, POLL, at(10, 5))
    assert partitions(result) == ["2026-11-20-09:00", "2026-11-20-10:00"]
    for request in result.run_requests:
        assert request.tags["dagster/partition"] == request.partition_key


def test_late_in_the_hour_polls_only_the_current_window(defs, instance):
    assert partitions(evaluate(defs, instance, POLL, at(10, 45))) == ["2026-11-20-10:00"]


def test_the_first_hour_after_midnight_reaches_back_into_the_previous_day(defs, instance):
    assert partitions(evaluate(defs, instance, POLL, at(0, 5, day=21))) == ["2026-11-20-23:00", "2026-11-21-00:00"]


def test_nothing_before_go_live_and_no_window_before_the_first(defs, instance):
    assert partitions(evaluate(defs, instance, POLL, at(12, 5, day=20, month=10))) == []
    assert partitions(evaluate(defs, instance, POLL, at(0, 5, day=1))) == ["2026-11-01-00:00"]


def test_run_keys_differ_across_ticks_even_for_the_same_window(defs, instance):
    ticks = [evaluate(defs, instance, POLL, at(10, m)) for m in (0, 15, 30, 45)]
    keys = [r.run_key for t in ticks for r in t.run_requests]
    assert len(keys) == len(set(keys)) == 6  # 2 + 2 + 1 + 1
    tens = [r.run_key for t in ticks for r in t.run_requests if r.partition_key == "2026-11-20-10:00"]
    assert len(set(tens)) == 4
    # and the same tick evaluated twice yields the same keys (a daemon retry does not double the run)
    again = evaluate(defs, instance, POLL, at(10, 15))
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in ticks[1].run_requests]


@pytest.mark.parametrize("name", [f"{PAIR}__reconcile_schedule", f"{PAIR}__subscription_renewal_schedule",
                                  f"{PAIR}__jira_webhook_renewal_schedule"])
def test_the_other_schedules_request_one_unpartitioned_run(defs, instance, name):
    [request] = evaluate(defs, instance, name, at(10, 7)).run_requests
    assert request.partition_key is None
