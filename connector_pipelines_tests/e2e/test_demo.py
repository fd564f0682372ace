"""`make demo` as a new user runs it: the banner (the Dagster UI and every people page) is printed only once the UI
answers, every page it names opens, the terminal stays quiet (dagster dev's sensor chatter goes to the log file the
banner names) and the banner comes back when it has scrolled away."""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from sandboxes.common import free_port
from sandboxes.harness.demo import DEMO_MARKER, ConsoleFilter, fresh_home, wait_until_answers

REPO = Path(__file__).resolve().parents[2]
BANNER = "connector_pipelines demo: up in"


def test_waiting_for_the_ui_returns_only_once_it_answers_and_gives_up_when_dagster_dev_dies():
    port = free_port()
    url = f"http://127.0.0.1:{port}/server_info"
    started = time.monotonic()

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

    def serve_later() -> None:
        time.sleep(1.5)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Ok)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    threading.Thread(target=serve_later, daemon=True).start()
    assert wait_until_answers(url, lambda: True, timeout_s=30, interval_s=0.05)
    assert time.monotonic() - started >= 1.5
    assert not wait_until_answers(f"http://127.0.0.1:{free_port()}/", lambda: False, timeout_s=30)


def test_the_terminal_gets_dagster_dev_s_warnings_and_errors_not_its_sensor_chatter():
    keep = ConsoleFilter().keep
    chatter = ("\x1b[32m2026-12-03 19:10:36 +0000\x1b[0m - dagster.daemon.SensorDaemon - \x1b[34mINFO\x1b[0m - "
               "Checking for new runs for sensor: bc_jira__jira_inbox_sensor\n")
    beta = ("2026-12-03 19:09:09 +0000 - dagster - WARNING - /x/sensor_definition.py:809: BetaWarning: Parameter "
            "`owners` is currently in beta\n")
    error = "2026-12-03 19:29:10 +0000 - dagster.daemon.SensorDaemon - ERROR - Sensor tick caught an error\n"
    assert not keep(chatter)
    assert not keep(beta) and not keep("  return SensorDefinition(\n")        # its continuation line too
    assert keep(error) and keep("Traceback (most recent call last):\n")       # an error with its traceback
    assert not keep("/x/click/core.py:911: SupersessionWarning: Function `dev_command` is superseded\n")


def test_each_demo_starts_a_fresh_instance_and_never_empties_someone_else_s(tmp_path):
    default, mine, theirs = tmp_path / "default", tmp_path / "mine", tmp_path / "theirs"
    fresh_home(mine, default)
    (mine / "connector_pipelines.sqlite").write_text("the last demo's world")
    fresh_home(mine, default)                          # a home an earlier demo made: emptied
    assert sorted(p.name for p in mine.iterdir()) == [DEMO_MARKER]
    default.mkdir()
    (default / "storage").mkdir()
    fresh_home(default, default)                       # the repo's .dagster_home: emptied too
    assert not (default / "storage").exists()
    theirs.mkdir()
    (theirs / "dagster.yaml").write_text("storage: {postgres: {}}")
    with pytest.raises(SystemExit, match="holds another Dagster instance"):
        fresh_home(theirs, default)
    assert (theirs / "dagster.yaml").exists()


def test_make_demo_prints_the_banner_after_the_ui_answers_and_every_page_it_names_opens(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOR_", "DAGSTER_HOME"))}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    workdir = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "sandboxes.harness.demo", "--port", str(port), "--workdir",
                             str(workdir), "--exit-after", "300", "--new-invoice-every", "4", "--banner-every", "10",
                             "--banner-after-lines", "3"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ui_at_banner: list[int] = []
    jira_page, browsed = "", []
    try:
        for line in proc.stdout:
            lines.append(line)
            if BANNER in line and not ui_at_banner:
                # the moment the banner shows, the UI answers (it was printed ~50 s early before)
                ui_at_banner.append(httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=5).status_code)
                # ... and every page the banner names opens (between the rule under the title and the last one)
                block = []
                lines.append(next(proc.stdout))
                for more in proc.stdout:
                    lines.append(more)
                    if more.startswith("====="):
                        break
                    block.append(more)
                urls = [re.search(r"(http://\S+)", b).group(1) for b in block if "http://" in b]
                assert len(urls) == 7, block            # UI, Jira, BC, F&O, Acumatica, monday.com, receiver
                for url in urls[:-1]:
                    page = httpx.get(url, timeout=10)
                    assert page.status_code == 200, (url, page.status_code)
                jira_page = urls[1]
            if jira_page and not browsed:     # the issues come with the first runs: follow one once it is there
                issue = re.search(r"href='(/browse/[A-Z]+-\d+)'", httpx.get(jira_page, timeout=10).text)
                if issue:
                    browsed.append(httpx.get(jira_page.replace("/_sandbox/", issue.group(1)), timeout=10).status_code)
            out = "".join(lines)
            if (proc.poll() is None and out.count(BANNER) >= 2 and browsed
                    and re.search(r"run \w+__notification_job ok", out) and "window to practise on" in out):
                proc.send_signal(signal.SIGINT)                  # Ctrl-C, as a person stops it
        assert proc.wait(timeout=120) == 0, "".join(lines[-40:])
    finally:
        if proc.poll() is None:
            proc.terminate()                 # the demo stops its dagster dev (a session of its own) on SIGTERM
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    out = "".join(lines)
    assert ui_at_banner == [200], out[-3000:]
    assert browsed == [200], "no issue page was followed from the Jira people page"
    assert out.count(BANNER) >= 2, out[-3000:]                # printed again once lines scrolled it away
    assert (workdir / "banner.txt").read_text().count(BANNER) == 1
    # a window to practise re-running on: F&O announced an order it cannot return, and that hour's window failed
    assert re.search(r"run d365_jira__poll_job FAILURE \(the F&O window to practise on", out), out[-3000:]
    assert "new draft invoice PI-2" in out and re.search(r"run \w+__notification_job ok", out), out[-3000:]
    # quiet: no sensor chatter on the terminal; it is all in the log file the banner names
    assert "Checking for new runs for sensor" not in out and "BetaWarning" not in out
    log = (workdir / "dagster.log").read_text()
    assert "Checking for new runs for sensor" in log and "Serving dagster-webserver" in log
