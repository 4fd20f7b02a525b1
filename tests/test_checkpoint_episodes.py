"""Failure episodes are kept as the events are written, on both backends, and stores of the previous layout get them at open.

``stats``' time to recovery and ``list-failed``'s "failing since" read the episodes
(sqlmesh_osaa/checkpoint/episodes.py) instead of a window over the whole log: these tests pin
that the table the writes keep is exactly what the log holds, whatever path wrote the events
(single marks, bulk batches, several changes per key, clears, prune).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sqlmesh_osaa.checkpoint import ItemChange, PipelineCheckpoint, duckdb_store, episodes, item_history, postgres_store, tallies
from support.histories import FILE, every_write_path, on_closed_file, rows_and_events



def _kept(checkpoint: PipelineCheckpoint) -> list[tuple[Any, ...]]:
    return checkpoint.store.read(f"SELECT * FROM {episodes.TABLE} ORDER BY 1, 2, 3, 4")


def _from_log(checkpoint: PipelineCheckpoint) -> list[tuple[Any, ...]]:
    return checkpoint.store.read(f"SELECT * FROM ({episodes.LOG_EPISODES_SQL}) AS log ORDER BY 1, 2, 3, 4")


def test_the_episodes_the_writes_keep_are_the_ones_the_log_holds(checkpoint_target: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        every_write_path(checkpoint)

        kept, from_log = _kept(checkpoint), _from_log(checkpoint)

    assert kept == from_log
    open_keys = sorted(key for _, scope, key, _, ended_at, _ in kept if ended_at is None)
    assert open_keys == ["b"]
    assert len(kept) == 3 + 5 + 20


def test_a_cleared_failure_is_not_recovered_and_the_next_run_of_the_key_starts_afresh(checkpoint_target: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        checkpoint.mark_started(FILE, "k")
        checkpoint.mark_failed(FILE, "k", "first")
        checkpoint.clear_checkpoint(FILE, "k")
        checkpoint.mark_started(FILE, "k")
        checkpoint.mark_failed(FILE, "k", "second")
        (second,) = [e["at"] for e in checkpoint.history(FILE, "k") if e["error_message"] == "second"]

        recovery = checkpoint.get_statistics()["time_to_recovery"]
        since = item_history.failing_since(checkpoint.store, ["ingest"])

    assert (recovery["recovered"], recovery["unrecovered"]) == (0, 2)
    assert since == {("ingest", FILE, "k"): second}


def test_time_to_recovery_is_read_from_the_episodes_with_the_same_figures(checkpoint_target: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        every_write_path(checkpoint)
        recovery = checkpoint.get_statistics()["time_to_recovery"]
        seconds = sorted(
            (ended_at - failed_at).total_seconds() for _, _, _, failed_at, ended_at, recovered in _from_log(checkpoint) if recovered
        )

    assert (recovery["recovered"], recovery["unrecovered"]) == (len(seconds), 1 + 1 + 9) == (17, 11)
    assert recovery["max_seconds"] == pytest.approx(seconds[-1], abs=1e-3)
    assert recovery["mean_seconds"] == pytest.approx(sum(seconds) / len(seconds), abs=1e-3)


def test_prune_removes_the_episodes_that_ended_before_the_cutoff_and_keeps_the_open_ones(checkpoint_target: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        every_write_path(checkpoint)
        checkpoint.prune(timedelta(seconds=-3600))

        kept = _kept(checkpoint)

    assert [(key, ended_at) for _, _, key, _, ended_at, _ in kept] == [("b", None)]


def test_a_batch_ending_more_episodes_than_one_statement_can_carry_keeps_them_all(checkpoint_target: dict[str, Any]) -> None:
    """PostgreSQL takes at most 65,535 parameters a statement: 12,000 episodes of 6 values each go in several."""
    keys = [f"file/{i:05d}" for i in range(12_000)]
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        checkpoint.record_changes(FILE, [ItemChange(key, "in_progress") for key in keys])
        checkpoint.record_changes(FILE, [ItemChange(key, "failed", error_message="HTTP 503") for key in keys])
        checkpoint.record_changes(FILE, [ItemChange(key, "in_progress") for key in keys])
        checkpoint.record_changes(FILE, [ItemChange(key, "completed") for key in keys])
        kept = _kept(checkpoint)
        assert kept == _from_log(checkpoint)
    assert len(kept) == len(keys) and all(episode[-1] for episode in kept)


def _figures_of(stats: dict[str, Any]) -> dict[str, Any]:
    """The statistics the log decides (not ``interrupted``: the run that wrote them has ended since)."""
    recovery = stats["time_to_recovery"]
    return {
        **{name: value for name, value in stats.items() if name not in ("interrupted", "time_to_recovery")},
        "time_to_recovery": {name: pytest.approx(value, abs=1e-6) for name, value in recovery.items()},
    }


def _figures(checkpoint: PipelineCheckpoint) -> dict[str, Any]:
    return _figures_of(checkpoint.get_statistics())


def _layout_2(db_path: Path) -> None:
    """The file as the previous layout wrote it: no episode table, no id hashes, version 2."""
    on_closed_file(
        db_path,
        f"DROP TABLE {episodes.TABLE}",
        f"DROP TABLE {tallies.TABLE}",
        "DROP TABLE checkpoint_id_hash",
        "ALTER TABLE checkpoints DROP COLUMN id_hash",
        "UPDATE checkpoint_schema SET version = 2",
    )


def test_a_layout_2_file_gets_its_episodes_from_the_log_when_opened_and_keeps_every_row_and_event(tmp_path: Path) -> None:
    db_path = tmp_path / "checkpoints.duckdb"
    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        every_write_path(checkpoint)
        expected = _kept(checkpoint)
        stats = checkpoint.get_statistics()
        contents = rows_and_events(checkpoint)
    _layout_2(db_path)

    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        assert checkpoint.store.read("SELECT version FROM checkpoint_schema") == [(duckdb_store.SCHEMA_VERSION,)]
        assert _kept(checkpoint) == expected
        assert _figures(checkpoint) == _figures_of(stats)
        assert rows_and_events(checkpoint) == contents
        checkpoint.mark_started(FILE, "b")
        checkpoint.mark_completed(FILE, "b")
        assert checkpoint.get_statistics()["time_to_recovery"]["unrecovered"] == stats["time_to_recovery"]["unrecovered"] - 1


@pytest.mark.postgres
def test_a_layout_3_postgres_store_gets_its_episodes_from_the_log_when_opened(pg_dsn: str) -> None:
    import psycopg

    with PipelineCheckpoint("ingest", dsn=pg_dsn) as checkpoint:
        every_write_path(checkpoint)
        expected = _kept(checkpoint)
        stats = checkpoint.get_statistics()
        contents = rows_and_events(checkpoint)
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute(f"DROP TABLE {episodes.TABLE}")
        connection.execute("UPDATE checkpoint_schema SET version = 3")

    with PipelineCheckpoint("ingest", dsn=pg_dsn) as checkpoint:
        assert checkpoint.store.read("SELECT version FROM checkpoint_schema") == [(postgres_store.SCHEMA_VERSION,)]
        assert _kept(checkpoint) == expected
        assert _figures(checkpoint) == _figures_of(stats)
        assert rows_and_events(checkpoint) == contents
