"""osaa-ingest has DuckDB's allocator give freed memory back at once; an operator's own options win."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest
from support import processes

from sqlmesh_osaa.native_memory import JEMALLOC_OPTIONS, RETURN_AT_ONCE, return_freed_memory

# Prints the allocator options the command's process had when it exited (click ends it with SystemExit).
DRIVER = f"""
import atexit, os, sys
atexit.register(lambda: sys.stderr.write("\\nOPTIONS " + repr(os.environ.get({JEMALLOC_OPTIONS!r})) + "\\n"))
from sqlmesh_osaa.cli import ingest_main
sys.argv = ["osaa-ingest", *sys.argv[1:]]
ingest_main()
"""


def allocator_options(tmp_path: Path, **extra: str) -> str | None:
    raw = tmp_path / "raw" / "sdg"
    raw.mkdir(parents=True)
    (raw / "series.csv").write_text("country,year,value\nBEN,2020,1.5\n", encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "OSAA_STORAGE__ROOT": str(tmp_path / "store"),
        "OSAA_CHECKPOINT__DB_PATH": str(tmp_path / "checkpoints.duckdb"),
        **extra,
    }
    result = processes.run([sys.executable, "-c", DRIVER, str(raw.parent), "--json"], timeout=180, env=environ, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("OPTIONS ")]
    return ast.literal_eval(line[len("OPTIONS ") :])


def test_the_ingest_command_runs_duckdb_with_freed_pages_returned_at_once(tmp_path: Path) -> None:
    assert allocator_options(tmp_path) == RETURN_AT_ONCE


def test_allocator_options_an_operator_set_are_kept(tmp_path: Path) -> None:
    assert allocator_options(tmp_path, **{JEMALLOC_OPTIONS: "narenas:2"}) == "narenas:2"


def test_a_process_that_loaded_duckdb_already_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    import duckdb  # noqa: F401  (this process has DuckDB loaded, as any process inside sqlmesh does)

    monkeypatch.delenv(JEMALLOC_OPTIONS, raising=False)
    assert return_freed_memory() is False
    assert JEMALLOC_OPTIONS not in os.environ
