"""Transactions on object storage: staged, validated, committed all-or-nothing, recovered."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from support import jobs

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus, Fingerprint, PipelineCheckpoint
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy
from sqlmesh_osaa.exceptions import TransactionError, ValidationError
from sqlmesh_osaa.commit_log import MARKER_PREFIX, PROTOCOL_ROOT, STAGED_FILES, VERSIONS_PREFIX, CommitLog
from sqlmesh_osaa.commit_protocol import PutRecords, complete_files, row_puts
from sqlmesh_osaa.fault_points import AFTER_STAGING
from sqlmesh_osaa.storage import ObjectStore
from sqlmesh_osaa.transaction_manager import (
    TransactionManager,
    Upload,
    journal_key,
    recover_transactions,
)

FAST = ErrorHandler(RetryPolicy(max_attempts=3, initial_delay=0, max_delay=0, jitter=False))


@pytest.fixture
def checkpoint(tmp_path: Path):
    with PipelineCheckpoint("transactions", tmp_path / "checkpoints.duckdb") as checkpoint:
        yield checkpoint


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def keys(store: ObjectStore, prefix: str = "") -> list[str]:
    """Objects outside the protocol's own area (_osaa/: log, markers, versions)."""
    return [info.key for info in store.list_prefix(prefix) if not info.key.startswith(PROTOCOL_ROOT)]


def txn(store: ObjectStore, checkpoint: PipelineCheckpoint, **kwargs) -> TransactionManager:
    return TransactionManager(store=store, checkpoint=checkpoint, error_handler=FAST, **kwargs)


def test_commit_publishes_every_object_and_empties_staging(store, checkpoint, tmp_path):
    with txn(store, checkpoint) as t:
        t.upload_file(write(tmp_path / "a.csv", "a"), "prod/a.parquet", metadata={"version": "1.0"})
        t.upload_file(write(tmp_path / "b.csv", "b"), "prod/b.parquet")
    assert keys(store) == ["prod/a.parquet", "prod/b.parquet"]
    assert store.head("prod/a.parquet").metadata["version"] == "1.0"
    row = checkpoint.get(CheckpointScope.OPERATION, journal_key(t.transaction_id))
    assert row["status"] == "completed"
    assert row["metadata"]["phase"] == "committed"


def test_the_committed_row_names_the_log_entry_holding_its_manifest_and_counts_its_puts_and_deletes(
    store, checkpoint, tmp_path
):
    with txn(store, checkpoint) as t:
        t.upload_file(write(tmp_path / "a.csv", "abc"), "prod/a.parquet")
        t.delete("prod/old.parquet")

    metadata = checkpoint.get(CheckpointScope.OPERATION, journal_key(t.transaction_id))["metadata"]
    assert "manifest" not in metadata
    assert (metadata["puts"], metadata["deletes"]) == (1, 1)
    puts = row_puts(metadata, CommitLog(store, FAST))
    assert [(put["key"], put["md5"], put["size"]) for put in puts] == [
        ("prod/a.parquet", store.head("prod/a.parquet").md5, 3)
    ]


def test_a_row_written_with_its_manifest_is_read_from_it(store):
    metadata = {"phase": "committed", "position": 7, "manifest": {"puts": [{"key": "k", "md5": "m", "size": 1}], "deletes": []}}
    assert list(row_puts(metadata, CommitLog(store, FAST))) == [{"key": "k", "md5": "m", "size": 1}]


def test_nothing_reaches_production_before_commit(store, checkpoint, tmp_path):
    t = txn(store, checkpoint)
    t.upload_file(write(tmp_path / "a.csv", "a"), "prod/a.parquet")
    assert keys(store, "prod/") == []
    assert [info.key for info in store.list_prefix(t.staging_root)] == [
        f"{t.staging_root}{STAGED_FILES}000000.json",
        f"{t.staging_root}prod/a.parquet",
    ]
    t.commit()
    assert keys(store, "prod/") == ["prod/a.parquet"]
    assert [info.key for info in store.list_prefix(t.staging_root)] == [f"{t.staging_root}prod/a.parquet"]


def test_exception_in_block_rolls_back_leaving_production_and_staging_empty(store, checkpoint, tmp_path):
    with pytest.raises(RuntimeError):
        with txn(store, checkpoint) as t:
            t.upload_file(write(tmp_path / "1.csv", "1"), "key1")
            t.upload_file(write(tmp_path / "2.csv", "2"), "key2")
            raise RuntimeError("Simulated failure")
    assert keys(store) == []
    row = checkpoint.get(CheckpointScope.OPERATION, journal_key(t.transaction_id))
    assert row["status"] == "failed"
    assert "Simulated failure" in row["error_message"]


def test_rejecting_validator_rolls_back_and_names_itself_and_the_key(store, checkpoint, tmp_path):
    def at_least_1000_bytes(key: str) -> bool:
        return store.head(key).size >= 1000

    with pytest.raises(ValidationError) as info:
        with txn(store, checkpoint) as t:
            t.upload_file(write(tmp_path / "small.csv", "tiny"), "prod/small.parquet")
            t.add_validator(at_least_1000_bytes)
    assert "at_least_1000_bytes" in str(info.value)
    assert "prod/small.parquet" in str(info.value)
    assert keys(store) == []
    assert checkpoint.get(CheckpointScope.FILE, "prod/small.parquet")["status"] == "failed"


def test_raising_validator_rolls_back(store, checkpoint, tmp_path):
    def broken(key: str) -> bool:
        raise OSError("validator could not read")

    with pytest.raises(ValidationError):
        with txn(store, checkpoint) as t:
            t.upload_file(write(tmp_path / "a.csv", "a"), "prod/a.parquet")
            t.add_validator(broken)
    assert keys(store) == []


def test_upload_marks_file_checkpoints_completed_on_commit(store, checkpoint, tmp_path):
    source = write(tmp_path / "raw.csv", "x,y\n1,2\n")
    with txn(store, checkpoint) as t:
        t.upload_file(source, "prod/landing/raw.parquet", source_path=source)
    assert checkpoint.is_completed(CheckpointScope.FILE, "prod/landing/raw.parquet", str(source))


def test_identical_object_is_neither_uploaded_nor_copied_again(store, checkpoint, tmp_path):
    source = write(tmp_path / "a.csv", "same content")
    with txn(store, checkpoint) as first:
        first.upload_file(source, "prod/a.parquet")
    with txn(store, checkpoint) as second:
        put = second.upload_file(source, "prod/a.parquet")
        assert put.unchanged
        assert [info.key for info in store.list_prefix(second.staging_root)] == [
            f"{second.staging_root}{STAGED_FILES}000000.json"
        ]
    assert keys(store) == ["prod/a.parquet"]


def test_committed_transaction_id_is_a_no_op_when_run_again(store, checkpoint, tmp_path):
    with txn(store, checkpoint, transaction_id="load-2026-11-29") as t:
        t.upload_file(write(tmp_path / "a.csv", "a"), "prod/a.parquet")
    store.delete_many(["prod/a.parquet"])
    with txn(store, checkpoint, transaction_id="load-2026-11-29") as again:
        again.upload_file(write(tmp_path / "a.csv", "a"), "prod/a.parquet")
    assert keys(store) == []


def test_staged_delete_applies_only_on_commit(store, checkpoint, tmp_path):
    with txn(store, checkpoint) as t:
        t.upload_file(write(tmp_path / "old.csv", "old"), "prod/old.parquet")
    t = txn(store, checkpoint)
    t.delete("prod/old.parquet")
    assert keys(store) == ["prod/old.parquet"]
    t.commit()
    assert keys(store) == []


def test_stage_copy_promotes_server_side(store, checkpoint, tmp_path):
    with txn(store, checkpoint) as t:
        t.upload_file(write(tmp_path / "a.csv", "a"), "dev/landing/a.parquet")
    with txn(store, checkpoint) as t:
        t.stage_copy("dev/landing/a.parquet", "prod/landing/a.parquet")
    assert store.head("prod/landing/a.parquet").md5 == store.head("dev/landing/a.parquet").md5


def test_rollback_after_commit_changes_nothing(store, checkpoint, tmp_path):
    t = txn(store, checkpoint)
    t.upload_file(write(tmp_path / "a.csv", "a"), "prod/a.parquet")
    t.commit()
    t.rollback()
    assert keys(store) == ["prod/a.parquet"]


def test_upload_after_commit_is_an_error(store, checkpoint, tmp_path):
    t = txn(store, checkpoint)
    t.commit()
    with pytest.raises(TransactionError):
        t.upload_file(write(tmp_path / "a.csv", "a"), "prod/a.parquet")


REFUSED_KEYS = ["../etc/passwd", "/abs/a.parquet", "", "/landing/sdg/a.parquet", "prod/./a.parquet"]


@pytest.mark.parametrize("key", REFUSED_KEYS)
def test_a_refused_key_leaves_no_file_checkpoint_and_the_message_names_it_and_what_to_do(key, store, checkpoint, tmp_path):
    source = write(tmp_path / "a.csv", "a")
    with pytest.raises(TransactionError) as refused:
        with txn(store, checkpoint) as t:
            t.upload_file(source, key, source_path=source)
    assert f"Object key {key!r} is refused" in str(refused.value)
    assert "give a key relative to the bucket" in str(refused.value)
    assert checkpoint.get(CheckpointScope.FILE, key) is None
    assert checkpoint.get_pending(CheckpointScope.FILE) == []
    operation = checkpoint.get(CheckpointScope.OPERATION, journal_key(t.transaction_id))
    assert operation["status"] == "failed" and f"{key!r} is refused" in operation["error_message"]
    assert keys(store) == []


def test_a_refused_key_in_a_batch_is_its_own_failure_and_the_good_files_commit(store, checkpoint, tmp_path):
    good, bad = write(tmp_path / "good.csv", "good"), write(tmp_path / "bad.csv", "bad")
    with txn(store, checkpoint) as t:
        outcomes = t.upload_many([Upload(bad, "../bad.parquet"), Upload(good, "prod/good.parquet")])
    assert [o.upload.key for o in outcomes] == ["../bad.parquet", "prod/good.parquet"]
    assert "'../bad.parquet' is refused" in str(outcomes[0].error) and outcomes[1].error is None
    assert keys(store) == ["prod/good.parquet"]
    assert checkpoint.get(CheckpointScope.FILE, "../bad.parquet") is None
    assert checkpoint.get(CheckpointScope.FILE, "prod/good.parquet")["status"] == "completed"


def test_a_key_staged_again_in_one_transaction_publishes_the_later_file(store, checkpoint, tmp_path):
    first, second = write(tmp_path / "first.csv", "first"), write(tmp_path / "second.csv", "second, longer")
    with txn(store, checkpoint) as t:
        t.upload_file(first, "prod/a.parquet", source_path=first)
        t.upload_file(second, "prod/a.parquet", source_path=second)
    assert keys(store) == ["prod/a.parquet"]
    assert store.get_bytes("prod/a.parquet")[0] == b"second, longer"
    metadata = checkpoint.get(CheckpointScope.OPERATION, journal_key(t.transaction_id))["metadata"]
    assert [put["key"] for put in row_puts(metadata, CommitLog(store, FAST))] == ["prod/a.parquet"]
    assert checkpoint.is_completed(CheckpointScope.FILE, "prod/a.parquet", str(second))


def test_one_key_given_twice_in_a_batch_stages_neither_file_and_names_both(store, checkpoint, tmp_path):
    one, two, good = (write(tmp_path / f"{name}.csv", name) for name in ("one", "two", "good"))
    with txn(store, checkpoint) as t:
        outcomes = t.upload_many(
            [Upload(one, "prod/same.parquet"), Upload(good, "prod/good.parquet"), Upload(two, "prod/same.parquet")]
        )
    assert outcomes[1].error is None
    for outcome in (outcomes[0], outcomes[2]):
        message = str(outcome.error)
        assert "'prod/same.parquet'" in message and str(one) in message and str(two) in message
    assert keys(store) == ["prod/good.parquet"]
    assert checkpoint.get(CheckpointScope.FILE, "prod/same.parquet") is None


@pytest.mark.parametrize("stage", ["delete", "stage_copy"])
def test_a_refused_destination_of_a_delete_or_copy_is_refused_before_the_commit(stage, store, checkpoint, tmp_path):
    with txn(store, checkpoint) as t:
        t.upload_file(write(tmp_path / "a.csv", "a"), "prod/a.parquet")
    t = txn(store, checkpoint)
    with pytest.raises(TransactionError, match="'/prod/a.parquet' is refused"):
        t.delete("/prod/a.parquet") if stage == "delete" else t.stage_copy("prod/a.parquet", "/prod/a.parquet")
    t.commit()
    assert keys(store) == ["prod/a.parquet"]


def test_recovery_rolls_back_an_open_transaction_of_a_killed_process(store, tmp_path):
    db = tmp_path / "checkpoints.duckdb"
    killed = jobs.txn_job(store, db, "--put", "prod/a.parquet=a", "--id", "killed", fault=AFTER_STAGING)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(store.list_prefix(MARKER_PREFIX)) != []
    with PipelineCheckpoint("transactions", db) as checkpoint:
        report = recover_transactions(checkpoint, store, error_handler=FAST)
        row = checkpoint.get(CheckpointScope.OPERATION, journal_key("killed"))
    assert report.rolled_back == ["killed"]
    assert row["status"] == CheckpointStatus.FAILED.value
    assert keys(store) == []
    assert list(store.list_prefix(VERSIONS_PREFIX)) == []
    assert list(store.list_prefix(MARKER_PREFIX)) == []


def test_recovery_fails_the_file_checkpoint_of_what_a_killed_process_was_staging(store, tmp_path):
    db = tmp_path / "checkpoints.duckdb"
    killed = jobs.txn_job(store, db, "--put", "prod/a.parquet=a", "--id", "killed", fault=AFTER_STAGING)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with PipelineCheckpoint("transactions", db) as checkpoint:
        assert checkpoint.get(CheckpointScope.FILE, "prod/a.parquet") is None
        recover_transactions(checkpoint, store, error_handler=FAST)
        row = checkpoint.get(CheckpointScope.FILE, "prod/a.parquet")
    assert row["status"] == CheckpointStatus.FAILED.value
    assert row["error_message"] == "transaction killed rolled back: owner died before the commit decision"
    assert row["file_path"] == str(tmp_path / "work-a" / "0.txt")
    assert list(store.list_prefix(VERSIONS_PREFIX)) == []


def test_a_key_under_the_protocol_root_is_refused_before_anything_is_staged(store, checkpoint, tmp_path):
    with pytest.raises(TransactionError, match="commit protocol"):
        with txn(store, checkpoint) as t:
            t.upload_file(write(tmp_path / "a.csv", "a"), f"{PROTOCOL_ROOT}files/000000.json")
    assert list(store.list_prefix(VERSIONS_PREFIX)) == []
    assert checkpoint.get(CheckpointScope.FILE, f"{PROTOCOL_ROOT}files/000000.json") is None


@pytest.mark.s3
def test_staging_a_rollback_could_not_delete_is_removed_by_recovery(fault_proxy, s3_bucket, checkpoint, tmp_path):
    from sqlmesh_osaa.exceptions import RollbackError
    from sqlmesh_osaa.storage import S3Store

    store = S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")
    t = txn(store, checkpoint)
    t.upload_file(write(tmp_path / "a.csv", "a"), "prod/a.parquet")
    fault_proxy.fail_always(403, "AccessDenied", operations={"DeleteObjects"})
    with pytest.raises(RollbackError):
        t.rollback()
    fault_proxy.clear()
    assert [info.key for info in store.list_prefix(t.staging_root)] == [
        f"{t.staging_root}{STAGED_FILES}000000.json",
        f"{t.staging_root}prod/a.parquet",
    ]

    report = recover_transactions(checkpoint, store, error_handler=FAST)

    assert report.rolled_back == [t.transaction_id]
    assert list(store.list_prefix(t.staging_root)) == []
    assert list(store.list_prefix(MARKER_PREFIX)) == []


def _stage_with_fingerprint(t: TransactionManager, source: Path, key: str) -> None:
    stat = source.stat()
    fingerprint = Fingerprint(f"md5-of-{source.read_text()}", stat.st_size, stat.st_mtime_ns)
    [outcome] = t.upload_many([Upload(source, key, source_path=source, fingerprint=fingerprint)])
    assert outcome.error is None


def test_a_key_an_earlier_commit_completed_is_completed_again_with_the_new_fingerprint(store, checkpoint, tmp_path):
    source = tmp_path / "a.csv"
    with txn(store, checkpoint) as first:
        _stage_with_fingerprint(first, write(source, "old"), "prod/a.parquet")
    with txn(store, checkpoint) as second:
        _stage_with_fingerprint(second, write(source, "new content"), "prod/a.parquet")
    row = checkpoint.get(CheckpointScope.FILE, "prod/a.parquet")
    assert (row["status"], row["attempt"], row["checksum"]) == ("completed", 2, "md5-of-new content")


def test_completing_a_manifest_again_leaves_the_files_it_completed_as_they_are(store, checkpoint, tmp_path):
    with txn(store, checkpoint) as t:
        _stage_with_fingerprint(t, write(tmp_path / "a.csv", "a"), "prod/a.parquet")
    before = checkpoint.history(CheckpointScope.FILE, "prod/a.parquet")

    complete_files(checkpoint, store, PutRecords(t.manifest.puts))

    assert checkpoint.history(CheckpointScope.FILE, "prod/a.parquet") == before
    assert checkpoint.get(CheckpointScope.FILE, "prod/a.parquet")["attempt"] == 1


def test_a_commit_of_more_files_than_one_completion_batch_completes_every_file(store, checkpoint, tmp_path, monkeypatch):
    from sqlmesh_osaa import commit_protocol

    monkeypatch.setattr(commit_protocol, "COMPLETION_BATCH", 2)
    sources = [write(tmp_path / f"{index}.csv", f"content {index}") for index in range(5)]
    with txn(store, checkpoint) as t:
        t.upload_many([Upload(path, f"prod/{path.stem}.parquet") for path in sources])
    rows = checkpoint.list(CheckpointScope.FILE, CheckpointStatus.COMPLETED)
    assert sorted(row["key"] for row in rows) == [f"prod/{index}.parquet" for index in range(5)]
    assert all(row["checksum"] for row in rows)


def test_a_local_store_stages_and_applies_on_the_calling_thread(tmp_path, checkpoint):
    """Its requests are filesystem calls under the GIL: threads would only trade it."""
    import threading

    from sqlmesh_osaa.storage import LocalStore

    class RecordingStore(LocalStore):
        threads: set[str] = set()

        def put_file(self, *args, **kwargs):
            self.threads.add(threading.current_thread().name)
            return super().put_file(*args, **kwargs)

        def copy(self, *args, **kwargs):
            self.threads.add(threading.current_thread().name)
            return super().copy(*args, **kwargs)

    local = RecordingStore(tmp_path / "store", "osaa")
    sources = [write(tmp_path / f"{index}.csv", f"content {index}") for index in range(4)]
    with txn(local, checkpoint) as t:
        t.upload_many([Upload(path, f"prod/{path.stem}.parquet") for path in sources])
    assert RecordingStore.threads == {threading.current_thread().name}
    assert keys(local) == [f"prod/{index}.parquet" for index in range(4)]
