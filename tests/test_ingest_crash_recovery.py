"""Kill an ingest process (SIGKILL) at every point of the commit protocol, recover, and check.

After any kill plus recovery: production holds exactly the previous set or exactly the new
set of objects, staging is empty, checkpoints agree with production, and a second run
finishes the work with no duplicate object.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import processes
from support.jobs import NOTHING_UNFINISHED, unfinished_work

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy
from sqlmesh_osaa.fault_points import (
    AFTER_COMMIT_DECISION,
    AFTER_PRODUCTION_COPY,
    AFTER_STAGING,
    BEFORE_STAGING_CLEANUP,
    FAULT_POINT_ENV,
)
from sqlmesh_osaa.storage import LocalStore
from sqlmesh_osaa.transaction_manager import recover_transactions

JOB = Path(__file__).parent / "crash" / "ingest_job.py"
FAST = ErrorHandler(RetryPolicy(max_attempts=2, initial_delay=0, max_delay=0, jitter=False))
FILES = 6


def write_raw(raw: Path, generation: int) -> None:
    """Generation 1: files 0-3. Generation 2 changes file 1 and adds files 4-5."""
    (raw / "wdi").mkdir(parents=True, exist_ok=True)
    count = 4 if generation == 1 else FILES
    for index in range(count):
        version = 2 if (generation == 2 and index == 1) else 1
        lines = ["country,year,value"] + [f"C{index}{row},{2000 + row},{row * version}" for row in range(50)]
        path = raw / "wdi" / f"file_{index}.csv"
        text = "\n".join(lines) + "\n"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def run_job(raw: Path, storage: Path, db: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, FAULT_POINT_ENV: fault or ""}
    return processes.run([sys.executable, str(JOB), str(raw), str(storage), str(db)], env=env, timeout=120)


def production(store: LocalStore) -> dict[str, str]:
    return {info.key: info.md5 for info in store.list_prefix("prod/")}


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> tuple[dict[str, str], dict[str, str]]:
    """The previous and the new production sets, from clean uninterrupted runs."""
    base = tmp_path_factory.mktemp("reference")
    raw, storage, db = base / "raw", base / "storage", base / "c.duckdb"
    write_raw(raw, 1)
    assert run_job(raw, storage, db).stdout.split() == ["started", "done"]
    old = production(LocalStore(storage, "osaa"))
    write_raw(raw, 2)
    assert run_job(raw, storage, db).stdout.split() == ["started", "done"]
    new = production(LocalStore(storage, "osaa"))
    assert len(old) == 4 and len(new) == FILES and old != new
    return old, new


@pytest.fixture
def world(tmp_path, sets):
    """A raw directory at generation 2 whose store and checkpoints hold generation 1."""
    raw, storage, db = tmp_path / "raw", tmp_path / "storage", tmp_path / "c.duckdb"
    write_raw(raw, 1)
    assert run_job(raw, storage, db).stdout.split() == ["started", "done"]
    time.sleep(0.01)
    write_raw(raw, 2)
    return raw, storage, db


def assert_recovered(raw: Path, storage: Path, db: Path, sets) -> None:
    old, new = sets
    store = LocalStore(storage, "osaa")
    with PipelineCheckpoint("ingest", db) as checkpoint:
        recover_transactions(checkpoint, store, error_handler=FAST)
        now = production(store)
        assert now in (old, new)
        assert unfinished_work(store) == NOTHING_UNFINISHED
        for key, md5 in new.items():
            source = raw / "wdi" / (Path(key).stem + ".csv")
            if checkpoint.is_completed(CheckpointScope.FILE, key, str(source)):
                assert now.get(key) == md5, f"{key} checkpointed as done but production differs"
    finished = run_job(raw, storage, db)
    assert finished.stdout.split() == ["started", "done"], finished.stderr
    assert production(store) == new
    assert unfinished_work(store) == NOTHING_UNFINISHED


@pytest.mark.parametrize(
    "fault",
    [
        AFTER_STAGING,
        f"{AFTER_STAGING}:3",
        AFTER_COMMIT_DECISION,
        AFTER_PRODUCTION_COPY,
        f"{AFTER_PRODUCTION_COPY}:2",
        BEFORE_STAGING_CLEANUP,
    ],
)
def test_kill_at_fault_point_then_recovery_leaves_old_or_new_set(world, sets, fault):
    raw, storage, db = world
    killed = run_job(raw, storage, db, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_recovered(raw, storage, db, sets)


def test_kills_at_random_times_never_leave_a_torn_state(tmp_path, sets):
    rng = random.Random(20261129)
    for attempt in range(4):
        base = tmp_path / str(attempt)
        raw, storage, db = base / "raw", base / "storage", base / "c.duckdb"
        write_raw(raw, 1)
        assert run_job(raw, storage, db).stdout.split() == ["started", "done"]
        write_raw(raw, 2)
        command = [sys.executable, str(JOB), str(raw), str(storage), str(db)]
        with processes.spawn(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
            time.sleep(rng.uniform(0.2, 1.5))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        assert_recovered(raw, storage, db, sets)
        shutil.rmtree(base)
