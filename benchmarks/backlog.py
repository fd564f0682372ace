"""Backlog drain: 100,000 queued Business Central notifications drain to Jira issues with flat memory.

Two processes, so the sandboxes' memory (100k invoices, 100k issues) is never counted as the pipeline's:
- this process starts the sandboxes (Entra ID, BC, Atlassian auth, Jira) on loopback, runs the consent
  flow, seeds ``--rows`` distinct draft purchase invoices in the BC sandbox, and stores one BC
  notification per invoice in the product's inbox — in bulk through the receiver's own code path
  (``bc_dedupe_keys`` + ``bounded_key`` + ``Inbox.put_many``, one call per 100-entry delivery, the way
  the receiver stores a verified POST), *not* over HTTP: the receiver is not what this measures;
- a child process (``--drain``) loads the product's Dagster definitions on a fresh on-disk instance and
  ticks the BC inbox sensor with ``DagsterDriver`` (in-process runs, no added latency) until no run is
  requested; it samples its own current RSS (VmRSS) after every ~10% of the rows, and reports its
  peak (VmHWM). Only that process's memory is reported.

Then this process counts the issues in the Jira sandbox: exactly one per invoice.

Prints a report, then one JSON line
{rows, seconds, rows_per_s, peak_rss_mb, rss_samples_mb, issues_created, duplicates, ...}.
Exits non-zero when memory grows with the backlog — the last RSS sample minus the sample at ~10% of the
rows is ``--max-growth-mb`` (50) or more — or when an issue is missing or duplicated, or a run failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DELIVERY_SIZE = 100   # entries per BC notification POST (the sandbox's and BC's batch limit)


def proc_status_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak) of this process, in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backlog")
    parser.add_argument("--rows", type=int, default=100_000, help="inbox rows (= invoices = issues)")
    parser.add_argument("--max-growth-mb", type=float, default=50.0,
                        help="allowed RSS growth from the sample at ~10%% of the rows to the last sample")
    parser.add_argument("--samples", type=int, default=10, help="RSS samples over the drain")
    parser.add_argument("--drain", action="store_true", help=argparse.SUPPRESS)   # the child's role
    return parser.parse_args(argv)


# -- the parent: sandboxes, seed, inbox -------------------------------------------------------------------
def seed_invoices(stack, n: int) -> list[dict]:
    cid = stack.company_id
    return [stack.bc.add_purchase_invoice(cid, number=f"PI-K{i:06d}", status="Draft", vendorName="Backlog Vendor",
                                          vendorNumber="V90000", totalAmountIncludingTax=100.0 + i,
                                          currencyCode="USD")
            for i in range(n)]


def fill_inbox(db_url: str, company_id: str, invoices: list[dict], secret: str) -> int:
    """One 'created' notification per invoice, stored the way the receiver stores a verified BC POST."""
    from connector_pipelines.core.db import get_engine
    from connector_pipelines.core.inbox import Inbox
    from connector_pipelines.receiver.app import BC_SOURCE, Verified, bc_dedupe_keys, bounded_key

    inbox = Inbox(get_engine(db_url))
    stored = 0
    for start in range(0, len(invoices), DELIVERY_SIZE):
        entries = [{"subscriptionId": "backlog-bench-subscription", "clientState": secret,
                    "expirationDateTime": "2099-01-01T00:00:00Z",
                    "resource": f"/api/v2.0/companies({company_id})/purchaseInvoices({inv['id']})",
                    "changeType": "created", "lastModifiedDateTime": inv["lastModifiedDateTime"]}
                   for inv in invoices[start:start + DELIVERY_SIZE]]
        items = [(bounded_key(k), p) for k, p in bc_dedupe_keys(Verified(entries))]
        stored += inbox.put_many(BC_SOURCE, items).new
    return stored


def run(args: argparse.Namespace) -> dict:
    from connector_pipelines.core.db import get_engine
    from sandboxes.harness import scenario as sc
    from sandboxes.harness.stack import consent, start_stack

    workdir = Path(tempfile.mkdtemp(prefix="connector-bench-backlog-"))
    home = workdir / "dagster_home"
    home.mkdir()
    db_url = f"sqlite:///{workdir}/connector.sqlite"
    stack = start_stack(workdir / "stack", receiver=False, database_url=db_url)
    try:
        stack.apply_env()
        consent(stack)
        t = time.perf_counter()
        invoices = seed_invoices(stack, args.rows)
        seed_s = time.perf_counter() - t
        t = time.perf_counter()
        stored = fill_inbox(db_url, stack.company_id, invoices, stack.secrets["bc_client_state"])
        fill_s = time.perf_counter() - t
        get_engine(db_url).dispose()
        print(f"seeded {len(invoices)} BC invoices in {seed_s:.1f} s; stored {stored} inbox rows "
              f"(Inbox.put_many, {DELIVERY_SIZE} per delivery, not over HTTP) in {fill_s:.1f} s", flush=True)

        env = {**os.environ, **stack.env, "DAGSTER_HOME": str(home)}
        cmd = [sys.executable, "-m", "benchmarks.backlog", "--drain", "--rows", str(args.rows),
               "--samples", str(args.samples)]
        last = ""
        log = workdir / "drain.log"   # the drain's stderr (Dagster's run logs): shown only if it fails
        with open(log, "w") as err, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                                     cwd=Path(__file__).resolve().parents[1]) as child:
            assert child.stdout is not None
            for line in child.stdout:   # progress lines as they come; the JSON line is the drain's figures
                if line.startswith("{"):
                    last = line.rstrip()
                elif line.strip():
                    print(line.rstrip(), flush=True)
        if child.returncode != 0 or not last.startswith("{"):
            print("\n".join(log.read_text().splitlines()[-40:]), file=sys.stderr)
            raise SystemExit(f"the drain process failed (exit {child.returncode})")
        drained = json.loads(last)

        by_ext = sc.issues_by_external_id(stack)
        wanted = {f"bc:purchaseInvoices:{inv['id']}" for inv in invoices}
        created = sum(1 for k in wanted if by_ext.get(k))
        duplicates = sum(len(v) - 1 for v in by_ext.values() if len(v) > 1)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    samples = drained["rss_samples_mb"]
    growth = round(samples[-1] - samples[0], 1) if samples else 0.0
    return {"rows": args.rows, "inbox_rows": stored, "seconds": drained["seconds"],
            "rows_per_s": drained["rows_per_s"], "peak_rss_mb": drained["peak_rss_mb"], "rss_samples_mb": samples,
            "rss_growth_mb": growth, "issues_created": created, "missing": len(wanted) - created,
            "duplicates": duplicates, "runs": drained["runs"], "failed_runs": drained["failed_runs"]}


# -- the child: drain through the product's sensor and runs -------------------------------------------------
def drain(args: argparse.Namespace) -> dict:
    import dagster as dg

    from connector_pipelines.definitions import defs as load_defs
    from sandboxes.harness import scenario as sc
    from sandboxes.harness.dagster_driver import DagsterDriver

    logging.basicConfig(level=logging.WARNING)
    step = max(1, args.rows // max(1, args.samples))
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        driver = DagsterDriver(load_defs(), instance)
        rows = runs = failed = 0
        samples: list[float] = []
        next_sample = step
        parent = os.getppid()
        t0 = time.perf_counter()
        while True:
            if os.getppid() != parent:   # the benchmark (and its sandboxes) is gone: stop, do not retry forever
                raise SystemExit("the benchmark process died")
            tick = driver.tick(sc.BC_SENSOR, raise_on_error=False)
            if not tick.runs:
                break
            for result in tick.runs:
                runs += 1
                failed += not result.success
                rows += int(result.dagster_run.tags.get("connector/records", 0))
            del tick
            if rows >= next_sample:
                samples.append(round(proc_status_mb("VmRSS"), 1))
                print(f"  {rows:>7} rows  {time.perf_counter() - t0:7.1f} s  RSS {samples[-1]} MB", flush=True)
                while next_sample <= rows:
                    next_sample += step
        seconds = time.perf_counter() - t0
    return {"rows": rows, "runs": runs, "failed_runs": failed, "seconds": round(seconds, 1),
            "rows_per_s": round(rows / seconds, 1) if seconds else 0.0,
            "peak_rss_mb": round(proc_status_mb("VmHWM"), 1), "rss_samples_mb": samples}


def passed(out: dict, max_growth_mb: float) -> bool:
    return (out["rss_growth_mb"] < max_growth_mb and out["missing"] == 0 and out["duplicates"] == 0
            and out["failed_runs"] == 0 and out["issues_created"] == out["rows"])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.drain:
        profile = os.environ.get("BACKLOG_PROFILE")   # a path: cProfile the drain into it (development aid)
        if profile:
            import cProfile

            with cProfile.Profile() as prof:
                out = drain(args)
            prof.dump_stats(profile)
        else:
            out = drain(args)
        print(json.dumps(out), flush=True)
        return out
    logging.basicConfig(level=logging.WARNING)
    out = run(args)
    print(f"backlog: {out['inbox_rows']} inbox rows -> {out['issues_created']} issues in {out['seconds']} s "
          f"({out['rows_per_s']} rows/s) in {out['runs']} runs ({out['failed_runs']} failed); drain process RSS "
          f"samples {out['rss_samples_mb']} MB (growth {out['rss_growth_mb']} MB, limit {args.max_growth_mb}), "
          f"peak {out['peak_rss_mb']} MB; missing {out['missing']}, duplicates {out['duplicates']}")
    print(json.dumps({k: out[k] for k in ("rows", "seconds", "rows_per_s", "peak_rss_mb", "rss_samples_mb",
                                          "issues_created", "duplicates", "missing", "rss_growth_mb", "runs",
                                          "failed_runs")}), flush=True)
    out["passed"] = passed(out, args.max_growth_mb)
    return out


if __name__ == "__main__":
    args = parse_args(None)
    result = main()
    sys.exit(0 if args.drain or result.get("passed") else 1)
