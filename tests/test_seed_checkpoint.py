"""The seed's checkpoint snippets (ERROR_HANDLING.md) run as written, ``pipeline`` -> ``sqlmesh_osaa``.

Snippets with a ``return`` are wrapped in functions; ``process_file``, ``process``,
``ingest.run()`` and ``send_alert`` are stand-ins defined here. The default checkpoint
database (settings ``checkpoint.db_path``) lands in a temporary working directory; every
snippet also runs against PostgreSQL (``checkpoint.backend: postgres``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus, PipelineCheckpoint
from sqlmesh_osaa.settings import reset_settings

KEY = "s3://bucket/file.parquet"
processed: list[str] = []
failures: list[Exception] = []
alerts: list[str] = []


def process_file(path: str) -> None:
    if failures:
        raise failures.pop()
    processed.append(Path(path).read_text())


def process() -> None:
    process_file("local/file.csv")


def send_alert(message: str) -> None:
    alerts.append(message)


@pytest.fixture(autouse=True)
def seed_workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint_target: dict[str, Any]
) -> Iterator[Path]:
    """A working directory holding local/file.csv, default settings but the backend, and empty records.

    Each snippet runs twice: on the default DuckDB file and with ``checkpoint.backend: postgres``.
    """
    for name in [name for name in os.environ if name.startswith("OSAA_")]:
        monkeypatch.delenv(name)
    if "dsn" in checkpoint_target:
        monkeypatch.setenv("OSAA_CHECKPOINT__BACKEND", "postgres")
        monkeypatch.setenv("OSAA_CHECKPOINT__DSN", checkpoint_target["dsn"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "file.csv").write_text("country,value\nKEN,1\n")
    reset_settings()
    for record in (processed, failures, alerts):
        record.clear()
    yield tmp_path
    reset_settings()


def usage_example():
    from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint

    # Initialize checkpoint manager
    checkpoint = PipelineCheckpoint(pipeline_name="ingest")

    # Check if already processed
    if checkpoint.is_completed(
        CheckpointScope.FILE,
        "s3://bucket/file.parquet",
        "local/file.csv",
        verify_checksum=True
    ):
        print("File already processed, skipping")
        return

    # Mark as started
    checkpoint.mark_started(
        CheckpointScope.FILE,
        "s3://bucket/file.parquet",
        "local/file.csv",
        metadata={"user": "pipeline"}
    )

    try:
        # Process file
        process_file("local/file.csv")

        # Mark as completed
        checkpoint.mark_completed(
            CheckpointScope.FILE,
            "s3://bucket/file.parquet",
            "local/file.csv"
        )
    except Exception as e:
        # Mark as failed
        checkpoint.mark_failed(
            CheckpointScope.FILE,
            "s3://bucket/file.parquet",
            str(e),
            "local/file.csv"
        )
        raise


def checksum_verification(checkpoint, scope, key, file_path):
    # File with matching checksum is skipped
    if checkpoint.is_completed(scope, key, file_path, verify_checksum=True):
        # File hasn't changed since last processing
        return
    process_file(file_path)


def always_use_checkpoints(checkpoint, scope, key, file_path):
    checkpoint.mark_started(scope, key, file_path)
    try:
        process()
        checkpoint.mark_completed(scope, key, file_path)
    except Exception as e:
        checkpoint.mark_failed(scope, key, str(e), file_path)
        raise


ingest = SimpleNamespace(run=usage_example)


def file_row() -> dict:
    with PipelineCheckpoint("ingest") as checkpoint:
        return checkpoint.get(CheckpointScope.FILE, KEY)


def test_usage_example_processes_a_new_file_once_and_skips_it_on_the_next_run(capsys) -> None:
    usage_example()
    usage_example()

    assert processed == ["country,value\nKEN,1\n"]
    assert "File already processed, skipping" in capsys.readouterr().out
    assert (file_row()["status"], file_row()["metadata"]) == ("completed", {"user": "pipeline"})


def test_usage_example_records_a_failure_and_reraises_it() -> None:
    failures.append(ConnectionError("S3 unreachable"))

    with pytest.raises(ConnectionError):
        usage_example()

    assert (file_row()["status"], file_row()["error_message"]) == ("failed", "S3 unreachable")


def test_usage_example_retries_a_failed_file_on_the_next_run() -> None:
    failures.append(ConnectionError("S3 unreachable"))
    with pytest.raises(ConnectionError):
        usage_example()

    usage_example()

    assert (file_row()["status"], file_row()["attempt"], len(processed)) == ("completed", 2, 1)


def test_usage_example_reprocesses_a_file_whose_content_changed(seed_workdir: Path) -> None:
    usage_example()
    (seed_workdir / "local" / "file.csv").write_text("country,value\nUGA,2\n")

    usage_example()

    assert processed == ["country,value\nKEN,1\n", "country,value\nUGA,2\n"]


def test_checksum_verification_skips_an_unchanged_file_and_processes_a_changed_one(seed_workdir: Path) -> None:
    usage_example()
    with PipelineCheckpoint("ingest") as checkpoint:
        checksum_verification(checkpoint, CheckpointScope.FILE, KEY, "local/file.csv")
        assert len(processed) == 1

        (seed_workdir / "local" / "file.csv").write_text("country,value\nUGA,2\n")
        checksum_verification(checkpoint, CheckpointScope.FILE, KEY, "local/file.csv")
        assert len(processed) == 2


def test_manual_recovery_steps_find_clear_and_rerun_a_failed_file(capsys) -> None:
    failures.append(OSError("disk full"))
    with pytest.raises(OSError):
        ingest.run()

    # 1. Identify Failed Operations
    from sqlmesh_osaa.checkpoint import PipelineCheckpoint

    checkpoint = PipelineCheckpoint("ingest")
    failed = checkpoint.get_pending()

    for item in failed:
        print(f"Failed: {item['file_path']}")
        print(f"Error: {item['error_message']}")

    assert "Failed: local/file.csv\nError: disk full\n" in capsys.readouterr().out

    # 2. Clear Checkpoint and Retry
    # Clear specific checkpoint
    checkpoint.clear_checkpoint(
        CheckpointScope.FILE,
        "s3://bucket/file.parquet",
        "local/file.csv"
    )

    # Re-run pipeline
    ingest.run()

    assert checkpoint.is_completed(CheckpointScope.FILE, KEY) and checkpoint.get_pending() == []

    # 3. Force Reprocessing
    # Clear all checkpoints for a scope
    checkpoint.clear_all_checkpoints(
        scope=CheckpointScope.FILE,
        status=CheckpointStatus.COMPLETED
    )

    assert checkpoint.get(CheckpointScope.FILE, KEY) is None
    checkpoint.close()


def test_always_use_checkpoints_marks_started_then_completed_or_failed() -> None:
    with PipelineCheckpoint("ingest") as checkpoint:
        always_use_checkpoints(checkpoint, CheckpointScope.FILE, "ok", "local/file.csv")
        failures.append(ValueError("bad row"))
        with pytest.raises(ValueError):
            always_use_checkpoints(checkpoint, CheckpointScope.FILE, "bad", "local/file.csv")

        assert checkpoint.get(CheckpointScope.FILE, "ok")["status"] == "completed"
        assert checkpoint.get(CheckpointScope.FILE, "bad")["error_message"] == "bad row"


def test_regular_cleanup_clears_completed_checkpoints() -> None:
    with PipelineCheckpoint("ingest") as checkpoint:
        always_use_checkpoints(checkpoint, CheckpointScope.FILE, "ok", "local/file.csv")

        # Clear completed checkpoints older than 30 days
        checkpoint.clear_all_checkpoints(
            status=CheckpointStatus.COMPLETED
            # Add time-based filter in production
        )

        assert checkpoint.list() == []


@pytest.mark.parametrize(("outcomes", "expected_alerts"), [
    (["ok", "failed"], ["High failure rate: 50.0%"]),
    (["ok"] * 10, []),
])
def test_monitoring_query_alerts_when_the_failure_rate_exceeds_ten_percent(outcomes, expected_alerts) -> None:
    checkpoint = PipelineCheckpoint("ingest")
    for index, outcome in enumerate(outcomes):
        checkpoint.mark_started(CheckpointScope.FILE, f"file-{index}")
        if outcome == "ok":
            checkpoint.mark_completed(CheckpointScope.FILE, f"file-{index}")
        else:
            checkpoint.mark_failed(CheckpointScope.FILE, f"file-{index}", "timeout")

    # Get failure rate
    stats = checkpoint.get_statistics()
    total = sum(s['count'] for s in stats['by_status'].values())
    failed = stats['by_status'].get('failed', {}).get('count', 0)
    failure_rate = (failed / total) * 100 if total > 0 else 0

    # Alert if failure rate > 10%
    if failure_rate > 10:
        send_alert(f"High failure rate: {failure_rate:.1f}%")

    assert alerts == expected_alerts
    checkpoint.close()


def test_a_separate_database_per_pipeline_avoids_lock_contention(seed_workdir: Path) -> None:
    checkpoint = PipelineCheckpoint(
        pipeline_name="ingest",
        db_path=".checkpoints/ingest_checkpoint.db"
    )

    if checkpoint.store.backend == "duckdb":
        assert checkpoint.db_path == seed_workdir / ".checkpoints" / "ingest_checkpoint.db"
    else:
        # The settings name PostgreSQL: there is no file to give each pipeline, and no file lock to contend for.
        assert checkpoint.location.startswith("postgresql host=127.0.0.1")
    checkpoint.close()
