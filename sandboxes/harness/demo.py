"""`make demo`: sandboxes + receiver + `dagster dev` on SQLite (DAGSTER_HOME=.dagster_home, fresh each start), demo
data, and the first ticks of the poll and mirror schedules; then the daemon's sensors and schedules take over.

Start-up runs in parallel: the sandbox world is planned first (its ports and secrets, so the product's environment is
known: ``plan.py``) and `dagster dev` launched with it at once; the sandboxes, the receiver and the Jira consent come
up, the webhooks are registered and the demo data seeded, and the main job (the BC poll) runs, while its code
server, webserver and daemon start. The other first ticks (the Acumatica poll, the F&O -> monday.com mirror) are
launched through the UI's API once it answers.

The banner — the Dagster UI and every sandbox's people page (Jira issues with the comments the connector wrote back,
BC / F&O / Acumatica documents with their state and history, monday.com boards) — is printed once the UI really
answers (``/server_info`` 200), written to ``<workdir>/banner.txt``, and printed again every ``--banner-every``
seconds once it has scrolled away (``--banner-after-lines`` printed since). The terminal stays quiet: `dagster
dev`'s own output goes to ``<workdir>/dagster.log`` (only its warnings and errors reach the terminal, Dagster's
beta and "superseded" notices aside), the demo's in-process runs log warnings only, and one line per finished run
says what the daemon did.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
T0 = time.monotonic()

# A `dagster dev` log record starts with its timestamp; python warnings start with "<file>.py:<line>: <Category>:".
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{4} - [\w.-]+ - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - ")
_PY_WARNING = re.compile(r"^\S+\.py:\d+: (\w+Warning): ")
# What is noise to a person watching the demo (it stays in the log file).
DEMO_MARKER = ".connector-demo"   # in a DAGSTER_HOME the demo made: the next demo may empty it
FIRST_TICK = "demo/first_tick"     # the runs the demo launches through the UI's API once it answers
_NOISE = re.compile(r"BetaWarning|PreviewWarning|SupersessionWarning|No cursor for event type|"
                    r"Found a dagster instance configuration value")


class ConsoleFilter:
    """Which of `dagster dev`'s lines reach the terminal: warnings and errors (not Dagster's beta / superseded
    notices) with their continuation lines (tracebacks); never the INFO chatter of sensor ticks."""

    def __init__(self) -> None:
        self._showing = True

    def keep(self, line: str) -> bool:
        plain = _ANSI.sub("", line)
        record = _RECORD.match(plain)
        warning = _PY_WARNING.match(plain)
        if record:
            self._showing = record.group(1) in ("WARNING", "ERROR", "CRITICAL") and not _NOISE.search(plain)
        elif warning:
            self._showing = not _NOISE.search(plain)
        return self._showing and bool(plain.strip())


class Console:
    """The demo's terminal: its own lines, `dagster dev`'s filtered ones; counts what was printed since a mark.
    Once ``closing`` is set (Ctrl-C), `dagster dev`'s lines stay in its log: stopping it is not news."""

    def __init__(self, out: IO[str] = sys.stdout) -> None:
        self.out = out
        self._lock = threading.Lock()
        self.printed = 0
        self.closing = False

    def print(self, text: str) -> None:
        with self._lock:
            self.out.write(text if text.endswith("\n") else text + "\n")
            self.out.flush()
            self.printed += text.count("\n") + (not text.endswith("\n"))

    def say(self, message: str) -> None:
        self.print(f"demo (+{time.monotonic() - T0:5.1f} s): {message}")


def pump_output(stream: IO[str], log: IO[str], console: Console, keep: Callable[[str], bool],
                instance_ready: threading.Event | None = None) -> None:
    """Every line to the log file; the ones ``keep`` wants to the terminal. ``instance_ready`` is set once dagster
    dev has its instance (it logs "Launching Dagster services" right after creating the storage)."""
    for line in stream:
        log.write(line)
        log.flush()
        if instance_ready is not None and "Launching Dagster services" in line:
            instance_ready.set()
        if keep(line) and not console.closing:
            console.print(line)


def answers(url: str) -> bool:
    """One try: does ``url`` answer 200 now?"""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until_answers(url: str, alive: Callable[[], bool], timeout_s: float, interval_s: float = 0.25) -> bool:
    """Poll ``url`` until it answers 200 (True); False when ``alive()`` turns false or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            return False
        if answers(url):
            return True
        time.sleep(interval_s)
    return False


def banner(ui_url: str, pages: dict[str, str], receiver: str, files: dict[str, Path], started_s: float) -> str:
    """What to open: the UI, each people page, where the full log and this banner are kept."""
    width = max(len(k) for k in ["Dagster UI", *pages, "receiver"]) + 2
    rule = "=" * 100
    lines = [rule, f" connector_pipelines demo: up in {started_s:.0f} s — open these pages", rule,
             f" {'Dagster UI':<{width}}{ui_url}   (assets, runs, sensors; asset groups per pair)"]
    lines += [f" {name:<{width}}{url}" for name, url in pages.items()]
    lines += [f" {'receiver':<{width}}{receiver}",
              " Seeded: BC a blocked vendor, a draft invoice, a stuck PO (project FIN); F&O 3 business events (AP, and",
              " the monday.com boards); Acumatica 2 bills, a payment, a PO (ACU); a new draft BC invoice every minute.",
              " Move an issue to Done on the Jira page: the connector acts in the ERP (see its document page) and",
              " writes the outcome back as a comment on the issue. Every link in issues and items opens a page here.",
              f" To practise: F&O announced {PRACTICE_PO}, which it cannot return: its hour of",
              " finance_operations/purchase_orders_confirmed fails (Partitions tab, red). The order appears in F&O a",
              " few minutes in (a line says when): re-run the failed window and watch it turn green (docs/operations.md).",
              f" Full log: {files['log']}   This banner: {files['banner']}   Ctrl-C stops everything.", rule]
    return "\n".join(lines) + "\n"


class RunReporter:
    """One line per run that finished since the last look (what the daemon's sensors and schedules did)."""

    def __init__(self, instance: Any, since: datetime) -> None:
        self.instance = instance
        self.since = since
        self.seen: set[str] = set()

    def lines(self) -> list[str]:
        import dagster as dg

        done = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
        records = self.instance.get_run_records(filters=dg.RunsFilter(updated_after=self.since, statuses=list(done)),
                                                limit=100)
        out = []
        for rec in sorted(records, key=lambda r: r.update_timestamp):
            run = rec.dagster_run
            if run.run_id in self.seen:
                continue
            self.seen.add(run.run_id)
            tags = run.tags
            why = (tags.get("dagster/sensor_name") or tags.get("dagster/schedule_name") or tags.get(FIRST_TICK)
                   or ("a retry" if tags.get("dagster/parent_run_id") else "launched from the UI"))
            n = tags.get("connector/records")
            records_tag = f", {n} record{'' if n == '1' else 's'}" if n else ""
            mark = "ok" if run.status == dg.DagsterRunStatus.SUCCESS else run.status.value
            out.append(f"run {run.job_name} {mark} ({why}{records_tag}) {run.run_id[:8]}")
        return out


PRACTICE_PO = "PO-PRACTICE"


def add_practice_order(stack: Any) -> None:
    """The order F&O announced at the start appears: the failed window it broke can be re-run and turns green."""
    from sandboxes.harness import scenario as sc

    stack.fo.add_purchase_order(sc.LEGAL_ENTITY, PurchaseOrderNumber=PRACTICE_PO, PurchaseOrderName="Practice order",
                                OrderVendorAccountNumber="US-101", CurrencyCode="USD",
                                DocumentApprovalStatus="Confirmed", lines=[{"LineAmount": 10.0}])


def seed(stack: Any, driver: Any, console: Console) -> None:
    """What must be there before anyone looks: the webhooks (the renewal jobs' first runs) and the demo data, its
    notifications, business events and push notifications on their way to the receiver (the daemon's sensors turn
    them into issues and items)."""
    from sandboxes.harness import scenario as sc

    console.say("registering BC subscriptions, the Jira and monday.com webhooks (renewal jobs)")
    sc.register_webhooks(driver)
    for pair in ("d365_jira", "acumatica_jira"):
        driver.run_job(f"{pair}__jira_webhook_renewal_job")
    driver.run_job("d365_monday__monday_webhook_renewal_job")
    sc.seed_exceptions(stack)
    fo_seeded = sc.seed_fo_documents(stack)
    sc.fire_fo_events(stack, fo_seeded)
    # A window to practise re-running on: F&O announces an order it cannot return yet (added later: main loop)
    stack.fo.fire("PurchaseOrderConfirmedBusinessEvent", sc.LEGAL_ENTITY, PurchaseOrderNumber=PRACTICE_PO,
                  PurchaseJournal="PJ-PRACTICE", VendorAccount="US-101")
    sc.seed_acumatica_documents(stack)
    stack.deliver_all()
    console.say("BC, F&O and Acumatica documents seeded; their notifications delivered to the receiver")


def first_ticks(driver: Any) -> list[tuple[str, str, str]]:
    """What the poll and mirror schedules do on their first ticks: (job, partition, what) — the BC poll of the current
    window (the main job), the Acumatica poll and F&O's nightly mirror onto the monday.com boards."""
    from sandboxes.harness import scenario as sc

    return [("bc_jira__poll_job", driver.current_partition(["business_central", "stuck_purchase_orders"]),
             "the BC poll's first tick"),
            ("acumatica_jira__poll_job", driver.current_partition(["acumatica", "bills_needing_attention"]),
             "the Acumatica poll's first tick"),
            ("d365_monday__mirror_job", sc.LEGAL_ENTITY, "the F&O -> monday.com mirror's first tick"),
            ("d365_jira__poll_job", driver.current_partition(["finance_operations", "purchase_orders_confirmed"]),
             f"the F&O window to practise on: fails while {PRACTICE_PO} is missing in F&O")]


def run_while_ui_starts(ticks: list[tuple[str, str, str]], driver: Any, ui: str, console: Console
                        ) -> list[tuple[str, str, str]]:
    """Run the main job (the first tick: the BC poll, a few seconds) in this process if the UI is still starting
    (that time is free); returns the ticks left, for ``launch_through_ui`` once it answers (a longer one started
    here would hold the banner back)."""
    left = list(ticks)
    if left and not answers(f"{ui}/server_info"):
        job, partition, what = left.pop(0)
        result = off_main_thread(lambda: driver.run_job(job, partition_key=partition, raise_on_error=False))
        console.say(f"{what} ({job}, {partition}): {'ok' if result.success else 'FAILED'}")
    return left


def launch_through_ui(ticks: list[tuple[str, str, str]], port: int, console: Console) -> None:
    """Launch runs through the UI's API (runs of dagster dev, as a person's Materialize would be; the run lines
    report them as they finish)."""
    from dagster_graphql import DagsterGraphQLClient

    client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=60)
    for job, partition, what in ticks:
        try:
            client.submit_job_execution(job, tags={"dagster/partition": partition, FIRST_TICK: what})
        except Exception as exc:   # noqa: BLE001 - the demo goes on: the schedules run them later anyway
            console.print(f"demo: could not launch {job} ({type(exc).__name__}: {exc})")


def start_dagster_dev(port: int, env: dict[str, str], log_path: Path, console: Console,
                      instance_ready: threading.Event | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-p", str(port),
           "-h", "127.0.0.1"]
    # A process group of its own, so we can stop dagster dev (webserver + daemon + code server) by PID.
    dev = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, bufsize=1)
    log = log_path.open("w", encoding="utf-8")
    threading.Thread(target=pump_output, args=(dev.stdout, log, console, ConsoleFilter().keep, instance_ready),
                     name="dagster-dev-output", daemon=True).start()
    return dev


def stop_dagster_dev(dev: subprocess.Popen) -> None:
    if dev.poll() is None:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)


STOPPING = threading.Event()   # Ctrl-C or SIGTERM came (an in-process run swallows the KeyboardInterrupt as its failure)


def _interrupt(*_: object) -> None:
    STOPPING.set()
    raise KeyboardInterrupt


def off_main_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a worker thread, the main thread waiting: Dagster's in-process execution takes Ctrl-C / SIGTERM
    over on the main thread (and drops it when the run ends first), so the demo runs its runs beside it."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:   # noqa: BLE001 - handed to the main thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="demo-in-process-runs", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def fresh_home(home: Path, default: Path) -> None:
    """The sandboxes start empty each time, and so does the demo's instance (runs, sensor cursors, the connector
    database with its vault, ledger and inbox): kept, they would describe a world that is gone (a sensor's cursor past
    inbox rows the new database numbers again, a vault key that changed). Only the repo's .dagster_home or a home an
    earlier demo made (its marker file) is emptied; any other DAGSTER_HOME with content is refused."""
    if home.exists() and any(home.iterdir()):
        if home != default and not (home / DEMO_MARKER).exists():
            raise SystemExit(f"DAGSTER_HOME={home} holds another Dagster instance; the demo starts a fresh one each "
                             f"time: unset DAGSTER_HOME (the demo uses {default}) or point it at an empty folder")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text("made by `make demo` (sandboxes/harness/demo.py): emptied at its next start\n")


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandboxes.harness.demo")
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    parser.add_argument("--exit-after", type=float, default=0, help="stop after N seconds (0 = until Ctrl-C)")
    parser.add_argument("--new-invoice-every", type=float, default=60.0, help="seconds; 0 = never")
    parser.add_argument("--practice-fix-after", type=float, default=180.0,
                        help=f"seconds until {PRACTICE_PO} appears in F&O, so its failed window can be re-run; 0 = never")
    parser.add_argument("--banner-every", type=float, default=300.0,
                        help="print the banner again after N seconds once it has scrolled away (0 = never)")
    parser.add_argument("--banner-after-lines", type=int, default=20,
                        help="... scrolled away: this many lines printed since")
    parser.add_argument("--ui-timeout", type=float, default=600.0, help="seconds to wait for the Dagster UI")
    parser.add_argument("--workdir", type=Path, default=REPO / ".demo", help="TLS files, the log and the banner")
    args = parser.parse_args(list(argv) if argv is not None else None)
    console = Console()
    # Ctrl-C or SIGTERM stops the demo whenever it comes: dagster dev (a session of its own) is stopped too
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    home = Path(os.environ.get("DAGSTER_HOME") or REPO / ".dagster_home").resolve()
    fresh_home(home, (REPO / ".dagster_home").resolve())
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    files = {"log": workdir / "dagster.log", "banner": workdir / "banner.txt"}
    files["banner"].unlink(missing_ok=True)

    # The world's ports and secrets first: dagster dev reads the product's environment when it starts.
    from sandboxes.harness.plan import plan_stack

    plan = plan_stack(workdir)
    database_url = f"sqlite:///{home / 'connector_pipelines.sqlite'}"
    os.environ.update(plan.env(database_url))      # this process (the receiver, the in-process runs) reads it too
    # The pairs' hourly windows start at the hour the demo starts: its partition bars hold its own hours, not a
    # month of windows since the definitions' go-live that never ran ("Failed and missing" = what really is).
    os.environ.setdefault("CONNECTOR_GO_LIVE", datetime.now(UTC).strftime("%Y-%m-%d-%H:00"))
    instance_ready = threading.Event()
    dev = start_dagster_dev(args.port, dict(os.environ), files["log"], console, instance_ready)
    console.say(f"dagster dev starting (its log: {files['log']}); starting the sandboxes meanwhile")
    stack = None
    try:
        import warnings

        import dagster as dg

        warnings.filterwarnings("ignore", category=dg.BetaWarning)     # Dagster's notices about its own API
        from sandboxes.harness.dagster_driver import DagsterDriver
        from sandboxes.harness.stack import consent, start_stack

        stack = start_stack(workdir, database_url=database_url, plan=plan)
        stack.apply_env()
        consent(stack)
        console.say("sandboxes, receiver and Jira consent ready; seeding them")
        # dagster dev creates the instance's storage first: open it once that is done (never both at once)
        while not instance_ready.wait(0.2):
            if dev.poll() is not None:
                console.say(f"dagster dev exited with {dev.returncode}; see {files['log']}")
                return 1
        with dg.DagsterInstance.get() as instance:
            from connector_pipelines.definitions import defs as load_defs

            driver = DagsterDriver(load_defs(), instance, log_level="WARNING")
            off_main_thread(lambda: seed(stack, driver, console))
            stack.bc.start_auto_delivery(3.0)
            stack.fo.start_auto_delivery(2.0)
            stack.jira.start_auto_delivery(1.0)
            stack.acumatica.start_auto_delivery(2.0)
            stack.monday.start_auto_delivery(1.0)
            ui = f"http://127.0.0.1:{args.port}"
            left = run_while_ui_starts(first_ticks(driver), driver, ui, console)
            reporter = RunReporter(instance, datetime.now(UTC))
            console.say("waiting for the Dagster UI to answer")
            if not wait_until_answers(f"{ui}/server_info", lambda: dev.poll() is None, args.ui_timeout):
                console.say(f"the Dagster UI did not answer (dagster dev exit code {dev.poll()}); see {files['log']}")
                return 1
            text = banner(ui, stack.pages(), stack.urls["receiver"], files, time.monotonic() - T0)
            files["banner"].write_text(text, encoding="utf-8")
            console.print(text)
            launch_through_ui(left, args.port, console)
            return _run(args, stack, dev, console, reporter, text)
    except KeyboardInterrupt:
        console.say("stopping (Ctrl-C)")
        return 130
    finally:
        console.closing = True
        if STOPPING.is_set():
            logging.disable(logging.CRITICAL)    # a run cut short by the stop is not news either
        stop_dagster_dev(dev)
        if stack is not None:
            stack.stop()


def _run(args: argparse.Namespace, stack: Any, dev: subprocess.Popen, console: Console, reporter: RunReporter,
         text: str) -> int:
    """Until Ctrl-C (or --exit-after): a new draft BC invoice now and then, one line per finished run, the banner
    again when it has scrolled away."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = last_invoice = last_banner = last_report = time.monotonic()
    practice_fixed = False
    printed_at_banner = console.printed
    n = 0
    while not stop.wait(1.0):
        now = time.monotonic()
        if dev.poll() is not None:
            console.say(f"dagster dev exited with {dev.returncode}")
            return 1
        if args.exit_after and now - started > args.exit_after:
            break
        if now - last_report >= 5:
            last_report = now
            for line in reporter.lines():
                console.print(f"demo {datetime.now().strftime('%H:%M:%S')}: {line}")
        if args.new_invoice_every and now - last_invoice > args.new_invoice_every:
            n += 1
            last_invoice = now
            inv = stack.bc.add_purchase_invoice(stack.company_id, number=f"PI-2{n:05d}", status="Draft",
                                                vendorName="Northwind Traders", totalAmountIncludingTax=250.0 * n,
                                                currencyCode="USD")
            console.print(f"demo {datetime.now().strftime('%H:%M:%S')}: new draft invoice {inv['number']} in BC")
        if args.practice_fix_after and not practice_fixed and now - started > args.practice_fix_after:
            practice_fixed = True
            add_practice_order(stack)
            console.print(f"demo {datetime.now().strftime('%H:%M:%S')}: {PRACTICE_PO} now exists in F&O: re-run the "
                          "failed window of finance_operations/purchase_orders_confirmed (Partitions -> Materialize... "
                          "-> Failed) and it turns green")
        if (args.banner_every and now - last_banner > args.banner_every
                and console.printed - printed_at_banner >= args.banner_after_lines):
            console.print(text)
            last_banner, printed_at_banner = now, console.printed
    return 0


if __name__ == "__main__":
    sys.exit(main())
