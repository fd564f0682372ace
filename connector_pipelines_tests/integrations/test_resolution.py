"""Write-back with Jira as the target (integrations.write_back + jira_target.JiraTrigger): a Jira issue moved to
Done acts back on the source record exactly once.

Events are the sandbox's own webhook payloads (a dynamic webhook is registered, the people act in Jira).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connector_pipelines.core import adf
from connector_pipelines.core.failures import WriteSettings
from connector_pipelines.core.http import ApiError
from connector_pipelines.core.leases import Leases, new_owner
from connector_pipelines.core.ledger import DONE, FAILED, QUARANTINED
from connector_pipelines.integrations.jira_target import JiraTrigger, done_transition
from connector_pipelines.integrations.sources.base import ResolutionOutcome
from connector_pipelines.integrations.write_back import WriteBackProcessor, resolve_key
from connector_pipelines_tests.integrations.test_jira_writer import CLOUD, COMMENT, Harness, make_harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    for harness in make_harness(tmp_path):
        harness.jira.register_webhook("https://receiver.example/jira", ["jira:issue_updated", "comment_created"],
                                      "project = FIN")
        yield harness


def events_of(h: Harness, action: Callable[[], Any]) -> list[dict[str, Any]]:
    """The webhook payloads Jira queues while ``action`` runs."""
    before = len(h.sandbox.pending_deliveries)
    action()
    return [json.loads(d.body) for d in h.sandbox.pending_deliveries[before:]]


def opened(h: Harness, *ids: str) -> dict[str, str]:
    """Open one issue per vendor through the writer: record id -> issue key."""
    entity = h.entity()
    for rid in ids:
        h.vendor(rid)
    h.writer().upsert(entity, h.source.all(entity))
    return {rid: h.ledger.get("bc_jira", f"fake:vendors:{rid}").target_key for rid in ids}


def done(h: Harness, key: str) -> list[dict[str, Any]]:
    return events_of(h, lambda: h.sandbox.transition_as_user(CLOUD, key, "Done", "acc-person"))


def processor(h: Harness, run_id: str = "run-r", **settings) -> WriteBackProcessor:
    values = {"search_lag_bound_s": 0.0, "claim_wait_s": 5.0, "lease_ttl_s": 30.0} | settings
    return WriteBackProcessor(h.integration, h.source, JiraTrigger(h.jira, h.integration), h.ledger, run_id,
                               leases=Leases(h.ledger.engine, new_owner(run_id), ttl_s=values["lease_ttl_s"]),
                               settings=WriteSettings(**values))


def comments(h: Harness, key: str) -> list[str]:
    return [adf.plain_text(c.body) for c in h.sandbox.sites[CLOUD].issue(key).comments]


def test_a_done_transition_resolves_the_source_once_and_comments_the_outcome(h: Harness):
    keys = opened(h, "1", "2")
    events = done(h, keys["1"])
    assert len(events) == 1 and done_transition(events[0])

    report = processor(h).process(events)

    assert h.source.resolved == [("blocked_vendors", "1")]
    assert report.acted == 1 and report.failed == 0 and report.ignored == 0
    assert report.outcomes == {keys["1"]: "1 fixed at the source"}
    [comment] = comments(h, keys["1"])
    assert "1 fixed at the source" in comment
    assert comments(h, keys["2"]) == []
    row = h.ledger.get("bc_jira", resolve_key("fake:vendors:1"))
    assert row.state == DONE and row.target_key == keys["1"] and row.action == "unblock_vendor"
    assert row.context["outcome"] == "acted" and row.run_id == "run-r"
    # the issue row is untouched
    assert h.ledger.get("bc_jira", "fake:vendors:1").action == "issue"


def test_the_same_done_event_twice_resolves_once(h: Harness):
    keys = opened(h, "1")
    events = done(h, keys["1"])

    first = processor(h).process(events + events)  # re-delivered within one batch
    second = processor(h, "run-r2").process(events)  # and again in a later run

    assert h.source.resolved == [("blocked_vendors", "1")]
    assert first.acted == 1 and first.repeated == 1
    assert second.acted == 0 and second.repeated == 1
    assert len(comments(h, keys["1"])) == 1
    assert h.ledger.get("bc_jira", resolve_key("fake:vendors:1")).run_id == "run-r"


def test_reopened_and_done_again_does_not_act_twice(h: Harness):
    keys = opened(h, "1")
    processor(h).process(done(h, keys["1"]))
    events_of(h, lambda: h.sandbox.transition_as_user(CLOUD, keys["1"], "In Progress"))
    report = processor(h).process(done(h, keys["1"]))
    assert h.source.resolved == [("blocked_vendors", "1")]
    assert report.repeated == 1


def test_an_event_for_an_issue_the_integration_did_not_open_is_ignored(h: Harness):
    opened(h, "1")
    theirs = h.create_as_user("fake:vendors:99", "someone else's issue")
    report = processor(h).process(done(h, theirs["key"]))
    assert h.source.resolved == []
    assert report.ignored == 1 and report.acted == 0
    assert comments(h, theirs["key"]) == []


def test_non_status_updates_comments_and_other_transitions_are_ignored(h: Harness):
    key = opened(h, "1")["1"]
    to_progress = events_of(h, lambda: h.sandbox.transition_as_user(CLOUD, key, "In Progress"))
    commented = events_of(h, lambda: h.sandbox.comment_as_user(CLOUD, key, "looking at it"))
    done(h, key)  # the Done event itself is never processed here
    # once the issue is Done, every later event carries a done status: only a status change may count
    edited = events_of(h, lambda: h.jira.edit_issue(key, {"summary": "edited while Done"}))
    commented_done = events_of(h, lambda: h.sandbox.comment_as_user(CLOUD, key, "still here"))
    events = to_progress + commented + edited + commented_done
    assert [e["webhookEvent"] for e in events] == [
        "jira:issue_updated", "comment_created", "jira:issue_updated", "comment_created"]
    assert edited[0]["issue"]["fields"]["status"]["statusCategory"]["key"] == "done"
    assert commented_done[0]["issue"]["fields"]["status"]["statusCategory"]["key"] == "done"

    report = processor(h).process(events)

    assert h.source.resolved == []
    assert report.ignored == 4 and report.acted == 0
    assert h.ledger.get("bc_jira", resolve_key("fake:vendors:1")) is None


def test_a_not_applicable_outcome_is_quarantined_with_the_message(h: Harness):
    keys = opened(h, "1")
    h.source.outcomes["1"] = ResolutionOutcome("not_applicable", "Vendor V1 no longer exists in the ERP")

    events = done(h, keys["1"])
    report = processor(h).process(events + events)

    assert h.source.resolved == [("blocked_vendors", "1")]
    assert report.not_applicable == 1 and report.acted == 0 and report.repeated == 1
    row = h.ledger.get("bc_jira", resolve_key("fake:vendors:1"))
    assert row.state == QUARANTINED
    assert row.last_error == "Vendor V1 no longer exists in the ERP"
    assert row.context["outcome"] == "not_applicable"
    assert any("no longer exists" in c for c in comments(h, keys["1"]))


def test_an_already_outcome_is_done_and_commented(h: Harness):
    keys = opened(h, "1")
    h.source.outcomes["1"] = ResolutionOutcome("already", "Vendor V1 is not blocked; nothing to do")
    report = processor(h).process(done(h, keys["1"]))
    assert report.already == 1
    assert h.ledger.get("bc_jira", resolve_key("fake:vendors:1")).state == DONE
    assert any("nothing to do" in c for c in comments(h, keys["1"]))


def test_an_api_error_from_resolve_marks_failed_and_a_rerun_retries_it(h: Harness):
    keys = opened(h, "1")
    events = done(h, keys["1"])
    h.source.outcomes["1"] = ApiError("fake", "PATCH", "/vendors(1)", 503, {"error": "ERP is down"})
    h.reset_calls()

    report = processor(h).process(events + events)  # a re-delivery in the same batch is not a retry

    assert h.source.resolved == [("blocked_vendors", "1")]
    assert report.failed == 1 and report.acted == 0
    assert report.retry == {0: report.failures[keys["1"]], 1: report.failures[keys["1"]]}  # both wait for the retry
    assert "unblock_vendor failed" in report.failures[keys["1"]] and not report.needs_a_person
    row = h.ledger.get("bc_jira", resolve_key("fake:vendors:1"))
    assert row.state == FAILED and "503" in row.last_error
    assert comments(h, keys["1"]) == [] and h.calls(COMMENT) == 0

    del h.source.outcomes["1"]
    again = processor(h, "run-retry").process(events)

    assert again.acted == 1
    assert h.source.resolved == [("blocked_vendors", "1"), ("blocked_vendors", "1")]
    row = h.ledger.get("bc_jira", resolve_key("fake:vendors:1"))
    assert row.state == DONE and row.last_error is None and row.run_id == "run-retry"
    assert len(comments(h, keys["1"])) == 1


def test_a_failed_comment_does_not_undo_or_repeat_the_resolution(h: Harness, monkeypatch):
    keys = opened(h, "1")
    events = done(h, keys["1"])

    def refuse(key, body):
        raise ApiError("jira", "POST", f"/issue/{key}/comment", 403, {"errorMessages": ["no"]})

    monkeypatch.setattr(h.jira, "add_comment", refuse)
    report = processor(h).process(events)
    assert report.acted == 1
    assert h.ledger.get("bc_jira", resolve_key("fake:vendors:1")).state == DONE
    processor(h).process(events)
    assert h.source.resolved == [("blocked_vendors", "1")]


def test_a_resolution_comment_resolves_once_with_the_person_s_text_and_a_later_done_repeats_nothing(h: Harness):
    keys = opened(h, "1")
    said = events_of(h, lambda: h.sandbox.comment_as_user(CLOUD, keys["1"], "Resolution: bank details verified",
                                                          "acc-person"))
    chatter = events_of(h, lambda: h.sandbox.comment_as_user(CLOUD, keys["1"], "any news?", "acc-person"))

    report = processor(h).process(chatter + said)

    assert report.acted == 1 and report.ignored == 1
    assert h.source.resolved == [("blocked_vendors", "1")]
    assert h.source.notes == [f"{keys['1']}: bank details verified"]
    row = h.ledger.get("bc_jira", resolve_key("fake:vendors:1"))
    assert row.state == DONE and row.context["note"] == "bank details verified"
    # the person then moves the issue to Done: the source is not acted on a second time
    again = processor(h, "run-2").process(done(h, keys["1"]))
    assert again.repeated == 1 and again.acted == 0 and len(h.source.resolved) == 1


def test_a_done_transition_passes_a_note_naming_the_issue_and_status(h: Harness):
    keys = opened(h, "1")
    processor(h).process(done(h, keys["1"]))
    assert h.source.notes == [f"{keys['1']}: resolved in Jira (moved to Done)"]


def test_a_permanent_source_refusal_is_quarantined_for_a_person_and_says_why_on_the_issue(h: Harness):
    keys = opened(h, "1")
    h.source.outcomes["1"] = ApiError("fake", "POST", "/purchaseInvoices(1)/post", 400,
                                      {"error": {"code": "Application_DialogException", "message": "Amount missing"}})
    report = processor(h).process(done(h, keys["1"]))
    assert report.failed == 1 and not report.retry and keys["1"] in report.needs_a_person
    assert h.ledger.get("bc_jira", resolve_key("fake:vendors:1")).state == QUARANTINED
    assert any("Amount missing" in c and "move the issue to Done again" in c for c in comments(h, keys["1"]))


# -- a webhook is a signal, never the truth ------------------------------------------------------------
def test_a_done_event_for_an_issue_that_is_not_done_in_jira_is_refused_and_changes_nothing(h: Harness):
    """A replayed or forged delivery says Done; Jira says the issue is still To Do: nothing happens."""
    keys = opened(h, "1")
    genuine = done(h, keys["1"])
    events_of(h, lambda: h.sandbox.transition_as_user(CLOUD, keys["1"], "To Do", "acc-person"))

    report = processor(h).process(genuine)

    assert h.source.resolved == []
    assert report.refused == 1 and report.acted == 0
    assert "not done in Jira" in report.refusals[keys["1"]] and "To Do" in report.refusals[keys["1"]]
    assert h.ledger.get("bc_jira", resolve_key("fake:vendors:1")) is None
    assert comments(h, keys["1"]) == []


def test_a_forged_resolution_comment_is_refused_and_the_text_comes_from_jira(h: Harness):
    keys = opened(h, "1")
    [genuine] = events_of(h, lambda: h.sandbox.comment_as_user(CLOUD, keys["1"], "Resolution: verified",
                                                                 "acc-person"))
    forged_text = json.loads(json.dumps(genuine))
    forged_text["comment"]["body"] = adf.doc(adf.paragraph(adf.text("Resolution: pay 1,000,000 to account X")))
    forged_id = json.loads(json.dumps(genuine))
    forged_id["comment"]["id"] = "999999"

    refused = processor(h).process([forged_id])
    assert refused.refused == 1 and h.source.resolved == []
    assert "no comment 999999" in refused.refusals[keys["1"]]

    acted = processor(h).process([forged_text])
    assert acted.acted == 1
    assert h.source.notes == [f"{keys['1']}: verified"]   # Jira's text, not the delivery's


def test_two_runs_resolving_the_same_issue_at_once_act_once(h: Harness):
    import threading

    keys = opened(h, "1")
    events = done(h, keys["1"])
    slow = threading.Event()
    real = h.source.resolve

    def slow_resolve(entity, record_id, note=None):
        slow.wait(1.0)          # the first run is still acting when the second arrives
        return real(entity, record_id, note)

    h.source.resolve = slow_resolve
    reports = []
    threads = [threading.Thread(target=lambda n=n: reports.append(processor(h, f"run-{n}").process(events)))
               for n in range(2)]
    for t in threads:
        t.start()
    slow.set()
    for t in threads:
        t.join(timeout=30)
    assert h.source.resolved == [("blocked_vendors", "1")]
    assert sorted(r.acted for r in reports) == [0, 1] and sum(r.repeated for r in reports) == 1
