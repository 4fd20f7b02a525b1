"""The sync of ephemeral runners on a store: conditional pushes, consistent copies, the lease (checkpoint/sync.py)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.checkpoint.duckdb_store import copy_consistent
from sqlmesh_osaa.checkpoint.lease import Holder, break_lease, read_lease
from sqlmesh_osaa.checkpoint.sync import CHECKPOINTS, RunnerSync, SyncLocation
from sqlmesh_osaa.exceptions import ConfigurationError, LeaseHeldError, LeaseLostError
from sqlmesh_osaa.settings import load_settings


def _sync(store, db: Path, runner: str, timeout: float = 60) -> RunnerSync:
    return RunnerSync(
        SyncLocation(store, "runners/", "test"),
        {CHECKPOINTS: db},
        {CHECKPOINTS: lambda source, target: copy_consistent(source, target, 5)},
        lease_timeout=timeout,
        holder=Holder(runner, "host", 1),
    )


def _mark(db: Path, key: str) -> None:
    with PipelineCheckpoint("ingest", db) as checkpoint:
        checkpoint.mark_started(CheckpointScope.FILE, key)
        checkpoint.mark_completed(CheckpointScope.FILE, key)


def _keys(db: Path) -> list[str]:
    with PipelineCheckpoint("ingest", db) as checkpoint:
        return sorted(row["key"] for row in checkpoint.list(scope=CheckpointScope.FILE))


def test_a_runner_whose_lease_was_taken_over_cannot_overwrite_the_newer_push(store, tmp_path):
    first = _sync(store, tmp_path / "a" / "c.duckdb", "first")
    first.start(write=True)
    _mark(first.files[CHECKPOINTS], "from-first")
    break_lease(store, "runners/lease.json", force=True)
    second = _sync(store, tmp_path / "b" / "c.duckdb", "second")
    second.start(write=True)
    _mark(second.files[CHECKPOINTS], "from-second")
    second.end()

    with pytest.raises(LeaseLostError, match="lost the checkpoint lease"):
        first.end()

    reader = _sync(store, tmp_path / "c" / "c.duckdb", "reader")
    reader.pull()
    assert _keys(reader.files[CHECKPOINTS]) == ["from-second"]


def test_a_push_never_replaces_a_state_written_since_this_runner_last_saw_it(store, tmp_path):
    runner = _sync(store, tmp_path / "a" / "c.duckdb", "runner")
    runner.start(write=True)
    _mark(runner.files[CHECKPOINTS], "first")
    runner.push()
    # Written behind the lease's back (an operator restoring a backup): the runner's ETag is stale.
    store.put_bytes("runners/state.json", b'{"format": 1, "generation": 7, "files": {}}')
    _mark(runner.files[CHECKPOINTS], "second")

    with pytest.raises(LeaseLostError, match="newer checkpoint state"):
        runner.push()
    runner.end(push=False)
    assert store.get_bytes("runners/state.json")[0] == b'{"format": 1, "generation": 7, "files": {}}'


def test_a_second_runner_is_refused_while_the_lease_is_live_naming_holder_and_since_when(store, tmp_path):
    holder = _sync(store, tmp_path / "a" / "c.duckdb", "nightly")
    holder.start(write=True)
    try:
        with pytest.raises(LeaseHeldError) as refused:
            _sync(store, tmp_path / "b" / "c.duckdb", "other").start(write=True)
    finally:
        holder.end()
    record, _ = read_lease(store, "runners/lease.json")
    assert "runner 'nightly'" in str(refused.value) and f"since {record.acquired_at}" in str(refused.value)
    assert record.released


def test_the_copy_of_an_open_checkpoint_file_holds_every_committed_mark(tmp_path):
    db = tmp_path / "c.duckdb"
    with PipelineCheckpoint("ingest", db) as checkpoint:
        for index in range(50):
            checkpoint.mark_started(CheckpointScope.FILE, f"k{index}")
            checkpoint.mark_completed(CheckpointScope.FILE, f"k{index}")
        copy_consistent(db, tmp_path / "copy.duckdb", 5)
        with duckdb.connect(str(tmp_path / "copy.duckdb"), read_only=True) as copy:
            (count,) = copy.execute("SELECT count(*) FROM checkpoints WHERE status = 'completed'").fetchone()
    assert count == 50


def test_pulling_replaces_the_local_file_and_drops_its_stale_wal(store, tmp_path):
    pusher = _sync(store, tmp_path / "a" / "c.duckdb", "pusher")
    pusher.start(write=True)
    _mark(pusher.files[CHECKPOINTS], "pushed")
    pusher.end()
    local = tmp_path / "b" / "c.duckdb"
    _mark(local, "local-only")
    Path(f"{local}.wal").write_bytes(b"stale")

    puller = _sync(store, local, "puller")
    puller.start(write=True)
    puller.end(push=False)

    assert _keys(local) == ["pushed"]
    assert not Path(f"{local}.wal").exists()


def test_sync_settings_come_from_nested_environment_variables():
    settings = load_settings(
        environ={"OSAA_CHECKPOINT__SYNC__URL": "s3://osaa-state/runners", "OSAA_CHECKPOINT__SYNC__LEASE_TIMEOUT_SECONDS": "30"}
    )
    assert settings.checkpoint.sync.url == "s3://osaa-state/runners"
    assert settings.checkpoint.sync.lease_timeout_seconds == 30


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OSAA_CHECKPOINT__SYNC__URL": "s3://user:secret@osaa-state/x"}, "user name or password"),
        ({"OSAA_CHECKPOINT__SYNC__URL": "gs://osaa-state/x"}, "s3://bucket/prefix or a directory"),
        ({"OSAA_CHECKPOINT__BACKEND": "postgres", "OSAA_CHECKPOINT__DSN": "host=db", "OSAA_CHECKPOINT__SYNC__URL": "/mnt/state"},
         "already outlives the runner"),
    ],
)
def test_bad_sync_settings_are_refused_naming_the_setting(environ, named):
    with pytest.raises(ConfigurationError, match=named) as refused:
        load_settings(environ=environ)
    assert "checkpoint" in str(refused.value) and "secret" not in str(refused.value)
