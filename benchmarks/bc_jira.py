"""BC ⇄ Jira throughput: 1,000 Business Central invoice notifications -> Jira issues.

Every sandbox call costs ``--latency-ms`` (50 ms by default, like a WAN round trip). Two ways to do
the same work, measured in one process against the same sandboxes:
- pipeline: the product as deployed — receiver -> inbox -> sensor ticks -> batch runs through Dagster
  (OData filter over many ids, one JQL search per 50 keys, Jira bulk create per 50);
- naive: one record at a time — read the invoice, search Jira for its key, create the issue.
The naive loop runs on a smaller sample (``--naive-records``) because at 3 calls x 50 ms per record
it would take minutes; records/s is a rate, so the sample is enough.

Prints a report, then one JSON line:
{"records_per_s", "naive_records_per_s", "speedup", "jira_calls_per_record", "peak_rss_mb", "duplicates", ...}
"""

from __future__ import annotations

import logging
import sys
import time

from benchmarks.common import (
    bench_args,
    bench_world,
    definition,
    drain,
    figures,
    naive_clients,
    print_summary,
    rss_mb,
    targets_met,
)


def main(argv: list[str] | None = None) -> dict:
    args = bench_args("benchmarks.bc_jira", argv)
    logging.basicConfig(level=logging.WARNING)

    from connector_pipelines.core.db import get_engine
    from connector_pipelines.core.ledger import Ledger
    from sandboxes.harness import scenario as sc

    with bench_world("connector-bench-bc-") as world:
        stack, driver, db_url = world.stack, world.driver, world.db_url
        sc.register_webhooks(driver)
        world.set_latency(args.latency_ms)
        cid = stack.company_id

        # -- pipeline -----------------------------------------------------------------------
        for i in range(args.records):
            stack.bc.add_purchase_invoice(cid, number=f"PI-B{i:05d}", status="Draft", vendorName="Bench Vendor",
                                          vendorNumber="V90000", totalAmountIncludingTax=100.0 + i,
                                          currencyCode="USD")
        jira_before, bc_before = stack.jira.calls_total, stack.bc.calls_total
        t0 = time.perf_counter()
        stack.bc.deliver_notifications()
        runs = drain(driver, sc.BC_SENSOR)
        pipeline_s = time.perf_counter() - t0
        pipeline_rss = rss_mb()
        jira_calls = stack.jira.calls_total - jira_before
        bc_calls = stack.bc.calls_total - bc_before
        found = sc.issues_by_external_id(stack)
        created = sum(1 for k in found if k and k.startswith("bc:purchaseInvoices:"))

        # -- naive: one record at a time with the same clients ---------------------------------
        from connector_pipelines.core import adf

        defn = definition("bc_jira")
        bc_client, jira_client, ext_field = naive_clients(driver, "business_central", world.closer)
        ledger = Ledger(get_engine(db_url))
        naive_ids = [stack.bc.add_purchase_invoice(cid, number=f"PI-N{i:05d}", status="Draft",
                                                   vendorName="Naive Vendor",
                                                   totalAmountIncludingTax=5.0)["id"]
                     for i in range(args.naive_records)]
        stack.bc.drop_pending_notifications()
        naive_jira_before, naive_bc_before = stack.jira.calls_total, stack.bc.calls_total
        t1 = time.perf_counter()
        for rid in naive_ids:
            inv = bc_client.get(cid, "purchaseInvoices", rid)
            key = f"bc:purchaseInvoices:{rid}"
            hits = jira_client.find_by_external_ids(ext_field, [key], defn.target.project_key, ["status"])
            if not hits.get(key):
                created_issue = jira_client.create_issue({
                    "project": {"key": defn.target.project_key}, "issuetype": {"name": "Task"},
                    "summary": f"Review purchase invoice {inv['number']}", ext_field.id: key,
                    "description": adf.doc(adf.paragraph(f"Invoice {inv['number']}"))})
                ledger.mark_done("bench_naive", [{"source_key": key, "entity": "invoice", "action": "issue",
                                                  "target_key": created_issue.key}], None)
        naive_s = time.perf_counter() - t1
        naive_jira_calls = stack.jira.calls_total - naive_jira_before
        naive_bc_calls = stack.bc.calls_total - naive_bc_before

        result = figures(args, stack=stack, pipeline_s=pipeline_s, runs=runs, created=created,
                         pipeline_rss=pipeline_rss, jira_calls=jira_calls, odata_calls=bc_calls,
                         naive_records=args.naive_records, naive_s=naive_s, naive_jira_calls=naive_jira_calls,
                         naive_odata_calls=naive_bc_calls)
        print(f"pipeline: {args.records} notifications -> {created} issues in {pipeline_s:.1f} s "
              f"({result['records_per_s']} records/s) in {runs} runs; {jira_calls} Jira calls, "
              f"{bc_calls} BC calls")
        print(f"naive:    {args.naive_records} records in {naive_s:.1f} s ({result['naive_records_per_s']} "
              f"records/s); {naive_jira_calls} Jira calls, {naive_bc_calls} BC calls")
        print_summary(result)
        return result


if __name__ == "__main__":
    sys.exit(0 if targets_met(main()) else 1)
