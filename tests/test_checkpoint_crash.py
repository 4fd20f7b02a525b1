"""A process SIGKILLed while writing checkpoints loses none whose write had returned."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import processes

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint

WRITER = textwrap.dedent(
    """
    import sys
    from sqlmesh_osaa.checkpoint import PipelineCheckpoint

    store = PipelineCheckpoint("crash", sys.argv[1], lock_timeout=30)
    batch = sys.argv[2] == "batch"
    for round in range(1_000_000):
        if batch:
            keys = [f"batch-{round}-{item}" for item in range(200)]
            store.mark_started_many("file", keys)
            store.mark_completed_many("file", keys)
        else:
            keys = [f"single-{round}"]
            store.mark_started("file", keys[0])
            store.mark_completed("file", keys[0])
        print(" ".join(keys), flush=True)
    """
)


@pytest.mark.parametrize(("mode", "lines_before_kill"), [("single", 40), ("batch", 8)])
def test_every_checkpoint_written_before_a_sigkill_is_in_the_reopened_database(
    tmp_path: Path, mode: str, lines_before_kill: int
) -> None:
    db_path = tmp_path / "checkpoints.duckdb"
    command = [sys.executable, "-c", WRITER, str(db_path), mode]
    with processes.spawn(command, stdout=subprocess.PIPE, text=True) as writer:
        printed = [writer.stdout.readline() for _ in range(lines_before_kill)]
        writer.send_signal(signal.SIGKILL)
        printed += writer.stdout.readlines()
        assert writer.wait(timeout=60) == -signal.SIGKILL
    keys = [key for line in printed for key in line.split()]

    with PipelineCheckpoint("crash", db_path, lock_timeout=30) as store:
        assert store.completed_keys(CheckpointScope.FILE, keys) == set(keys)
        assert all(row["status"] == "completed" or row["interrupted"] for row in store.list())
