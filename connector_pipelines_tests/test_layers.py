"""The rooms-with-one-door rule (DESIGN.md §2), checked on the source: a wrong import fails here."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "connector_pipelines"
SANDBOXES = REPO / "sandboxes"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def product_files():
    yield from PKG.rglob("*.py")


def test_product_code_never_imports_the_sandboxes():
    offenders = [str(p.relative_to(PKG)) for p in product_files()
                 if any(n.startswith("sandboxes") for n in imports_of(p))]
    assert offenders == []


def test_emulators_never_import_the_product():
    """The emulators stand for the vendors: they know the specs, never our code (the harness may)."""
    emulators = [p for p in SANDBOXES.rglob("*.py") if "harness" not in p.relative_to(SANDBOXES).parts]
    offenders = [f"{p.relative_to(SANDBOXES)} imports {n}" for p in emulators for n in imports_of(p)
                 if n.split(".")[0] == "connector_pipelines"]
    assert len(emulators) > 5 and offenders == []


def test_systems_know_nothing_of_dagster_or_other_layers():
    offenders = []
    for path in (PKG / "systems").rglob("*.py"):
        for name in imports_of(path):
            if name.split(".")[0] == "dagster" or name.startswith(("connector_pipelines.integrations",
                                                                      "connector_pipelines.components",
                                                                      "connector_pipelines.defs")):
                offenders.append(f"{path.relative_to(PKG)} imports {name}")
    assert offenders == []


def test_core_and_integrations_are_dagster_free():
    offenders = [f"{p.relative_to(PKG)} imports {n}" for folder in ("core", "integrations", "receiver")
                 for p in (PKG / folder).rglob("*.py") for n in imports_of(p) if n.split(".")[0] == "dagster"]
    assert offenders == []


def test_the_layer_check_sees_files():
    assert len(list(product_files())) > 10
    assert any((PKG / "systems").rglob("*.py"))
