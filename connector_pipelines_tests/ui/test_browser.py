"""The Dagster UI as finance ops use it, driven in a real browser (issue 13).

Debian's chromium (headless, through its chromedriver; `make install` installs both) drives the real
`dagster-webserver -w workspace.yaml` over a demo world: every sandbox and the product's receiver on loopback
ports, a Dagster home of its own with the repo's dagster.yaml, the product's definitions. The world's flows run
as in the end-to-end tests (webhooks into the receiver, the inbox sensors ticked by the test's DagsterDriver,
partition runs); what a person does is done in the browser:

1. an asset page shows the window's counts, and every link it shows into the sandboxes answers 200;
2. a webhook-driven F&O asset shows the window its notification batch materialized;
3. a window that failed on a record F&O could not return is red; once the order exists in F&O, it is re-run
   from the asset's Partitions tab (Materialize… → Failed → Launch 1 run) — the run the UI launches runs in its
   own process against the sandboxes — and turns green;
4. a reconcile check that fails names its document (number, vendor, amount) with links that answer 200;
5. the Jira people page's "Move to Done" becomes a resolution run whose outcome is on the invoice asset.

A screenshot of each step is saved in the folder the test prints (tmp_path/screenshots, or the folder named
by BROWSER_TEST_SCREENSHOTS: `BROWSER_TEST_SCREENSHOTS=docs/img pytest connector_pipelines_tests/ui` renews
the pictures of docs/operations.md).

No dagster-daemon runs here: its sensors and schedules would race the test's own ticks. So the home's
dagster.yaml is the repo's with the run queue (which only the daemon drains) replaced by Dagster's
DefaultRunCoordinator: a run launched from the UI starts at once, through the same DefaultRunLauncher (a process
per run) and the same code location as in production.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dagster as dg
import httpx
import pytest
import yaml

from benchmarks.daemon_latency import stop_daemon  # SIGTERM the process group, SIGKILL if it lingers
from sandboxes.harness import scenario as sc
from sandboxes.harness.stack import CLOUD_ID, LEGAL_ENTITY

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS_ENV = "BROWSER_TEST_SCREENSHOTS"
WIDTH, HEIGHT = 1280, 800
BC_INVOICES = "/assets/business_central/purchase_invoices_awaiting_review"
FO_INVOICES = "/assets/finance_operations/vendor_invoices_posted"
FO_CONFIRMED = "/assets/finance_operations/purchase_orders_confirmed"

pytestmark = pytest.mark.timeout(240)


# -- the browser ---------------------------------------------------------------------------------------------
def require_chromium() -> None:
    """A missing browser fails the test (never skips it), saying how to get it."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: `make install` installs Debian's chromium and chromium-driver "
                    "(or run `apt-get install -y chromium chromium-driver` as root)", pytrace=False)


def chrome():
    """Headless chromium through the system chromedriver, its page 1280x800."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WIDTH},{HEIGHT}", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # the window size includes the browser's frame: make the page itself 1280x800, as the screenshots are
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    return driver


def xpath_literal(text: str) -> str:
    return f"'{text}'" if "'" not in text else "concat('" + "', \"'\", '".join(text.split("'")) + "')"


@dataclass
class Browser:
    driver: Any
    ui: str                  # the Dagster UI's base URL
    shots: Path
    taken: list[Path] = field(default_factory=list)

    def open(self, url: str) -> None:
        self.driver.get(url if url.startswith("http") else self.ui + url)

    def wait_for(self, text: str, *, exact: bool = False, timeout: float = 30.0, tag: str = "*"):
        """The first visible element whose text is ``text`` (or the innermost ones containing it), waited for."""
        from selenium.webdriver.common.by import By

        if exact:
            path = f"//{tag}[normalize-space(.)={xpath_literal(text)}]"
        else:
            test = f"contains(normalize-space(.), {xpath_literal(text)})"
            path = f"//{tag}[{test}][not(*[{test}])]"

        def visible(driver):
            return next((e for e in driver.find_elements(By.XPATH, path) if e.is_displayed()), None)

        return self.wait_until(repr(text), visible, timeout)

    def wait_gone(self, text: str, timeout: float = 30.0) -> None:
        from selenium.webdriver.common.by import By

        path = f"//*[normalize-space(.)={xpath_literal(text)}]"
        self.wait_until(f"{text!r} gone", lambda d: not any(e.is_displayed() for e in d.find_elements(By.XPATH, path)),
                        timeout)

    def click(self, text: str, tag: str = "button", timeout: float = 30.0) -> None:
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        element = self.wait_for(text, exact=True, tag=tag, timeout=timeout)
        WebDriverWait(self.driver, timeout).until(ec.element_to_be_clickable(element)).click()

    def wait_until(self, what: str, condition, timeout: float = 30.0):
        """``condition(driver)``'s first truthy value, waited for; else the page's text in the failure."""
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
                condition)
        except TimeoutException:
            self.shot("failed-wait")
            raise AssertionError(f"{what}: not on {self.driver.current_url} in {timeout:.0f} s (screenshots in "
                                 f"{self.shots}); the page says:\n{self.text()[:3000]}") from None

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def links(self, prefixes: tuple[str, ...]) -> set[str]:
        from selenium.webdriver.common.by import By

        hrefs = {a.get_attribute("href") or "" for a in self.driver.find_elements(By.CSS_SELECTOR, "a[href]")}
        return {h for h in hrefs if h.startswith(prefixes)}

    def shot(self, name: str) -> Path:
        path = self.shots / f"{len(self.taken) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.taken.append(path)
        return path


def answers_200(urls: set[str]) -> dict[str, int]:
    """The links that do not answer 200 (followed as a browser would), by status."""
    bad = {}
    for url in sorted(urls):
        status = httpx.get(url, timeout=10, follow_redirects=True).status_code
        if status != 200:
            bad[url] = status
    return bad


# -- the demo world and the webserver ------------------------------------------------------------------------
def dagster_yaml(home: Path) -> None:
    """The repo's dagster.yaml, its run queue replaced by the DefaultRunCoordinator (no daemon drains a queue)."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config.pop("run_queue", None)
    config.get("concurrency", {}).pop("runs", None)
    config["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def start_webserver(home: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """`dagster-webserver -w workspace.yaml` in a process group of its own (it ignores SIGTERM when started from a
    script; its group is killed instead), on a free loopback port."""
    from sandboxes.common import free_port

    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster-webserver"), "-w",
                                 str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
                                cwd=REPO, env={**env, "DAGSTER_HOME": str(home)}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


LOCATION_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def wait_webserver(proc: subprocess.Popen, ui: str, log: Path, timeout_s: float = 150) -> float:
    """Until the webserver answers and has loaded the code location (a load error fails with its message)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise AssertionError(f"dagster-webserver exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            answer = httpx.post(f"{ui}/graphql", json={"query": LOCATION_QUERY}, timeout=5).json()
            entries = answer["data"]["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            entries = []
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            errors = [e["locationOrLoadError"] for e in entries
                      if e["locationOrLoadError"]["__typename"] == "PythonError"]
            assert not errors, f"the code location failed to load in the webserver: {errors}"
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(f"dagster-webserver did not load the code location in {timeout_s:.0f} s:\n"
                         f"{log.read_text()[-4000:]}")


@dataclass
class DemoWorld:
    stack: Any
    driver: Any
    instance: dg.DagsterInstance
    webserver: subprocess.Popen
    ui: str
    log: Path


@pytest.fixture
def demo_world(tmp_path, monkeypatch) -> Iterator[DemoWorld]:
    """The sandboxes, the receiver and a Dagster home shared by the test and the webserver (the same runs)."""
    from connector_pipelines.definitions import defs as load_defs
    from sandboxes.harness.dagster_driver import DagsterDriver
    from sandboxes.harness.stack import consent, start_stack

    require_chromium()                                   # before the world is built
    home = tmp_path / "dagster_home"
    home.mkdir()
    dagster_yaml(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    stack = start_stack(tmp_path / "stack", database_url=f"sqlite:///{home / 'connector_pipelines.sqlite'}")
    webserver = None
    try:
        for k, v in stack.env.items():
            monkeypatch.setenv(k, v)
        consent(stack)
        log = tmp_path / "webserver.log"
        # started now: it loads the code location while the world's flows run
        webserver, ui = start_webserver(home, dict(os.environ), log)
        with dg.DagsterInstance.get() as instance:
            yield DemoWorld(stack, DagsterDriver(load_defs(), instance), instance, webserver, ui, log)
    finally:
        if webserver is not None:
            stop_daemon(webserver)
        stack.stop()


@pytest.fixture
def browser(demo_world, tmp_path, capsys) -> Iterator[Browser]:
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path / "screenshots").resolve()
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("[0-9][0-9]-*.png"):
        old.unlink()
    with capsys.disabled():                              # on the terminal, also when the test passes
        print(f"\n[browser test] screenshots: {shots}", flush=True)
    driver = chrome()
    b = Browser(driver, demo_world.ui, shots)
    try:
        yield b
    finally:
        driver.quit()
        with capsys.disabled():
            print(f"\n[browser test] {len(b.taken)} screenshots in {shots}: {', '.join(p.name for p in b.taken)}",
                  flush=True)


# -- the flows the world has run before a person looks -------------------------------------------------------
def not_at_the_end_of_an_hour(margin_s: float = 60.0) -> None:
    """The windows are UTC hours: the flows (~10 s) run in one, so the F&O events fall in the hour computed."""
    now = datetime.now(UTC)
    left = 3600 - (now.minute * 60 + now.second + now.microsecond / 1e6)
    if left < margin_s:
        time.sleep(left + 1)


def bc_flow(world: DemoWorld) -> tuple[dict[str, Any], str, str]:
    """BC -> Jira: webhooks register, the exceptions' notifications become issues, the hour's poll runs.
    (seeded records, the draft invoice's issue key, the polled window)"""
    sc.register_webhooks(world.driver)
    seeded = sc.seed_exceptions(world.stack)
    world.stack.deliver_all()
    assert [r.success for r in world.driver.tick(sc.BC_SENSOR).runs] == [True]
    poll = sc.poll_now(world.driver)
    assert poll.success
    [issue] = sc.issues_by_external_id(world.stack)[f"bc:purchaseInvoices:{seeded['invoice']['id']}"]
    return seeded, issue["key"], poll.dagster_run.tags["dagster/partition"]


def fo_batch(world: DemoWorld) -> str:
    """F&O -> Jira by business events, one of them for an order F&O cannot return (PO-GHOST): the batch
    materializes the hour of the invoices and rejected orders, and only observes the confirmed orders' (the hour)."""
    world.driver.run_job("d365_jira__jira_webhook_renewal_job")
    seeded = sc.seed_fo_documents(world.stack)
    sc.fire_fo_events(world.stack, seeded)
    world.stack.fo.fire("PurchaseOrderConfirmedBusinessEvent", LEGAL_ENTITY, PurchaseOrderNumber="PO-GHOST",
                        PurchaseJournal="PJ-1", VendorAccount="US-101")
    world.stack.fo.deliver_events()
    hour = world.driver.current_partition(["finance_operations", "purchase_orders_confirmed"])
    assert [r.success for r in world.driver.tick(sc.FO_SENSOR).runs] == [True]
    return hour


def close_the_hour(world: DemoWorld, hour: str) -> str:
    """What d365_jira__window_close_schedule does at :05: the hour's run fails on the order F&O cannot return."""
    closed = world.driver.run_job("d365_jira__poll_job", partition_key=hour, raise_on_error=False,
                                  tags={"connector/trigger": "window_close"})
    assert not closed.success
    return closed.run_id


def duplicate_and_reconcile(world: DemoWorld, seeded: dict[str, Any]) -> None:
    """Someone opened a second issue for the draft invoice by hand: the hourly reconcile's check fails."""
    external_id = f"bc:purchaseInvoices:{seeded['invoice']['id']}"
    world.stack.jira.create_issue_as_user(CLOUD_ID, {"project": {"key": "FIN"}, "issuetype": {"name": "Task"},
                                                     "summary": "PI-108001 again", sc.ext_field_id(world.stack):
                                                     external_id})
    world.driver.run_job("bc_jira__reconcile_job", raise_on_error=False)


def wait_run(instance: dg.DagsterInstance, tags: dict[str, str], after: datetime, timeout_s: float = 120):
    """The run the UI launched (found by its tags), once it has finished."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        runs = instance.get_runs(filters=dg.RunsFilter(tags=tags, created_after=after), limit=1)
        if runs and runs[0].is_finished:
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"no finished run with {tags} in {timeout_s:.0f} s: {instance.get_runs(limit=3)}")


def run_errors(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.message for e in instance.all_logs(run_id)
            if e.dagster_event is not None and e.dagster_event.is_failure]


# -- the test ------------------------------------------------------------------------------------------------
def test_finance_ops_work_the_dagster_ui_in_a_browser(demo_world, browser):
    from selenium.webdriver.common.by import By

    world, b = demo_world, browser
    not_at_the_end_of_an_hour()
    t0 = time.monotonic()
    seeded, invoice_issue, polled = bc_flow(world)
    hour = fo_batch(world)
    flows_s = time.monotonic() - t0
    load_s = wait_webserver(world.webserver, world.ui, world.log)
    sandboxes = tuple(world.stack.urls[name] for name in ("jira", "business_central", "finance_operations"))
    window = f"partition={quote(hour)}"

    # 1. the BC invoice asset: the window's counts, and its links into Jira answer
    b.open(BC_INVOICES)
    b.wait_for(polled, exact=True, timeout=60)         # the latest materialization's window
    b.wait_for("records_read", exact=True)
    b.wait_for(invoice_issue, exact=True, tag="a")
    # the metadata table scrolled to its end: the counts above the issue links
    last_link = b.driver.find_elements(By.CSS_SELECTOR, f"a[href='{world.stack.site_url}/browse/{invoice_issue}']")[-1]
    b.driver.execute_script("arguments[0].closest('tr').scrollIntoView({block: 'end'});"
                            "for (let e = arguments[0]; e; e = e.parentElement) e.scrollLeft = 0;", last_link)
    b.shot("bc-asset-counts-and-links")
    links = b.links(sandboxes)
    assert f"{world.stack.site_url}/browse/{invoice_issue}" in links, links
    assert not (broken := answers_200(links)), broken

    # 2. the webhook-driven F&O invoices: the notification batch materialized its hour
    b.open(f"{FO_INVOICES}?view=partitions&{window}")
    b.wait_for("Materialized (1)", exact=True, timeout=60)
    b.wait_for("Failed (0)", exact=True)
    b.wait_for("webhook batch")                          # the window's materialization says who made it
    b.shot("fo-webhook-window-materialized")

    # 3. the hour closes red on the order F&O cannot return; once it exists, the window is re-run from the UI
    closed = close_the_hour(world, hour)
    b.open(f"{FO_CONFIRMED}?view=partitions&{window}")
    b.wait_for("Failed (1)", exact=True, timeout=60)
    b.wait_for(f"Run {closed[:8]} failed, and did not materialize this asset.", exact=True)
    b.shot("fo-failed-window-red")
    # why: the batch's observation of the window names the record and the reason
    b.open(f"{FO_CONFIRMED}?view=events")
    b.wait_for(f"Partition {hour} observed in run", timeout=60)
    b.wait_for("fo:purchase_orders_confirmed:usmf:PO-GHOST: F&O OData returned no PurchaseOrderHeadersV2 record")
    b.shot("why-the-window-is-red")
    world.stack.fo.add_purchase_order(LEGAL_ENTITY, PurchaseOrderNumber="PO-GHOST", PurchaseOrderName="Chairs",
                                      OrderVendorAccountNumber="US-101", CurrencyCode="USD",
                                      DocumentApprovalStatus="Approved", lines=[{"LineAmount": 10.0}])
    b.click("Materialize…")
    b.click("Failed")
    b.wait_for("1 partition", exact=True)
    b.shot("rerun-failed-window-dialog")
    launched_at = datetime.now(UTC)
    b.click("Launch 1 run")
    run = wait_run(world.instance, {"dagster/partition": hour, "dagster/from_ui": "true"}, launched_at)
    assert run.status == dg.DagsterRunStatus.SUCCESS, run_errors(world.instance, run.run_id)
    assert run.tags["connector/trigger"] == "manual" and run.tags["connector/integration"] == "d365_jira"
    assert f"fo:purchase_orders_confirmed:{LEGAL_ENTITY}:PO-GHOST" in sc.issues_by_external_id(world.stack)
    b.open(f"{FO_CONFIRMED}?view=partitions&{window}")
    b.wait_for("Failed (0)", exact=True, timeout=60)
    b.wait_for("Materialized (1)", exact=True)
    b.wait_for(run.run_id[:8], exact=True)               # materialized by the run the UI launched
    b.shot("fo-window-green-after-rerun")

    # 4. someone opened a second issue for the invoice: the reconcile check names the document, with links
    duplicate_and_reconcile(world, seeded)
    b.open(f"{BC_INVOICES}?view=checks&checkDetail=every_exception_has_one_open_issue")
    b.wait_for("every_exception_has_one_open_issue", exact=True, timeout=60)
    b.wait_for("Review purchase invoice PI-108001 from Contoso Paper: 1,234.50 USD")
    b.shot("check-names-its-document")
    links = b.links(sandboxes)
    # the documents table is behind its metadata row's [Show Markdown] (the innermost element of that text)
    b.driver.find_elements(By.XPATH, "//tr[td[1][normalize-space(.)='documents']]"
                                     "//*[normalize-space(.)='[Show Markdown]']")[-1].click()
    b.wait_for("Business Central record", exact=True)
    b.shot("check-documents-table")
    links |= b.links(sandboxes)
    assert any(u.startswith(world.stack.urls["business_central"]) for u in links), links
    assert {f"{world.stack.site_url}/browse/{invoice_issue}"} < links, links   # and the duplicate's
    assert not (broken := answers_200(links)), broken

    # 5. a person moves the invoice's issue to Done on the Jira people page: the resolution is on the asset
    b.open(f"{world.stack.urls['jira']}/_sandbox/")
    row = f"//tr[td[1][normalize-space(.)={xpath_literal(invoice_issue)}]]"
    b.driver.find_element(By.XPATH, f"{row}//button[normalize-space(.)='Move to Done']").click()
    b.wait_until(f"{invoice_issue} in Done", lambda d: d.find_element(By.XPATH, f"{row}/td[3]").text == "Done")
    b.shot("jira-people-page-done")
    world.stack.jira.deliver_pending()                 # Jira's webhook -> the receiver's inbox
    [resolution] = world.driver.tick(sc.JIRA_SENSOR).runs
    assert resolution.success
    assert world.stack.bc.get_record(world.stack.company_id, "purchaseInvoices",
                                     seeded["invoice"]["id"])["status"] == "Open"
    b.open(f"{BC_INVOICES}?view=events")
    b.wait_for("Purchase invoice PI-108001 posted in Business Central (was Draft)", timeout=60)
    b.wait_for(f"Observed in run {resolution.run_id[:8]}")
    b.wait_gone("Loading…")
    b.shot("resolution-on-the-asset")
    links = b.links(sandboxes)                           # the outcome's document and issue open
    assert f"{world.stack.site_url}/browse/{invoice_issue}" in links, links
    assert any(u.startswith(world.stack.urls["business_central"]) for u in links), links
    assert not (broken := answers_200(links)), broken

    print(f"flows {flows_s:.1f} s, webserver ready {load_s:.1f} s after them, all {time.monotonic() - t0:.1f} s")
