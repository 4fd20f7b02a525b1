"""The DuckDB checkpoint file's block size and checkpoint threshold: small blocks for new files, old files as they were.

Rows DuckDB has not checkpointed yet live in memory, a block per column at least, so the
file's block size and how often the WAL is folded into it decide what a first ingest of
many files holds (docs/performance.md, "Ingest"; docs/decisions.md).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb

from sqlmesh_osaa.checkpoint import PipelineCheckpoint
from sqlmesh_osaa.checkpoint.duckdb_store import BLOCK_SIZE, DuckDBStore

DUCKDB_DEFAULT_BLOCK_SIZE = 262144
STARTED = 6000
CHUNK = 64


def _block_size(db_path: Path) -> int:
    with duckdb.connect(str(db_path), read_only=True) as connection:
        return connection.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]


def _threshold(checkpoint: PipelineCheckpoint) -> str:
    return checkpoint.store.read("SELECT current_setting('checkpoint_threshold')")[0][0]


def _file_written_by_plain_duckdb(db_path: Path) -> Path:
    duckdb.connect(str(db_path)).close()
    return db_path


def _start_in_chunks(checkpoint: PipelineCheckpoint, count: int) -> None:
    keys = [f"dev/landing/wdi/part000/series_{i:05d}.parquet" for i in range(count)]
    for start in range(0, count, CHUNK):
        chunk = keys[start : start + CHUNK]
        checkpoint.mark_started_many("file", [(key, f"/raw/{key[:-8]}.csv") for key in chunk], force=True)


def test_a_new_checkpoint_file_is_written_in_16_kib_blocks(tmp_path: Path) -> None:
    db_path = tmp_path / "checkpoints.duckdb"
    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        checkpoint.mark_started("file", "dev/landing/wdi/a.parquet")
        assert _threshold(checkpoint) == "1.0 MiB"
    assert _block_size(db_path) == BLOCK_SIZE == 16384


def test_a_file_with_duckdbs_default_blocks_keeps_them_and_duckdbs_threshold(tmp_path: Path) -> None:
    db_path = _file_written_by_plain_duckdb(tmp_path / "checkpoints.duckdb")
    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        checkpoint.mark_started("file", "dev/landing/wdi/a.parquet")
        assert _threshold(checkpoint) == "16.0 MiB"
        assert checkpoint.get("file", "dev/landing/wdi/a.parquet")["status"] == "in_progress"
    assert _block_size(db_path) == DUCKDB_DEFAULT_BLOCK_SIZE


def test_bulk_writes_fold_the_wal_into_the_file_once_it_holds_a_mebibyte(tmp_path: Path) -> None:
    db_path = tmp_path / "checkpoints.duckdb"
    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        _start_in_chunks(checkpoint, STARTED)
        wal = db_path.with_name(db_path.name + ".wal")
        # Left at DuckDB's 16 MiB, these writes leave about 2.9 MB of WAL.
        assert wal.stat().st_size < 1.5 * 2**20
        assert len(checkpoint.list(scope="file", status="in_progress")) == STARTED


def test_compaction_rewrites_a_default_block_file_in_16_kib_blocks_keeping_every_row(tmp_path: Path) -> None:
    db_path = _file_written_by_plain_duckdb(tmp_path / "checkpoints.duckdb")
    keys = [f"dev/landing/wdi/part000/series_{i:05d}.parquet" for i in range(STARTED)]
    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        checkpoint.mark_started_many("file", keys)
        checkpoint.mark_completed_many("file", keys[10:])
        assert checkpoint.prune(timedelta(0)) == STARTED - 10
    store = DuckDBStore(db_path, lock_timeout=10)
    try:
        before = store.read("SELECT * FROM checkpoints ORDER BY item_id"), store.read("SELECT * FROM checkpoint_events ORDER BY seq")
        assert store.reclaim_space()["action"] == "compacted"
        after = store.read("SELECT * FROM checkpoints ORDER BY item_id"), store.read("SELECT * FROM checkpoint_events ORDER BY seq")
    finally:
        store.close()
    assert after == before
    assert _block_size(db_path) == BLOCK_SIZE
    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        assert _threshold(checkpoint) == "1.0 MiB"
