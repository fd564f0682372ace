"""The product wheel holds the product only: no sandboxes, no tests, no sandbox-only dependencies."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_product_without_sandboxes(tmp_path):
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is installed by `make install`"
    proc = subprocess.run([uv, "build", "-q", "--wheel", "-o", str(tmp_path), str(REPO)], check=False,
                          capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("connector_pipelines-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    top_level = {n.split("/", 1)[0] for n in names}
    assert top_level == {"connector_pipelines", wheel.name.split("-py3")[0] + ".dist-info"}
    assert any(n.startswith("connector_pipelines/defs/") and n.endswith(".yaml") for n in names)
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for sandbox_only in ("jsonschema", "fastjsonschema"):
        lines = [r for r in requires if r.split(":", 1)[1].strip().startswith(sandbox_only)]
        assert lines and all('extra == "sandbox"' in r for r in lines), lines
