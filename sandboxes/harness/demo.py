"""`make demo`: sandboxes + receiver + `dagster dev` on SQLite (DAGSTER_HOME=.dagster_home), demo data,
and the main job run once; then the daemon's sensors and schedules take over.

Open the printed UI address: the bc_jira assets, sensors, schedules and runs are there; the Jira
sandbox's people page (also printed) lets you move issues to Done and watch BC being updated.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m sandboxes.harness.demo")
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    parser.add_argument("--exit-after", type=float, default=0, help="stop after N seconds (0 = until Ctrl-C)")
    parser.add_argument("--new-invoice-every", type=float, default=60.0, help="seconds; 0 = never")
    args = parser.parse_args()

    home = Path(os.environ.get("DAGSTER_HOME") or REPO / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)

    import dagster as dg

    from sandboxes.harness import scenario as sc
    from sandboxes.harness.dagster_driver import DagsterDriver
    from sandboxes.harness.stack import consent, start_stack

    workdir = REPO / ".demo"
    stack = start_stack(workdir, database_url=f"sqlite:///{home / 'connector_pipelines.sqlite'}")
    stack.apply_env()
    consent(stack)
    from connector_pipelines.definitions import defs as load_defs

    with dg.DagsterInstance.get() as instance:
        driver = DagsterDriver(load_defs(), instance)
        print("demo: registering BC subscriptions and the Jira webhook (renewal jobs)", flush=True)
        sc.register_webhooks(driver)
        seeded = sc.seed_exceptions(stack)
        stack.deliver_all()
        print("demo: running the main job (bc_jira__poll_job, current window)", flush=True)
        result = sc.poll_now(driver)
        print(f"demo: poll run {result.run_id}: {'success' if result.success else 'FAILED'}", flush=True)
        driver.run_job("d365_jira__jira_webhook_renewal_job")
        fo_seeded = sc.seed_fo_documents(stack)
        sc.fire_fo_events(stack, fo_seeded)   # delivered by the F&O sandbox's delivery loop below
        driver.run_job("acumatica_jira__jira_webhook_renewal_job")
        sc.seed_acumatica_documents(stack)
        print("demo: polling Acumatica (acumatica_jira__poll_job, current window)", flush=True)
        sc.poll_acumatica(driver)
    stack.bc.start_auto_delivery(3.0)
    stack.fo.start_auto_delivery(2.0)
    stack.jira.start_auto_delivery(1.0)
    stack.acumatica.start_auto_delivery(2.0)

    env = {**os.environ, **stack.env}
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-p", str(args.port),
           "-h", "127.0.0.1"]
    # A process group of its own, so we can stop dagster dev (webserver + daemon + code server) by PID.
    dev = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    print(f"""
demo: Dagster UI            http://127.0.0.1:{args.port}   (asset groups bc_jira, d365_jira and acumatica_jira; sensors run every 5 s)
demo: Jira sandbox (people) {stack.urls['jira']}/_sandbox/   (move an issue to Done -> BC / F&O is updated)
demo: receiver              {stack.urls['receiver']} (F&O business events: {stack.urls['receiver_tls']})
demo: {len(seeded)} BC records seeded (a blocked vendor, a draft invoice, a stuck PO and three healthy ones)
demo: F&O fired 3 business events (invoice posted, PO confirmed, PO rejected in workflow) -> Jira project AP
demo: Acumatica holds 2 bills (one unbalanced), a vendor payment and a purchase order -> Jira project ACU
demo: Ctrl-C stops everything.
""", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    n = 0
    last = time.monotonic()
    while not stop.wait(1.0):
        if dev.poll() is not None:
            print(f"demo: dagster dev exited with {dev.returncode}", file=sys.stderr)
            break
        if args.exit_after and time.monotonic() - started > args.exit_after:
            break
        if args.new_invoice_every and time.monotonic() - last > args.new_invoice_every:
            n += 1
            last = time.monotonic()
            inv = stack.bc.add_purchase_invoice(stack.company_id, number=f"PI-2{n:05d}", status="Draft",
                                                vendorName="Northwind Traders", totalAmountIncludingTax=250.0 * n,
                                                currencyCode="USD")
            print(f"demo: new draft invoice {inv['number']} in BC", flush=True)
    if dev.poll() is None:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
    stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
