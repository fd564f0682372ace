"""`make sandbox` prints a JSON map of every sandbox's base URL and credentials, and they answer."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def test_sandbox_command_prints_a_working_json_map(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOR_", "DAGSTER_HOME"))}
    proc = subprocess.Popen([sys.executable, "-m", "connector_pipelines.sandbox", "--workdir", str(tmp_path)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("}"):
                break
        world = json.loads("".join(lines))
        assert set(world) >= {"entra_id", "business_central", "atlassian_auth", "jira", "receiver", "env"}
        assert world["entra_id"]["authority_host"].startswith("https://")
        assert httpx.get(f"{world['receiver']['url']}/healthz").json()["status"] == "ok"
        jira = httpx.get(f"{world['jira']['api_url']}/_sandbox/")
        assert jira.status_code == 200 and "Jira sandbox" in jira.text
        bc = httpx.get(f"{world['business_central']['api_url']}/v2.0/{world['business_central']['tenant_id']}/"
                       f"{world['business_central']['environment']}/api/v2.0/companies")
        assert bc.status_code == 401   # it wants an Entra token, like the real API
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
