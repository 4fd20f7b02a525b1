"""The package's layers depend one way, and the core never imports sqlmesh."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from support import processes

PACKAGE = Path(__file__).resolve().parent.parent / "sqlmesh_osaa"

# A module may import only from modules of a lower layer (DESIGN.md section 2).
LAYERS = {
    "redaction": -1,
    "sections": -1,
    "lean_imports": -1,
    "skip_index": -1,
    "exceptions": 0,
    "settings": 1,
    "fault_points": 1,
    "store_identity": 1,
    "storage": 2,
    "checkpoint": 3,
    "duckdb_storage": 3,
    "error_handler": 4,
    "monitoring": 5,
    "metrics": 6,
    "raw_files": 5,
    "conversion": 5,
    "commit_log": 5,
    "commit_protocol": 6,
    "transaction_manager": 7,
    "ingest": 8,
    "promotion": 8,
    "integration": 9,
    "macros": 10,
    "cli": 11,
}
CORE = [name for name, layer in LAYERS.items() if layer <= LAYERS["ingest"]]


def first_party_imports(path: Path) -> set[str]:
    """Top-level sqlmesh_osaa modules imported anywhere in ``path`` (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sqlmesh_osaa."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "sqlmesh_osaa":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("sqlmesh_osaa."))
    return found


def module_files(name: str) -> list[Path]:
    package = PACKAGE / name
    return sorted(package.rglob("*.py")) if package.is_dir() else [PACKAGE / f"{name}.py"]


def test_every_module_has_a_layer():
    modules = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    modules |= {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert modules <= set(LAYERS), f"give these modules a layer: {sorted(modules - set(LAYERS))}"


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_module_imports_only_lower_layers(name):
    for path in module_files(name):
        if not path.exists():
            continue
        upward = {m for m in first_party_imports(path) - {name} if LAYERS.get(m, 99) >= LAYERS[name]}
        assert not upward, f"{path.relative_to(PACKAGE.parent)} imports {sorted(upward)} from its own or a higher layer"


def test_core_imports_without_sqlmesh():
    code = (
        "import sys\n"
        + "".join(f"import sqlmesh_osaa.{name}\n" for name in CORE)
        + "loaded = sorted(m for m in sys.modules if m == 'sqlmesh' or m.startswith('sqlmesh.'))\n"
        + "print(loaded)\n"
    )
    result = processes.run([sys.executable, "-c", code], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
