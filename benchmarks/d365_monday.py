"""F&O -> Monday.com throughput: 1,000 posted Dynamics 365 F&O vendor invoices -> items on the AP team's board.

Every sandbox call costs ``--latency-ms`` (50 ms by default). The sandboxes and the receiver run in their own
process (``python -m sandboxes.harness --control``, driven over its loopback control channel), so this process
is the pipeline's alone. Two ways to do the same work against the same sandboxes:
- pipeline: the product as deployed — F&O posts each invoice's VendorInvoicePostedBusinessEvent over HTTPS to
  the receiver (the harness's work, timed apart) -> inbox -> ``d365_monday``'s inbox sensor -> batch runs in
  this process (OData: an OR of key groups per batch of documents; Monday: ``items_page_by_column_values`` on
  the external-id column, then aliased ``create_item`` mutations, 25 per request), every call paced by the
  process's rate governor of the Monday token;
- naive: one invoice at a time with the product's own clients — read it over OData by key, look its external
  id up with ``items_by_column_values``, ``create_item``.
The pipeline is measured ``--runs`` times (3), each on ``--records`` fresh invoices; the naive loop runs once
on ``--naive-records`` invoices (records/s is a rate).

monday meters a personal token at 10,000,000 complexity points per sliding minute and charges 10,000 per
``create_item`` (its documented figure, the sandbox's default limits): 1,000 items plus their lookups cost
more than one minute's budget, so any run of 1,000 spans more than 60 s whatever the pipeline does — the
governor makes it wait for the window instead of being refused (``governor_wait_s``; 429s the sandbox served
are counted, none may fail a run; ``records_per_s_outside_governor`` is the rate of the run's time not spent
waiting). Before each measured phase the benchmark waits, untimed, until the token's
window has room for the phase's creates (``settle_s``): every run, and the naive loop, starts on an idle token.

Prints the figures the other pairs print (median, min–max), plus Monday complexity points and calls per record,
the governor's wait and the 429s served, then one JSON line; exits non-zero when a target of the issue is missed
(on the medians): speedup >= 10, F&O calls/record <= 0.1, every invoice one item in every run, 0 duplicates,
no failed run. Wall/floor and CPU are reported, not targets here.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from benchmarks.common import (
    bench_args,
    bench_world,
    bind,
    definition,
    drain,
    measure_pipeline,
    naive_figures,
    print_summary,
    summarize,
    targets_met,
)

PAIR = "d365_monday"
AREA = "usmf"
SENSOR = "d365_monday__finance_operations_inbox_sensor"
ENTITY = "vendor_invoice_items"
ITEM_PREFIX = f"fo:{ENTITY}:"
CREATE_ITEM_POINTS = 10_000          # monday's documented cost of one create_item
MIN_SPEEDUP = 10                     # the issue's targets
MAX_FO_CALLS_PER_RECORD = 0.1
MONDAY_SPREAD = ("complexity_per_record", "governor_wait_s", "records_per_s_outside_governor", "served_429",
                 "failed_runs", "settle_s")


def settle(control, points: int) -> float:
    """Wait until the Monday token's budget window has room for ``points`` (or is empty); returns the seconds."""
    t0 = time.perf_counter()
    while True:
        budget = control.call("monday_stats")
        used = budget["window_used"]
        if used == 0 or used + points <= budget["budget_per_minute"]:
            return round(time.perf_counter() - t0, 1)
        time.sleep(min(5.0, max(0.5, budget["window_reset_in_s"])))


def main(argv: list[str] | None = None) -> dict:
    args = bench_args(f"benchmarks.{PAIR}", argv)
    logging.basicConfig(level=logging.WARNING)

    from connector_pipelines.integrations.sources.finance_operations import FinanceOperationsSource
    from connector_pipelines.systems.monday import governor_for

    with bench_world("connector-bench-fo-monday-") as world:
        control, driver = world.control, world.driver
        governor = governor_for(world.world["env"]["CONNECTOR_MONDAY_TOKEN"])   # the runs' (one per token)

        def count_items() -> dict:
            return control.call("monday_items", prefix=ITEM_PREFIX)

        # -- pipeline: posted invoice -> item, --runs times on fresh invoices, each on an idle token ------------
        runs = []
        for n in range(args.runs):
            world.set_latency(0)   # seeding and posting are the harness's work
            seeded = control.call("fo_invoices", prefix=f"M{n}", n=args.records, area=AREA)
            control.call("fo_fire", docs=seeded["docs"], area=AREA)
            settle_s = settle(control, args.records * CREATE_ITEM_POINTS)
            world.set_latency(args.latency_ms)
            monday0, waited0, waits0 = control.call("monday_stats"), governor.waited_s, dict(governor.waits)
            failures: list = []
            run = measure_pipeline(world, args, records=args.records, deliver="fo_deliver", sensor=SENSOR,
                                   issue_prefix=ITEM_PREFIX, source="fo", target="monday",
                                   count_items=count_items, profile=args.profile if n == 0 else None,
                                   work=lambda failures=failures: drain(driver, SENSOR, failures))
            monday1 = control.call("monday_stats")
            wait_s = governor.waited_s - waited0
            run.update({
                "complexity_per_record": round((monday1["complexity_used"] - monday0["complexity_used"])
                                               / args.records, 1),
                "create_item_mutations": monday1["create_item"] - monday0["create_item"],
                "governor_wait_s": round(wait_s, 3),
                # the rate had the budget not held it back: the wait sits on the run's one critical path (the
                # board's mutations are serialised), so wall - wait is the pipeline's own work
                "records_per_s_outside_governor": round(args.records / max(run["wall_s"] - wait_s, 1e-3), 1),
                "governor_waits": {k: round(v - waits0.get(k, 0.0), 3) for k, v in governor.waits.items()
                                   if v - waits0.get(k, 0.0) > 0},
                "served_429": monday1["served_429"] - monday0["served_429"],
                "failed_runs": len(failures),
                "settle_s": settle_s,
            })
            print(f"run {n + 1}: {json.dumps(run)}", flush=True)
            runs.append(run)

        # -- naive: one invoice at a time with the product's own clients -------------------------------------------
        defn = definition(PAIR)
        entity = defn.entity(ENTITY)
        board = str(defn.target.boards[ENTITY])
        external_id_column = defn.target.external_id_column
        resources = driver.defs.resources
        vault = bind(resources["connector_store"], world.closer).vault()
        fo_client = bind(resources["finance_operations"], world.closer).client()
        monday = bind(resources["monday"], world.closer).client(vault)
        world.set_latency(0)
        seeded = control.call("fo_invoices", prefix="N", n=args.naive_records, area=AREA)
        control.call("fo_fire", docs=seeded["docs"], area=AREA)   # posted (their events stay queued, unread)
        settle(control, args.naive_records * CREATE_ITEM_POINTS)
        world.set_latency(args.latency_ms)
        link = FinanceOperationsSource(fo_client, AREA, world.world["env"]["CONNECTOR_FO_ENVIRONMENT_URL"]).record_url(
            entity, AREA)
        monday.board(board)   # the board's column types, which the codecs need (the pipeline's runs read it too)
        before = control.stats()["calls"]
        t1 = time.perf_counter()
        for _, header_reference in seeded["docs"]:
            inv = fo_client.get(entity.entity_set, {"dataAreaId": AREA, "HeaderReference": header_reference},
                                expand=[entity.lines.navigation])
            key = ITEM_PREFIX + FinanceOperationsSource.record_id(entity, AREA, inv)
            hits = monday.items_by_column_values(board, external_id_column, [key], columns=[external_id_column])
            if not hits.get(key):
                total = sum(float(line.get("Amount") or 0) for line in inv.get(entity.lines.navigation) or [])
                monday.create_item(board, f"{inv['InvoiceNumber']} {inv['VendorName']}", {
                    external_id_column: key, "vendor": f"{inv['VendorAccount']} {inv['VendorName']}",
                    "amount": total, "currency": inv["Currency"], "status": "Posted",
                    defn.target.link_column: {"url": link, "text": "Open in F&O"}})
        naive_s = time.perf_counter() - t1
        after = control.stats()["calls"]
        naive = naive_figures(records=len(seeded["docs"]), seconds=naive_s,
                              jira_calls=after["monday"] - before["monday"], odata_calls=after["fo"] - before["fo"])
        naive["naive_monday_calls_per_record"] = naive.pop("naive_jira_calls_per_record")

        result = summarize(args, runs, naive, extra_spread=MONDAY_SPREAD)
        result["speedup_outside_governor"] = round(
            result["records_per_s_outside_governor"] / naive["naive_records_per_s"], 1)
        result["served_429_total"] = sum(r["served_429"] for r in runs)
        result["failed_runs_total"] = sum(r["failed_runs"] for r in runs)
        def spread(key: str, unit: str = "") -> str:
            lo, hi = result[f"{key}_min_max"]
            return f"{result[key]}{unit} ({lo}–{hi})"

        note = (f"Monday: {spread('complexity_per_record')} complexity points/record; governor wait "
                f"{spread('governor_wait_s', ' s')} per run (outside it {spread('records_per_s_outside_governor')} "
                f"records/s, {result['speedup_outside_governor']}x the naive loop); 429s served {result['served_429_total']}, "
                f"failed runs {result['failed_runs_total']} (all runs); naive "
                f"{naive['naive_monday_calls_per_record']} Monday + {naive['naive_odata_calls_per_record']} "
                f"OData calls/record; idle-token wait before each run {spread('settle_s', ' s')} (not timed)")
        print_summary(result, "F&O -> Monday.com", source_label="F&O OData", target_label="Monday",
                      item_label="items", notes=(note,))
        return result


def passed(result: dict) -> bool:
    return targets_met(result, max_jira_calls_per_record=None, max_odata_calls_per_record=MAX_FO_CALLS_PER_RECORD,
                       min_speedup=MIN_SPEEDUP, max_wall_over_floor=None, max_cpu_ms_per_record=None,
                       source_label="F&O OData", target_label="Monday", item_label="item",
                       extra_checks={"no failed run": result["failed_runs_total"] == 0})


if __name__ == "__main__":
    sys.exit(0 if passed(main()) else 1)
