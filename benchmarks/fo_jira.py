"""F&O -> Jira throughput: 1,000 Dynamics 365 F&O business events -> Jira issues.

Every sandbox call costs ``--latency-ms`` (50 ms by default). The events are a mix of the three
types d365_jira declares (vendor invoice posted, PO confirmed, PO rejected in workflow), each for its
own document. The sandboxes and the receiver run in their own process (``python -m sandboxes.harness
--control``, driven over its loopback control channel), so this process is the pipeline's alone. Two ways
to do the same work against the same sandboxes:
- pipeline: the product as deployed — F&O posts each stub envelope over HTTPS to the receiver (the
  harness's work, timed apart) -> inbox (deduplicated on ControlNumber) -> sensor ticks -> batch runs
  through Dagster in this process (OData: an OR of key groups per ~20-40 documents; Jira: one JQL search
  and one bulk create per 50);
- naive: one event at a time — read the document over OData by key, search Jira for its key, create.
The pipeline is measured ``--runs`` times (3), each on 1,000 fresh documents; the naive loop runs once on
a sample (``--naive-records``); records/s is a rate.

Prints the same figures as benchmarks.bc_jira (median, min–max), then one JSON line; exits non-zero when
a target is missed (on the medians): wall <= 1.5x the latency floor, pipeline CPU <= 2 ms/record,
speedup >= 20, Jira calls/record <= 0.050 and OData calls/record <= 0.036 (no more than before), every
record one issue, 0 duplicates.
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
    summarize,
    targets_met,
)

AREA = "usmf"
FO_SENSOR = "d365_jira__finance_operations_inbox_sensor"   # sandboxes.harness.scenario.FO_SENSOR
ISSUE_PREFIX = "fo:"
MAX_JIRA_CALLS_PER_RECORD = 0.050   # README (2026-12-03): per entity 1 JQL search + 1 bulk create per <=50
MAX_ODATA_CALLS_PER_RECORD = 0.036  # README: one $filter per ~28 documents


def main(argv: list[str] | None = None) -> dict:
    args = bench_args("benchmarks.fo_jira", argv)
    logging.basicConfig(level=logging.WARNING)

    from connector_pipelines.core import adf
    from connector_pipelines.integrations.sources.finance_operations import FinanceOperationsSource

    with bench_world("connector-bench-fo-") as world:
        control, driver = world.control, world.driver

        # -- pipeline: event -> issue, --runs times on fresh documents ----------------------------------
        runs = []
        for n in range(args.runs):
            world.set_latency(0)   # seeding and firing are the harness's work
            docs = control.call("fo_seed", prefix=f"B{n}", n=args.records, area=AREA)["docs"]
            control.call("fo_fire", docs=docs, area=AREA)
            world.set_latency(args.latency_ms)
            runs.append(measure_pipeline(world, args, records=args.records, deliver="fo_deliver",
                                         sensor=FO_SENSOR, issue_prefix=ISSUE_PREFIX, source="fo",
                                         profile=args.profile if n == 0 else None))
            print(f"run {n + 1}: {json.dumps(runs[-1])}", flush=True)

        # -- naive: one event at a time with the same clients --------------------------------------------
        defn = definition("d365_jira")
        fo_client, jira_client, ext_field = naive_clients(driver, "finance_operations", world.closer)
        entity = defn.entity("purchase_orders_confirmed")
        world.set_latency(0)
        naive_docs = control.call("fo_seed", prefix="N", n=args.naive_records * 3, area=AREA)["docs"]
        world.set_latency(args.latency_ms)
        naive = [number for kind, number in naive_docs if kind == "confirmed"][: args.naive_records]
        before = control.stats()["calls"]
        t1 = time.perf_counter()
        for number in naive:
            po = fo_client.get("PurchaseOrderHeadersV2", {"dataAreaId": AREA, "PurchaseOrderNumber": number},
                               expand=["PurchaseOrderLinesV2"])
            key = "fo:purchase_orders_confirmed:" + FinanceOperationsSource.record_id(entity, AREA, po)
            hits = jira_client.find_by_external_ids(ext_field, [key], "AP", ["status"])
            if not hits.get(key):
                jira_client.create_issue({
                    "project": {"key": "AP"}, "issuetype": {"name": "Task"},
                    "summary": f"Confirmed purchase order {number}", ext_field.id: key,
                    "description": adf.doc(adf.paragraph(f"Purchase order {number}"))})
        naive_s = time.perf_counter() - t1
        after = control.stats()["calls"]
        naive_figs = naive_figures(records=len(naive), seconds=naive_s, jira_calls=after["jira"] - before["jira"],
                                   odata_calls=after["fo"] - before["fo"])

        result = summarize(args, runs, naive_figs)
        print_summary(result, "F&O -> Jira")
        return result


if __name__ == "__main__":
    sys.exit(0 if targets_met(main(), max_jira_calls_per_record=MAX_JIRA_CALLS_PER_RECORD,
                              max_odata_calls_per_record=MAX_ODATA_CALLS_PER_RECORD) else 1)
