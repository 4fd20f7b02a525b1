"""Temp copies of example_project driven by the real ``sqlmesh`` CLI in a subprocess.

Every command runs with the project as working directory (SQLMesh resolves the DuckDB
warehouse path against it) and an environment stripped of the developer's OSAA_* and AWS_*
variables. Observations are read the way a user would: objects in the store, rows in the
checkpoint database (opened read-only after the command ended).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from support import processes
from support.s3server import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, s3_client_for

from sqlmesh_osaa.storage import LocalStore, ObjectStore, S3Store

EXAMPLE_PROJECT = Path(__file__).resolve().parents[2] / "example_project"
SQLMESH = Path(sys.executable).parent / "sqlmesh"
COMMAND_TIMEOUT = 240
_NOT_COPIED = shutil.ignore_patterns("warehouse.duckdb*", ".osaa", ".cache", "logs", "__pycache__", "demo.py")


@dataclass
class Project:
    """A copy of the example project, its store and its checkpoint database."""

    path: Path
    env: dict[str, str]
    store: ObjectStore

    def sqlmesh(
        self, *args: str, check: bool = True, extra_env: dict[str, str] | None = None, stdin: str | None = None
    ) -> Completed:
        return run([str(SQLMESH), *args], self.path, {**self.env, **(extra_env or {})}, check=check, stdin=stdin)

    def python(self, program: str, check: bool = True) -> Completed:
        """A Python program run in the project directory with the project's environment."""
        return run([sys.executable, "-c", program], self.path, self.env, check=check)

    def sqlmesh_days_later(self, days: int, *args: str, check: bool = True) -> Completed:
        """The CLI with the clock moved ``days`` ahead, so that ``sqlmesh run`` finds new intervals."""
        return run(self.days_later_command(days, *args), self.path, self.env, check=check)

    def days_later_command(self, days: int, *args: str) -> list[str]:
        """The argv of ``sqlmesh <args>`` with the clock moved ``days`` ahead."""
        program = (
            "import sys, datetime, time_machine\n"
            "from sqlmesh.cli.main import cli\n"
            f"sys.argv = ['sqlmesh', *{list(args)!r}]\n"
            f"later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days={days})\n"
            "with time_machine.travel(later):\n"
            "    cli()\n"
        )
        return [sys.executable, "-c", program]

    def plan(self, environment: str | None = None, *extra: str, check: bool = True, **kwargs: Any) -> Completed:
        args = ["plan", *([environment] if environment else []), "--auto-apply", "--no-prompts", *extra]
        return self.sqlmesh(*args, check=check, **kwargs)

    def write(self, relative: str, text: str) -> None:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def edit(self, relative: str, old: str, new: str) -> None:
        target = self.path / relative
        content = target.read_text(encoding="utf-8")
        assert old in content, f"{old!r} not in {relative}"
        target.write_text(content.replace(old, new), encoding="utf-8")

    def objects(self, prefix: str) -> dict[str, str]:
        """Key -> MD5 of the content, for every object under ``prefix``."""
        found = {}
        with tempfile.TemporaryDirectory() as workdir:
            for info in self.store.list_prefix(prefix):
                local = Path(workdir) / uuid.uuid4().hex
                self.store.get_file(info.key, local)
                found[info.key] = hashlib.md5(local.read_bytes()).hexdigest()
        return found

    def parquet_rows(self, key: str) -> list[tuple[Any, ...]]:
        with tempfile.TemporaryDirectory() as workdir:
            local = Path(workdir) / "object.parquet"
            self.store.get_file(key, local)
            with duckdb.connect() as connection:
                return connection.execute("SELECT * FROM read_parquet(?) ORDER BY ALL", [str(local)]).fetchall()

    def checkpoints(self, scope: str) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT key, status, error_message, attempt, metadata FROM checkpoints WHERE scope = ? ORDER BY updated_at",
            [scope],
        )
        return [
            {"key": key, "status": status, "error_message": error, "attempt": attempt, "metadata": json.loads(metadata)}
            for key, status, error, attempt, metadata in rows
        ]

    def event_count(self, scope: str) -> int:
        return self._query("SELECT count(*) FROM checkpoint_events WHERE scope = ?", [scope])[0][0]

    def recorded_models(self) -> set[str]:
        """Models (``schema.name``) SQLMesh's state records an interval of (the warehouse opened read-only)."""
        with duckdb.connect(str(self.path / "warehouse.duckdb"), read_only=True) as connection:
            names = connection.execute("SELECT DISTINCT name FROM sqlmesh._intervals WHERE NOT is_removed").fetchall()
        return {name.split(".", 1)[1].replace('"', "") for (name,) in names}

    def _query(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(self.path / ".osaa" / "checkpoints.duckdb"), read_only=True) as connection:
            return connection.execute(sql, params).fetchall()


Completed = subprocess.CompletedProcess[str]


def run(command: list[str], cwd: Path, env: dict[str, str], check: bool = True, stdin: str | None = None) -> Completed:
    result = processes.run(command, cwd=cwd, env=env, timeout=COMMAND_TIMEOUT, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OSAA_", "AWS_", "SQLMESH_OSAA_"))}


def copy_example(destination: Path) -> Path:
    shutil.copytree(EXAMPLE_PROJECT, destination, ignore=_NOT_COPIED)
    return destination


def local_project(directory: Path) -> Project:
    path = copy_example(directory / "project")
    return Project(path=path, env=clean_env(), store=LocalStore(path / ".osaa" / "storage", "osaa"))


def s3_project(directory: Path, endpoint_url: str) -> Project:
    """The same project on an S3 endpoint, switched by OSAA_* settings alone, on a fresh bucket."""
    bucket = f"osaa-{uuid.uuid4().hex[:12]}"
    s3_client_for(endpoint_url).create_bucket(Bucket=bucket)
    env = {
        **clean_env(),
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "OSAA_STORAGE__BACKEND": "s3",
        "OSAA_STORAGE__ENDPOINT_URL": endpoint_url,
        "OSAA_STORAGE__BUCKET": bucket,
        "OSAA_STORAGE__REGION": "us-east-1",
        "OSAA_STORAGE__ADDRESSING_STYLE": "path",
    }
    path = copy_example(directory / "project")
    store = S3Store(bucket, endpoint_url=endpoint_url, region="us-east-1", addressing_style="path")
    return Project(path=path, env=env, store=store)


def sentinel_project(directory: Path, endpoint_url: str, *, secret_key: str, session_token: str) -> Project:
    """:func:`s3_project` in an empty HOME of its own (``env["HOME"]``), signing with these credentials."""
    project = s3_project(directory, endpoint_url)
    home = directory / "home"
    home.mkdir()
    project.env.update(HOME=str(home), AWS_SECRET_ACCESS_KEY=secret_key, AWS_SESSION_TOKEN=session_token)
    return project


BAD_SDG_ROWS = "INDICATOR_ID,COUNTRY_ID,YEAR,VALUE,MAGNITUDE,QUALIFIER\nCR.1,NGA,2023,74.0,,\nCR.1,KEN,2099,88.0,,\n"
FIXED_SDG_ROWS = BAD_SDG_ROWS.replace("2099", "2023")
