"""Tallies of restarts and failures are kept as the events are written, on both backends; stores of the previous layout get them at open.

``stats``' retries, most common errors and circuit-breaker rejections sum the tallies
(sqlmesh_osaa/checkpoint/tallies.py) instead of counting the pipeline's events: these tests pin
that the sums are what the log holds, whatever path wrote the events, after prune too, and that
a write with nothing to count adds no tally.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sqlmesh_osaa.checkpoint import ItemChange, PipelineCheckpoint, duckdb_store, postgres_store, tallies
from support.histories import FILE, every_write_path, on_closed_file, rows_and_events

RESUMED = [f"resumed/{i:02d}" for i in range(20)]
# What stats reported before the tallies, counted on the log: the definition the sums must meet.
_RETRIES_IN_LOG = """
    SELECT count(*) FILTER (WHERE from_status = 'failed'), count(*) FILTER (WHERE from_status = 'in_progress'),
           count(*) FILTER (WHERE from_status = 'completed'), coalesce(max(attempt), 0)
    FROM checkpoint_events WHERE pipeline = 'ingest' AND kind = 'transition' AND to_status = 'in_progress'"""

_SUMS = """SELECT pipeline, scope, from_status, to_status, error_message, error_category, CAST(sum(events) AS BIGINT), max(max_attempt)
           FROM {table} GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6"""


def _kept(checkpoint: PipelineCheckpoint) -> list[tuple[Any, ...]]:
    return checkpoint.store.read(_SUMS.format(table=tallies.TABLE))


def _from_log(checkpoint: PipelineCheckpoint) -> list[tuple[Any, ...]]:
    log = tallies.LOG_TALLIES_SQL.format(pipeline="")
    return checkpoint.store.read(_SUMS.format(table=f"({log}) AS log(pipeline, scope, from_status, to_status, error_message, error_category, events, max_attempt)"))


def _interrupted_and_resumed(target: dict[str, Any]) -> None:
    """A run that ends with an item in progress, and a later run that starts it again (in_progress -> in_progress)."""
    with PipelineCheckpoint("ingest", **target) as first:
        first.mark_started(FILE, "resumed")
        first.mark_started_many(FILE, RESUMED)
    with PipelineCheckpoint("ingest", **target) as second:
        second.mark_started(FILE, "resumed")
        second.mark_started_many(FILE, RESUMED)


def test_the_tallies_the_writes_keep_sum_to_what_the_log_holds(checkpoint_target: dict[str, Any]) -> None:
    _interrupted_and_resumed(checkpoint_target)
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        checkpoint.mark_completed_many(FILE, [*RESUMED, "resumed"])
        every_write_path(checkpoint)

        kept, from_log = _kept(checkpoint), _from_log(checkpoint)
        retries = checkpoint.get_statistics()["retries"]
        (logged,) = checkpoint.store.read(_RETRIES_IN_LOG)

    assert kept == from_log
    assert {status for _, _, status, *_ in kept} == {"failed", "in_progress", "completed"}
    assert (retries["after_failure"], retries["after_interruption"], retries["reruns"], retries["max_attempt"]) == logged
    assert retries["after_interruption"] == 21 and retries["reruns"] > 0 and retries["after_failure"] > 0


def test_statistics_read_from_the_tallies_count_what_the_log_counts(checkpoint_target: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        every_write_path(checkpoint)
        checkpoint.mark_started(FILE, "breaker")
        checkpoint.mark_failed(FILE, "breaker", "Circuit breaker is open for storage")
        errors = checkpoint.get_statistics()["most_common_errors"]
        rejections = checkpoint.count_failures("Circuit breaker is")
        logged = checkpoint.store.read(
            "SELECT error_message, count(*) FROM checkpoint_events WHERE pipeline = 'ingest' AND to_status = 'failed' GROUP BY 1"
        )

    assert {e["error_message"]: e["count"] for e in errors} == dict(logged)
    assert (errors[0]["error_message"], errors[0]["count"]) == ("x", 20)
    assert rejections == 1


def test_first_attempts_and_their_completions_write_no_tally(checkpoint_target: dict[str, Any]) -> None:
    keys = [f"file/{i:03d}" for i in range(100)]
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        checkpoint.mark_started(FILE, "single")
        checkpoint.mark_completed(FILE, "single")
        checkpoint.mark_started_many(FILE, keys)
        checkpoint.mark_completed_many(FILE, keys)

        kept = checkpoint.store.read(f"SELECT count(*) FROM {tallies.TABLE}")
        retries = checkpoint.get_statistics()["retries"]

    assert kept == [(0,)]
    assert retries == {"total": 0, "after_failure": 0, "after_interruption": 0, "reruns": 0, "max_attempt": 1}


def test_prune_rebuilds_the_tallies_of_what_is_left_of_the_log(checkpoint_target: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        every_write_path(checkpoint)
        before = len(checkpoint.store.read(f"SELECT * FROM {tallies.TABLE}"))
        checkpoint.prune(timedelta(seconds=-3600))

        kept, from_log = _kept(checkpoint), _from_log(checkpoint)
        rows = len(checkpoint.store.read(f"SELECT * FROM {tallies.TABLE}"))

    assert kept == from_log and kept
    assert rows == len(kept) < before


def test_a_batch_of_many_groups_keeps_each_group_once(checkpoint_target: dict[str, Any]) -> None:
    keys = [f"file/{i:05d}" for i in range(3_000)]
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        checkpoint.record_changes(FILE, [ItemChange(key, "in_progress") for key in keys])
        checkpoint.record_changes(FILE, [ItemChange(key, "failed", error_message=f"HTTP 50{i % 3}") for i, key in enumerate(keys)])
        checkpoint.record_changes(FILE, [ItemChange(key, "in_progress") for key in keys])
        kept, stored = _kept(checkpoint), checkpoint.store.read(f"SELECT count(*) FROM {tallies.TABLE}")
        assert kept == _from_log(checkpoint)
    assert [(status, message, n) for _, _, _, status, message, _, n, _ in kept] == [
        ("in_progress", None, 3000), ("failed", "HTTP 500", 1000), ("failed", "HTTP 501", 1000), ("failed", "HTTP 502", 1000),
    ]  # fmt: skip
    assert stored == [(4,)]


def _layout_3(db_path: Path) -> None:
    """The file as the previous layout wrote it: no tallies, version 3."""
    on_closed_file(db_path, f"DROP TABLE {tallies.TABLE}", "UPDATE checkpoint_schema SET version = 3")


def test_a_layout_3_file_gets_its_tallies_from_the_log_when_opened_and_keeps_every_row_and_event(tmp_path: Path) -> None:
    db_path = tmp_path / "checkpoints.duckdb"
    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        every_write_path(checkpoint)
        stats = checkpoint.get_statistics()
        contents = rows_and_events(checkpoint)
    _layout_3(db_path)

    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        assert checkpoint.store.read("SELECT version FROM checkpoint_schema") == [(duckdb_store.SCHEMA_VERSION,)]
        assert _kept(checkpoint) == _from_log(checkpoint)
        assert checkpoint.get_statistics()["retries"] == stats["retries"]
        assert checkpoint.get_statistics()["most_common_errors"] == stats["most_common_errors"]
        assert rows_and_events(checkpoint) == contents


@pytest.mark.postgres
def test_a_layout_4_postgres_store_gets_its_tallies_from_the_log_when_opened(pg_dsn: str) -> None:
    import psycopg

    with PipelineCheckpoint("ingest", dsn=pg_dsn) as checkpoint:
        every_write_path(checkpoint)
        stats = checkpoint.get_statistics()
        contents = rows_and_events(checkpoint)
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute(f"DROP TABLE {tallies.TABLE}")
        connection.execute("UPDATE checkpoint_schema SET version = 4")

    with PipelineCheckpoint("ingest", dsn=pg_dsn) as checkpoint:
        assert checkpoint.store.read("SELECT version FROM checkpoint_schema") == [(postgres_store.SCHEMA_VERSION,)]
        assert _kept(checkpoint) == _from_log(checkpoint)
        assert checkpoint.get_statistics()["retries"] == stats["retries"]
        assert checkpoint.get_statistics()["most_common_errors"] == stats["most_common_errors"]
        assert rows_and_events(checkpoint) == contents


def test_a_duckdb_file_keeps_one_tally_row_per_group_whatever_the_writes(tmp_path: Path) -> None:
    with PipelineCheckpoint("ingest", tmp_path / "checkpoints.duckdb") as checkpoint:
        for _ in range(30):
            checkpoint.mark_started(FILE, "flaky")
            checkpoint.mark_failed(FILE, "flaky", "HTTP 503")
        rows = checkpoint.store.read(f"SELECT from_status, to_status, error_message, events, max_attempt FROM {tallies.TABLE} ORDER BY 1")

    assert rows == [("failed", "in_progress", None, 29, 30), ("in_progress", "failed", "HTTP 503", 30, None)]
