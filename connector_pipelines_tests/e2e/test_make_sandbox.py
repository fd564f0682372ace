"""`make sandbox` prints a JSON map of every sandbox's base URL and credentials, and they answer; a newcomer
who pastes the printed `export` lines can run the consent flow and `ping` against it, as the README says."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from sandboxes.common import free_port

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("connector-pipelines")


def read_until(stream, end: str) -> list[str]:
    lines = []
    for line in stream:
        lines.append(line)
        if line.startswith(end):
            return lines
    raise AssertionError(f"the output ended before {end!r}: {''.join(lines)[-2000:]}")


def test_sandbox_prints_a_working_map_and_a_shell_environment_for_consent_and_ping(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOR_", "DAGSTER_HOME"))}
    consent_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sandboxes.harness", "--workdir", str(tmp_path),
                             "--consent-port", str(consent_port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        world = json.loads("".join(read_until(proc.stdout, "}")))
        assert set(world) >= {"entra_id", "business_central", "acumatica", "atlassian_auth", "jira", "receiver", "env"}
        assert world["entra_id"]["authority_host"].startswith("https://")
        assert httpx.get(f"{world['receiver']['url']}/healthz").json()["status"] == "ok"
        jira = httpx.get(f"{world['jira']['api_url']}/_sandbox/")
        assert jira.status_code == 200 and "Jira sandbox" in jira.text
        # the people pages: Jira, BC, F&O, Acumatica, monday.com — each answers with its documents
        assert len(world["pages"]) == 5
        for url in world["pages"].values():
            page = httpx.get(url)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), url
        bc = httpx.get(f"{world['business_central']['api_url']}/v2.0/{world['business_central']['tenant_id']}/"
                       f"{world['business_central']['environment']}/api/v2.0/companies")
        assert bc.status_code == 401   # it wants an Entra token, like the real API

        # the export lines, as a shell would source them
        printed = read_until(proc.stdout, "# end of environment")
        exports = [line for line in printed if line.startswith("export ")]
        shell_env = dict(env)
        for line in exports:
            name, _, value = line.removeprefix("export ").strip().partition("=")
            shell_env[name] = shlex.split(value)[0] if value else ""
        assert {k: shell_env[k] for k in world["env"]} == world["env"]
        assert f"jira consent --port {consent_port}" in "".join(printed)

        # connector-pipelines jira consent: the person opens the printed URL; the sandbox consents
        consent = subprocess.Popen([str(CLI), "jira", "consent", "--no-browser", "--port", str(consent_port)],
                                   cwd=tmp_path, env=shell_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        said: list[str] = []

        def browser() -> None:
            for line in consent.stdout:
                said.append(line)
                match = re.search(r"https?://\S+/authorize\?\S+", line)
                if match:
                    httpx.get(match.group(0), follow_redirects=True, timeout=10)

        reader = threading.Thread(target=browser, daemon=True)
        reader.start()
        assert consent.wait(timeout=60) == 0, "".join(said)
        reader.join(timeout=10)
        # the site is the Jira sandbox's own address, so <site>/browse/<KEY> opens the page
        assert world["jira"]["site_url"] == world["jira"]["api_url"]
        assert any(f"consent stored for {world['jira']['site_url']}" in line for line in said), "".join(said)

        ping = subprocess.run([str(CLI), "ping"], check=False, cwd=tmp_path, env=shell_env, capture_output=True,
                              text=True, timeout=120)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "10 ok, 0 failed" in ping.stdout and "OK    acumatica api" in ping.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
