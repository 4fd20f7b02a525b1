"""A checkpoint used in a forked child fails at once with a clear CheckpointError, or works; no write is lost."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.exceptions import CheckpointError

FILE = CheckpointScope.FILE


def in_child(action: Callable[[], Any]) -> dict[str, Any]:
    """Run ``action`` in a forked child; its result or its CheckpointError, as the child saw it."""
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reading)
        try:
            try:
                outcome = {"result": action()}
            except CheckpointError as exc:
                outcome = {"error": type(exc).__name__, "message": str(exc)}
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
                outcome = {"error": type(exc).__name__, "message": repr(exc)}
            os.write(writing, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(report)


def test_an_inherited_checkpoint_fails_at_once_in_the_child_and_keeps_working_in_the_parent(
    checkpoint_target: dict[str, Any],
) -> None:
    with PipelineCheckpoint("fork", **checkpoint_target) as checkpoint:
        checkpoint.mark_started(FILE, "before")

        outcome = in_child(lambda: checkpoint.mark_started(FILE, "from-child"))
        checkpoint.mark_completed(FILE, "before")
        checkpoint.mark_started_many(FILE, ["after-1", "after-2"])

        assert outcome["error"] == "CheckpointError"
        assert "fork" in outcome["message"] and f"process {os.getpid()}" in outcome["message"]
        assert checkpoint.get(FILE, "from-child") is None
        assert checkpoint.is_completed(FILE, "before")
        assert [row["key"] for row in checkpoint.list(status="in_progress")] == ["after-1", "after-2"]

    with PipelineCheckpoint("fork", **checkpoint_target) as reopened:
        assert reopened.is_completed(FILE, "before") and reopened.get(FILE, "after-1") is not None


@pytest.mark.postgres
def test_a_child_that_opens_its_own_postgres_checkpoint_writes_durably(pg_dsn: str) -> None:
    def child_work() -> str:
        with PipelineCheckpoint("fork", dsn=pg_dsn) as own:
            own.mark_started(FILE, "child")
            own.mark_completed(FILE, "child")
            return own.run_id

    with PipelineCheckpoint("fork", dsn=pg_dsn) as checkpoint:
        checkpoint.mark_started(FILE, "parent")
        outcome = in_child(child_work)
        checkpoint.mark_completed(FILE, "parent")

        assert "error" not in outcome, outcome
        assert checkpoint.get(FILE, "child")["run_id"] == outcome["result"]
        assert checkpoint.completed_keys(FILE, ["child", "parent"]) == {"child", "parent"}


def test_a_child_cannot_open_the_duckdb_file_its_parent_holds(tmp_path: Path) -> None:
    db_path = tmp_path / "checkpoints.duckdb"
    with PipelineCheckpoint("fork", db_path) as checkpoint:
        checkpoint.mark_started(FILE, "parent")

        outcome = in_child(lambda: PipelineCheckpoint("fork", db_path).mark_started(FILE, "child"))
        checkpoint.mark_completed(FILE, "parent")

        assert outcome["error"] == "CheckpointError"
        assert f"parent process (PID {os.getpid()})" in outcome["message"] and str(db_path) in outcome["message"]
        assert checkpoint.get(FILE, "child") is None and checkpoint.is_completed(FILE, "parent")


def test_a_child_can_open_a_duckdb_file_its_parent_does_not_hold(tmp_path: Path) -> None:
    with PipelineCheckpoint("fork", tmp_path / "parent.duckdb"):

        def child_work() -> bool:
            with PipelineCheckpoint("fork", tmp_path / "child.duckdb") as own:
                own.mark_started(FILE, "child")
                own.mark_completed(FILE, "child")
            return True

        outcome = in_child(child_work)

    assert outcome == {"result": True}
    with PipelineCheckpoint("fork", tmp_path / "child.duckdb") as reopened:
        assert reopened.is_completed(FILE, "child")
