"""Where the vendors' official specs live: ../shared/specs beside the checkout, or CONNECTOR_SPECS_DIR; and the few
vendor files the sandboxes keep themselves (``vendored_specs/``, byte-for-byte, provenance in its README.md)."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
VENDORED_DIR = Path(__file__).resolve().parent / "vendored_specs"


def specs_dir() -> Path:
    candidates = [os.environ.get("CONNECTOR_SPECS_DIR"), REPO_ROOT.parent / "shared" / "specs",
                  REPO_ROOT / "shared" / "specs"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    raise FileNotFoundError("vendor specs not found: set CONNECTOR_SPECS_DIR or keep shared/specs beside the checkout")


@cache
def load_json_spec(name: str) -> Any:
    with open(specs_dir() / name, encoding="utf-8") as f:
        return json.load(f)


@cache
def load_vendored_json(name: str) -> Any:
    """A vendor file shared/specs does not hold, kept beside the sandboxes (``vendored_specs/<name>``)."""
    with open(VENDORED_DIR / name, encoding="utf-8") as f:
        return json.load(f)
