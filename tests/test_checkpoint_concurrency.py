"""Many threads share one store; a second process waits for the database, then says who holds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterator

import duckdb
import pytest
from support import processes

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint

FILE = CheckpointScope.FILE
THREADS = 8
FILES_PER_THREAD = 1000
CHUNK = 250
SINGLES_PER_CHUNK = 2

OPENER = textwrap.dedent(
    """
    import json, logging, sys
    from sqlmesh_osaa.checkpoint import PipelineCheckpoint
    from sqlmesh_osaa.exceptions import CheckpointError

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    print("opening", flush=True)
    try:
        with PipelineCheckpoint("test", sys.argv[1], lock_timeout=float(sys.argv[2])) as store:
            store.mark_started("file", "from-second-process")
            print(json.dumps({"opened": True}), flush=True)
    except CheckpointError as exc:
        print(json.dumps({"opened": False, "type": type(exc).__name__, "message": str(exc), **exc.context}), flush=True)
    """
)


def mark_files(stores: list[PipelineCheckpoint], worker: int, errors: list[BaseException]) -> None:
    """Start and complete this worker's files, a few one by one and the rest in batches."""
    try:
        store = stores[worker % len(stores)]
        keys = [f"worker-{worker}/file-{i}.parquet" for i in range(FILES_PER_THREAD)]
        for start in range(0, FILES_PER_THREAD, CHUNK):
            chunk = keys[start : start + CHUNK]
            for key in chunk[:SINGLES_PER_CHUNK]:
                store.mark_started(FILE, key)
                store.mark_completed(FILE, key)
            store.mark_started_many(FILE, chunk[SINGLES_PER_CHUNK:])
            store.mark_completed_many(FILE, chunk[SINGLES_PER_CHUNK:])
    except BaseException as exc:  # noqa: BLE001 - the test asserts that nothing was raised
        errors.append(exc)


def test_eight_threads_marking_a_thousand_files_each_lose_nothing(tmp_path: Path) -> None:
    db_path = tmp_path / "checkpoints.duckdb"
    errors: list[BaseException] = []
    with PipelineCheckpoint("test", db_path) as shared, PipelineCheckpoint("test", db_path) as second_instance:
        workers = [
            threading.Thread(target=mark_files, args=([shared, second_instance], worker, errors))
            for worker in range(THREADS)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        all_keys = [f"worker-{w}/file-{i}.parquet" for w in range(THREADS) for i in range(FILES_PER_THREAD)]

        assert errors == []
        assert shared.completed_keys(FILE, all_keys) == set(all_keys)
        assert shared.get_statistics()["total"] == THREADS * FILES_PER_THREAD

    with duckdb.connect(str(db_path), read_only=True) as database:
        events = database.execute("SELECT to_status, count(*) FROM checkpoint_events GROUP BY ALL ORDER BY ALL")
        assert events.fetchall() == [
            ("completed", THREADS * FILES_PER_THREAD),
            ("in_progress", THREADS * FILES_PER_THREAD),
        ]


@pytest.fixture
def another_process() -> Iterator[Callable[[Path, float], subprocess.Popen]]:
    """Starts a process that opens the database; it is killed with its group when the test ends."""
    with ExitStack() as stack:

        def open_from_another_process(db_path: Path, lock_timeout: float) -> subprocess.Popen:
            command = [sys.executable, "-c", OPENER, str(db_path), str(lock_timeout)]
            child = stack.enter_context(
                processes.spawn(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
            assert child.stdout.readline().strip() == "opening"
            return child

        yield open_from_another_process


def test_a_second_process_gets_a_checkpoint_error_naming_the_file_and_the_holder(
    tmp_path: Path, another_process: Callable[[Path, float], subprocess.Popen]
) -> None:
    db_path = tmp_path / "checkpoints.duckdb"
    with PipelineCheckpoint("test", db_path):
        child = another_process(db_path, 0.5)
        outcome = json.loads(child.stdout.readline())
        stderr = child.communicate(timeout=60)[1]

    assert outcome["opened"] is False
    assert outcome["type"] == "CheckpointError"
    assert str(db_path) in outcome["message"] and f"PID {os.getpid()}" in outcome["message"]
    assert (outcome["db_path"], outcome["holder_pid"]) == (str(db_path), os.getpid())
    assert "waiting" in stderr and "IOException" not in stderr


def test_a_second_process_opens_the_database_once_the_holder_lets_go(
    tmp_path: Path, another_process: Callable[[Path, float], subprocess.Popen]
) -> None:
    db_path = tmp_path / "checkpoints.duckdb"
    holder = PipelineCheckpoint("test", db_path)
    child = another_process(db_path, 60)
    assert any("waiting" in line for line in child.stderr)  # stops reading at the first such line
    holder.close()

    assert json.loads(child.stdout.readline()) == {"opened": True}
    child.wait(timeout=60)
    with PipelineCheckpoint("test", db_path) as store:
        assert store.get(FILE, "from-second-process")["interrupted"] is True
