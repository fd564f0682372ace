"""`make smoke` is part of the suite: the script itself, as a user runs it, must exit 0."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_make_smoke_script_passes():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOR_", "DAGSTER_HOME"))}
    proc = subprocess.run([sys.executable, "-m", "sandboxes.harness.smoke"], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SMOKE OK" in proc.stdout
