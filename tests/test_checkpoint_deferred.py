"""Changes recorded in one transaction (``record_changes``) and buffered changes (``DeferredChanges``), per backend."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from sqlmesh_osaa.checkpoint import CheckpointScope, ItemChange, PipelineCheckpoint
from sqlmesh_osaa.checkpoint.deferred import DeferredChanges
from sqlmesh_osaa.exceptions import CheckpointError, ErrorCategory

MODEL = CheckpointScope.MODEL


@pytest.fixture
def checkpoint(checkpoint_target: dict[str, Any]) -> Iterator[PipelineCheckpoint]:
    with PipelineCheckpoint("test", **checkpoint_target, lock_timeout=5) as opened:
        yield opened


def _transitions(checkpoint: PipelineCheckpoint, key: str) -> list[tuple[str, str]]:
    return [(event["from_status"], event["to_status"]) for event in checkpoint.history(MODEL, key)]


def test_a_batch_starting_and_completing_an_item_logs_both_transitions_and_leaves_it_completed(
    checkpoint: PipelineCheckpoint,
) -> None:
    checkpoint.record_changes(
        MODEL, [ItemChange("m|a", "in_progress", {"model": "m"}), ItemChange("m|a", "completed", {"phase": "recorded"})]
    )

    row = checkpoint.get(MODEL, "m|a")
    assert (row["status"], row["attempt"], row["metadata"]) == ("completed", 1, {"model": "m", "phase": "recorded"})
    assert _transitions(checkpoint, "m|a") == [("pending", "in_progress"), ("in_progress", "completed")]


def test_each_change_keeps_the_time_it_was_made(checkpoint: PipelineCheckpoint) -> None:
    started, ended = datetime(2026, 1, 1, 8, 0, 0), datetime(2026, 1, 1, 8, 0, 5)

    checkpoint.record_changes(MODEL, [ItemChange("k", "in_progress", at=started), ItemChange("k", "completed", at=ended)])

    row = checkpoint.get(MODEL, "k")
    assert (row["started_at"].replace(tzinfo=None), row["completed_at"].replace(tzinfo=None)) == (started, ended)


def test_a_large_batch_of_many_items_is_one_write_with_every_row(checkpoint: PipelineCheckpoint) -> None:
    changes = [ItemChange(f"k{i}", "in_progress") for i in range(40)]
    changes += [ItemChange(f"k{i}", "completed" if i % 4 else "failed", error_message="boom") for i in range(40)]

    checkpoint.record_changes(MODEL, changes)

    statuses = {row["key"]: row["status"] for row in checkpoint.list(MODEL)}
    assert statuses == {f"k{i}": "completed" if i % 4 else "failed" for i in range(40)}
    assert checkpoint.get(MODEL, "k0")["error_message"] == "boom"
    assert len(checkpoint.history(MODEL, "k5")) == 2


def test_an_illegal_change_refuses_the_whole_batch(checkpoint: PipelineCheckpoint) -> None:
    with pytest.raises(CheckpointError, match=r"'never-started' \(pending -> completed\): it was never started") as raised:
        checkpoint.record_changes(MODEL, [ItemChange("ok", "in_progress"), ItemChange("never-started", "completed")])

    assert raised.value.category is ErrorCategory.PERMANENT
    assert checkpoint.list(MODEL) == []


def test_buffered_changes_are_not_in_the_store_until_flushed(checkpoint: PipelineCheckpoint) -> None:
    deferred = DeferredChanges(checkpoint, MODEL)
    deferred.add(ItemChange("k", "in_progress"), ItemChange("k", "completed"))

    assert checkpoint.list(MODEL) == []
    assert deferred.flush() == 2
    assert checkpoint.get(MODEL, "k")["status"] == "completed"
    assert deferred.pending() == [] and deferred.flush() == 0


def test_a_change_that_waited_past_the_delay_flushes_everything_buffered(checkpoint: PipelineCheckpoint) -> None:
    deferred = DeferredChanges(checkpoint, MODEL, max_delay_seconds=0)

    deferred.add(ItemChange("k", "in_progress"))

    assert checkpoint.get(MODEL, "k")["status"] == "in_progress"


def test_a_refused_batch_still_records_every_legal_change(checkpoint: PipelineCheckpoint) -> None:
    deferred = DeferredChanges(checkpoint, MODEL)
    deferred.add(ItemChange("a", "in_progress"), ItemChange("stale", "completed"), ItemChange("a", "completed"))

    deferred.flush()

    assert [(row["key"], row["status"]) for row in checkpoint.list(MODEL)] == [("a", "completed")]


def test_changes_stay_buffered_when_the_store_cannot_be_written(checkpoint: PipelineCheckpoint) -> None:
    deferred = DeferredChanges(checkpoint, MODEL)
    deferred.add(ItemChange("k", "in_progress", at=datetime(2026, 1, 1) + timedelta(seconds=1)))
    checkpoint.close()

    with pytest.raises(CheckpointError, match="closed"):
        deferred.flush()

    assert [change.key for change in deferred.pending()] == ["k"]
