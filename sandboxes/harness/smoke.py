"""`make smoke`: the whole BC ⇄ Jira, F&O ⇄ Jira and Acumatica ⇄ Jira flows once, non-interactively, through a real Dagster instance on
SQLite (DAGSTER_HOME in a temporary folder) and the sandboxes on loopback ports.

Exits non-zero, naming what is missing, if any expected issue or write-back did not happen.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(workdir: Path) -> list[str]:
    """Run the scenario; returns the list of problems (empty = success)."""
    import dagster as dg

    from sandboxes.harness import scenario as sc
    from sandboxes.harness.dagster_driver import DagsterDriver, check_evaluations
    from sandboxes.harness.stack import consent, start_stack

    problems: list[str] = []
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    stack = start_stack(workdir / "stack", database_url=f"sqlite:///{workdir}/connector_pipelines.sqlite")
    try:
        stack.apply_env()
        consent(stack)
        from connector_pipelines.definitions import defs as load_defs

        with dg.DagsterInstance.get() as instance:
            driver = DagsterDriver(load_defs(), instance)
            step = lambda msg: print(f"smoke: {msg}", flush=True)
            step("registering BC subscriptions and the Jira webhook")
            sc.register_webhooks(driver)
            seeded = sc.seed_exceptions(stack)
            step("BC notifies; the receiver stores; the inbox sensor launches a batch run")
            stack.deliver_all()
            tick = driver.tick(sc.BC_SENSOR, raise_on_error=False)
            if not tick.runs or not all(r.success for r in tick.runs):
                problems.append(f"notification runs: {[r.success for r in tick.runs]}")
            step("the poll schedule materializes the current window")
            if not sc.poll_now(driver).success:
                problems.append("poll run failed")
            found = sc.issues_by_external_id(stack)
            for label, ext in sc.expected_external_ids(seeded).items():
                n = len(found.get(ext, []))
                if n != 1:
                    problems.append(f"{label}: expected exactly one Jira issue, found {n}")
            for label in ("posted", "fine_vendor", "fresh_po"):
                kind = {"posted": "purchaseInvoices", "fine_vendor": "vendors", "fresh_po": "purchaseOrders"}[label]
                if found.get(f"bc:{kind}:{seeded[label]['id']}"):
                    problems.append(f"{label} is not an exception but got an issue")
            if problems:
                return problems
            step("people move the invoice and vendor issues to Done in Jira")
            inv = found[sc.expected_external_ids(seeded)["invoice awaiting review"]][0]["key"]
            ven = found[sc.expected_external_ids(seeded)["blocked vendor"]][0]["key"]
            sc.transition_done(stack, inv)
            sc.transition_done(stack, ven)
            tick = driver.tick(sc.JIRA_SENSOR, raise_on_error=False)
            if not tick.runs or not all(r.success for r in tick.runs):
                problems.append(f"resolution runs: {[r.success for r in tick.runs]}")
            cid = stack.company_id
            invoice = stack.bc.get_record(cid, "purchaseInvoices", seeded["invoice"]["id"])
            vendor = stack.bc.get_record(cid, "vendors", seeded["blocked"]["id"])
            if invoice["status"] != "Open":
                problems.append(f"invoice not posted in BC (status {invoice['status']!r})")
            if vendor["blocked"] != " ":
                problems.append(f"vendor still blocked in BC ({vendor['blocked']!r})")
            step("a repeated Done webhook changes nothing")
            for _url, ident, status in list(stack.jira.delivery_log):
                if isinstance(status, int) and status < 300:
                    stack.jira.redeliver(ident)
            if driver.tick(sc.JIRA_SENSOR).runs:
                problems.append("a re-delivered Jira webhook launched another run")
            if stack.bc.action_calls("post") != 1:
                problems.append(f"invoice posted {stack.bc.action_calls('post')} times")
            problems += _finance_operations(stack, driver, step)
            problems += _acumatica(stack, driver, step)
            step("reconciliation checks")
            for pair in ("bc_jira", "d365_jira", "acumatica_jira"):
                checks = check_evaluations(driver.run_job(f"{pair}__reconcile_job", raise_on_error=False))
                # posted F&O invoices cannot be verified (no catch-up read exists): a documented warning
                failed = [str(c.asset_key.path[-1]) for c in checks
                          if not c.passed and "cannot_verify" not in c.metadata]
                if not checks or failed:
                    problems.append(f"{pair} reconciliation check failed: {failed}")
            runs = instance.get_runs()
            step(f"{len(runs)} runs in the instance at {home}; issues: "
                 + ", ".join(f"{i['key']}" for i in sc.issues(stack)))
    finally:
        stack.stop()
    return problems


def _finance_operations(stack, driver, step) -> list[str]:
    """F&O business events -> AP issues; Done on the rejected PO resubmits it to its workflow, once."""
    from sandboxes.harness import scenario as sc
    from sandboxes.harness.stack import LEGAL_ENTITY

    problems: list[str] = []
    step("F&O fires three business events; the receiver stores them; one batch run opens the issues")
    driver.run_job("d365_jira__jira_webhook_renewal_job")
    seeded = sc.seed_fo_documents(stack)
    sc.fire_fo_events(stack, seeded)
    stack.fo.deliver_events()
    stack.fo.redeliver()   # F&O re-sends: the inbox keeps one row per ControlNumber
    tick = driver.tick(sc.FO_SENSOR, raise_on_error=False)
    if len(tick.runs) != 1 or not tick.runs[0].success:
        problems.append(f"F&O notification runs: {[r.success for r in tick.runs]}")
    found = sc.issues_by_external_id(stack)
    for label, ext in sc.fo_external_ids(seeded).items():
        n = len(found.get(ext, []))
        if n != 1:
            problems.append(f"F&O {label}: expected exactly one Jira issue, found {n}")
    if problems:
        return problems
    step("a person moves the rejected-PO issue to Done: the order is resubmitted to its workflow")
    key = found[sc.fo_external_ids(seeded)["purchase order rejected in workflow"]][0]["key"]
    sc.transition_done(stack, key)
    tick = driver.tick(sc.FO_JIRA_SENSOR, raise_on_error=False)
    if not tick.runs or not all(r.success for r in tick.runs):
        problems.append(f"F&O resolution runs: {[r.success for r in tick.runs]}")
    po = stack.fo.get_record("PurchaseOrderHeadersV2", {"dataAreaId": LEGAL_ENTITY, "PurchaseOrderNumber":
                                                        seeded["rejected_po"]["PurchaseOrderNumber"]})
    if po["DocumentApprovalStatus"] != "InReview" or stack.fo.action_calls("SubmitToWorkflow") != 1:
        problems.append(f"rejected PO not resubmitted once (status {po['DocumentApprovalStatus']!r}, "
                        f"{stack.fo.action_calls('SubmitToWorkflow')} calls)")
    return problems


def _acumatica(stack, driver, step) -> list[str]:
    """Held Acumatica documents -> ACU issues by polling; Done on a bill taken off hold releases it, once."""
    from sandboxes.harness import scenario as sc

    problems: list[str] = []
    step("Acumatica: held, unbalanced and unapproved documents; the poll schedule materializes the window")
    driver.run_job("acumatica_jira__jira_webhook_renewal_job")
    seeded = sc.seed_acumatica_documents(stack)
    if not sc.poll_acumatica(driver).success:
        problems.append("Acumatica poll run failed")
    found = sc.issues_by_external_id(stack)
    for entity, name in (("Bill", "held_bill"), ("Bill", "unbalanced_bill"), ("Check", "held_check"),
                         ("PurchaseOrder", "held_order"), ("Bill", "balanced_bill")):
        n = len(found.get(sc.acumatica_external_id(entity, seeded[name]), []))
        if n != (0 if name == "balanced_bill" else 1):
            problems.append(f"Acumatica {name}: {n} Jira issue(s)")
    if problems:
        return problems
    step("the AP lead takes the bill off hold in Acumatica and moves its issue to Done: the bill is released")
    bill = seeded["held_bill"]
    keys = (bill["Type"], bill["ReferenceNbr"])
    stack.acumatica.update_document("Bill", keys, Hold=False)
    sc.transition_done(stack, found[sc.acumatica_external_id("Bill", bill)][0]["key"])
    tick = driver.tick(sc.ACU_JIRA_SENSOR, raise_on_error=False)
    if not tick.runs or not all(r.success for r in tick.runs):
        problems.append(f"Acumatica resolution runs: {[r.success for r in tick.runs]}")
    status = stack.acumatica.get_document("Bill", keys)["Status"]
    if status != "Open" or stack.acumatica.action_calls("Bill", "ReleaseBill") != 1:
        problems.append(f"bill not released once (status {status!r}, "
                        f"{stack.acumatica.action_calls('Bill', 'ReleaseBill')} calls)")
    if not sc.poll_acumatica(driver).success:   # the released bill's issue gets its one state comment
        problems.append("Acumatica poll run after the release failed")
    return problems


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="connector-smoke-"))
    try:
        problems = run(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if problems:
        print("SMOKE FAILED:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 1
    print("SMOKE OK: BC 3 exceptions -> 3 Jira issues; Done -> invoice posted, vendor unblocked; repeats ignored. "
          "F&O 3 business events (re-sent) -> 3 issues; Done -> rejected PO resubmitted once. "
          "Acumatica 4 held documents -> 4 issues; Done -> bill released once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
