"""The scratch workspace the CLI tests run the installed commands in (shared by their conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
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
