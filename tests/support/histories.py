"""A checkpoint history through every write path: what tests of the tables the writes keep beside the log replay."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import _duckdb as duckdb

from sqlmesh_osaa.checkpoint import ItemChange, PipelineCheckpoint

FILE, MODEL = "file", "model"
BULK = [f"bulk/{i:03d}" for i in range(40)]  # more than a bulk write's threshold (16)


def every_write_path(checkpoint: PipelineCheckpoint) -> None:
    """Every write path: single marks, bulk starts and completions, batches of several changes per key, clears."""
    checkpoint.mark_started(FILE, "a")
    checkpoint.mark_failed(FILE, "a", "boom")
    checkpoint.mark_started(FILE, "a")
    checkpoint.mark_failed(FILE, "a", "boom again")
    checkpoint.mark_started(FILE, "a")
    checkpoint.mark_completed(FILE, "a")
    checkpoint.mark_started(FILE, "b")
    checkpoint.mark_failed(FILE, "b", "down")
    checkpoint.mark_started(FILE, "cleared")
    checkpoint.mark_failed(FILE, "cleared", "gone")
    checkpoint.clear_checkpoint(FILE, "cleared")
    checkpoint.mark_started(FILE, "cleared")
    checkpoint.mark_completed(FILE, "cleared")
    checkpoint.mark_started_many(FILE, BULK)
    for key in BULK[:5]:
        checkpoint.mark_failed(FILE, key, "bulk failure")
    checkpoint.mark_started_many(FILE, BULK[:5])
    checkpoint.mark_completed_many(FILE, BULK)
    checkpoint.mark_started_many(FILE, BULK, force=True)
    checkpoint.mark_completed_many(FILE, BULK)
    now = datetime.now(timezone.utc)
    changes = []
    for index in range(20):
        key = f"model/{index}"
        changes += [ItemChange(key, "in_progress", at=now), ItemChange(key, "failed", error_message="x", at=now + timedelta(seconds=1))]
        if index % 2:
            changes += [ItemChange(key, "in_progress", at=now + timedelta(seconds=2)), ItemChange(key, "completed", at=now + timedelta(seconds=5))]
    checkpoint.record_changes(MODEL, changes)
    checkpoint.record_changes(MODEL, [ItemChange("model/0", "in_progress", at=now + timedelta(seconds=9))])
    checkpoint.record_changes(
        MODEL, [ItemChange("model/0", "completed", at=now + timedelta(seconds=10)), ItemChange("model/1", "in_progress", force=True)]
    )
    checkpoint.clear_all_checkpoints(MODEL, status="failed")


def rows_and_events(checkpoint: PipelineCheckpoint) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every stored row and event, in a fixed order: what a layout migration must keep as it was."""
    rows = checkpoint.store.read("SELECT * FROM checkpoints ORDER BY pipeline, scope, key")
    return rows, checkpoint.store.read("SELECT * FROM checkpoint_events ORDER BY seq")


def on_closed_file(db_path: Path, *statements: str) -> None:
    """Run ``statements`` on a DuckDB checkpoint file no store has open (to make it an older layout)."""
    connection = duckdb.connect(str(db_path))
    try:
        for statement in statements:
            connection.execute(statement)
    finally:
        connection.close()
