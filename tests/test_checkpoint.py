"""The checkpoint store, once per backend (DuckDB, PostgreSQL): state machine, event log, file idempotency,
batches, statistics."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
from support import processes

from sqlmesh_osaa.checkpoint import (
    ROW_COLUMNS,
    CheckpointScope,
    CheckpointStatus,
    ItemChange,
    PipelineCheckpoint,
    calculate_checksum,
)
from sqlmesh_osaa.checkpoint.transitions import replay
from sqlmesh_osaa.exceptions import CheckpointError, ErrorCategory, categorize_error
from sqlmesh_osaa.settings import reset_settings

FILE = CheckpointScope.FILE
MODEL = CheckpointScope.MODEL

_opened: list[str] | None = None


def _record_opens(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None:
        _opened.append(os.fspath(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else str(args[0]))


sys.addaudithook(_record_opens)


@contextmanager
def files_opened() -> Iterator[list[str]]:
    """Paths Python opens inside the block (audit hook 'open'), to prove a file is not read."""
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


@pytest.fixture
def where(checkpoint_target: dict[str, Any]) -> dict[str, Any]:
    """PipelineCheckpoint's keyword arguments for this test's store (a DuckDB file or a PostgreSQL database)."""
    return checkpoint_target


@pytest.fixture
def store(where: dict[str, Any]) -> Iterator[PipelineCheckpoint]:
    with PipelineCheckpoint("test", **where, lock_timeout=5) as checkpoint:
        yield checkpoint


@pytest.fixture
def raw_file(tmp_path: Path) -> Path:
    path = tmp_path / "raw" / "data.csv"
    path.parent.mkdir()
    path.write_text("country,value\nKEN,1\n")
    return path


def complete(store: PipelineCheckpoint, key: str, file_path: Path | None = None, scope=FILE) -> None:
    store.mark_started(scope, key, file_path)
    store.mark_completed(scope, key, file_path)


def fail(store: PipelineCheckpoint, key: str, message: str = "boom", scope=FILE) -> None:
    store.mark_started(scope, key)
    store.mark_failed(scope, key, message, category=ErrorCategory.TRANSIENT)


def rewrite_keeping_size(path: Path, content: str, mtime_ns: int) -> None:
    """Replace the content with same-size content and set mtime_ns (filesystem clocks are coarse)."""
    assert len(content.encode()) == path.stat().st_size
    path.write_text(content)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def transitions(store: PipelineCheckpoint, key: str, scope=FILE) -> list[tuple[str, str]]:
    return [(event["from_status"], event["to_status"]) for event in store.history(scope, key)]


# -- state machine -------------------------------------------------------------------------


def test_an_item_never_started_has_no_row_and_is_not_completed(store: PipelineCheckpoint) -> None:
    assert store.get(FILE, "k") is None
    assert store.is_completed(FILE, "k") is False


def test_an_item_started_then_completed_is_completed(store: PipelineCheckpoint) -> None:
    complete(store, "k")

    assert store.is_completed(FILE, "k")
    assert store.get(FILE, "k")["status"] == "completed"


def test_a_started_item_records_its_run_owner_and_first_attempt(store: PipelineCheckpoint) -> None:
    store.mark_started(FILE, "k")

    row = store.get(FILE, "k")
    assert (row["status"], row["attempt"], row["interrupted"]) == ("in_progress", 1, False)
    assert (row["run_id"], row["owner_pid"], row["owner_host"]) == (store.run_id, os.getpid(), socket.gethostname())


def test_a_failed_item_keeps_its_error_message_and_category(store: PipelineCheckpoint) -> None:
    store.mark_started(FILE, "k")
    store.mark_failed(FILE, "k", "no such file", category=categorize_error(FileNotFoundError("x")))

    row = store.get(FILE, "k")
    assert (row["status"], row["error_message"], row["error_category"]) == ("failed", "no such file", "permanent")


def test_a_failed_item_can_be_retried_and_its_attempts_are_counted(store: PipelineCheckpoint) -> None:
    fail(store, "k")
    complete(store, "k")

    row = store.get(FILE, "k")
    assert (row["status"], row["attempt"], row["error_message"]) == ("completed", 2, None)


def test_completing_an_item_never_started_is_refused_saying_what_to_do(store: PipelineCheckpoint) -> None:
    with pytest.raises(CheckpointError) as raised:
        store.mark_completed(FILE, "s3://bucket/a.parquet")

    message = str(raised.value)
    for expected in ("'test'", "'file'", "'s3://bucket/a.parquet'", "pending -> completed", "mark_started"):
        assert expected in message
    assert raised.value.category is ErrorCategory.PERMANENT


def test_failing_an_item_never_started_is_refused(store: PipelineCheckpoint) -> None:
    with pytest.raises(CheckpointError, match="pending -> failed"):
        store.mark_failed(FILE, "k", "boom")


def test_completing_a_completed_item_again_is_refused(store: PipelineCheckpoint) -> None:
    complete(store, "k")

    with pytest.raises(CheckpointError, match="completed -> completed"):
        store.mark_completed(FILE, "k")


def test_restarting_a_completed_item_without_a_file_needs_force(store: PipelineCheckpoint) -> None:
    complete(store, "k")

    with pytest.raises(CheckpointError, match="force=True"):
        store.mark_started(FILE, "k")
    store.mark_started(FILE, "k", force=True)
    assert store.get(FILE, "k")["status"] == "in_progress"


def test_restarting_a_completed_item_whose_file_is_unchanged_is_refused(
    store: PipelineCheckpoint, raw_file: Path
) -> None:
    complete(store, "k", raw_file)

    with pytest.raises(CheckpointError, match="unchanged"):
        store.mark_started(FILE, "k", raw_file)


def test_restarting_a_completed_item_whose_file_changed_is_allowed(store: PipelineCheckpoint, raw_file: Path) -> None:
    complete(store, "k", raw_file)
    raw_file.write_text("country,value\nKEN,1\nUGA,2\n")

    store.mark_started(FILE, "k", raw_file)

    assert (store.get(FILE, "k")["status"], store.get(FILE, "k")["attempt"]) == ("in_progress", 2)


def test_starting_an_item_twice_in_one_run_is_refused(store: PipelineCheckpoint) -> None:
    store.mark_started(FILE, "k")

    with pytest.raises(CheckpointError, match="this run already started it"):
        store.mark_started(FILE, "k")


def test_an_item_another_open_run_holds_is_refused_unless_forced(store: PipelineCheckpoint, where: dict[str, Any]) -> None:
    store.mark_started(FILE, "k")

    with PipelineCheckpoint("test", **where) as other:
        assert other.get(FILE, "k")["interrupted"] is False
        with pytest.raises(CheckpointError, match=f"run {store.run_id}.*still working"):
            other.mark_started(FILE, "k")
        other.mark_started(FILE, "k", force=True)
        assert other.get(FILE, "k")["run_id"] == other.run_id


def test_a_refused_transition_writes_nothing(store: PipelineCheckpoint) -> None:
    complete(store, "k")
    before = (store.get(FILE, "k"), store.history(FILE, "k"))

    with pytest.raises(CheckpointError):
        store.mark_failed(FILE, "k", "late failure")

    assert (store.get(FILE, "k"), store.history(FILE, "k")) == before


def test_an_item_left_in_progress_by_a_closed_run_is_interrupted_and_resumable(where: dict[str, Any]) -> None:
    with PipelineCheckpoint("test", **where) as first:
        first.mark_started(FILE, "k")

    with PipelineCheckpoint("test", **where) as second:
        assert second.get(FILE, "k")["interrupted"] is True
        second.mark_started(FILE, "k")
        second.mark_completed(FILE, "k")

        assert second.get(FILE, "k")["attempt"] == 2
        assert transitions(second, "k") == [
            ("pending", "in_progress"),
            ("in_progress", "in_progress"),
            ("in_progress", "completed"),
        ]


@pytest.mark.parametrize("ending", ["sigkill", "exit"])
def test_an_item_left_in_progress_by_a_dead_process_is_interrupted_and_resumable(where: dict[str, Any], ending: str) -> None:
    script = textwrap.dedent(
        """
        import json, sys, time
        from sqlmesh_osaa.checkpoint import PipelineCheckpoint
        store = PipelineCheckpoint("test", **json.loads(sys.argv[1]), lock_timeout=30)
        store.mark_started("file", "k")
        print("started", flush=True)
        if sys.argv[2] == "exit":
            sys.exit(0)
        time.sleep(120)
        """
    )
    command = [sys.executable, "-c", script, json.dumps(where, default=str), ending]
    with processes.spawn(command, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout.readline().strip() == "started"
        if ending == "sigkill":
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)

    with PipelineCheckpoint("test", **where, lock_timeout=30) as store:
        row = store.get(FILE, "k")
        assert (row["status"], row["interrupted"], row["owner_pid"]) == ("in_progress", True, child.pid)
        assert store.get_statistics()["interrupted"] == 1

        store.mark_started(FILE, "k")

        assert (store.get(FILE, "k")["attempt"], store.get(FILE, "k")["interrupted"]) == (2, False)


# -- event log -----------------------------------------------------------------------------


def test_every_transition_is_appended_to_the_event_log_in_order(store: PipelineCheckpoint) -> None:
    store.mark_started(FILE, "k", "raw/a.csv")
    store.mark_failed(FILE, "k", "timeout", category=ErrorCategory.TRANSIENT)
    store.mark_started(FILE, "k")
    store.mark_completed(FILE, "k")

    events = store.history(FILE, "k")
    assert [(e["from_status"], e["to_status"], e["attempt"]) for e in events] == [
        ("pending", "in_progress", 1),
        ("in_progress", "failed", 1),
        ("failed", "in_progress", 2),
        ("in_progress", "completed", 2),
    ]
    assert [(e["error_message"], e["error_category"]) for e in events][1] == ("timeout", "transient")
    assert {(e["run_id"], e["pid"], e["host"], e["file_path"]) for e in events} == {
        (store.run_id, os.getpid(), socket.gethostname(), "raw/a.csv")
    }
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)


def test_clearing_an_item_logs_a_transition_to_pending(store: PipelineCheckpoint) -> None:
    complete(store, "k")
    store.clear_checkpoint(FILE, "k")

    assert transitions(store, "k")[-1] == ("completed", "pending")


def stored_rows(store: PipelineCheckpoint) -> dict[tuple[str, str, str], dict]:
    rows = store.store.read(f"SELECT {', '.join(ROW_COLUMNS)} FROM checkpoints")
    return {(r[0], r[1], r[2]): dict(zip(ROW_COLUMNS, r)) for r in rows}


def test_the_event_log_alone_rebuilds_every_row(store: PipelineCheckpoint, raw_file: Path) -> None:
    complete(store, "single", raw_file)
    store.mark_started(FILE, "meta", metadata={"phase": "open"})
    store.update_metadata(FILE, "meta", {"phase": "committing"})
    fail(store, "failed")
    store.mark_started_many(FILE, [f"batch/{i}" for i in range(40)] + [("batch/file", raw_file)])
    store.mark_completed_many(FILE, [f"batch/{i}" for i in range(20)] + [("batch/file", raw_file, "a" * 32)])
    complete(store, "cleared")
    store.clear_checkpoint(FILE, "cleared")
    complete(store, "m", scope=MODEL)
    store.clear_all_checkpoints(scope=MODEL)

    rows = stored_rows(store)
    assert len(rows) == 44
    assert replay(store.store.scan_events(all_kinds=True)) == rows


def test_a_batch_of_new_and_existing_items_writes_each_row_and_the_log_rebuilds_them(
    store: PipelineCheckpoint, raw_file: Path
) -> None:
    """One bulk write that inserts some rows and updates others (each with its own path)."""
    for i in range(10):
        fail(store, f"item/{i}")
    items = [(f"item/{i}", raw_file if i % 2 else None) for i in range(30)]

    store.mark_started_many(FILE, items)

    rows = {key: store.get(FILE, key) for key, _ in items}
    assert {key: row["attempt"] for key, row in rows.items()} == {key: 2 if int(key[5:]) < 10 else 1 for key, _ in items}
    assert {key: row["file_path"] for key, row in rows.items()} == {k: None if p is None else str(p) for k, p in items}
    assert {row["status"] for row in rows.values()} == {"in_progress"}
    assert replay(store.store.scan_events(all_kinds=True)) == stored_rows(store)


@pytest.mark.parametrize("metadata", [None, {"store": "landing"}], ids=["metadata-kept", "metadata-merged"])
def test_a_bulk_completion_writes_the_rows_and_events_the_same_completions_one_by_one_write(
    store: PipelineCheckpoint, raw_file: Path, metadata: dict[str, str] | None
) -> None:
    """A bulk completion reads only some columns of the rows and leaves the rest as stored in SQL."""

    def item(group: str, i: int) -> str:
        return f"{group}/{i}"

    for group in ("bulk", "single"):
        for i in range(0, 20, 4):
            fail(store, item(group, i))
    store.mark_started_many(FILE, [(item(g, i), raw_file if i % 2 else None) for g in ("bulk", "single") for i in range(20)])
    for group in ("bulk", "single"):
        for i in range(20):
            store.update_metadata(FILE, item(group, i), {"phase": str(i % 3)})

    def completion(group: str, i: int) -> tuple[str, Path | None, str | None]:
        return item(group, i), raw_file if i % 3 == 0 else None, "0" * 32 if i % 5 == 0 else None

    store.mark_completed_many(FILE, [completion("bulk", i) for i in range(20)], metadata=metadata)
    for i in range(20):
        key, path, checksum = completion("single", i)
        store.mark_completed(FILE, key, path, metadata=metadata, checksum=checksum)

    varying = {"key", "updated_at", "completed_at", "seq", "at"}

    def state(group: str, i: int) -> tuple[dict[str, Any], dict[str, Any]]:
        row = store.get(FILE, item(group, i))
        event = store.store.scan_events(key=item(group, i))[-1]
        return (
            {column: value for column, value in row.items() if column not in varying},
            {column: value for column, value in event.items() if column not in varying},
        )

    for i in range(20):
        assert state("bulk", i) == state("single", i)
    assert {store.get(FILE, item("bulk", i))["status"] for i in range(20)} == {"completed"}
    assert replay(store.store.scan_events(all_kinds=True)) == stored_rows(store)


@pytest.mark.parametrize("uniform", [True, False], ids=["started-together", "started-apart"])
def test_a_bulk_completion_with_every_path_given_keeps_each_items_start_and_attempt_and_the_log_rebuilds_them(
    store: PipelineCheckpoint, raw_file: Path, uniform: bool
) -> None:
    """The uniform case: every item in_progress and named with its path (one aggregate read on DuckDB)."""
    keys = [f"item/{i}" for i in range(40)]
    if not uniform:
        fail(store, keys[0])
        store.update_metadata(FILE, keys[0], {"phase": "retried"})
    store.mark_started_many(FILE, [(key, raw_file) for key in (keys if uniform else keys[:20])])
    if not uniform:
        store.mark_started_many(FILE, [(key, raw_file) for key in keys[20:]])
    before = {key: store.get(FILE, key) for key in keys}

    store.mark_completed_many(FILE, [(key, str(raw_file), "0" * 32) for key in keys])

    for key in keys:
        row, old = store.get(FILE, key), before[key]
        assert (row["status"], row["checksum"], row["file_path"]) == ("completed", "0" * 32, str(raw_file))
        assert (row["attempt"], row["started_at"], row["metadata"], row["run_id"]) == (
            old["attempt"], old["started_at"], old["metadata"], old["run_id"]
        )
        assert row["file_size"] == raw_file.stat().st_size
    assert replay(store.store.scan_events(all_kinds=True)) == stored_rows(store)


def test_a_completion_that_starts_first_logs_both_transitions_and_leaves_the_rows_a_start_then_a_completion_leave(
    store: PipelineCheckpoint, raw_file: Path
) -> None:
    """One write for work done before any row was written; a completed key is taken again (forced)."""
    keys = [f"fresh/{i}" for i in range(30)]
    store.mark_started(FILE, keys[0])
    store.mark_completed(FILE, keys[0])
    fail(store, keys[1])

    store.mark_completed_many(FILE, [(key, str(raw_file), "0" * 32) for key in keys], metadata={"m": 1}, start_first=True)

    assert transitions(store, keys[0])[-2:] == [("completed", "in_progress"), ("in_progress", "completed")]
    assert transitions(store, keys[1])[-2:] == [("failed", "in_progress"), ("in_progress", "completed")]
    assert transitions(store, keys[2]) == [("pending", "in_progress"), ("in_progress", "completed")]
    rows = {key: store.get(FILE, key) for key in keys}
    assert {(row["status"], row["checksum"], row["file_path"], row["run_id"]) for row in rows.values()} == {
        ("completed", "0" * 32, str(raw_file), store.run_id)
    }
    assert [rows[key]["attempt"] for key in keys[:3]] == [2, 2, 1]
    assert all(row["metadata"]["m"] == 1 for row in rows.values())
    assert replay(store.store.scan_events(all_kinds=True)) == stored_rows(store)


def test_a_single_mark_checks_the_row_another_writer_changed_since_this_store_wrote_it(
    store: PipelineCheckpoint, where: dict[str, Any]
) -> None:
    store.mark_started(FILE, "k")
    with PipelineCheckpoint("test", **where) as other:
        other.mark_started(FILE, "k", force=True)
        other.mark_completed(FILE, "k")

    with pytest.raises(CheckpointError, match="already completed"):
        store.mark_completed(FILE, "k")

    assert transitions(store, "k") == [("pending", "in_progress"), ("in_progress", "in_progress"), ("in_progress", "completed")]
    assert store.get(FILE, "k")["run_id"] == other.run_id


def test_a_first_mark_of_a_key_another_writer_stored_is_planned_on_that_row(
    store: PipelineCheckpoint, where: dict[str, Any]
) -> None:
    with PipelineCheckpoint("test", **where) as other:
        other.mark_started(FILE, "k")
        with pytest.raises(CheckpointError, match=f"run {other.run_id} .* is still working on it"):
            store.mark_started(FILE, "k")
        other.mark_completed(FILE, "k")

    store.mark_started(FILE, "k", force=True)

    assert transitions(store, "k") == [("pending", "in_progress"), ("in_progress", "completed"), ("completed", "in_progress")]
    assert store.get(FILE, "k")["attempt"] == 2


def test_prune_keeps_the_last_event_of_every_row_it_keeps(store: PipelineCheckpoint) -> None:
    fail(store, "broken")
    store.mark_started(FILE, "running")
    store.prune(timedelta(0))

    assert replay(store.store.scan_events(all_kinds=True)) == stored_rows(store)


# -- files ---------------------------------------------------------------------------------


def test_completion_records_size_mtime_and_md5_of_the_file(store: PipelineCheckpoint, raw_file: Path) -> None:
    complete(store, "k", raw_file)

    row = store.get(FILE, "k")
    stat = raw_file.stat()
    assert (row["file_path"], row["file_size"], row["file_mtime_ns"]) == (str(raw_file), stat.st_size, stat.st_mtime_ns)
    assert row["checksum"] == hashlib.md5(raw_file.read_bytes()).hexdigest() == store.get_checksum(FILE, "k")


def test_a_given_checksum_is_recorded_instead_of_reading_the_file(store: PipelineCheckpoint, raw_file: Path) -> None:
    store.mark_started(FILE, "k", raw_file)
    with files_opened() as opened:
        store.mark_completed(FILE, "k", raw_file, checksum="0" * 32)

    assert store.get_checksum(FILE, "k") == "0" * 32
    assert str(raw_file) not in opened


def test_completion_without_a_file_path_fingerprints_the_file_recorded_at_start(
    store: PipelineCheckpoint, raw_file: Path
) -> None:
    store.mark_started(FILE, "k", raw_file)
    store.mark_completed(FILE, "k")

    assert store.get_checksum(FILE, "k") == calculate_checksum(raw_file)
    assert store.is_completed(FILE, "k", raw_file)


def test_completion_of_a_vanished_file_records_no_fingerprint(store: PipelineCheckpoint, raw_file: Path) -> None:
    store.mark_started(FILE, "k", raw_file)
    raw_file.unlink()
    store.mark_completed(FILE, "k", raw_file)

    row = store.get(FILE, "k")
    assert (row["status"], row["checksum"], row["file_size"]) == ("completed", None, None)


def test_an_untouched_file_is_completed_without_being_read(store: PipelineCheckpoint, raw_file: Path) -> None:
    complete(store, "k", raw_file)

    with files_opened() as opened:
        assert store.is_completed(FILE, "k", raw_file)
    assert str(raw_file) not in opened


def test_new_content_with_the_same_size_and_mtime_passes_the_fast_path_but_not_verification(
    store: PipelineCheckpoint, raw_file: Path
) -> None:
    complete(store, "k", raw_file)
    rewrite_keeping_size(raw_file, "country,value\nUGA,9\n", raw_file.stat().st_mtime_ns)

    assert store.is_completed(FILE, "k", raw_file) is True
    assert store.is_completed(FILE, "k", raw_file, verify_checksum=True) is False


def test_a_file_changed_with_the_same_size_and_a_new_mtime_is_not_completed(
    store: PipelineCheckpoint, raw_file: Path
) -> None:
    complete(store, "k", raw_file)
    rewrite_keeping_size(raw_file, "country,value\nUGA,9\n", raw_file.stat().st_mtime_ns + 10**9)

    assert store.is_completed(FILE, "k", raw_file) is False
    assert store.file_unchanged(FILE, "k", raw_file) is False


def test_a_file_of_another_size_is_not_completed_and_not_read(store: PipelineCheckpoint, raw_file: Path) -> None:
    complete(store, "k", raw_file)
    raw_file.write_text("country,value\nKEN,1\nUGA,2\n")

    with files_opened() as opened:
        assert store.is_completed(FILE, "k", raw_file) is False
    assert str(raw_file) not in opened


def test_a_touched_file_with_the_same_content_is_still_completed(store: PipelineCheckpoint, raw_file: Path) -> None:
    complete(store, "k", raw_file)
    mtime_ns = raw_file.stat().st_mtime_ns + 10**9
    os.utime(raw_file, ns=(mtime_ns, mtime_ns))

    assert store.is_completed(FILE, "k", raw_file) is True


def test_a_missing_file_is_not_completed(store: PipelineCheckpoint, raw_file: Path) -> None:
    complete(store, "k", raw_file)
    raw_file.unlink()

    assert store.is_completed(FILE, "k", raw_file) is False


def test_calculate_checksum_is_the_hex_md5_of_the_content(raw_file: Path) -> None:
    assert calculate_checksum(raw_file) == hashlib.md5(raw_file.read_bytes()).hexdigest()


# -- clearing, listing, metadata -------------------------------------------------------------


def test_clear_checkpoint_makes_the_item_pending_again(store: PipelineCheckpoint) -> None:
    complete(store, "k")

    assert store.clear_checkpoint(FILE, "k") == 1
    assert store.get(FILE, "k") is None
    store.mark_started(FILE, "k")


def test_clear_checkpoint_naming_another_file_clears_nothing(store: PipelineCheckpoint, raw_file: Path) -> None:
    complete(store, "k", raw_file)

    assert store.clear_checkpoint(FILE, "k", "elsewhere.csv") == 0
    assert store.is_completed(FILE, "k")


def test_clear_all_checkpoints_clears_one_scope_and_status(store: PipelineCheckpoint) -> None:
    complete(store, "a")
    fail(store, "b")
    complete(store, "m", scope=MODEL)

    assert store.clear_all_checkpoints(scope=FILE, status=CheckpointStatus.COMPLETED) == 1
    assert [(row["scope"], row["key"]) for row in store.list()] == [("model", "m"), ("file", "b")]


def test_get_pending_lists_every_item_not_completed(store: PipelineCheckpoint) -> None:
    complete(store, "done")
    fail(store, "failed", "disk full")
    store.mark_started(FILE, "running")

    pending = {row["key"]: (row["status"], row["error_message"]) for row in store.get_pending()}
    assert pending == {"failed": ("failed", "disk full"), "running": ("in_progress", None)}


def test_list_filters_by_scope_and_status_newest_first(store: PipelineCheckpoint) -> None:
    for key in ("a", "b", "c"):
        complete(store, key)
    fail(store, "x")
    complete(store, "m", scope=MODEL)

    assert [row["key"] for row in store.list(scope=FILE, status="completed")] == ["c", "b", "a"]
    assert [row["key"] for row in store.list(limit=2)] == ["m", "x"]


def test_items_of_another_pipeline_are_invisible(store: PipelineCheckpoint, where: dict[str, Any]) -> None:
    complete(store, "k")

    with PipelineCheckpoint("other", **where) as other:
        assert other.get(FILE, "k") is None
        assert other.list() == []
        assert other.get_statistics()["total"] == 0


def test_metadata_is_kept_as_given_and_merged_by_later_transitions(store: PipelineCheckpoint) -> None:
    store.mark_started(FILE, "k", metadata={"user": "pipeline", "rows": 0})
    store.mark_completed(FILE, "k", metadata={"rows": 42})

    assert store.get(FILE, "k")["metadata"] == {"user": "pipeline", "rows": 42}


def test_update_metadata_merges_without_a_transition(store: PipelineCheckpoint) -> None:
    store.mark_started(FILE, "k", metadata={"phase": "open"})
    store.update_metadata(FILE, "k", {"phase": "committing", "manifest": ["a"]})

    row = store.get(FILE, "k")
    assert (row["status"], row["metadata"]) == ("in_progress", {"phase": "committing", "manifest": ["a"]})
    assert transitions(store, "k") == [("pending", "in_progress")]


def test_update_metadata_of_an_item_without_checkpoint_is_refused(store: PipelineCheckpoint) -> None:
    with pytest.raises(CheckpointError, match="mark_started it first"):
        store.update_metadata(FILE, "k", {"a": 1})


# -- statistics ----------------------------------------------------------------------------


def test_statistics_count_items_by_status_and_scope(store: PipelineCheckpoint) -> None:
    complete(store, "a")
    complete(store, "b")
    fail(store, "c")
    complete(store, "m", scope=MODEL)

    stats = store.get_statistics()
    assert stats["pipeline"] == "test"
    assert stats["by_status"]["completed"]["count"] == 3
    assert stats["by_status"]["failed"]["count"] == 1
    assert stats["by_scope"] == {"file": {"completed": 2, "failed": 1}, "model": {"completed": 1}}
    assert stats["total"] == 4


def test_failure_rate_is_the_percentage_of_items_failed(store: PipelineCheckpoint) -> None:
    complete(store, "a")
    fail(store, "b")
    fail(store, "c")
    complete(store, "d")

    assert store.get_statistics()["failure_rate"] == 50.0


def test_retries_are_counted_by_cause(store: PipelineCheckpoint, where: dict[str, Any]) -> None:
    fail(store, "a")
    complete(store, "a")
    complete(store, "b")
    store.mark_started(FILE, "b", force=True)
    with PipelineCheckpoint("test", **where) as dead_run:
        dead_run.mark_started(FILE, "c")
    store.mark_started(FILE, "c")

    assert store.get_statistics()["retries"] == {
        "total": 3,
        "after_failure": 1,
        "after_interruption": 1,
        "reruns": 1,
        "max_attempt": 2,
    }


def test_time_to_recovery_runs_from_the_first_failure_to_the_next_completion(store: PipelineCheckpoint) -> None:
    fail(store, "k", "first")
    fail(store, "k", "second")
    complete(store, "k")

    events = store.history(FILE, "k")
    expected = (events[-1]["at"] - events[1]["at"]).total_seconds()
    recovery = store.get_statistics()["time_to_recovery"]
    assert (recovery["recovered"], recovery["unrecovered"]) == (1, 0)
    assert recovery["mean_seconds"] == pytest.approx(expected, abs=1e-5)
    assert recovery["max_seconds"] == pytest.approx(expected, abs=1e-5)


def test_failures_not_yet_followed_by_a_completion_are_unrecovered(store: PipelineCheckpoint) -> None:
    fail(store, "a")
    complete(store, "a")
    fail(store, "b")

    recovery = store.get_statistics()["time_to_recovery"]
    assert (recovery["recovered"], recovery["unrecovered"]) == (1, 1)


def test_most_common_errors_are_ranked_by_count(store: PipelineCheckpoint) -> None:
    for key in ("a", "b", "c"):
        fail(store, key, "throttled")
    fail(store, "d", "access denied")

    assert [(e["error_message"], e["count"]) for e in store.get_statistics()["most_common_errors"]] == [
        ("throttled", 3),
        ("access denied", 1),
    ]


# -- retention -----------------------------------------------------------------------------


def test_prune_deletes_completed_rows_and_their_events_older_than_the_age(store: PipelineCheckpoint) -> None:
    complete(store, "old")

    assert store.prune(timedelta(0)) == 1
    assert (store.get(FILE, "old"), store.history(FILE, "old")) == (None, [])


def test_prune_keeps_items_not_completed_with_their_whole_history(store: PipelineCheckpoint) -> None:
    fail(store, "broken")
    store.mark_started(FILE, "broken")

    assert store.prune(timedelta(0)) == 0
    assert len(store.history(FILE, "broken")) == 3


def test_prune_keeps_what_is_younger_than_the_age(store: PipelineCheckpoint) -> None:
    complete(store, "recent")

    assert store.prune(timedelta(days=30)) == 0
    assert store.is_completed(FILE, "recent")


# -- batches -------------------------------------------------------------------------------


def test_a_uniform_bulk_completion_by_another_run_sets_its_owner_paths_and_fingerprints(
    where: dict[str, Any], tmp_path: Path
) -> None:
    """What a uniform read tells the bulk UPDATE (one owner, no fingerprint yet) must not hide a change it makes."""
    keys = [f"item/{i}" for i in range(40)]
    files = [tmp_path / f"{i}.csv" for i in range(40)]
    for i, path in enumerate(files):
        path.write_text("x" * i)
    first = PipelineCheckpoint("test", **where)
    first.mark_started_many(FILE, [(key, f"old/{key}") for key in keys])
    first.close()

    with PipelineCheckpoint("test", **where) as second:
        second.mark_completed_many(FILE, [(key, str(path), f"{i:032d}") for i, (key, path) in enumerate(zip(keys, files))])
        rows = {key: second.get(FILE, key) for key in keys}
        assert {(row["status"], row["run_id"], row["owner_pid"]) for row in rows.values()} == {
            ("completed", second.run_id, os.getpid())
        }
        assert [(row["file_path"], row["checksum"], row["file_size"]) for row in rows.values()] == [
            (str(path), f"{i:032d}", i) for i, path in enumerate(files)
        ]
        assert replay(second.store.scan_events(all_kinds=True)) == stored_rows(second)


def test_batch_marking_completes_every_item(store: PipelineCheckpoint) -> None:
    keys = [f"landing/{i}.parquet" for i in range(500)]
    store.mark_started_many(FILE, keys)
    store.mark_completed_many(FILE, keys)

    assert store.completed_keys(FILE, keys) == set(keys)
    assert store.get_statistics()["by_status"]["completed"]["count"] == 500


def test_completed_keys_returns_only_the_completed_ones_asked_for(store: PipelineCheckpoint) -> None:
    complete(store, "done")
    complete(store, "also-done")
    fail(store, "failed")
    store.mark_started(FILE, "running")

    assert store.completed_keys(FILE, ["done", "failed", "running", "unknown"]) == {"done"}
    assert store.completed_keys(MODEL, ["done"]) == set()


def test_a_long_key_list_returns_only_its_own_completed_keys(where: dict[str, Any]) -> None:
    """Thousands of keys are looked up by scanning the scope; rows of other keys, scopes and pipelines stay out."""
    keys = [f"prod/landing/wdi/{i}.parquet" for i in range(1500)]
    with PipelineCheckpoint("test", **where) as store, PipelineCheckpoint("other", **where) as other:
        store.mark_started_many(FILE, keys + ["prod/landing/wdi/not-asked.parquet"])
        store.mark_completed_many(FILE, keys[1:] + ["prod/landing/wdi/not-asked.parquet"])
        store.mark_started_many(MODEL, [keys[0]])
        store.mark_completed_many(MODEL, [keys[0]])
        other.mark_started_many(FILE, [keys[0]])
        other.mark_completed_many(FILE, [keys[0]])

        assert store.completed_keys(FILE, keys + ["prod/landing/unknown.parquet"]) == set(keys[1:])


def test_batch_items_may_be_keys_or_tuples_with_file_and_checksum(store: PipelineCheckpoint, raw_file: Path) -> None:
    store.mark_started_many(FILE, ["a", ("b", None), ("c", raw_file), ("d", str(raw_file))])
    store.mark_completed_many(FILE, ["a", ("b",), ("c", raw_file), ("d", raw_file, "f" * 32)])

    rows = {key: store.get(FILE, key) for key in "abcd"}
    assert {key: row["status"] for key, row in rows.items()} == dict.fromkeys("abcd", "completed")
    assert [rows[key]["checksum"] for key in "abcd"] == [None, None, calculate_checksum(raw_file), "f" * 32]
    assert rows["c"]["file_size"] == raw_file.stat().st_size


def test_batch_completion_fingerprints_the_files_recorded_at_start(store: PipelineCheckpoint, raw_file: Path) -> None:
    store.mark_started_many(FILE, [("k", raw_file)])
    store.mark_completed_many(FILE, ["k"])

    assert store.unchanged_keys(FILE, [("k", raw_file)]) == {"k"}


def test_a_batch_with_one_illegal_item_writes_nothing_and_names_it(store: PipelineCheckpoint) -> None:
    store.mark_started_many(FILE, ["a", "b"])

    with pytest.raises(CheckpointError, match=r"1 of 3 items refused.*'never-started' \(pending -> completed\)"):
        store.mark_completed_many(FILE, ["a", "never-started", "b"])

    assert {store.get(FILE, key)["status"] for key in ("a", "b")} == {"in_progress"}
    assert transitions(store, "a") == [("pending", "in_progress")]


def test_a_batch_naming_a_key_twice_is_refused(store: PipelineCheckpoint) -> None:
    with pytest.raises(CheckpointError, match="more than once.*'a'"):
        store.mark_started_many(FILE, ["a", "b", "a"])

    assert store.list() == []


def test_a_batch_start_retries_failed_and_resumes_interrupted_items(store: PipelineCheckpoint, where: dict[str, Any]) -> None:
    fail(store, "failed")
    with PipelineCheckpoint("test", **where) as dead_run:
        dead_run.mark_started(FILE, "interrupted")

    store.mark_started_many(FILE, ["failed", "interrupted", "new"])

    assert {key: store.get(FILE, key)["attempt"] for key in ("failed", "interrupted", "new")} == {
        "failed": 2,
        "interrupted": 2,
        "new": 1,
    }


def test_a_batch_restarts_completed_items_only_when_their_file_changed(
    store: PipelineCheckpoint, raw_file: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.csv"
    other.write_text("x\n")
    store.mark_started_many(FILE, [("same", raw_file), ("changed", other)])
    store.mark_completed_many(FILE, [("same", raw_file), ("changed", other)])
    other.write_text("x\ny\n")

    with pytest.raises(CheckpointError, match=r"1 of 2 items refused.*'same'.*unchanged"):
        store.mark_started_many(FILE, [("same", raw_file), ("changed", other)])
    store.mark_started_many(FILE, [("changed", other)])

    assert store.get(FILE, "changed")["status"] == "in_progress"


def test_batch_and_single_transitions_leave_the_same_rows_and_events(
    store: PipelineCheckpoint, raw_file: Path
) -> None:
    store.mark_started(FILE, "single", raw_file)
    store.mark_completed(FILE, "single", raw_file)
    store.mark_started_many(FILE, [("batch", raw_file)])
    store.mark_completed_many(FILE, [("batch", raw_file)])

    varying = {"key", "started_at", "updated_at", "completed_at"}
    single, batch = store.get(FILE, "single"), store.get(FILE, "batch")
    assert {k: v for k, v in single.items() if k not in varying} == {k: v for k, v in batch.items() if k not in varying}
    varying = {"seq", "key", "at"}
    assert [{k: v for k, v in e.items() if k not in varying} for e in store.history(FILE, "single")] == [
        {k: v for k, v in e.items() if k not in varying} for e in store.history(FILE, "batch")
    ]


def test_completed_fingerprints_are_the_size_and_mtime_of_completed_items_under_a_prefix(
    store: PipelineCheckpoint, raw_file: Path
) -> None:
    complete(store, "prod/landing/wdi/a.parquet", raw_file)
    complete(store, "dev/landing/wdi/a.parquet", raw_file)
    store.mark_started(FILE, "prod/landing/wdi/running.parquet", raw_file)

    info = raw_file.stat()
    assert store.completed_fingerprints(FILE, "prod/landing/") == {
        "prod/landing/wdi/a.parquet": (info.st_size, info.st_mtime_ns)
    }
    assert store.completed_fingerprints(MODEL, "prod/landing/") == {}


def test_unchanged_keys_are_completed_items_whose_files_are_unchanged(
    store: PipelineCheckpoint, raw_file: Path, tmp_path: Path
) -> None:
    changed = tmp_path / "changed.csv"
    changed.write_text("a\n")
    for key, path in (("same", raw_file), ("changed", changed)):
        complete(store, key, path)
    store.mark_started(FILE, "running", raw_file)
    changed.write_text("a\nb\n")

    items = [("same", raw_file), ("changed", changed), ("running", raw_file), ("unknown", raw_file)]
    assert store.unchanged_keys(FILE, items) == {"same"}
    assert store.unchanged_keys(FILE, items, verify_checksum=True) == {"same"}


# -- the store -----------------------------------------------------------------------------


def test_missing_parent_directories_of_the_database_are_created(tmp_path: Path) -> None:
    with PipelineCheckpoint("test", tmp_path / "a" / "b" / "cp.duckdb") as store:
        complete(store, "k")

    assert (tmp_path / "a" / "b" / "cp.duckdb").is_file()


def test_database_path_and_lock_timeout_default_to_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OSAA_CHECKPOINT__DB_PATH", "state/cp.duckdb")
    monkeypatch.setenv("OSAA_CHECKPOINT__LOCK_TIMEOUT_SECONDS", "3")
    reset_settings()
    try:
        with PipelineCheckpoint("test") as store:
            assert (store.db_path, store.lock_timeout) == (tmp_path / "state" / "cp.duckdb", 3.0)
    finally:
        reset_settings()


def test_checkpoints_survive_closing_and_reopening(where: dict[str, Any]) -> None:
    with PipelineCheckpoint("test", **where) as store:
        complete(store, "k")

    with PipelineCheckpoint("test", **where) as store:
        assert store.is_completed(FILE, "k")


def test_a_closed_store_refuses_to_work(where: dict[str, Any]) -> None:
    store = PipelineCheckpoint("test", **where)
    store.close()

    with pytest.raises(CheckpointError, match="closed"):
        store.mark_started(FILE, "k")


def test_two_stores_of_one_process_share_the_database_file(where: dict[str, Any]) -> None:
    with PipelineCheckpoint("test", **where) as first, PipelineCheckpoint("test", **where) as second:
        first.mark_started(FILE, "k")
        second.mark_started(FILE, "j")
        first.mark_completed(FILE, "j")

        assert second.get(FILE, "k")["run_id"] == first.run_id
        assert second.completed_keys(FILE, ["j", "k"]) == {"j"}


def test_a_pipeline_name_containing_the_id_separator_is_rejected(where: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="pipeline_name"):
        PipelineCheckpoint("bad\x1fname", **where)


def test_a_mark_after_another_checkpoint_cleared_the_item_sees_it_gone(where: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **where) as first, PipelineCheckpoint("ingest", **where) as second:
        first.mark_started(CheckpointScope.FILE, "k")
        second.clear_checkpoint(CheckpointScope.FILE, "k")
        with pytest.raises(CheckpointError):
            first.mark_completed(CheckpointScope.FILE, "k")
        assert first.get(CheckpointScope.FILE, "k") is None


def test_a_mark_after_another_checkpoint_completed_the_item_in_a_batch_sees_it_completed(where: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **where) as first, PipelineCheckpoint("ingest", **where) as second:
        first.mark_started(CheckpointScope.OPERATION, "k")
        second.mark_completed_many(CheckpointScope.OPERATION, ["k"])
        with pytest.raises(CheckpointError):
            first.mark_completed(CheckpointScope.OPERATION, "k")
        assert first.get(CheckpointScope.OPERATION, "k")["status"] == "completed"


def test_a_mark_keeps_metadata_another_checkpoint_added(where: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **where) as first, PipelineCheckpoint("ingest", **where) as second:
        first.mark_started(CheckpointScope.OPERATION, "k", metadata={"a": 1})
        second.update_metadata(CheckpointScope.OPERATION, "k", {"b": 2})
        first.mark_completed(CheckpointScope.OPERATION, "k")
        assert first.get(CheckpointScope.OPERATION, "k")["metadata"] == {"a": 1, "b": 2}


def test_a_batch_keeps_awkward_values_and_nulls_exactly(store: PipelineCheckpoint, tmp_path: Path) -> None:
    awkward = ['a,b', 'say "hi"', "two\nlines", "", "osaa-null-", "\\N", "ünïcode", " padded "]
    items = [(f"k{index:02d}", str(tmp_path / awkward[index % len(awkward)])) for index in range(40)]
    items += [(f"bare{index:02d}", None) for index in range(20)]
    store.mark_started_many(FILE, items)
    store.mark_completed_many(FILE, [(key, path, f"md5-{key}") for key, path in items])
    for key, path in items:
        row = store.get(FILE, key)
        assert row is not None
        assert (row["status"], row["file_path"], row["checksum"]) == ("completed", path, f"md5-{key}")
        assert row["error_message"] is None


def test_the_duckdb_store_uses_the_objects_the_duckdb_package_exports() -> None:
    """The store imports DuckDB's extension module itself (start-up): the package must re-export its objects."""
    import _duckdb
    import duckdb

    for name in ("connect", "DuckDBPyConnection", "Error", "IOException", "CatalogException"):
        assert getattr(duckdb, name) is getattr(_duckdb, name), name


def test_a_duckdb_store_returns_freed_memory_at_once_only_inside_the_block_even_when_it_raises(tmp_path: Path) -> None:
    """Flushing DuckDB's allocator is for a burst of bulk writes: later work keeps DuckDB's own behaviour."""
    setting = "SELECT current_setting('allocator_bulk_deallocation_flush_threshold')"
    with PipelineCheckpoint("test", tmp_path / "checkpoints.duckdb") as checkpoint:
        (default,) = checkpoint.store.read(setting)[0]
        with pytest.raises(RuntimeError), checkpoint.returning_memory():
            assert checkpoint.store.read(setting) == [("0 bytes",)]
            checkpoint.mark_started_many(FILE, [f"k/{i}" for i in range(20)])
            raise RuntimeError("the writes stopped")
        assert checkpoint.store.read(setting) == [(default,)]
        assert checkpoint.statuses(FILE, [f"k/{i}" for i in range(20)]) == {f"k/{i}": "in_progress" for i in range(20)}


def test_a_batch_of_many_files_records_each_files_own_size_and_mtime(store: PipelineCheckpoint, tmp_path: Path) -> None:
    """From 1,000 files the batch fingerprints them on a thread while the rows are read."""
    paths = []
    for index in range(1200):
        path = tmp_path / f"raw/{index:04d}.csv"
        path.parent.mkdir(exist_ok=True)
        path.write_text("x" * index)
        paths.append(path)
    items = [(f"many/{index:04d}", str(path)) for index, path in enumerate(paths)]
    store.mark_started_many(FILE, items)
    store.mark_completed_many(FILE, [(key, path, f"md5-{key}") for key, path in items])
    for key, path in items[::97]:
        row = store.get(FILE, key)
        stat = os.stat(path)
        assert (row["status"], row["file_size"], row["checksum"]) == ("completed", stat.st_size, f"md5-{key}")
        assert store.file_unchanged(FILE, key, path)


def test_a_batch_of_many_files_one_of_which_cannot_be_read_writes_nothing(
    store: PipelineCheckpoint, tmp_path: Path
) -> None:
    items = []
    for index in range(1100):
        path = tmp_path / f"raw/{index:04d}.csv"
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
        items.append((f"many/{index:04d}", str(path)))
    unreadable = tmp_path / "raw/a-directory"
    unreadable.mkdir()
    items.append(("many/unreadable", str(unreadable)))
    store.mark_started_many(FILE, items)
    with pytest.raises(IsADirectoryError):
        store.mark_completed_many(FILE, items)  # no checksum given: each file is read for its MD5
    assert store.completed_keys(FILE, [key for key, _ in items]) == set()


def test_a_row_whose_id_hash_equals_another_keys_is_not_returned_for_that_key(tmp_path: Path) -> None:
    """Lookups of many keys find rows by a 64-bit hash of the id; the id itself decides (a collision is harmless)."""
    db = tmp_path / "checkpoints.duckdb"
    keys = [f"k/{i}" for i in range(20)]
    with PipelineCheckpoint("ingest", db) as checkpoint:
        checkpoint.mark_started_many(FILE, keys + ["other"])
        checkpoint.mark_completed_many(FILE, keys)
    with duckdb.connect(str(db)) as database:
        database.execute(
            "UPDATE checkpoints SET id_hash = (SELECT id_hash FROM checkpoints WHERE key = 'k/0') WHERE key = 'other'"
        )

    with PipelineCheckpoint("ingest", db) as checkpoint:
        assert checkpoint.completed_keys(FILE, ["k/0", "k/1"]) == {"k/0", "k/1"}
        assert checkpoint.statuses(FILE, keys) == dict.fromkeys(keys, "completed")
        assert checkpoint.statuses(FILE, ["k/0", "other"]) == {"k/0": "completed", "other": "in_progress"}


def test_a_file_whose_recorded_hash_differs_from_duckdbs_has_its_id_hashes_recomputed_at_open(tmp_path: Path) -> None:
    """DuckDB does not promise hash() across releases: a file written by another one still answers lookups."""
    db = tmp_path / "checkpoints.duckdb"
    keys = [f"k/{i}" for i in range(20)]
    with PipelineCheckpoint("ingest", db) as checkpoint:
        checkpoint.mark_started_many(FILE, keys)
        checkpoint.mark_completed_many(FILE, keys)
    with duckdb.connect(str(db)) as database:
        database.execute("UPDATE checkpoints SET id_hash = id_hash + 1")
        database.execute("UPDATE checkpoint_id_hash SET probe = probe + 1")

    with PipelineCheckpoint("ingest", db) as checkpoint:
        assert checkpoint.completed_keys(FILE, keys[:2]) == set(keys[:2])
    with duckdb.connect(str(db), read_only=True) as database:
        assert database.execute("SELECT bool_and(id_hash = hash(item_id)) FROM checkpoints").fetchone()[0]


def test_a_change_given_an_aware_time_is_kept_as_that_instant(store: PipelineCheckpoint) -> None:
    """Batches of many rows travel to PostgreSQL by binary COPY of naive UTC times: an aware time is converted, not refused or shifted."""
    plus_two = timezone(timedelta(hours=2))
    started = datetime(2026, 3, 1, 12, 0, tzinfo=plus_two)
    completed = datetime(2026, 3, 1, 12, 5, tzinfo=plus_two)
    changes = [ItemChange(f"m{i}", "in_progress", at=started) for i in range(120)]
    changes += [ItemChange(f"m{i}", "completed", at=completed) for i in range(120)]

    store.record_changes(MODEL, changes)

    row = store.get(MODEL, "m7")
    assert (row["started_at"], row["completed_at"]) == (started, completed)
