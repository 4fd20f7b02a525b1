"""A checkpoint store that stays fast as it grows: set-based reads of many items, and prune giving space back.

The reads (sqlmesh_osaa.checkpoint.item_history) answer for every item at once what the
recovery commands used to ask one item at a time; these tests pin what they answer on both
backends. Compaction (DuckDB) must keep every row and event, and a SIGKILL at any point of
it must leave a store that opens with every row.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sqlmesh_osaa.checkpoint import ItemChange, PipelineCheckpoint, item_history
from sqlmesh_osaa.checkpoint.duckdb_store import COMPACTION_COPIED, COMPACTION_SWAPPED, DuckDBStore
from sqlmesh_osaa.fault_points import FAULT_POINT_ENV
from support.processes import run

FILE, MODEL, OPERATION = "file", "model", "operation"


def _fail(checkpoint: PipelineCheckpoint, key: str, message: str = "boom") -> None:
    checkpoint.mark_started(FILE, key, force=True)
    checkpoint.mark_failed(FILE, key, message)


def _complete(checkpoint: PipelineCheckpoint, key: str, metadata: dict[str, Any] | None = None) -> None:
    checkpoint.mark_started(FILE, key)
    checkpoint.mark_completed(FILE, key, metadata=metadata)


def test_failing_since_is_the_first_failure_after_the_last_completion(checkpoint_target: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        _fail(checkpoint, "a")
        _complete(checkpoint, "a")
        _fail(checkpoint, "a")
        _fail(checkpoint, "a")
        _fail(checkpoint, "b")
        _complete(checkpoint, "c")
        failures = [event["at"] for event in checkpoint.history(FILE, "a") if event["to_status"] == "failed"]
        (first_of_b,) = [event["at"] for event in checkpoint.history(FILE, "b") if event["to_status"] == "failed"]

        since = item_history.failing_since(checkpoint.store, ["ingest"])

    assert since == {("ingest", FILE, "a"): failures[1], ("ingest", FILE, "b"): first_of_b}


def test_superseded_failures_report_their_last_recovered_spell(checkpoint_target: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        _fail(checkpoint, "a")
        _complete(checkpoint, "a", metadata={"resolved_by": "run-2"})
        _complete(checkpoint, "plain")
        _complete(checkpoint, "named-but-empty", metadata={"resolved_by": None, "note": 'text with "resolved_by" in it'})
        events = checkpoint.history(FILE, "a")

        (entry,) = item_history.superseded_failures(checkpoint.store, ["ingest"], None, 20)

    failed_at = next(event["at"] for event in events if event["to_status"] == "failed")
    completed_at = events[-1]["at"]
    assert (entry["key"], entry["resolved_by"], entry["failed_at"]) == ("a", "run-2", failed_at)
    assert entry["time_to_recovery_seconds"] == pytest.approx((completed_at - failed_at).total_seconds(), abs=1e-3)


def test_recovery_spells_are_the_longest_first_and_cut_at_the_limit(checkpoint_target: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        for key in ("a", "b", "c"):
            _fail(checkpoint, key)
        for key in ("c", "b", "a"):
            _complete(checkpoint, key)

        spells = item_history.recovery_spells(checkpoint.store, ["ingest"], retried_or_resolved=True, limit=2)

    assert [spell["key"] for spell in spells] == ["a", "b"]
    assert spells[0]["seconds"] >= spells[1]["seconds"] > 0


def test_a_key_names_items_by_the_first_rule_that_matches(checkpoint_target: dict[str, Any], tmp_path: Path) -> None:
    raw = tmp_path / "raw.csv"
    raw.write_text("id\n1\n")
    with PipelineCheckpoint("project", **checkpoint_target) as checkpoint:
        checkpoint.mark_started(MODEL, "osaa.indicators|1|0|1", metadata={"model": "osaa.indicators"})
        checkpoint.mark_started(MODEL, "osaa.indicators_wide|1|0|1", metadata={"model": "osaa.indicators_wide"})
        checkpoint.mark_started(FILE, "landing/raw.parquet", file_path=raw)
        checkpoint.mark_started(FILE, "gone")
        checkpoint.clear_checkpoint(FILE, "gone")
        store = checkpoint.store

        def named(wanted: str) -> list[tuple[str, str, str]]:
            spellings = [wanted, str(Path(wanted).resolve())]
            found = item_history.matching_items(store, ["project"], None, wanted, spellings)
            return sorted({item for item in found if item_history.events_of(store, [item])[item]})

        assert named("osaa.indicators") == [("project", MODEL, "osaa.indicators|1|0|1")]
        assert named("osaa.indicators_wide|1|0|1") == [("project", MODEL, "osaa.indicators_wide|1|0|1")]
        assert named(str(raw)) == [("project", FILE, "landing/raw.parquet")]
        assert named("osaa.ind") == [
            ("project", MODEL, "osaa.indicators_wide|1|0|1"),
            ("project", MODEL, "osaa.indicators|1|0|1"),
        ]
        assert named("gone") == [("project", FILE, "gone")]


def test_each_pipeline_names_items_by_its_own_first_matching_rule(checkpoint_target: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **checkpoint_target) as ingest, PipelineCheckpoint("project", **checkpoint_target) as project:
        ingest.mark_started(OPERATION, "osaa.indicators")
        project.mark_started(MODEL, "osaa.indicators|1|0|1", metadata={"model": "osaa.indicators"})
        project.mark_started(MODEL, "osaa.indicators_wide|1|0|1", metadata={"model": "osaa.indicators_wide"})

        found = item_history.matching_items(ingest.store, ["ingest", "project"], None, "osaa.indicators", ["osaa.indicators"])
        history = item_history.events_of(ingest.store, found)

    assert found == [("ingest", OPERATION, "osaa.indicators"), ("project", MODEL, "osaa.indicators|1|0|1")]
    assert [len(events) for events in history.values()] == [1, 1]


def test_completed_keys_of_many_keys_answer_only_those_keys(checkpoint_target: dict[str, Any]) -> None:
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        keys = [f"src/{i:05d}" for i in range(3000)]
        checkpoint.mark_started_many(FILE, keys)
        checkpoint.mark_completed_many(FILE, keys[::2])
        asked = [*keys[1000:2000], "never/seen", "src/0"]

        assert checkpoint.completed_keys(FILE, asked) == set(keys[1000:2000:2])


# -- prune gives space back ----------------------------------------------------------------

ITEMS = 30_000


def _store_with_history(checkpoint: PipelineCheckpoint) -> None:
    """``ITEMS`` items with a long key and metadata; 80% completed, the rest failed."""
    keys = [f"dev/landing/source_{i % 50:02d}/indicator_file_number_{i:06d}.parquet" for i in range(ITEMS)]
    checkpoint.mark_started_many(FILE, keys)
    cut = ITEMS * 8 // 10
    checkpoint.mark_completed_many(FILE, keys[:cut], metadata={"store": "s3://bucket/dev", "note": "x" * 40})
    for start in range(cut, ITEMS, 1000):
        checkpoint.record_changes(
            FILE, [ItemChange(key, "failed", error_message="HTTP 503 from the endpoint") for key in keys[start : start + 1000]]
        )


def _contents(db_path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    store = DuckDBStore(db_path, lock_timeout=10)
    try:
        rows = store.read("SELECT * FROM checkpoints ORDER BY item_id")
        events = store.read("SELECT * FROM checkpoint_events ORDER BY seq")
    finally:
        store.close()
    return rows, events


@pytest.fixture(scope="module")
def history_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DuckDB file of ``ITEMS`` items, 80% completed (copied by each test)."""
    db_path = tmp_path_factory.mktemp("history") / "checkpoints.duckdb"
    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        _store_with_history(checkpoint)
    return db_path


@pytest.fixture(scope="module")
def pruned_store(history_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same file after pruning its completed 80%, not compacted."""
    db_path = _copy_of(history_store, tmp_path_factory.mktemp("pruned"))
    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        assert checkpoint.prune(timedelta(0)) == ITEMS * 8 // 10
    return db_path


def _reclaim(db_path: Path) -> dict[str, Any]:
    store = DuckDBStore(db_path, lock_timeout=10)
    try:
        return store.reclaim_space()
    finally:
        store.close()


def _copy_of(pruned_store: Path, tmp_path: Path) -> Path:
    target = tmp_path / "checkpoints.duckdb"
    target.write_bytes(pruned_store.read_bytes())
    return target


def test_compaction_keeps_every_row_and_event_and_shrinks_the_file(pruned_store: Path, tmp_path: Path) -> None:
    db_path = _copy_of(pruned_store, tmp_path)
    before = _contents(db_path)
    size = db_path.stat().st_size

    report = _reclaim(db_path)

    assert report["action"] == "compacted"
    assert report["bytes_after"] == db_path.stat().st_size < size * 0.75
    assert _contents(db_path) == before
    assert not db_path.with_name(db_path.name + ".compacting").exists()


def test_a_compacted_store_goes_on_recording(pruned_store: Path, tmp_path: Path) -> None:
    db_path = _copy_of(pruned_store, tmp_path)
    _, events = _contents(db_path)
    _reclaim(db_path)

    with PipelineCheckpoint("ingest", db_path) as checkpoint:
        _complete(checkpoint, "after-compaction")
        (latest,) = checkpoint.history(FILE, "after-compaction")[-1:]
    assert latest["seq"] > max(event[0] for event in events)


def test_compaction_is_skipped_while_another_store_of_the_process_has_the_file(pruned_store: Path, tmp_path: Path) -> None:
    db_path = _copy_of(pruned_store, tmp_path)
    with PipelineCheckpoint("ingest", db_path):
        report = _reclaim(db_path)
    assert report["action"] == "none"
    assert "another checkpoint store" in report["reason"]


def test_the_prune_command_compacts_the_file_and_keeps_what_is_left(
    history_store: Path, pruned_store: Path, tmp_path: Path
) -> None:
    db_path = _copy_of(history_store, tmp_path)
    osaa_recover = str(Path(sys.executable).with_name("osaa-recover"))

    done = run([osaa_recover, "prune", "--older-than", "0s", "--json", "--db", str(db_path)], timeout=120)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["pruned"] == {"ingest": ITEMS * 8 // 10}
    assert report["space"]["action"] == "compacted"
    assert report["space"]["bytes_after"] == db_path.stat().st_size < report["space"]["bytes_before"]
    assert _contents(db_path) == _contents(pruned_store)


COMPACT_JOB = textwrap.dedent(
    """
    import sys
    from sqlmesh_osaa.checkpoint.duckdb_store import DuckDBStore
    DuckDBStore(sys.argv[1], lock_timeout=10).reclaim_space()
    """
)


@pytest.mark.parametrize("point", [COMPACTION_COPIED, COMPACTION_SWAPPED])
def test_a_kill_during_compaction_leaves_a_store_with_every_row(pruned_store: Path, tmp_path: Path, point: str) -> None:
    db_path = _copy_of(pruned_store, tmp_path)
    before = _contents(db_path)

    killed = run([sys.executable, "-c", COMPACT_JOB, str(db_path)], timeout=120, env={**os.environ, FAULT_POINT_ENV: point})

    assert killed.returncode == -9, killed.stderr
    assert _contents(db_path) == before
    assert _reclaim(db_path)["action"] == ("compacted" if point == COMPACTION_COPIED else "none")
    assert _contents(db_path) == before
    assert not db_path.with_name(db_path.name + ".compacting").exists()


@pytest.mark.postgres
def test_reclaiming_space_on_postgres_vacuums_and_keeps_every_row(pg_dsn: str) -> None:
    with PipelineCheckpoint("ingest", dsn=pg_dsn) as checkpoint:
        for key in ("a", "b", "c"):
            _complete(checkpoint, key)
        _fail(checkpoint, "d")
        checkpoint.prune(timedelta(0))
        kept = checkpoint.list()

        report = checkpoint.store.reclaim_space()

        assert report["action"] == "vacuumed"
        assert report["bytes_after"] > 0
        assert checkpoint.list() == kept


def test_keys_with_quotes_and_question_marks_are_read_back_exactly(checkpoint_target: dict[str, Any]) -> None:
    awkward = ["it's", "what?", "a ' OR 1=1 --", "données/ü?'", 'say "hi"']
    with PipelineCheckpoint("ingest", **checkpoint_target) as checkpoint:
        for key in awkward:
            _fail(checkpoint, key)
        checkpoint.mark_started_many(FILE, ["plain-1", "plain-2"])
        checkpoint.mark_completed_many(FILE, ["plain-1", "plain-2"])

        since = item_history.failing_since(checkpoint.store, ["ingest"])
        assert sorted(key for _, _, key in since) == sorted(awkward)
        assert item_history.matching_items(checkpoint.store, ["ingest"], FILE, "what?", ["what?"]) == [("ingest", FILE, "what?")]
        assert checkpoint.completed_keys(FILE, [*awkward, "plain-1", "plain-2"]) == {"plain-1", "plain-2"}
        assert checkpoint.get(FILE, "it's")["status"] == "failed"
