"""F&O -> Jira throughput: 1,000 Dynamics 365 F&O business events -> Jira issues.

Every sandbox call costs ``--latency-ms`` (50 ms by default). The events are a mix of the three
types d365_jira declares (vendor invoice posted, PO confirmed, PO rejected in workflow), each for its
own document. Two ways to do the same work, in one process against the same sandboxes:
- pipeline: the product as deployed — F&O posts each stub envelope over HTTPS to the receiver ->
  inbox (deduplicated on ControlNumber) -> sensor ticks -> batch runs through Dagster (OData: an OR of
  key groups per ~20-40 documents; Jira: one JQL search and one bulk create per 50);
- naive: one event at a time — read the document over OData by key, search Jira for its key, create.
The naive loop runs on a sample (``--naive-records``); records/s is a rate.

Prints a report, then one JSON line (same figures as benchmarks.bc_jira plus OData calls per record).
Exits non-zero when a target is missed: speedup >= 10, OData calls/record <= 0.1, Jira calls/record
<= 0.5, zero duplicates.
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

AREA = "usmf"


def seed(fo, n: int, prefix: str) -> list[tuple[str, str]]:
    """n documents, a third of each kind; returns (kind, document number) in creation order."""
    fo.add_vendor(AREA, VendorAccountNumber=f"{prefix}-V1", VendorOrganizationName="Bench Vendor", CurrencyCode="USD")
    docs = []
    for i in range(n):
        kind = ("invoice", "confirmed", "rejected")[i % 3]
        if kind == "invoice":
            inv = fo.add_vendor_invoice(AREA, VendorAccount=f"{prefix}-V1", VendorName="Bench Vendor",
                                        InvoiceNumber=f"{prefix}-INV-{i:05d}", Currency="USD",
                                        lines=[{"Amount": 100.0 + i}])
            docs.append((kind, inv["HeaderReference"]))
        else:
            po = fo.add_purchase_order(AREA, PurchaseOrderNumber=f"{prefix}-PO-{i:05d}", CurrencyCode="USD",
                                       OrderVendorAccountNumber=f"{prefix}-V1",
                                       DocumentApprovalStatus="Approved" if kind == "confirmed" else "InReview",
                                       lines=[{"LineAmount": 50.0 + i}])
            docs.append((kind, po["PurchaseOrderNumber"]))
    return docs


def fire(fo, docs: list[tuple[str, str]]) -> None:
    for kind, number in docs:
        if kind == "invoice":
            fo.post_vendor_invoice(AREA, number)
        elif kind == "confirmed":
            fo.confirm_purchase_order(AREA, number)
        else:
            fo.reject_purchase_order_workflow(AREA, number)


def main(argv: list[str] | None = None) -> dict:
    args = bench_args("benchmarks.fo_jira", argv)
    logging.basicConfig(level=logging.WARNING)

    from connector_pipelines.core import adf
    from connector_pipelines.integrations.sources.finance_operations import FinanceOperationsSource
    from sandboxes.harness import scenario as sc

    with bench_world("connector-bench-fo-") as world:
        stack, driver = world.stack, world.driver
        fo = stack.fo
        fo.retry_delay_s = 0
        docs = seed(fo, args.records, "B")
        world.set_latency(args.latency_ms)

        # -- pipeline: event -> issue -----------------------------------------------------------------
        jira_before, fo_before = stack.jira.calls_total, fo.calls_total
        t0 = time.perf_counter()
        fire(fo, docs)
        fo.deliver_events()
        runs = drain(driver, sc.FO_SENSOR)
        pipeline_s = time.perf_counter() - t0
        pipeline_rss = rss_mb()
        jira_calls = stack.jira.calls_total - jira_before
        fo_calls = fo.calls_total - fo_before
        found = sc.issues_by_external_id(stack)
        created = sum(1 for k in found if k and k.startswith("fo:"))

        # -- naive: one event at a time with the same clients --------------------------------------------
        defn = definition("d365_jira")
        fo_client, jira_client, ext_field = naive_clients(driver, "finance_operations", world.closer)
        entity = defn.entity("purchase_orders_confirmed")
        naive_docs = seed(fo, args.naive_records * 3, "N")
        naive = [number for kind, number in naive_docs if kind == "confirmed"][: args.naive_records]
        naive_fo_before, naive_jira_before = fo.calls_total, stack.jira.calls_total
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
        naive_fo_calls = fo.calls_total - naive_fo_before
        naive_jira_calls = stack.jira.calls_total - naive_jira_before

        result = figures(args, stack=stack, pipeline_s=pipeline_s, runs=runs, created=created,
                         pipeline_rss=pipeline_rss, jira_calls=jira_calls, odata_calls=fo_calls,
                         naive_records=len(naive), naive_s=naive_s, naive_jira_calls=naive_jira_calls,
                         naive_odata_calls=naive_fo_calls)
        print(f"pipeline: {args.records} F&O business events -> {created} issues in {pipeline_s:.1f} s "
              f"({result['records_per_s']} records/s) in {runs} runs; {jira_calls} Jira calls, "
              f"{fo_calls} F&O OData calls")
        print(f"naive:    {len(naive)} events in {naive_s:.1f} s ({result['naive_records_per_s']} records/s); "
              f"{naive_jira_calls} Jira calls, {naive_fo_calls} F&O OData calls")
        print_summary(result)
        return result


if __name__ == "__main__":
    sys.exit(0 if targets_met(main(), max_odata_calls_per_record=0.1) else 1)
