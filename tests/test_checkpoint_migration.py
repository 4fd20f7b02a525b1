"""A DuckDB checkpoint file written by the version 1 code opens with the current code, migrated in place."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import duckdb
import pytest

from sqlmesh_osaa.checkpoint import ROW_COLUMNS, CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.checkpoint.transitions import replay

FILE = CheckpointScope.FILE
V1_FILE = Path(__file__).parent / "data" / "checkpoints-v1.duckdb.gz"


@pytest.fixture
def v1_database(tmp_path: Path) -> Path:
    """A copy of the version 1 file (tests/data/README.md says what it holds)."""
    path = tmp_path / "checkpoints.duckdb"
    with gzip.open(V1_FILE) as source, path.open("wb") as target:
        shutil.copyfileobj(source, target)
    return path


def raw_rows(path: Path) -> dict[tuple[str, str, str], dict]:
    with duckdb.connect(str(path), read_only=True) as database:
        found = database.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM checkpoints").fetchall()
    return {(r[0], r[1], r[2]): dict(zip(ROW_COLUMNS, r)) for r in found}


def test_the_migration_keeps_every_row_as_it_was(v1_database: Path) -> None:
    before = raw_rows(v1_database)

    with PipelineCheckpoint("ingest", v1_database):
        pass

    assert raw_rows(v1_database) == before
    assert len(before) == 5


def test_the_migration_keeps_the_old_history_and_adds_one_snapshot_event_per_row(v1_database: Path) -> None:
    with PipelineCheckpoint("ingest", v1_database) as checkpoint:
        transitions = [(e["from_status"], e["to_status"]) for e in checkpoint.history(FILE, "prod/landing/wdi/a.parquet")]
        kinds = [e["kind"] for e in checkpoint.store.scan_events("ingest", all_kinds=True)]

    assert transitions == [("pending", "in_progress"), ("in_progress", "completed")]
    assert kinds.count("snapshot") == 5 and kinds[-5:] == ["snapshot"] * 5


def test_after_the_migration_the_event_log_rebuilds_every_row(v1_database: Path) -> None:
    with PipelineCheckpoint("ingest", v1_database) as checkpoint:
        rebuilt = replay(checkpoint.store.scan_events(all_kinds=True))

    assert rebuilt == raw_rows(v1_database)


def test_a_migrated_file_keeps_working_and_reports_the_old_run_interrupted(v1_database: Path) -> None:
    with PipelineCheckpoint("ingest", v1_database) as checkpoint:
        row = checkpoint.get(CheckpointScope.OPERATION, "txn-1")
        assert (row["status"], row["interrupted"], row["metadata"]) == ("in_progress", True, {"phase": "committing"})
        assert checkpoint.get(FILE, "prod/landing/wdi/a.parquet")["metadata"] == {"user": "pipeline", "rows": 1}

        checkpoint.mark_started(FILE, "prod/landing/wdi/b.parquet")
        checkpoint.mark_completed(FILE, "prod/landing/wdi/b.parquet")
        checkpoint.mark_completed_many(FILE, ["batch/2"])

        assert checkpoint.completed_keys(FILE, ["prod/landing/wdi/b.parquet", "batch/1", "batch/2"]) == {
            "prod/landing/wdi/b.parquet",
            "batch/1",
            "batch/2",
        }
        assert checkpoint.get_statistics()["retries"]["after_failure"] == 1


def test_a_migrated_file_is_migrated_once(v1_database: Path) -> None:
    for _ in range(2):
        with PipelineCheckpoint("ingest", v1_database):
            pass

    with duckdb.connect(str(v1_database), read_only=True) as database:
        snapshots = database.execute("SELECT count(*) FROM checkpoint_events WHERE kind = 'snapshot'").fetchone()[0]
        version = database.execute("SELECT version FROM checkpoint_schema").fetchall()
    assert (snapshots, version) == (5, [(3,)])
