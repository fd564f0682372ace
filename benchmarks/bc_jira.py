"""BC ⇄ Jira throughput: 1,000 Business Central invoice notifications -> Jira issues.

Every sandbox call costs ``--latency-ms`` (50 ms by default, like a WAN round trip). The sandboxes and the
receiver run in their own process (``python -m sandboxes.harness --control``, driven over its loopback
control channel), so this process is the pipeline's alone: its CPU and peak RSS are the pipeline's. Two
ways to do the same work against the same sandboxes:
- pipeline: the product as deployed — BC posts the notifications to the receiver (the harness's work,
  timed apart) -> inbox -> sensor ticks -> batch runs through Dagster in this process (OData filter over
  many ids, one JQL search per 50 keys, Jira bulk create per 50);
- naive: one record at a time — read the invoice, search Jira for its key, create the issue.
The pipeline is measured ``--runs`` times (3), each on 1,000 fresh invoices; the naive loop runs once on a
smaller sample (``--naive-records``) because at 3 calls x 50 ms per record it would take minutes.

Per pipeline run: wall time, the latency floor (vendor calls x latency / the mean in-flight requests the
sandboxes saw) and their ratio, pipeline CPU ms per record, peak RSS, speedup vs naive, calls per record.
Prints median (min–max) of each, then one JSON line; exits non-zero when a target is missed (on the
medians): wall <= 1.5x floor, CPU <= 2 ms/record, speedup >= 20, Jira calls/record <= 0.042 and OData
calls/record <= 0.028 (no more than before), every record one issue, 0 duplicates.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from benchmarks.common import (
    bench_args,
    bench_world,
    definition,
    measure_pipeline,
    naive_clients,
    naive_figures,
    print_summary,
    register_webhooks,
    summarize,
    targets_met,
)

BC_SENSOR = "bc_jira__business_central_inbox_sensor"   # sandboxes.harness.scenario.BC_SENSOR
ISSUE_PREFIX = "bc:purchaseInvoices:"
MAX_JIRA_CALLS_PER_RECORD = 0.042   # README (2026-12-03): 1 JQL search + 1 bulk create per 50, plus set-up
MAX_ODATA_CALLS_PER_RECORD = 0.028  # README: one `id eq … or …` filter per 40 ids


def main(argv: list[str] | None = None) -> dict:
    args = bench_args("benchmarks.bc_jira", argv)
    logging.basicConfig(level=logging.WARNING)

    from connector_pipelines.core.db import get_engine
    from connector_pipelines.core.ledger import Ledger
    with bench_world("connector-bench-bc-") as world:
        control, driver, db_url = world.control, world.driver, world.db_url
        register_webhooks(driver)
        world.set_latency(args.latency_ms)

        # -- pipeline, --runs times on fresh invoices ---------------------------------------------
        runs = []
        for n in range(args.runs):
            control.call("bc_invoices", prefix=f"B{n}-", n=args.records)
            runs.append(measure_pipeline(world, args, records=args.records, deliver="bc_deliver",
                                         sensor=BC_SENSOR, issue_prefix=ISSUE_PREFIX, source="bc",
                                         profile=args.profile if n == 0 else None))
            print(f"run {n + 1}: {json.dumps(runs[-1])}", flush=True)

        # -- naive: one record at a time with the same clients ---------------------------------
        from connector_pipelines.core import adf

        defn = definition("bc_jira")
        bc_client, jira_client, ext_field = naive_clients(driver, "business_central", world.closer)
        ledger = Ledger(get_engine(db_url))
        seeded = control.call("bc_invoices", prefix="N", n=args.naive_records, vendor_name="Naive Vendor",
                              drop_notifications=True)
        cid = seeded["company_id"]
        before = control.stats()["calls"]
        t1 = time.perf_counter()
        for rid in seeded["ids"]:
            inv = bc_client.get(cid, "purchaseInvoices", rid)
            key = f"{ISSUE_PREFIX}{rid}"
            hits = jira_client.find_by_external_ids(ext_field, [key], defn.target.project_key, ["status"])
            if not hits.get(key):
                created_issue = jira_client.create_issue({
                    "project": {"key": defn.target.project_key}, "issuetype": {"name": "Task"},
                    "summary": f"Review purchase invoice {inv['number']}", ext_field.id: key,
                    "description": adf.doc(adf.paragraph(f"Invoice {inv['number']}"))})
                ledger.mark_done("bench_naive", [{"source_key": key, "entity": "invoice", "action": "issue",
                                                  "target_key": created_issue.key}], None)
        naive_s = time.perf_counter() - t1
        after = control.stats()["calls"]
        naive = naive_figures(records=args.naive_records, seconds=naive_s,
                              jira_calls=after["jira"] - before["jira"], odata_calls=after["bc"] - before["bc"])

        result = summarize(args, runs, naive)
        print_summary(result, "BC -> Jira")
        return result


if __name__ == "__main__":
    sys.exit(0 if targets_met(main(), max_jira_calls_per_record=MAX_JIRA_CALLS_PER_RECORD,
                              max_odata_calls_per_record=MAX_ODATA_CALLS_PER_RECORD) else 1)
