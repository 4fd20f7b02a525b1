"""Running the installed commands in subprocesses, in a scratch directory with its own settings.

Each test gets a working directory with local storage and a checkpoint database under
``.osaa/`` (the defaults), and an environment without the developer's ``OSAA_*`` and
``AWS_*`` variables. Observations are what a user sees: exit codes, stdout/stderr, objects
in the store, rows in the checkpoint database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from support import processes

BIN = Path(sys.executable).parent
TIMEOUT = 180
GOOD_CSV = "country,year,value\nKEN,2020,1.5\nNGA,2020,2.5\n"
BAD_CSV = "a,b\n1,2,3,4\n5\n"


@dataclass
class Workspace:
    """A scratch directory where the commands run with default settings."""

    path: Path
    env: dict[str, str]

    @property
    def db(self) -> Path:
        return self.path / ".osaa" / "checkpoints.duckdb"

    @property
    def bucket(self) -> Path:
        return self.path / ".osaa" / "storage" / "osaa"

    def run(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run an installed console script (``osaa-recover``, ``sqlmesh``, ...) in the workspace."""
        command = [str(BIN / args[0]), *args[1:]]
        return processes.run(command, cwd=self.path, env={**self.env, **(extra_env or {})}, timeout=TIMEOUT)

    def json(self, *args: str, expect: int | None = None, **kwargs: Any) -> dict[str, Any]:
        result = self.run(*args, "--json", **kwargs)
        if expect is not None:
            assert result.returncode == expect, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        return json.loads(result.stdout)

    def write(self, relative: str, text: str) -> Path:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        return target

    def rows(self) -> list[tuple[Any, ...]]:
        """Every checkpoint row (pipeline, scope, key, status), read-only."""
        with duckdb.connect(str(self.db), read_only=True) as connection:
            return connection.execute("SELECT pipeline, scope, key, status FROM checkpoints ORDER BY ALL").fetchall()


def clean_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSAA_", "AWS_", "SQLMESH_"))}
    env["OSAA_CHECKPOINT__LOCK_TIMEOUT_SECONDS"] = "0.5"
    return env


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, clean_environment())


@pytest.fixture
def empty_db(workspace: Workspace) -> Workspace:
    """A checkpoint database with its tables and no row."""
    from sqlmesh_osaa.checkpoint import PipelineCheckpoint

    PipelineCheckpoint("ingest", workspace.db).close()
    return workspace


@pytest.fixture
def ingested(workspace: Workspace) -> Workspace:
    """One ingest run: wdi/good.csv landed, wdi/bad.csv failed."""
    workspace.write("raw/wdi/good.csv", GOOD_CSV)
    workspace.write("raw/wdi/bad.csv", BAD_CSV)
    result = workspace.run("osaa-ingest", "raw")
    assert result.returncode == 1, result.stdout + result.stderr
    return workspace
