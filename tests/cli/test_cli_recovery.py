"""The issue's acceptance list, each through the installed commands in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from cli_workspace import GOOD_CSV, Workspace
from support import processes

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint

BAD_KEY = "prod/landing/wdi/bad.parquet"
GOOD_KEY = "prod/landing/wdi/good.parquet"


def test_list_failed_shows_the_bad_file_with_its_error(ingested: Workspace) -> None:
    result = ingested.run("osaa-recover", "list-failed")
    assert result.returncode == 1
    assert BAD_KEY in result.stdout and "Malformed CSV" in result.stdout and "permanent" in result.stdout
    [item] = ingested.json("osaa-recover", "list-failed", expect=1)["items"]
    assert (item["key"], item["file_path"], item["attempt"]) == (BAD_KEY, str(ingested.path / "raw/wdi/bad.csv"), 1)
    assert item["error_message"].startswith("Malformed CSV") and item["failing_since"] is not None


def test_retry_lands_the_fixed_file_and_stats_show_it_recovered(ingested: Workspace) -> None:
    ingested.write("raw/wdi/bad.csv", "a,b\n1,2\n")
    result = ingested.run("osaa-recover", "retry", "--scope", "file")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recovered" in result.stdout
    assert (ingested.bucket / BAD_KEY).is_file()
    stats = ingested.json("osaa-recover", "stats", expect=0)["pipelines"]["ingest"]
    assert stats["by_status"]["failed"] == 0
    assert stats["time_to_recovery"]["recovered"] == 1 and stats["time_to_recovery"]["mean_seconds"] > 0
    assert stats["most_common_errors"][0]["error_message"].startswith("Malformed CSV")
    assert ingested.json("osaa-recover", "list-failed", expect=0)["count"] == 0


def test_retry_of_a_file_still_bad_reports_it_still_failing(ingested: Workspace) -> None:
    document = ingested.json("osaa-recover", "retry", "--key", BAD_KEY, expect=1)
    [item] = document["items"]
    assert item["outcome"] == "still_failed" and "Malformed CSV" in item["message"]
    assert ingested.json("osaa-recover", "stats", expect=1)["pipelines"]["ingest"]["consistently_failing"][0]["attempt"] == 2


def test_list_failed_shows_a_model_whose_blocking_audit_failed_with_the_audit_name(workspace: Workspace) -> None:
    # The row as the SQLMesh integration writes it after a blocking audit failed (model_checkpoints.py);
    # the integration's own tests produce it with a real `sqlmesh run`.
    key = "osaa.indicators|3107407255|2026-11-29T00:00:00|2026-11-30T00:00:00"
    with PipelineCheckpoint("sqlmesh", workspace.db) as checkpoint:
        checkpoint.mark_started(CheckpointScope.MODEL, key, metadata={"model": "osaa.indicators", "environment": "prod"})
        checkpoint.mark_failed(
            CheckpointScope.MODEL,
            key,
            "blocking audit 'assert_positive_values' failed: 3 row(s)",
            metadata={"failed_audits": [{"audit": "assert_positive_values", "rows": 3}], "phase": "audit"},
            category="permanent",
        )
    result = workspace.run("osaa-recover", "list-failed", "--scope", "model")
    assert result.returncode == 1 and "assert_positive_values" in result.stdout and "osaa.indicators" in result.stdout
    [item] = workspace.json("osaa-recover", "list-failed", expect=1)["items"]
    assert item["metadata"]["failed_audits"] == [{"audit": "assert_positive_values", "rows": 3}]
    retried = workspace.json("osaa-recover", "retry", "--scope", "model", expect=1)["items"][0]
    assert retried["outcome"] == "not_retryable" and "--project" in retried["message"]


def test_verify_detects_a_changed_source_and_an_object_deleted_behind_our_back(ingested: Workspace) -> None:
    assert ingested.json("osaa-recover", "verify", expect=0)["problems"] == 0
    ingested.write("raw/wdi/good.csv", GOOD_CSV + "GHA,2020,3.5\n")
    ingested.write("raw/wdi/bad.csv", "a,b\n1,2\n")
    assert ingested.run("osaa-recover", "retry").returncode == 0
    (ingested.bucket / BAD_KEY).unlink()
    document = ingested.json("osaa-recover", "verify", expect=1)
    findings = {item["key"]: item["findings"] for item in document["items"]}
    assert findings == {GOOD_KEY: ["source_changed"], BAD_KEY: ["object_missing"]}
    assert document["problems"] == 2


def test_clear_without_confirm_changes_nothing_and_with_it_exactly_the_listed_rows_go(ingested: Workspace) -> None:
    before = ingested.rows()
    listed = ingested.json("osaa-recover", "clear", "--scope", "file", "--status", "failed", expect=0)
    assert ingested.rows() == before
    assert [item["key"] for item in listed["items"]] == [BAD_KEY] and listed["cleared"] == 0
    cleared = ingested.json("osaa-recover", "clear", "--scope", "file", "--status", "failed", "--confirm", expect=0)
    assert cleared["items"] == listed["items"] and cleared["cleared"] == 1
    gone = {("ingest", "file", BAD_KEY, "failed")}
    assert set(ingested.rows()) == set(before) - gone


def test_a_database_locked_by_a_running_pipeline_gives_a_message_and_exit_2(empty_db: Workspace) -> None:
    with processes.spawn(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from sqlmesh_osaa.checkpoint import PipelineCheckpoint
                checkpoint = PipelineCheckpoint("ingest", {str(empty_db.db)!r})
                print("holding", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=empty_db.env,
    ) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        result = empty_db.run("osaa-recover", "list-failed")
        assert result.returncode == 2
        assert str(empty_db.db) in result.stderr and f"PID {holder.pid}" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        document = empty_db.json("osaa-recover", "stats", expect=2)
        assert f"PID {holder.pid}" in document["error"]["message"]


def test_a_missing_database_or_unknown_pipeline_is_a_usage_error(empty_db: Workspace) -> None:
    missing = empty_db.run("osaa-recover", "list-failed", "--db", "nowhere.duckdb")
    assert missing.returncode == 2 and "No checkpoint database at" in missing.stderr
    unknown = empty_db.run("osaa-recover", "stats", "--pipeline", "typo")
    assert unknown.returncode == 2 and "'typo'" in unknown.stderr


def test_history_shows_every_transition_of_one_item(ingested: Workspace) -> None:
    ingested.write("raw/wdi/bad.csv", "a,b\n1,2\n")
    ingested.run("osaa-recover", "retry")
    events = ingested.json("osaa-recover", "history", "--key", BAD_KEY, expect=0)["events"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        ("pending", "in_progress"),
        ("in_progress", "failed"),
        ("failed", "in_progress"),
        ("in_progress", "completed"),
    ]


def test_prune_deletes_only_completed_items_older_than_the_age(ingested: Workspace) -> None:
    assert ingested.json("osaa-recover", "prune", "--older-than", "1d", expect=0)["total"] == 0
    pruned = ingested.json("osaa-recover", "prune", "--older-than", "0s", expect=0)
    assert pruned["total"] > 0
    assert [row for row in ingested.rows() if row[3] == "failed"] == ingested.rows()


def test_stats_count_circuit_breaker_openings(workspace: Workspace) -> None:
    from sqlmesh_osaa.error_handler import CircuitBreaker, record_breaker_transitions

    breaker = CircuitBreaker(failure_threshold=1, timeout_seconds=0, name="object-storage")
    with PipelineCheckpoint("ingest", workspace.db) as checkpoint:
        record_breaker_transitions(breaker, checkpoint)
        for _ in range(2):
            try:
                breaker.call(lambda: (_ for _ in ()).throw(ConnectionError("endpoint unreachable")))
            except ConnectionError:
                pass
            breaker.call(lambda: None)

    stats = workspace.json("osaa-recover", "stats")
    assert stats["pipelines"]["ingest"]["circuit_breaker_openings"] == 2
