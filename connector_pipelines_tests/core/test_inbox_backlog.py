"""What every inbox sensor tick asks about the backlog (``Inbox.pending_after``) stays cheap however many
rows are queued: the count comes from the (source, seq) index alone and one row is read for its age —
never every unseen row (benchmarks/backlog.py drains 100,000)."""

from datetime import timedelta

import sqlalchemy as sa

from connector_pipelines.core.db import get_engine, inbox, utcnow
from connector_pipelines.core.inbox import Inbox


def test_pending_after_counts_on_the_index_and_reads_only_the_next_row(tmp_path):
    engine = get_engine(f"sqlite:///{tmp_path}/inbox.sqlite")
    box = Inbox(engine)
    box.put_many("business_central", [(f"k{i}", {"i": i}) for i in range(300)])
    box.put_many("finance_operations", [("other", {})])
    old = utcnow() - timedelta(hours=1)
    with engine.begin() as conn:   # the row after the cursor arrived an hour ago
        conn.execute(sa.update(inbox).where(inbox.c.dedupe_key == "k100").values(received_at=old))
    seq_of_k99 = box.read_after("business_central", 0, 100)[-1].seq

    statements: list[tuple[str, tuple]] = []

    def record(_conn, _cursor, statement, params, _context, _many):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, params))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        n, oldest = box.pending_after("business_central", seq_of_k99)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert (n, oldest) == (200, old)
    assert statements
    assert box.pending_after("business_central", 10**9) == (0, None)

    with engine.connect() as conn:
        for statement, params in statements:
            plan = " | ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params))
            # Either answered from the index without touching the rows, or one row read.
            assert "COVERING INDEX" in plan or "LIMIT" in statement.upper(), (statement, plan)
            assert "SCAN cp_inbox" not in plan.replace("COVERING INDEX", ""), plan
