"""Each command loads only what it uses: the modules in ``sys.modules`` when it exits.

An unchanged ``osaa-ingest`` re-run and the recovery CLI's reads are mostly start-up
(docs/performance.md, "Ingest" and "Store growth"); these tests keep what made them fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from support import processes

# Reports the loaded modules on stderr when the command exits (click ends it with SystemExit);
# a None entry is a module marked absent (lean_imports), not loaded.
DRIVER = """
import atexit, json, sys
def report():
    loaded = sorted(name for name, module in sys.modules.items() if module is not None)
    sys.stderr.write("\\nMODULES " + json.dumps(loaded) + "\\n")
atexit.register(report)
from sqlmesh_osaa.cli import {main}
sys.argv = ["{prog}", *sys.argv[1:]]
{main}()
"""

NEVER = ("pandas", "numpy", "pyarrow", "boto3", "botocore", "sqlmesh", "pydantic", "yaml")
# The checkpoint store loads DuckDB's extension module (_duckdb), not the package around it,
# whose import looks up its version through importlib.metadata.
NOT_FOR_READS = (
    "tenacity",
    "rich",
    "sqlmesh_osaa.storage",
    "sqlmesh_osaa.error_handler",
    "sqlmesh_osaa.ingest",
    "duckdb",
    "importlib.metadata",
)
NOT_FOR_UNCHANGED = (
    "tenacity",
    "rich",
    "sqlmesh_osaa.transaction_manager",
    "sqlmesh_osaa.commit_protocol",
    "sqlmesh_osaa.conversion",
    "sqlmesh_osaa.checkpoint.sync",
    "sqlmesh_osaa.metrics",
)


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "OSAA_STORAGE__ROOT": str(tmp_path / "store"),
        "OSAA_CHECKPOINT__DB_PATH": str(tmp_path / "checkpoints.duckdb"),
    }


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "raw" / "sdg"
    directory.mkdir(parents=True)
    for index in range(3):
        (directory / f"series_{index}.csv").write_text("country,year,value\nBEN,2020,1.5\n", encoding="utf-8")
    (directory / "broken.csv").write_bytes(b"a,b\n\xff\xfe,\x00\x00\x00\n1\n")
    return directory.parent


def command(main: str, prog: str, args: list[str], environ: dict[str, str], cwd: Path) -> tuple[int, set[str]]:
    code = DRIVER.format(main=main, prog=prog)
    result = processes.run([sys.executable, "-c", code, *args], timeout=180, env=environ, cwd=cwd)
    marker = [line for line in result.stderr.splitlines() if line.startswith("MODULES ")]
    assert marker, result.stderr
    return result.returncode, set(json.loads(marker[-1][len("MODULES ") :]))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if name in modules or any(m.startswith(name + ".") for m in modules))


NOT_FOR_THE_SKIP_INDEX = ("duckdb", "sqlmesh_osaa.checkpoint", "sqlmesh_osaa.storage", "sqlmesh_osaa.ingest")


def test_an_unchanged_ingest_rerun_loads_neither_the_commit_machinery_nor_rich_nor_retries(
    environ: dict[str, str], raw_dir: Path, tmp_path: Path
) -> None:
    command("ingest_main", "osaa-ingest", [str(raw_dir), "--json"], environ, tmp_path)
    (raw_dir / "sdg" / "broken.csv").unlink()
    Path(environ["OSAA_CHECKPOINT__DB_PATH"] + ".skip-index").unlink()
    code, modules = command("ingest_main", "osaa-ingest", [str(raw_dir), "--json"], environ, tmp_path)
    assert code == 0
    assert "duckdb" in modules
    assert loaded(modules, NEVER + NOT_FOR_UNCHANGED) == []


def test_an_unchanged_rerun_answered_by_the_skip_index_loads_neither_duckdb_nor_checkpoints_nor_storage(
    environ: dict[str, str], raw_dir: Path, tmp_path: Path
) -> None:
    (raw_dir / "sdg" / "broken.csv").unlink()
    command("ingest_main", "osaa-ingest", [str(raw_dir), "--json"], environ, tmp_path)
    code, modules = command("ingest_main", "osaa-ingest", [str(raw_dir), "--json"], environ, tmp_path)
    assert code == 0
    assert loaded(modules, NEVER + NOT_FOR_UNCHANGED + NOT_FOR_THE_SKIP_INDEX) == []


@pytest.mark.parametrize(
    "args",
    [["list-failed", "--json"], ["stats", "--json"], ["history", "--key", "prod/landing/sdg/series_0.parquet", "--json"]],
    ids=lambda args: args[0],
)
def test_recovery_reads_load_no_settings_library_storage_retries_or_duckdb_package(
    args: list[str], environ: dict[str, str], raw_dir: Path, tmp_path: Path
) -> None:
    command("ingest_main", "osaa-ingest", [str(raw_dir), "--json"], environ, tmp_path)
    code, modules = command("recover_main", "osaa-recover", args, environ, tmp_path)
    assert code in (0, 1)
    assert loaded(modules, NEVER + NOT_FOR_READS) == []
