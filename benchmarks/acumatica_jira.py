"""Acumatica ⇄ Jira throughput: 1,000 held bills -> Jira issues, polled on LastModifiedDateTime.

Every sandbox call costs ``--latency-ms`` (50 ms by default). The sandboxes and the receiver run in their own
process (``python -m sandboxes.harness --control``, driven over its loopback control channel), so this process
is the pipeline's alone. Two ways to do the same work against the same sandboxes:
- pipeline: the product as deployed — ``acumatica_jira__poll_job`` materializes the hourly window the bills
  were last modified in (bills, vendor payments and purchase orders: one paged ``$filter`` read per entity,
  500 rows a page, ``$select`` of the fields the templates name), then one JQL search and one bulk create
  per 50 through the ledger;
- naive: one bill at a time — read it by key (``GET /Bill/Bill/{nbr}``), search Jira for its key, create the issue.
Each pipeline run seeds 1,000 fresh bills in its own past hour (the sandbox's clock moved back 3, 2, 1 hours:
oldest first, as LastModifiedDateTime only moves forward) and polls that window; the naive loop runs once on ``--naive-records`` bills (records/s is a rate).

Prints the same figures as the other pairs (median, min–max), then one JSON line; exits non-zero when a target
of the Acumatica issue is missed (on the medians): speedup >= 10, Acumatica calls/record <= 0.1, Jira
calls/record <= 0.5, every bill one issue, 0 duplicates. Wall/floor and CPU are reported, not targets here.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime

from benchmarks.common import (
    bench_args,
    bench_world,
    bind,
    definition,
    measure_pipeline,
    naive_figures,
    print_summary,
    summarize,
    targets_met,
)

PAIR = "acumatica_jira"
ISSUE_PREFIX = "acu:Bill:"
MAX_ACUMATICA_CALLS_PER_RECORD = 0.1    # the issue's targets
MAX_JIRA_CALLS_PER_RECORD = 0.5
MIN_SPEEDUP = 10


def poll_windows(driver, moments: list[str]) -> int:
    """What the poll schedule does for the hour(s) the bills were modified in: one poll run per window."""
    keys = sorted({driver.current_partition(["acumatica", "bills_needing_attention"],
                                            datetime.fromisoformat(m)) for m in moments})
    for key in keys:
        result = driver.run_job(f"{PAIR}__poll_job", partition_key=key)
        assert result.success
    return len(keys)


def main(argv: list[str] | None = None) -> dict:
    args = bench_args("benchmarks.acumatica_jira", argv)
    logging.basicConfig(level=logging.WARNING)

    from connector_pipelines.core.db import get_engine
    from connector_pipelines.core.ledger import Ledger
    with bench_world("connector-bench-acu-") as world:
        control, driver, db_url = world.control, world.driver, world.db_url
        world.set_latency(args.latency_ms)

        # -- pipeline, --runs times on fresh bills, each in its own past hour --------------------------
        runs = []
        for n in range(args.runs):
            # Oldest first: Acumatica's LastModifiedDateTime only moves forward, so run n's hour is later than n-1's.
            seeded = control.call("acu_bills", prefix=f"B{n}", n=args.records, hours_ago=args.runs - n)
            moments = [seeded["first_modified"], seeded["last_modified"]]
            runs.append(measure_pipeline(world, args, records=args.records, deliver=None, sensor=None,
                                         issue_prefix=ISSUE_PREFIX, source="acumatica",
                                         profile=args.profile if n == 0 else None,
                                         work=lambda moments=moments: poll_windows(driver, moments)))
            print(f"run {n + 1}: {json.dumps(runs[-1])}", flush=True)

        # -- naive: one bill at a time with the product's own clients ---------------------------------
        from connector_pipelines.core import adf

        defn = definition(PAIR)
        resources = driver.defs.resources
        vault = bind(resources["connector_store"], world.closer).vault()
        acu_client = bind(resources["acumatica"], world.closer).client(vault)
        jira_client = bind(resources["jira"], world.closer).client(vault)
        ext_field = jira_client.resolve_fields(["ERP External ID"])["ERP External ID"]
        ledger = Ledger(get_engine(db_url))
        seeded = control.call("acu_bills", prefix="N", n=args.naive_records, hours_ago=args.runs + 2)
        before = control.stats()["calls"]
        t1 = time.perf_counter()
        for kind, number in seeded["keys"]:
            bill = acu_client.get("Bill", {"Type": kind, "ReferenceNbr": number})
            key = f"{ISSUE_PREFIX}{kind}/{number}"
            hits = jira_client.find_by_external_ids(ext_field, [key], defn.target.project_key, ["status"])
            if not hits.get(key):
                created_issue = jira_client.create_issue({
                    "project": {"key": defn.target.project_key}, "issuetype": {"name": "Task"},
                    "summary": f"Bill {bill['ReferenceNbr']} from {bill['Vendor']}", ext_field.id: key,
                    "description": adf.doc(adf.paragraph(f"Bill {bill['ReferenceNbr']}"))})
                ledger.mark_done("bench_naive", [{"source_key": key, "entity": "bill", "action": "issue",
                                                  "target_key": created_issue.key}], None)
        naive_s = time.perf_counter() - t1
        after = control.stats()["calls"]
        naive = naive_figures(records=args.naive_records, seconds=naive_s,
                              jira_calls=after["jira"] - before["jira"],
                              odata_calls=after["acumatica"] - before["acumatica"])

        result = summarize(args, runs, naive)
        print_summary(result, "Acumatica -> Jira", source_label="Acumatica")
        return result


if __name__ == "__main__":
    sys.exit(0 if targets_met(main(), max_jira_calls_per_record=MAX_JIRA_CALLS_PER_RECORD,
                              max_odata_calls_per_record=MAX_ACUMATICA_CALLS_PER_RECORD, min_speedup=MIN_SPEEDUP,
                              max_wall_over_floor=None, max_cpu_ms_per_record=None,
                              source_label="Acumatica") else 1)
