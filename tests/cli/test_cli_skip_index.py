"""The skip index never says "unchanged" for a file the checkpoint database would not skip.

An unchanged ``osaa-ingest`` re-run is answered from ``<db>.skip-index`` without opening the
database (docs/decisions.md, "The skip index"). Each test here changes what the database
would answer after the index was written, by every route a user has (a clear, a mark through
the Python API, a foreign writer, another store or environment, a changed file, a damaged
index), and checks that the next run lands exactly what a run against the database lands.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest
from cli_workspace import GOOD_CSV, Workspace

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint

KEYS = ["prod/landing/wdi/a.parquet", "prod/landing/wdi/b.parquet"]


@pytest.fixture
def landed(workspace: Workspace) -> Workspace:
    """wdi/a.csv and wdi/b.csv landed by one run, which left the skip index beside the database."""
    workspace.write("raw/wdi/a.csv", GOOD_CSV)
    workspace.write("raw/wdi/b.csv", GOOD_CSV.replace("KEN", "UGA"))
    report = workspace.json("osaa-ingest", "raw", expect=0)
    assert report["landed"] == KEYS
    assert index_of(workspace).exists()
    return workspace


def index_of(workspace: Workspace) -> Path:
    return workspace.db.with_name(workspace.db.name + ".skip-index")


def test_an_unchanged_rerun_reports_what_a_run_against_the_database_reports(landed: Workspace) -> None:
    from_index = landed.run("osaa-ingest", "raw", "--json")
    index_of(landed).unlink()
    from_database = landed.run("osaa-ingest", "raw", "--json")
    assert from_index.returncode == from_database.returncode == 0
    assert from_index.stdout == from_database.stdout
    assert '"skipped": [' in from_index.stdout


def test_a_run_without_the_index_skips_unchanged_files_and_writes_the_index_again(landed: Workspace) -> None:
    index_of(landed).unlink()
    report = landed.json("osaa-ingest", "raw", expect=0)
    assert (report["landed"], report["skipped"]) == ([], KEYS)
    assert index_of(landed).exists()


def test_a_clear_after_the_index_makes_the_next_run_land_the_files_again(landed: Workspace) -> None:
    cleared = landed.json("osaa-recover", "clear", "--scope", "file", "--confirm", expect=0)
    assert cleared["cleared"] == 2
    report = landed.json("osaa-ingest", "raw", expect=0)
    assert (report["landed"], report["skipped"]) == (KEYS, [])


def test_a_mark_made_after_the_index_makes_the_next_run_ask_the_database(landed: Workspace) -> None:
    with PipelineCheckpoint("ingest", landed.db) as checkpoint:
        checkpoint.mark_started(CheckpointScope.FILE, KEYS[0], str(landed.path / "raw/wdi/a.csv"), force=True)
        checkpoint.mark_failed(CheckpointScope.FILE, KEYS[0], "redo it", str(landed.path / "raw/wdi/a.csv"))
    assert not index_of(landed).exists()
    report = landed.json("osaa-ingest", "raw", expect=0)
    assert (report["landed"], report["skipped"]) == ([KEYS[0]], [KEYS[1]])


def test_a_foreign_write_to_the_database_makes_the_index_stale(landed: Workspace) -> None:
    # Not through the package's store, so nothing removes the index: its recorded identity of the file catches it.
    with duckdb.connect(str(landed.db)) as connection:
        connection.execute("DELETE FROM checkpoints WHERE key = ?", [KEYS[1]])
    assert index_of(landed).exists()
    report = landed.json("osaa-ingest", "raw", expect=0)
    assert (report["landed"], report["skipped"]) == ([KEYS[1]], [KEYS[0]])


def test_an_index_of_another_landing_prefix_is_ignored(landed: Workspace) -> None:
    report = landed.json("osaa-ingest", "raw", "--prefix", "dev/alice", expect=0)
    assert report["landed"] == [key.replace("prod/", "dev/alice/", 1) for key in KEYS]


def test_an_index_of_another_store_is_ignored(landed: Workspace) -> None:
    report = landed.json("osaa-ingest", "raw", expect=0, extra_env={"OSAA_STORAGE__BUCKET": "other"})
    assert report["landed"] == KEYS
    assert (landed.path / ".osaa/storage/other" / KEYS[0]).is_file()


def test_a_file_changed_since_the_index_lands_again(landed: Workspace) -> None:
    landed.write("raw/wdi/b.csv", GOOD_CSV.replace("KEN", "TZA") + "RWA,2021,3.5\n")
    report = landed.json("osaa-ingest", "raw", expect=0)
    assert (report["landed"], report["skipped"]) == ([KEYS[1]], [KEYS[0]])


def test_verify_checksum_asks_the_database_and_reads_the_files(landed: Workspace) -> None:
    path = landed.path / "raw/wdi/a.csv"
    before = path.stat()
    path.write_text(GOOD_CSV.replace("KEN", "ETH"), encoding="utf-8")  # same size, other bytes
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert landed.json("osaa-ingest", "raw", expect=0)["landed"] == []
    report = landed.json("osaa-ingest", "raw", "--verify-checksum", expect=0)
    assert report["landed"] == [KEYS[0]]


@pytest.mark.parametrize("damage", [b"", b"\x00garbage", b"osaa"], ids=["empty", "garbage", "truncated"])
def test_a_damaged_index_is_ignored(landed: Workspace, damage: bytes) -> None:
    index_of(landed).write_bytes(damage)
    landed.write("raw/wdi/c.csv", GOOD_CSV)
    report = landed.json("osaa-ingest", "raw", expect=0)
    assert (report["landed"], report["skipped"]) == (["prod/landing/wdi/c.parquet"], KEYS)


def test_a_new_file_lands_and_the_unchanged_ones_are_skipped(landed: Workspace) -> None:
    landed.write("raw/wdi/c.csv", GOOD_CSV)
    report = landed.json("osaa-ingest", "raw", expect=0)
    assert (report["landed"], report["skipped"]) == (["prod/landing/wdi/c.parquet"], KEYS)
    assert landed.json("osaa-ingest", "raw", expect=0)["skipped"] == [*KEYS, "prod/landing/wdi/c.parquet"]
