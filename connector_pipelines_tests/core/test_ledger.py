"""The ledger's writes: one upsert per row shape, built once per dialect and reused (issue 10: building it cost
about a quarter of a 50-row write), with the same effect on the rows every time."""

from __future__ import annotations

from connector_pipelines.core import ledger as ledger_module
from connector_pipelines.core.db import get_engine
from connector_pipelines.core.ledger import DONE, FAILED, INTENT, Ledger


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"source_key": f"bc:{start + i}", "entity": "invoice", "action": "issue",
             "context": {"number": f"PI-{start + i}"}} for i in range(n)]


def test_a_reused_upsert_writes_each_time_what_the_caller_gave(tmp_path):
    ledger = Ledger(get_engine(f"sqlite:///{tmp_path}/ledger.sqlite"))
    ledger_module._UPSERTS.clear()
    for start in (0, 3):                                   # two batches: the second reuses the statements
        rows = _rows(3, start)
        ledger.record_intents("pair", rows, "run-1")
        ledger.mark_done("pair", [{**r, "target_key": f"FIN-{r['source_key'][3:]}", "target_url": "u",
                                   "fingerprint": "f1"} for r in rows], "run-1")
    shapes = dict(ledger_module._UPSERTS)
    assert len(shapes) == 2                                # an intent's shape and a done row's shape
    got = ledger.get_many("pair", [f"bc:{i}" for i in range(6)])
    assert {k: (e.state, e.target_key, e.attempts) for k, e in got.items()} == {
        f"bc:{i}": (DONE, f"FIN-{i}", 1) for i in range(6)}

    # A failure names no target_key: the issue already recorded stays; a counted attempt bumps, another does not.
    ledger.mark_failed("pair", [{**_rows(1)[0], "last_error": "boom"}], "run-2", count_attempt=True)
    ledger.record_intents("pair", _rows(1, 1), "run-2")
    ledger.mark_failed("pair", [{**_rows(1, 1)[0], "last_error": "boom"}], "run-2", state=INTENT)
    got = ledger.get_many("pair", ["bc:0", "bc:1"])
    assert (got["bc:0"].state, got["bc:0"].target_key, got["bc:0"].attempts, got["bc:0"].last_error) == (
        FAILED, "FIN-0", 2, "boom")
    assert (got["bc:1"].state, got["bc:1"].target_key, got["bc:1"].attempts) == (INTENT, "FIN-1", 2)
    assert len(ledger_module._UPSERTS) > len(shapes)       # new shapes, new statements; the old ones kept
    assert all(ledger_module._UPSERTS[k] is v for k, v in shapes.items())
