"""`make demo`: sandboxes + receiver + `dagster dev` on SQLite (DAGSTER_HOME=.dagster_home), demo data,
and the main jobs run once; then the daemon's sensors and schedules take over.

Start-up runs in parallel: `dagster dev` is launched as soon as the sandboxes, the receiver and the Jira consent are
ready, and the demo data is seeded (and the first jobs run) while its code server, webserver and daemon come up.
The banner — the Dagster UI and every sandbox's people page (Jira issues with the comments the connector wrote back,
BC / F&O / Acumatica documents with their state and history, monday.com boards) — is printed once the UI really
answers (``/server_info`` 200), written to ``<workdir>/banner.txt``, and printed again every ``--banner-every``
seconds when something was printed since. The terminal stays quiet: `dagster dev`'s own output goes to
``<workdir>/dagster.log`` (only its warnings and errors reach the terminal, Dagster's beta and "superseded" notices
aside), the demo's in-process runs log warnings only, and one line per finished run says what the daemon did.
"""

from __future__ import annotations

import argparse
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


def pump_output(stream: IO[str], log: IO[str], console: Console, keep: Callable[[str], bool]) -> None:
    """Every line to the log file; the ones ``keep`` wants to the terminal."""
    for line in stream:
        log.write(line)
        log.flush()
        if keep(line) and not console.closing:
            console.print(line)


def wait_until_answers(url: str, alive: Callable[[], bool], timeout_s: float, interval_s: float = 0.25) -> bool:
    """Poll ``url`` until it answers 200 (True); False when ``alive()`` turns false or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
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
            why = tags.get("dagster/sensor_name") or tags.get("dagster/schedule_name") or "launched from the UI"
            n = tags.get("connector/records")
            records_tag = f", {n} record{'' if n == '1' else 's'}" if n else ""
            mark = "ok" if run.status == dg.DagsterRunStatus.SUCCESS else run.status.value
            out.append(f"run {run.job_name} {mark} ({why}{records_tag}) {run.run_id[:8]}")
        return out


def seed_and_run(stack: Any, driver: Any, console: Console) -> dict[str, Any]:
    """The demo data and the first runs (what the schedules would do on their first ticks)."""
    from sandboxes.harness import scenario as sc

    console.say("registering BC subscriptions, the Jira and monday.com webhooks (renewal jobs)")
    sc.register_webhooks(driver)
    driver.run_job("d365_jira__jira_webhook_renewal_job")
    driver.run_job("acumatica_jira__jira_webhook_renewal_job")
    driver.run_job("d365_monday__monday_webhook_renewal_job")
    seeded = sc.seed_exceptions(stack)
    stack.deliver_all()
    result = sc.poll_now(driver)
    console.say(f"BC poll (bc_jira__poll_job, current window): {'success' if result.success else 'FAILED'}")
    fo_seeded = sc.seed_fo_documents(stack)
    sc.fire_fo_events(stack, fo_seeded)   # delivered by the F&O sandbox's delivery loop
    mirror = driver.run_job("d365_monday__mirror_job", partition_key=sc.LEGAL_ENTITY, raise_on_error=False)
    console.say(f"F&O -> monday.com mirror (d365_monday__mirror_job): {'success' if mirror.success else 'FAILED'}")
    sc.seed_acumatica_documents(stack)
    acu = sc.poll_acumatica(driver)
    console.say(f"Acumatica poll (acumatica_jira__poll_job): {'success' if acu.success else 'FAILED'}")
    return {"bc": seeded, "fo": fo_seeded}


def start_dagster_dev(port: int, env: dict[str, str], log_path: Path, console: Console) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-p", str(port),
           "-h", "127.0.0.1"]
    # A process group of its own, so we can stop dagster dev (webserver + daemon + code server) by PID.
    dev = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, bufsize=1)
    log = log_path.open("w", encoding="utf-8")
    threading.Thread(target=pump_output, args=(dev.stdout, log, console, ConsoleFilter().keep),
                     name="dagster-dev-output", daemon=True).start()
    return dev


def stop_dagster_dev(dev: subprocess.Popen) -> None:
    if dev.poll() is None:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandboxes.harness.demo")
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    parser.add_argument("--exit-after", type=float, default=0, help="stop after N seconds (0 = until Ctrl-C)")
    parser.add_argument("--new-invoice-every", type=float, default=60.0, help="seconds; 0 = never")
    parser.add_argument("--banner-every", type=float, default=300.0,
                        help="print the banner again after N seconds when something was printed since (0 = never)")
    parser.add_argument("--ui-timeout", type=float, default=600.0, help="seconds to wait for the Dagster UI")
    parser.add_argument("--workdir", type=Path, default=REPO / ".demo", help="TLS files, the log and the banner")
    args = parser.parse_args(list(argv) if argv is not None else None)
    console = Console()

    home = Path(os.environ.get("DAGSTER_HOME") or REPO / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    files = {"log": workdir / "dagster.log", "banner": workdir / "banner.txt"}
    files["banner"].unlink(missing_ok=True)

    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)     # Dagster's notices about its own API
    from sandboxes.harness.dagster_driver import DagsterDriver
    from sandboxes.harness.stack import consent, start_stack

    stack = start_stack(workdir, database_url=f"sqlite:///{home / 'connector_pipelines.sqlite'}")
    stack.apply_env()
    consent(stack)
    console.say("sandboxes, receiver and Jira consent ready")
    dev = None
    try:
        with dg.DagsterInstance.get() as instance:     # its storage exists before dagster dev opens it too
            dev = start_dagster_dev(args.port, {**os.environ, **stack.env}, files["log"], console)
            console.say(f"dagster dev starting (its log: {files['log']}); seeding the sandboxes meanwhile")
            from connector_pipelines.definitions import defs as load_defs

            driver = DagsterDriver(load_defs(), instance, log_level="WARNING")
            seed_and_run(stack, driver, console)
            stack.bc.start_auto_delivery(3.0)
            stack.fo.start_auto_delivery(2.0)
            stack.jira.start_auto_delivery(1.0)
            stack.acumatica.start_auto_delivery(2.0)
            stack.monday.start_auto_delivery(1.0)
            reporter = RunReporter(instance, datetime.now(UTC))
            ui = f"http://127.0.0.1:{args.port}"
            console.say("waiting for the Dagster UI to answer")
            if not wait_until_answers(f"{ui}/server_info", lambda: dev.poll() is None, args.ui_timeout):
                console.say(f"the Dagster UI did not answer (dagster dev exit code {dev.poll()}); see {files['log']}")
                return 1
            text = banner(ui, stack.pages(), stack.urls["receiver"], files, time.monotonic() - T0)
            files["banner"].write_text(text, encoding="utf-8")
            console.print(text)
            return _run(args, stack, dev, console, reporter, text)
    finally:
        console.closing = True
        if dev is not None:
            stop_dagster_dev(dev)
        stack.stop()


def _run(args: argparse.Namespace, stack: Any, dev: subprocess.Popen, console: Console, reporter: RunReporter,
         text: str) -> int:
    """Until Ctrl-C (or --exit-after): a new draft BC invoice now and then, one line per finished run, the banner
    again when it has scrolled away."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = last_invoice = last_banner = last_report = time.monotonic()
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
        if args.banner_every and now - last_banner > args.banner_every and console.printed > printed_at_banner:
            console.print(text)
            last_banner, printed_at_banner = now, console.printed
    return 0


if __name__ == "__main__":
    sys.exit(main())
