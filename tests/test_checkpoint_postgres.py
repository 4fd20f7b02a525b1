"""What only the PostgreSQL store does: leases instead of a file lock, credentials from libpq, error categories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint, postgres_store
from sqlmesh_osaa.exceptions import CheckpointError, ConfigurationError, ErrorCategory, categorize_error

pytestmark = pytest.mark.postgres
FILE = CheckpointScope.FILE
HOLDER = textwrap.dedent(
    """
    import sys, time
    from sqlmesh_osaa.checkpoint import PipelineCheckpoint
    store = PipelineCheckpoint("team", dsn=sys.argv[1])
    store.mark_started("file", "held")
    print(store.run_id, flush=True)
    time.sleep(300)
    """
)
# How long the server may take to notice a dead client and drop its session (not a timing
# assertion: the tests poll until it has, and fail only if it never does).
SESSION_END_WAIT = 30.0


@pytest.fixture
def holder(pg_dsn: str) -> Iterator[subprocess.Popen]:
    """Another process holding a run with one in_progress item; killed and reaped at the end."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, pg_dsn], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        child.run_id = child.stdout.readline().strip()
        assert child.run_id, "the holder did not start"
        yield child
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait(timeout=60)


def wait_until_interrupted(checkpoint: PipelineCheckpoint, key: str) -> dict:
    deadline = time.monotonic() + SESSION_END_WAIT
    while time.monotonic() < deadline:
        row = checkpoint.get(FILE, key)
        if row["interrupted"]:
            return row
        time.sleep(0.05)
    raise AssertionError(f"{key} still live {SESSION_END_WAIT}s after its process died")


def test_an_item_of_another_live_process_is_live_and_refused(pg_dsn: str, holder: subprocess.Popen) -> None:
    with PipelineCheckpoint("team", dsn=pg_dsn) as checkpoint:
        row = checkpoint.get(FILE, "held")

        assert (row["run_id"], row["owner_pid"], row["interrupted"]) == (holder.run_id, holder.pid, False)
        assert checkpoint.get_statistics()["interrupted"] == 0
        with pytest.raises(CheckpointError, match="still working on it"):
            checkpoint.mark_started(FILE, "held")


def test_an_item_of_a_killed_process_becomes_interrupted_once_its_lease_is_gone(
    pg_dsn: str, holder: subprocess.Popen
) -> None:
    with PipelineCheckpoint("team", dsn=pg_dsn) as checkpoint:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)

        row = wait_until_interrupted(checkpoint, "held")
        checkpoint.mark_started(FILE, "held")

        assert row["owner_pid"] == holder.pid
        assert (checkpoint.get(FILE, "held")["attempt"], checkpoint.get(FILE, "held")["interrupted"]) == (2, False)


def test_a_lost_session_fails_one_call_as_transient_then_reconnects_with_its_lease(pg_dsn: str) -> None:
    with PipelineCheckpoint("team", dsn=pg_dsn) as checkpoint, psycopg.connect(pg_dsn, autocommit=True) as admin:
        checkpoint.mark_started(FILE, "k")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sqlmesh-osaa'")

        with pytest.raises(CheckpointError) as lost:
            checkpoint.mark_completed(FILE, "k")
        checkpoint.mark_completed(FILE, "k")

        assert categorize_error(lost.value) is ErrorCategory.TRANSIENT
        assert checkpoint.is_completed(FILE, "k")
        checkpoint.mark_started(FILE, "next")
        with PipelineCheckpoint("team", dsn=pg_dsn) as other:
            assert other.get(FILE, "next")["interrupted"] is False


def test_single_marks_go_on_after_the_session_dropped_its_prepared_statements(pg_dsn: str) -> None:
    """psycopg runs DEALLOCATE ALL after a rollback: the single marks' own statements are prepared again."""
    with PipelineCheckpoint("team", dsn=pg_dsn) as checkpoint:
        checkpoint.mark_started(FILE, "before")
        checkpoint.mark_completed(FILE, "before")
        checkpoint.store._execute_command("DEALLOCATE ALL")

        checkpoint.mark_started(FILE, "after")
        checkpoint.mark_completed(FILE, "after")

        assert checkpoint.is_completed(FILE, "before") and checkpoint.is_completed(FILE, "after")
        assert [(e["from_status"], e["to_status"]) for e in checkpoint.history(FILE, "after")] == [
            ("pending", "in_progress"),
            ("in_progress", "completed"),
        ]


def test_a_dsn_holding_a_password_is_refused_without_showing_it(pg_server) -> None:
    for dsn in (
        f"host=127.0.0.1 port={pg_server.port} dbname=postgres user=osaa password=hunter2secret",
        f"postgresql://osaa:hunter2secret@127.0.0.1:{pg_server.port}/postgres",
    ):
        with pytest.raises(ConfigurationError) as refused:
            PipelineCheckpoint("team", dsn=dsn)

        assert "password" in str(refused.value) and "PGPASSFILE" in str(refused.value)
        assert "hunter2secret" not in str(refused.value)


def test_the_password_comes_from_libpq_and_a_wrong_one_is_a_clear_error(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_server
) -> None:
    wrong = tmp_path / "pgpass"
    wrong.write_text(f"127.0.0.1:{pg_server.port}:*:osaa:not-the-password\n")
    wrong.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(wrong))

    with pytest.raises(CheckpointError, match=r"Cannot connect to the checkpoint database \(postgresql host=127.0.0.1"):
        PipelineCheckpoint("team", dsn=pg_dsn)


def test_the_backend_and_dsn_come_from_the_settings(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlmesh_osaa.settings import reset_settings

    monkeypatch.setenv("OSAA_CHECKPOINT__BACKEND", "postgres")
    monkeypatch.setenv("OSAA_CHECKPOINT__DSN", pg_dsn)
    reset_settings()
    try:
        with PipelineCheckpoint("team") as checkpoint:
            checkpoint.mark_started(FILE, "k")
            assert (checkpoint.store.backend, checkpoint.db_path) == ("postgres", None)
        with psycopg.connect(pg_dsn) as direct:
            assert direct.execute("SELECT key, status FROM checkpoints").fetchall() == [("k", "in_progress")]
    finally:
        reset_settings()


# -- error categories, from real server errors --------------------------------------------


def raised(action) -> Exception:
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - the test classifies whatever was raised
        return exc
    raise AssertionError("nothing was raised")


def test_a_refused_connection_is_transient(pg_server) -> None:
    closed_port = pg_server.port + 1 if pg_server.port < 65535 else pg_server.port - 1
    error = raised(lambda: psycopg.connect(f"host=127.0.0.1 port={closed_port} dbname=x connect_timeout=2"))

    assert categorize_error(error) is ErrorCategory.TRANSIENT


def test_a_serialization_failure_is_transient(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as a, psycopg.connect(pg_dsn, autocommit=True) as b:
        a.execute("CREATE TABLE t (k int PRIMARY KEY, v int)")
        a.execute("INSERT INTO t VALUES (1, 0)")
        for connection in (a, b):
            connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            connection.execute("SELECT v FROM t").fetchall()
        a.execute("UPDATE t SET v = 1")
        a.execute("COMMIT")
        error = raised(lambda: b.execute("UPDATE t SET v = 2"))

    assert getattr(error, "sqlstate", None) == "40001"
    assert categorize_error(error) is ErrorCategory.TRANSIENT


def test_a_deadlock_is_transient(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as a, psycopg.connect(pg_dsn, autocommit=True) as b:
        a.execute("CREATE TABLE t (k int PRIMARY KEY)")
        a.execute("INSERT INTO t VALUES (1), (2)")
        for connection, first in ((a, 1), (b, 2)):
            connection.execute("BEGIN")
            connection.execute("SELECT * FROM t WHERE k = %s FOR UPDATE", [first])
        errors: list[Exception] = []

        def lock(connection: psycopg.Connection, key: int) -> None:
            try:
                connection.execute("SELECT * FROM t WHERE k = %s FOR UPDATE", [key])
            except psycopg.Error as exc:
                errors.append(exc)
                connection.execute("ROLLBACK")

        waiters = [threading.Thread(target=lock, args=args) for args in ((a, 2), (b, 1))]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join(timeout=60)

    assert [getattr(error, "sqlstate", None) for error in errors] == ["40P01"]
    assert categorize_error(errors[0]) is ErrorCategory.TRANSIENT


def test_a_syntax_error_is_permanent(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as connection:
        error = raised(lambda: connection.execute("SELEC 1"))

    assert categorize_error(error) is ErrorCategory.PERMANENT


def test_the_recovery_cli_lists_the_failures_of_a_postgres_store(pg_dsn: str, tmp_path: Path) -> None:
    with PipelineCheckpoint("ingest", dsn=pg_dsn) as checkpoint:
        checkpoint.mark_started(FILE, "prod/landing/wdi/broken.parquet")
        checkpoint.mark_failed(FILE, "prod/landing/wdi/broken.parquet", "bad header", category="permanent")
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OSAA_")},
        "OSAA_CHECKPOINT__BACKEND": "postgres",
        "OSAA_CHECKPOINT__DSN": pg_dsn,
    }

    result = subprocess.run(
        [str(Path(sys.executable).with_name("osaa-recover")), "list-failed", "--json"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=120,
    )

    assert result.returncode == 1, result.stderr
    assert "prod/landing/wdi/broken.parquet" in result.stdout and "bad header" in result.stdout


@pytest.mark.parametrize("columns", [None, ("key", "status", "file_path")], ids=["whole-rows", "one-shared-row"])
def test_a_bulk_write_of_rows_another_writer_changed_after_they_were_read_is_planned_again(
    pg_dsn: str, columns: tuple[str, ...] | None
) -> None:
    """Many keys are read without a lock: a row changed before the write rolls the batch back, and it is planned anew.

    With ``columns`` (a completion's read) the rows of one batch's start come back as one
    shared row and version: the write checks that version for every key all the same.
    """
    from sqlmesh_osaa.checkpoint.store import Keys, UniformRows
    from sqlmesh_osaa.checkpoint.transitions import Change, RunIdentity, fold

    run = RunIdentity("bulk-writer", os.getpid(), "test-host")

    keys = [f"item/{i}" for i in range(20)]
    with PipelineCheckpoint("test", dsn=pg_dsn) as store, PipelineCheckpoint("test", dsn=pg_dsn) as other:
        store.mark_started_many("file", keys)
        seen: list[dict] = []
        shared: list[bool] = []

        def plan(rows: dict) -> list:
            seen.append({key: row["status"] for key, row in rows.items()})
            shared.append(isinstance(rows, UniformRows))
            if len(seen) == 1:
                other.mark_failed("file", "item/3", "changed while the batch was planned")
            change = Change("completed", datetime.now(timezone.utc).replace(tzinfo=None), run)
            return list(fold("test", "file", keys, [rows.get(key) for key in keys], change))

        store.store.apply("test", Keys("file", keys, columns), plan)

        assert [statuses["item/3"] for statuses in seen] == ["in_progress", "failed"]
        assert shared == [columns is not None, False]
        assert [(e["from_status"], e["to_status"]) for e in store.history("file", "item/3")] == [
            ("pending", "in_progress"),
            ("in_progress", "failed"),
            ("failed", "completed"),
        ]
        assert {store.get("file", key)["status"] for key in keys} == {"completed"}


def layout(dsn: str) -> tuple[int, list[str], list[str]]:
    """(recorded layout, the storage options of ``checkpoints``, the indexes of ``checkpoint_events``)."""
    with psycopg.connect(dsn) as connection:
        (version,) = connection.execute("SELECT version FROM checkpoint_schema").fetchone()
        (options,) = connection.execute("SELECT reloptions FROM pg_class WHERE relname = 'checkpoints'").fetchone()
        indexes = [name for (name,) in connection.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'checkpoint_events' ORDER BY 1"
        )]  # fmt: skip
    return version, options, indexes


def test_a_layout_2_store_is_migrated_when_opened_and_keeps_its_rows_and_history(pg_dsn: str) -> None:
    with PipelineCheckpoint("team", dsn=pg_dsn) as store:
        store.mark_started_many(FILE, [f"old/{i}" for i in range(20)])
        store.mark_completed(FILE, "old/3")
        rows_before = {key: store.get(FILE, key)["status"] for key in (f"old/{i}" for i in range(20))}
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        # Layout 2 as the previous version created it.
        connection.execute("ALTER TABLE checkpoints SET (fillfactor = 70)")
        connection.execute("ALTER TABLE checkpoint_events ADD PRIMARY KEY (seq)")
        connection.execute("DROP TABLE checkpoint_episodes")
        connection.execute("UPDATE checkpoint_schema SET version = 2")
    assert layout(pg_dsn) == (2, ["fillfactor=70"], ["checkpoint_events_key", "checkpoint_events_pkey"])

    with PipelineCheckpoint("team", dsn=pg_dsn) as store:
        assert layout(pg_dsn) == (postgres_store.SCHEMA_VERSION, ["fillfactor=50"], ["checkpoint_events_key"])
        assert {key: store.get(FILE, key)["status"] for key in rows_before} == rows_before
        assert [e["to_status"] for e in store.history(FILE, "old/3")] == ["in_progress", "completed"]
        store.mark_completed_many(FILE, [f"old/{i}" for i in range(20) if i != 3])
        assert {store.get(FILE, f"old/{i}")["status"] for i in range(20)} == {"completed"}


def test_a_new_store_is_created_in_the_current_layout(pg_dsn: str) -> None:
    with PipelineCheckpoint("team", dsn=pg_dsn):
        pass

    assert layout(pg_dsn) == (postgres_store.SCHEMA_VERSION, ["fillfactor=50"], ["checkpoint_events_key"])
