"""Jobs of tests/crash (transactions, ingests, recoveries) as child processes, and what they leave.

Each job leads its own process group, killed with it when :func:`finish` returns (also on
timeout or failure), as :mod:`support.processes` requires of every child.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from support.processes import kill_group

from sqlmesh_osaa.fault_points import FAULT_POINT_ENV
from sqlmesh_osaa.storage import LocalStore, ObjectStore, S3Store

CRASH_DIR = Path(__file__).resolve().parent.parent / "crash"


def store_spec(store: ObjectStore) -> str:
    """How tests/crash/txn_job.py names ``store``."""
    if isinstance(store, LocalStore):
        return f"local:{store.root}:{store.bucket}"
    assert isinstance(store, S3Store)
    return f"s3:{store.endpoint_url}:{store.bucket}"


def start(
    args: Sequence[str],
    *,
    fault: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start a Python script (or, with an absolute executable first, a command) in its own process group."""
    environment = {**os.environ, **(env or {}), FAULT_POINT_ENV: fault or ""}
    command = list(args) if Path(args[0]).name.startswith("osaa-") else [sys.executable, *args]
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, cwd=cwd,
    )


def finish(process: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    """Wait for ``process``; on timeout or any error its whole group is killed and reaped."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        kill_group(process)
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run(args: Sequence[str], *, fault: str | None = None, timeout: float = 120, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    return finish(start(args, fault=fault, env=env), timeout)


def txn_job(store: ObjectStore, db: Path, *extra: str, fault: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return run([str(CRASH_DIR / "txn_job.py"), store_spec(store), str(db), *extra], fault=fault, timeout=timeout)


def unfinished_work(store: ObjectStore) -> dict[str, list[str]]:
    """What a finished protocol leaves nothing of: markers in flight, staging, versions no snapshot names."""
    from sqlmesh_osaa.commit_log import MARKER_PREFIX, VERSIONS_PREFIX, CommitLog
    from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy

    retained = CommitLog(store, ErrorHandler(RetryPolicy(max_attempts=1))).retained_versions()
    return {
        "markers": [info.key for info in store.list_prefix(MARKER_PREFIX)],
        "staging": [info.key for info in store.list_prefix("staging/")],
        "unreferenced_versions": [
            info.key for info in store.list_prefix(VERSIONS_PREFIX) if info.key not in retained
        ],
    }


NOTHING_UNFINISHED = {"markers": [], "staging": [], "unreferenced_versions": []}


def wait_for_line(process: subprocess.Popen, expected: str, timeout: float = 120) -> None:
    """Block until ``process`` prints ``expected`` (as a whole line); kill its group if it never does."""
    import select

    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline().strip() if ready else ""
    if line != expected:
        kill_group(process)
        raise AssertionError(f"process printed {line!r} instead of {expected!r} within {timeout}s")
