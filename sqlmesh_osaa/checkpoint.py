"""Checkpoints: what is done, what failed and what was interrupted, kept in DuckDB.

Every unit of work (pipeline run, model evaluation, file, operation) is an *item* with a
state. Each change of state is appended to ``checkpoint_events`` and folded, in the same
DuckDB transaction, into the item's row of ``checkpoints``; statistics, history and time to
recovery are read from the events. Transitions follow a state machine (pending ->
in_progress -> completed | failed; failed -> in_progress to retry; completed ->
in_progress only when the input changed or when forced) so a bug in a caller surfaces as
a :class:`CheckpointError` instead of a silently wrong record.

A file is unchanged when its size and mtime_ns equal the record (nothing is read) or,
when they differ or verification is asked for, when its MD5 equals the recorded one.

DuckDB lets one process write a database file at a time and keeps it locked while a
connection is open. So while a :class:`PipelineCheckpoint` is open, no other process can
be working on the database, and an ``in_progress`` row is live only if its run is one of
this process's open checkpoints; any other one was left by a run that ended or died, and
is reported as *interrupted*. A process that finds the file locked waits up to
``lock_timeout`` seconds, then raises a :class:`CheckpointError` naming the holder.

The same lock is why a single mark need not read its row from DuckDB: while any
:class:`PipelineCheckpoint` of this process has the file open, only this process writes it,
so the rows it last wrote are still the rows on disk. They are kept in memory per file
(bounded), dropped by every write that does not go through a single mark (batches, clear,
prune, metadata updates) and forgotten when the last checkpoint on the file closes. This
assumes the tables are written only through this module.

Metadata is stored exactly as callers give it: never pass secrets in it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import textwrap
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from sqlmesh_osaa.exceptions import CheckpointError, ErrorCategory, categorize_error
from sqlmesh_osaa.redaction import redact
from sqlmesh_osaa.settings import get_settings
from sqlmesh_osaa.storage import file_md5

logger = logging.getLogger(__name__)


class CheckpointScope(str, Enum):
    """The granularity of a unit of work."""

    PIPELINE = "pipeline"
    MODEL = "model"
    FILE = "file"
    OPERATION = "operation"


class CheckpointStatus(str, Enum):
    """The state of an item; an item without a row is pending."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


# The seed's name for the streamed MD5 of a file.
calculate_checksum = file_md5

PENDING = CheckpointStatus.PENDING.value
IN_PROGRESS = CheckpointStatus.IN_PROGRESS.value
COMPLETED = CheckpointStatus.COMPLETED.value
FAILED = CheckpointStatus.FAILED.value

# Transitions that are legal whatever the row holds; in_progress -> in_progress (resume)
# and completed -> in_progress (changed input, forced re-run) depend on the row.
_ALWAYS_LEGAL_FROM = {
    IN_PROGRESS: (PENDING, FAILED),
    COMPLETED: (IN_PROGRESS,),
    FAILED: (IN_PROGRESS,),
}

# Separates pipeline, scope and key in ``item_id``, the one-column primary key that lets
# DuckDB answer a single-item lookup from its index (it does not for a compound key).
_ID_SEPARATOR = "\x1f"
# From this many keys a batch lookup scans the scope instead of joining the key list.
_SCAN_FROM_KEYS = 1000

_SCHEMA = (
    "CREATE SEQUENCE IF NOT EXISTS checkpoint_event_seq",
    """CREATE TABLE IF NOT EXISTS checkpoint_events (
        seq BIGINT NOT NULL DEFAULT nextval('checkpoint_event_seq'),
        pipeline VARCHAR NOT NULL,
        scope VARCHAR NOT NULL,
        key VARCHAR NOT NULL,
        file_path VARCHAR,
        from_status VARCHAR NOT NULL,
        to_status VARCHAR NOT NULL,
        "at" TIMESTAMP NOT NULL,
        attempt INTEGER NOT NULL,
        run_id VARCHAR NOT NULL,
        pid INTEGER NOT NULL,
        host VARCHAR NOT NULL,
        error_message VARCHAR,
        error_category VARCHAR
    )""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        item_id VARCHAR PRIMARY KEY,
        pipeline VARCHAR NOT NULL,
        scope VARCHAR NOT NULL,
        key VARCHAR NOT NULL,
        file_path VARCHAR,
        status VARCHAR NOT NULL,
        attempt INTEGER NOT NULL,
        error_message VARCHAR,
        error_category VARCHAR,
        checksum VARCHAR,
        file_size BIGINT,
        file_mtime_ns BIGINT,
        metadata VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL,
        owner_pid INTEGER NOT NULL,
        owner_host VARCHAR NOT NULL,
        started_at TIMESTAMP,
        updated_at TIMESTAMP NOT NULL,
        completed_at TIMESTAMP
    )""",
)

ROW_COLUMNS = (
    "pipeline",
    "scope",
    "key",
    "file_path",
    "status",
    "attempt",
    "error_message",
    "error_category",
    "checksum",
    "file_size",
    "file_mtime_ns",
    "metadata",
    "run_id",
    "owner_pid",
    "owner_host",
    "started_at",
    "updated_at",
    "completed_at",
)
EVENT_COLUMNS = (
    "seq",
    "pipeline",
    "scope",
    "key",
    "file_path",
    "from_status",
    "to_status",
    "at",
    "attempt",
    "run_id",
    "pid",
    "host",
    "error_message",
    "error_category",
)
_ROW_SELECT = ", ".join(ROW_COLUMNS)
_EVENT_SELECT = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
_EVENT_INSERT = ", ".join(f'"{c}"' for c in EVENT_COLUMNS[1:])
_ROW_TIMESTAMPS = ("started_at", "updated_at", "completed_at")
_ROW_BY_ID_SQL = f"SELECT {_ROW_SELECT} FROM checkpoints WHERE item_id = ?"
_EVENT_INSERT_SQL = (
    f"INSERT INTO checkpoint_events ({_EVENT_INSERT}) VALUES ({', '.join('?' * (len(EVENT_COLUMNS) - 1))})"
)
_ROW_INSERT_SQL = f"INSERT INTO checkpoints (item_id, {_ROW_SELECT}) VALUES (?{', ?' * len(ROW_COLUMNS)})"

StartItem = str | tuple[str, str | Path | None]
CompletionItem = (
    str
    | tuple[str]
    | tuple[str, str | Path | None]
    | tuple[str, str | Path | None, str | None]
    | tuple[str, str | Path | None, str | None, int, int]
)

# Batch inputs travel as one JSON document parsed by DuckDB: one bound string instead of
# per-value conversions (bench/checkpoints.py compares the alternatives).
_BATCH_SPEC = json.dumps(
    {
        "key": ["VARCHAR"],
        "file_path": ["VARCHAR"],
        "checksum": ["VARCHAR"],
        "file_size": ["BIGINT"],
        "file_mtime_ns": ["BIGINT"],
    }
)
_LOAD_BATCH_SQL = """
    CREATE OR REPLACE TEMP TABLE osaa_batch AS
    SELECT $prefix || key AS item_id, *
    FROM (
        SELECT unnest(j.key) AS key, unnest(j.file_path) AS file_path, unnest(j.checksum) AS checksum,
               unnest(j.file_size) AS file_size, unnest(j.file_mtime_ns) AS file_mtime_ns
        FROM (SELECT from_json($data, $spec) AS j)
    )
"""
_BATCH_SUSPECTS_SQL = f"""
    SELECT b.key, b.file_path AS given_file_path, {", ".join(f"c.{c}" for c in ROW_COLUMNS)}
    FROM osaa_batch b LEFT JOIN checkpoints c ON c.item_id = b.item_id
    WHERE NOT list_contains($legal, coalesce(c.status, '{PENDING}'))
"""
_BATCH_EVENTS_SQL = f"""
    INSERT INTO checkpoint_events ({_EVENT_INSERT})
    SELECT $pipeline, $scope, b.key, coalesce(b.file_path, c.file_path), coalesce(c.status, '{PENDING}'), $to,
           $now, coalesce(c.attempt, 0) + CASE WHEN $to = '{IN_PROGRESS}' THEN 1 ELSE 0 END,
           $run_id, $pid, $host, NULL, NULL
    FROM osaa_batch b LEFT JOIN checkpoints c ON c.item_id = b.item_id
"""
_BATCH_START_SQL = (
    f"""
    UPDATE checkpoints AS c
    SET status = '{IN_PROGRESS}', attempt = c.attempt + 1, file_path = coalesce(b.file_path, c.file_path),
        run_id = $run_id, owner_pid = $pid, owner_host = $host, started_at = $now, updated_at = $now
    FROM osaa_batch b WHERE c.item_id = b.item_id
    """,
    f"""
    INSERT INTO checkpoints (item_id, pipeline, scope, key, file_path, status, attempt, metadata,
                             run_id, owner_pid, owner_host, started_at, updated_at)
    SELECT b.item_id, $pipeline, $scope, b.key, b.file_path, '{IN_PROGRESS}', 1, '{{}}',
           $run_id, $pid, $host, $now, $now
    FROM osaa_batch b ANTI JOIN checkpoints c ON c.item_id = b.item_id
    """,
)
_BATCH_COMPLETE_SQL = (
    f"""
    UPDATE checkpoints AS c
    SET status = '{COMPLETED}', file_path = coalesce(b.file_path, c.file_path), checksum = b.checksum,
        file_size = b.file_size, file_mtime_ns = b.file_mtime_ns, error_message = NULL, error_category = NULL,
        run_id = $run_id, owner_pid = $pid, owner_host = $host, updated_at = $now, completed_at = $now,
        metadata = CAST(json_merge_patch(c.metadata, $metadata) AS VARCHAR)
    FROM osaa_batch b WHERE c.item_id = b.item_id
    """,
)

_PARAMETER = re.compile(r"\$(\w+)")
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")
_MAX_LISTED_REFUSALS = 5
_MAX_COMMAND_LINE = 200
_FIRST_RETRY_DELAY = 0.02
_MAX_RETRY_DELAY = 0.5
# Rows a single mark keeps in memory per database file; a pipeline's working set (items
# started and not yet finished) is far smaller.
_MAX_CACHED_ROWS = 4096

_HOST = socket.gethostname()
# Runs of this process whose PipelineCheckpoint is open: the only live runs (module docstring).
_LIVE_RUNS: set[str] = set()
_OPEN_FILES: dict[str, _OpenFile] = {}
_OPEN_FILES_GUARD = threading.Lock()


@dataclass
class _OpenFile:
    """What every PipelineCheckpoint of this process on one database file shares.

    DuckDB shares the database between their connections: two transactions writing the
    same rows at once would conflict, hence one lock; and the rows they wrote are the
    file's rows only while one of them holds it open (module docstring).
    """

    lock: threading.RLock = field(default_factory=threading.RLock)
    # Stored values (ROW_COLUMNS order) by item_id, oldest write first.
    rows: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    checkpoints: int = 0

    def remember(self, item_id: str, values: tuple[Any, ...]) -> None:
        self.rows.pop(item_id, None)
        self.rows[item_id] = values
        if len(self.rows) > _MAX_CACHED_ROWS:
            del self.rows[next(iter(self.rows))]


class _Fingerprint(NamedTuple):
    """What a completion records of its input file, so a later run can tell it unchanged."""

    checksum: str | None
    size: int | None
    mtime_ns: int | None


def _utcnow() -> datetime:
    # Stored naive (TIMESTAMP) in UTC; returned to callers as aware UTC datetimes.
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _open_file(path: Path) -> _OpenFile:
    with _OPEN_FILES_GUARD:
        shared = _OPEN_FILES.setdefault(str(path), _OpenFile())
        shared.checkpoints += 1
        return shared


def _process_name(pid: int, program: str) -> str:
    """The holder's command line when it runs here, so the message says which job to wait for.

    The PID may belong to another host (a shared filesystem): the command line is used only
    when this host's process with that PID runs the program DuckDB named.
    """
    try:
        if os.path.realpath(f"/proc/{pid}/exe") != os.path.realpath(program):
            return program
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return program
    words = " ".join(cmdline.replace(b"\0", b" ").decode(errors="replace").split())
    return textwrap.shorten(words, _MAX_COMMAND_LINE, placeholder=" ...") or program


def _connect(path: Path, lock_timeout: float) -> duckdb.DuckDBPyConnection:
    """Open the database, waiting up to ``lock_timeout`` seconds for another process to let go."""
    deadline = time.monotonic() + lock_timeout
    delay = _FIRST_RETRY_DELAY
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            holder = _LOCK_HOLDER.search(str(exc))
            if holder is None:
                raise CheckpointError(
                    f"Cannot open checkpoint database {path}: {exc}", category=categorize_error(exc), db_path=str(path)
                ) from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _locked_error(path, lock_timeout, int(holder["pid"]), holder["program"]) from exc
            if delay == _FIRST_RETRY_DELAY:
                logger.info(
                    "Checkpoint database %s is locked by PID %s; waiting up to %gs", path, holder["pid"], lock_timeout
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_RETRY_DELAY)
        except duckdb.Error as exc:
            raise CheckpointError(
                f"Cannot open checkpoint database {path}: {exc}", category=categorize_error(exc), db_path=str(path)
            ) from exc


def _locked_error(path: Path, lock_timeout: float, pid: int, program: str) -> CheckpointError:
    name = _process_name(pid, program)
    return CheckpointError(
        f"Checkpoint database {path} is locked by another process, PID {pid} ({name}), and was not released "
        f"within {lock_timeout:g}s. DuckDB lets one process at a time write a database file: wait for that "
        f"process to finish or stop it, raise checkpoint.lock_timeout_seconds, or give this pipeline its own "
        f"database (checkpoint.db_path)",
        category=ErrorCategory.TRANSIENT,
        db_path=str(path),
        holder_pid=pid,
    )


def _close_file(shared: _OpenFile) -> None:
    with _OPEN_FILES_GUARD:
        shared.checkpoints -= 1
        if shared.checkpoints == 0:
            # Another process may write the file from now on.
            shared.rows.clear()


def _release(run_id: str, connection: duckdb.DuckDBPyConnection, shared: _OpenFile) -> None:
    """End a run: its in_progress rows become interrupted, and the file lock is given back."""
    _LIVE_RUNS.discard(run_id)
    with shared.lock:
        connection.close()
        _close_file(shared)


def _fingerprints(
    files: Iterable[tuple[str | Path | None, str | None, tuple[int, int] | None]],
) -> list[_Fingerprint]:
    """Fingerprint each ``(file_path, checksum, taken)``; a file that vanished is completed without one.

    ``taken`` is the (size, mtime_ns) the caller recorded when it read the file: kept as is,
    so a file rewritten since then no longer matches its record.
    """
    fingerprints, missing = [], []
    for file_path, checksum, taken in files:
        if taken is not None:
            fingerprints.append(_Fingerprint(checksum, *taken))
            continue
        if file_path is None:
            fingerprints.append(_Fingerprint(checksum, None, None))
            continue
        try:
            stat = os.stat(file_path)
            fingerprints.append(_Fingerprint(checksum or calculate_checksum(file_path), stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            missing.append(str(file_path))
            fingerprints.append(_Fingerprint(checksum, None, None))
    if missing:
        logger.warning(
            "Completed %d items without a fingerprint (their files no longer exist; a later run redoes them): %s",
            len(missing),
            ", ".join(missing[:_MAX_LISTED_REFUSALS]),
        )
    return fingerprints


def _file_matches(
    record: Mapping[str, Any],
    file_path: str | Path,
    verify_checksum: bool,
    known_stat: tuple[int, int] | None = None,
) -> bool:
    """Whether ``file_path`` still holds what ``record`` fingerprinted; reads it only when needed.

    ``known_stat`` is the file's (size, mtime_ns) when the caller already stat'ed it.
    """
    if known_stat is None:
        try:
            stat = os.stat(file_path)
        except OSError:
            return False
        known_stat = (stat.st_size, stat.st_mtime_ns)
    size, mtime_ns = known_stat
    if record["file_size"] is not None and size != record["file_size"]:
        return False
    if not verify_checksum and record["file_mtime_ns"] is not None and mtime_ns == record["file_mtime_ns"]:
        return True
    if record["checksum"] is None:
        return False
    try:
        return calculate_checksum(file_path) == record["checksum"]
    except OSError:
        return False


def _metadata_condition(condition: str, metadata: Mapping[str, str] | None) -> tuple[str, dict[str, str]]:
    """``condition`` narrowed to rows whose metadata holds each of ``metadata``'s values (bound, never pasted)."""
    names = list(metadata or {})
    if not all(re.fullmatch(r"[a-z_]+", name) for name in names):
        raise ValueError(f"metadata filter names must be lower-case words: {sorted(names)}")
    tests = [f"json_extract_string(metadata, '$.{name}') = $meta_{n}" for n, name in enumerate(names)]
    params = {f"meta_{n}": str(value) for n, value in enumerate((metadata or {}).values())}
    return " AND ".join([condition, *tests]), params


def _merged_metadata(old: str | Mapping[str, Any], new: Mapping[str, Any] | None) -> str:
    """The stored JSON of ``old`` updated with ``new``; values JSON cannot hold are stored as text."""
    base = json.loads(old) if isinstance(old, str) else dict(old)
    return json.dumps({**base, **(new or {})}, sort_keys=True, default=str)


def _category_value(category: ErrorCategory | str | None) -> str | None:
    return None if category is None else ErrorCategory(category).value


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)


def _as_row(values: Sequence[Any]) -> dict[str, Any]:
    row = dict(zip(ROW_COLUMNS, values))
    row["metadata"] = json.loads(row["metadata"])
    for column in _ROW_TIMESTAMPS:
        row[column] = _aware(row[column])
    row["interrupted"] = row["status"] == IN_PROGRESS and row["run_id"] not in _LIVE_RUNS
    return row


def _as_event(values: Sequence[Any]) -> dict[str, Any]:
    event = dict(zip(EVENT_COLUMNS, values))
    event["at"] = _aware(event["at"])
    return event


def _completion_item(item: CompletionItem) -> tuple[str, str | None, str | None, tuple[int, int] | None]:
    """(key, file_path, checksum, (size, mtime_ns) taken when the file was read, or None)."""
    if isinstance(item, str):
        return item, None, None, None
    key, file_path, checksum, size, mtime_ns = (*item, None, None, None, None)[:5]
    taken = None if size is None or mtime_ns is None else (int(size), int(mtime_ns))
    return str(key), None if file_path is None else str(file_path), checksum, taken


class PipelineCheckpoint:
    """The checkpoints of one pipeline in a DuckDB file, safe to share between threads.

    ``db_path`` defaults to ``checkpoint.db_path`` of the settings and ``lock_timeout``
    to ``checkpoint.lock_timeout_seconds``; missing parent directories are created. Each
    instance is one run (``run_id``) holding one connection; close it (or use it as a
    context manager) to end the run and release the file for other processes.
    """

    def __init__(
        self,
        pipeline_name: str,
        db_path: str | Path | None = None,
        *,
        lock_timeout: float | None = None,
    ) -> None:
        if not pipeline_name or _ID_SEPARATOR in pipeline_name:
            raise ValueError(f"pipeline_name must be non-empty and without '\\x1f': {pipeline_name!r}")
        if db_path is None or lock_timeout is None:
            settings = get_settings().checkpoint
            db_path = settings.db_path if db_path is None else db_path
            lock_timeout = settings.lock_timeout_seconds if lock_timeout is None else lock_timeout
        self.pipeline_name = pipeline_name
        self.db_path = Path(db_path).expanduser().resolve()
        self.lock_timeout = lock_timeout
        self.run_id = uuid.uuid4().hex
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._shared = _open_file(self.db_path)
        self._lock = self._shared.lock
        try:
            with self._lock:
                self._connection = _connect(self.db_path, self.lock_timeout)
                self._prepare_database()
        except BaseException:
            _close_file(self._shared)
            raise
        _LIVE_RUNS.add(self.run_id)
        self._finalizer = weakref.finalize(self, _release, self.run_id, self._connection, self._shared)
        logger.info("Checkpoints of pipeline %r in %s (run %s)", pipeline_name, self.db_path, self.run_id)

    def __enter__(self) -> PipelineCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PipelineCheckpoint({self.pipeline_name!r}, {str(self.db_path)!r}, run_id={self.run_id!r})"

    def close(self) -> None:
        """End this run and release the database; its in_progress items become interrupted."""
        self._finalizer()

    # -- single items -------------------------------------------------------------------

    def is_completed(
        self,
        scope: CheckpointScope | str,
        key: str,
        file_path: str | Path | None = None,
        verify_checksum: bool = False,
    ) -> bool:
        """Whether the item is completed and, when ``file_path`` is given, that file is unchanged."""
        row = self.get(scope, key)
        if row is None or row["status"] != COMPLETED:
            return False
        return file_path is None or _file_matches(row, file_path, verify_checksum)

    def file_unchanged(
        self,
        scope: CheckpointScope | str,
        key: str,
        file_path: str | Path,
        verify_checksum: bool = False,
    ) -> bool:
        """Whether ``file_path`` holds what the item's last completion fingerprinted.

        Equal size and mtime_ns mean unchanged without reading the file; otherwise, or
        with ``verify_checksum``, the MD5 decides. A missing file or record is changed.
        """
        row = self.get(scope, key)
        return row is not None and _file_matches(row, file_path, verify_checksum)

    def mark_started(
        self,
        scope: CheckpointScope | str,
        key: str,
        file_path: str | Path | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> None:
        """Move the item to in_progress for this run (first attempt, retry or resume).

        A completed item restarts only when ``file_path`` changed since its completion, or
        with ``force=True``; ``force`` also takes over an item another live run holds.
        """
        self._transition(scope, key, IN_PROGRESS, file_path=file_path, metadata=metadata, force=force)

    def mark_completed(
        self,
        scope: CheckpointScope | str,
        key: str,
        file_path: str | Path | None = None,
        metadata: Mapping[str, Any] | None = None,
        checksum: str | None = None,
    ) -> None:
        """Complete an in_progress item, recording size, mtime_ns and MD5 of its file.

        The file is ``file_path`` or, when omitted, the one recorded at start; ``checksum``
        (hex MD5) spares reading it when the caller already knows it.
        """
        fingerprint = None if file_path is None else _fingerprints([(file_path, checksum, None)])[0]
        self._transition(
            scope, key, COMPLETED, file_path=file_path, metadata=metadata, fingerprint=fingerprint, checksum=checksum
        )

    def mark_failed(
        self,
        scope: CheckpointScope | str,
        key: str,
        error_message: str,
        file_path: str | Path | None = None,
        metadata: Mapping[str, Any] | None = None,
        category: ErrorCategory | str | None = None,
    ) -> None:
        """Fail an in_progress item; pass ``category=categorize_error(exc)`` when you hold the exception."""
        self._transition(
            scope,
            key,
            FAILED,
            file_path=file_path,
            metadata=metadata,
            error_message=redact(error_message),  # any exception's text: no credential is stored
            category=_category_value(category),
        )

    def update_metadata(self, scope: CheckpointScope | str, key: str, metadata: Mapping[str, Any]) -> None:
        """Merge ``metadata`` into an existing item's row, durably, without changing its state."""
        scope = CheckpointScope(scope)
        with self._transaction() as connection:
            self._shared.rows.pop(self._item_id(scope, key), None)
            found = connection.execute(
                "SELECT metadata FROM checkpoints WHERE item_id = ?", [self._item_id(scope, key)]
            ).fetchall()
            if not found:
                raise CheckpointError(
                    "Cannot update the metadata of an item that has no checkpoint; mark_started it first",
                    category=ErrorCategory.PERMANENT,
                    pipeline=self.pipeline_name,
                    scope=scope.value,
                    key=key,
                )
            connection.execute(
                "UPDATE checkpoints SET metadata = ?, updated_at = ? WHERE item_id = ?",
                [_merged_metadata(found[0][0], metadata), _utcnow(), self._item_id(scope, key)],
            )

    def get(self, scope: CheckpointScope | str, key: str) -> dict[str, Any] | None:
        """The item's current row, or None while it is pending."""
        rows = self._query(_ROW_BY_ID_SQL, [self._item_id(CheckpointScope(scope), key)])
        return _as_row(rows[0]) if rows else None

    def get_checksum(self, scope: CheckpointScope | str, key: str) -> str | None:
        """The MD5 recorded by the item's last completion."""
        row = self.get(scope, key)
        return None if row is None else row["checksum"]

    def history(self, scope: CheckpointScope | str, key: str) -> list[dict[str, Any]]:
        """Every transition of the item, oldest first."""
        rows = self._query(
            f"SELECT {_EVENT_SELECT} FROM checkpoint_events WHERE pipeline = ? AND scope = ? AND key = ? ORDER BY seq",
            [self.pipeline_name, CheckpointScope(scope).value, key],
        )
        return [_as_event(row) for row in rows]

    def clear_checkpoint(
        self, scope: CheckpointScope | str, key: str, file_path: str | Path | None = None
    ) -> int:
        """Forget the item (it becomes pending); with ``file_path``, only if that is its recorded file."""
        condition = "item_id = ?"
        params: list[Any] = [self._item_id(CheckpointScope(scope), key)]
        if file_path is not None:
            condition += " AND file_path = ?"
            params.append(str(file_path))
        return self._clear(condition, params)

    def clear_all_checkpoints(
        self, scope: CheckpointScope | str | None = None, status: CheckpointStatus | str | None = None
    ) -> int:
        """Forget every item of this pipeline, or those of one scope and/or status."""
        condition, params = self._filter(scope, status)
        return self._clear(condition, params)

    # -- listing and statistics ---------------------------------------------------------

    def list(
        self,
        scope: CheckpointScope | str | None = None,
        status: CheckpointStatus | str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of this pipeline, most recently updated first."""
        condition, params = self._filter(scope, status)
        sql = f"SELECT {_ROW_SELECT} FROM checkpoints WHERE {condition} ORDER BY updated_at DESC, scope, key"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [_as_row(row) for row in self._query(sql, params)]

    def get_pending(self, scope: CheckpointScope | str | None = None) -> list[dict[str, Any]]:
        """Items that are not completed (failed, in_progress live or interrupted), oldest first."""
        condition, params = self._filter(scope, None)
        rows = self._query(
            f"SELECT {_ROW_SELECT} FROM checkpoints WHERE {condition} AND status <> '{COMPLETED}' "
            "ORDER BY updated_at, scope, key",
            params,
        )
        return [_as_row(row) for row in rows]

    def get_statistics(self) -> dict[str, Any]:
        """Counts by status and scope, failure rate, retries, time to recovery and top errors."""
        with self._lock:
            by_status = {status.value: {"count": 0} for status in CheckpointStatus}
            by_scope: dict[str, dict[str, int]] = {}
            for scope, status, count in self._query(
                "SELECT scope, status, count(*) FROM checkpoints WHERE pipeline = ? GROUP BY ALL ORDER BY ALL",
                [self.pipeline_name],
            ):
                by_status[status]["count"] += count
                by_scope.setdefault(scope, {})[status] = count
            total = sum(entry["count"] for entry in by_status.values())
            return {
                "pipeline": self.pipeline_name,
                "by_status": by_status,
                "by_scope": by_scope,
                "total": total,
                "interrupted": self._count_interrupted(),
                "failure_rate": 100.0 * by_status[FAILED]["count"] / total if total else 0.0,
                "retries": self._retries(),
                "time_to_recovery": self._time_to_recovery(),
                "most_common_errors": self._most_common_errors(),
            }

    def prune(self, older_than: timedelta) -> int:
        """Delete completed rows, and events, older than ``older_than``; returns the rows deleted.

        Events of items that are not completed are kept whatever their age: they hold the
        first failure that time to recovery is measured from.
        """
        cutoff = _utcnow() - older_than
        with self._transaction() as connection:
            self._shared.rows.clear()
            (rows,) = connection.execute(
                f"DELETE FROM checkpoints WHERE pipeline = ? AND status = '{COMPLETED}' AND updated_at < ?",
                [self.pipeline_name, cutoff],
            ).fetchone()
            (events,) = connection.execute(
                f"""DELETE FROM checkpoint_events e WHERE e.pipeline = $pipeline AND e."at" < $cutoff
                    AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.item_id = $pipeline || $sep || e.scope
                                    || $sep || e.key AND c.status <> '{COMPLETED}')""",
                {"pipeline": self.pipeline_name, "cutoff": cutoff, "sep": _ID_SEPARATOR},
            ).fetchone()
        logger.info("Pruned %d checkpoints and %d events older than %s", rows, events, older_than)
        return rows

    # -- batches ------------------------------------------------------------------------

    def completed_keys(
        self, scope: CheckpointScope | str, keys: Iterable[str], *, metadata: Mapping[str, str] | None = None
    ) -> set[str]:
        """The subset of ``keys`` whose items are completed (with ``metadata``'s values), in one query."""
        condition, params = _metadata_condition(f"status = '{COMPLETED}'", metadata)
        rows = self._rows_of_keys(CheckpointScope(scope), list(keys), condition, params=params)
        return {key for (key,) in rows}

    def completed_fingerprints(
        self, scope: CheckpointScope | str, key_prefix: str = "", *, metadata: Mapping[str, str] | None = None
    ) -> dict[str, tuple[int | None, int | None]]:
        """``(file_size, file_mtime_ns)`` recorded for each completed item whose key starts with ``key_prefix``.

        One scan serves a whole run's fast unchanged test: a caller that has stat'ed its
        files compares these and asks :meth:`unchanged_keys` only about the files that differ.
        """
        columns = ("file_size", "file_mtime_ns")
        condition, params = _metadata_condition(f"status = '{COMPLETED}'", metadata)
        rows = self._rows_under(CheckpointScope(scope), key_prefix, condition, columns, params)
        return {key: (size, mtime_ns) for key, size, mtime_ns in rows}

    def unchanged_keys(
        self,
        scope: CheckpointScope | str,
        items: Iterable[tuple[str, str | Path] | tuple[str, str | Path, int, int]],
        verify_checksum: bool = False,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> set[str]:
        """Batch :meth:`is_completed` with files: keys of items completed and unchanged.

        Items are ``(key, file_path)``, or ``(key, file_path, size, mtime_ns)`` when the
        caller has already stat'ed the file (a directory walk has): then no file is touched
        unless its size or mtime changed or ``verify_checksum`` asks for the MD5. With
        ``metadata``, only completions that recorded those values count.
        """
        files = {item[0]: item for item in items}
        columns = ("checksum", "file_size", "file_mtime_ns")
        unchanged = set()
        condition, params = _metadata_condition(f"status = '{COMPLETED}'", metadata)
        for key, checksum, size, mtime_ns in self._rows_of_keys(
            CheckpointScope(scope), list(files), condition, columns, params=params
        ):
            item = files[key]
            known = item[2:] or None
            if not verify_checksum and known == (size, mtime_ns):
                unchanged.add(key)
            elif _file_matches(
                {"checksum": checksum, "file_size": size, "file_mtime_ns": mtime_ns}, item[1], verify_checksum, known
            ):
                unchanged.add(key)
        return unchanged

    def mark_started_many(
        self,
        scope: CheckpointScope | str,
        items: Iterable[StartItem],
        *,
        force: bool = False,
    ) -> None:
        """:meth:`mark_started` for many items in one transaction: all are started, or none.

        Each item is a key or a ``(key, file_path)`` pair. Metadata is not set.
        """
        keys: list[str] = []
        paths: list[str | None] = []
        for item in items:
            key, path = (item, None) if isinstance(item, str) else item
            keys.append(key)
            paths.append(None if path is None else str(path))
        self._transition_many(CheckpointScope(scope), IN_PROGRESS, keys, paths, None, force)

    def mark_completed_many(
        self,
        scope: CheckpointScope | str,
        items: Iterable[CompletionItem],
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """:meth:`mark_completed` for many in_progress items in one transaction: all, or none.

        Each item is a key, ``(key, file_path)``, ``(key, file_path, checksum)`` or
        ``(key, file_path, checksum, size, mtime_ns)``: a fingerprint taken when the file was
        read (checksum None when unknown) is recorded as given. Otherwise, as in
        :meth:`mark_completed`, the file (``file_path``, else the one recorded at start) is
        fingerprinted: size and mtime_ns from ``stat``, MD5 from ``checksum`` when given,
        else computed by reading it. ``metadata`` is merged into each row's (e.g. the store
        the key lives in).
        """
        scope = CheckpointScope(scope)
        completions = [_completion_item(item) for item in items]
        unnamed = [key for key, path, _, _ in completions if path is None]
        recorded = dict(self._rows_of_keys(scope, unnamed, "file_path IS NOT NULL", ("file_path",)))
        fingerprints = _fingerprints((path or recorded.get(key), checksum, taken) for key, path, checksum, taken in completions)
        keys, paths = [key for key, _, _, _ in completions], [path for _, path, _, _ in completions]
        self._transition_many(scope, COMPLETED, keys, paths, fingerprints, force=False, metadata=metadata)

    # -- internals ----------------------------------------------------------------------

    def _item_id(self, scope: CheckpointScope, key: str) -> str:
        return f"{self.pipeline_name}{_ID_SEPARATOR}{scope.value}{_ID_SEPARATOR}{key}"

    def _stored_row(self, connection: duckdb.DuckDBPyConnection, item_id: str) -> tuple[Any, ...] | None:
        """The item's stored values: those this process last wrote, else read (one DuckDB call less per mark)."""
        stored = self._shared.rows.get(item_id)
        if stored is None:
            found = connection.execute(_ROW_BY_ID_SQL, [item_id]).fetchall()
            stored = found[0] if found else None
        return stored

    def _prepare_database(self) -> None:
        # Checkpoint statements are small: a second DuckDB thread only added scheduling
        # overhead when measured (docs/performance.md) and competes with the pipeline's work.
        self._connection.execute("SET threads = 1")
        self._connection.begin()
        for statement in _SCHEMA:
            self._connection.execute(statement)
        self._connection.commit()

    def _require_open(self) -> duckdb.DuckDBPyConnection:
        if not self._finalizer.alive:
            raise CheckpointError(
                "This PipelineCheckpoint is closed; open a new one",
                pipeline=self.pipeline_name,
                db_path=str(self.db_path),
            )
        return self._connection

    def _database_error(self, exc: duckdb.Error) -> CheckpointError:
        return CheckpointError(
            f"Checkpoint database {self.db_path} failed: {exc}",
            category=categorize_error(exc),
            pipeline=self.pipeline_name,
        )

    def _query(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._require_open().execute(sql, params).fetchall()
            except duckdb.Error as exc:
                raise self._database_error(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One DuckDB transaction under the file lock; it is durable when the block returns."""
        with self._lock:
            connection = self._require_open()
            try:
                connection.begin()
                try:
                    yield connection
                except BaseException:
                    connection.rollback()
                    raise
                connection.commit()
            except duckdb.Error as exc:
                raise self._database_error(exc) from exc

    def _filter(
        self, scope: CheckpointScope | str | None, status: CheckpointStatus | str | None
    ) -> tuple[str, list[Any]]:
        condition, params = "pipeline = ?", [self.pipeline_name]
        if scope is not None:
            condition += " AND scope = ?"
            params.append(CheckpointScope(scope).value)
        if status is not None:
            condition += " AND status = ?"
            params.append(CheckpointStatus(status).value)
        return condition, params

    def _refusal(
        self, row: Mapping[str, Any] | None, to_status: str, file_path: str | Path | None, force: bool
    ) -> str | None:
        """Why moving ``row`` to ``to_status`` is illegal and what to do instead, or None if it is legal."""
        from_status = PENDING if row is None else row["status"]
        if from_status in _ALWAYS_LEGAL_FROM[to_status]:
            return None
        if to_status != IN_PROGRESS:
            if from_status == COMPLETED:
                return "it is already completed; mark_started it (changed input or force=True) to run it again"
            if from_status == FAILED:
                return f"it already failed; call mark_started to retry it before mark_{to_status}"
            return f"it was never started; call mark_started before mark_{to_status}"
        if force:
            return None
        if from_status == IN_PROGRESS:
            if row["run_id"] == self.run_id:
                return "this run already started it; call mark_completed or mark_failed"
            if row["run_id"] in _LIVE_RUNS:
                return (
                    f"run {row['run_id']} (PID {row['owner_pid']} on {row['owner_host']}) is still working on it; "
                    "wait for it, or pass force=True if that run is stuck"
                )
            return None
        path = file_path if file_path is not None else row["file_path"]
        if path is None:
            return "it is completed; pass force=True to run it again, or file_path so a changed input is detected"
        if _file_matches(row, path, verify_checksum=False):
            return f"it is completed and {path} is unchanged; skip it, or pass force=True to run it again"
        return None

    def _refused(
        self, scope: CheckpointScope, refusals: list[tuple[str, str, str]], to_status: str, total: int
    ) -> None:
        if not refusals:
            return
        key, from_status, reason = refusals[0]
        listed = "; ".join(f"{k!r} ({f} -> {to_status}): {r}" for k, f, r in refusals[:_MAX_LISTED_REFUSALS])
        prefix = "" if total == 1 else f"{len(refusals)} of {total} items refused, nothing written: "
        raise CheckpointError(
            f"Illegal checkpoint transition in pipeline {self.pipeline_name!r}, "
            f"scope {scope.value!r}: {prefix}{listed}",
            category=ErrorCategory.PERMANENT,
            pipeline=self.pipeline_name,
            scope=scope.value,
            key=key,
            from_status=from_status,
            to_status=to_status,
        )

    def _transition(
        self,
        scope: CheckpointScope | str,
        key: str,
        to_status: str,
        *,
        file_path: str | Path | None = None,
        metadata: Mapping[str, Any] | None = None,
        fingerprint: _Fingerprint | None = None,
        checksum: str | None = None,
        error_message: str | None = None,
        category: str | None = None,
        force: bool = False,
    ) -> None:
        """One transition in one transaction: read the row (from memory if this process wrote it last),
        check, append the event, write the row."""
        scope = CheckpointScope(scope)
        item_id = self._item_id(scope, key)
        with self._lock:
            with self._transaction() as connection:
                stored = self._stored_row(connection, item_id)
                old = None if stored is None else _as_row(stored)
                reason = self._refusal(old, to_status, file_path, force)
                if reason is not None:
                    self._refused(scope, [(key, PENDING if old is None else old["status"], reason)], to_status, 1)
                if to_status == COMPLETED and fingerprint is None:
                    # No file_path given: the file recorded at start is fingerprinted, under the lock.
                    (fingerprint,) = _fingerprints([(old["file_path"], checksum, None)])
                new = self._fold(scope, key, old, to_status, file_path, metadata, fingerprint, error_message, category)
                connection.execute(
                    _EVENT_INSERT_SQL,
                    [
                        self.pipeline_name,
                        scope.value,
                        key,
                        new["file_path"],
                        PENDING if old is None else old["status"],
                        to_status,
                        new["updated_at"],
                        new["attempt"],
                        self.run_id,
                        new["owner_pid"],
                        _HOST,
                        error_message,
                        category,
                    ],
                )
                values = tuple(new[column] for column in ROW_COLUMNS)
                if stored is None:
                    connection.execute(_ROW_INSERT_SQL, [item_id, *values])
                else:
                    # DuckDB's cost of an UPDATE grows with the columns it sets: set only those that change.
                    changed = [i for i, (value, before) in enumerate(zip(values, stored)) if value != before]
                    assignments = ", ".join(f"{ROW_COLUMNS[i]} = ?" for i in changed)
                    connection.execute(
                        f"UPDATE checkpoints SET {assignments} WHERE item_id = ?",
                        [*(values[i] for i in changed), item_id],
                    )
            # Only once committed: a rolled-back write must not be taken for the row.
            self._shared.remember(item_id, values)
        if old is not None and old["interrupted"] and to_status == IN_PROGRESS:
            logger.warning("Resuming %s %r interrupted in run %s", scope.value, key, old["run_id"])
        logger.debug("%s %r: %s -> %s", scope.value, key, PENDING if old is None else old["status"], to_status)

    def _fold(
        self,
        scope: CheckpointScope,
        key: str,
        old: Mapping[str, Any] | None,
        to_status: str,
        file_path: str | Path | None,
        metadata: Mapping[str, Any] | None,
        fingerprint: _Fingerprint | None,
        error_message: str | None,
        category: str | None,
    ) -> dict[str, Any]:
        """The row after one transition; the batch statements (``_BATCH_*_SQL``) fold the same way."""
        now = _utcnow()
        row: dict[str, Any] = dict.fromkeys(ROW_COLUMNS) | {"attempt": 0, "metadata": {}}
        row.update(old or {})
        row.update(
            pipeline=self.pipeline_name,
            scope=scope.value,
            key=key,
            status=to_status,
            run_id=self.run_id,
            owner_pid=os.getpid(),
            owner_host=_HOST,
            updated_at=now,
        )
        if file_path is not None:
            row["file_path"] = str(file_path)
        row["metadata"] = _merged_metadata(row["metadata"], metadata)
        if to_status == IN_PROGRESS:
            row.update(attempt=row["attempt"] + 1, started_at=now)
        elif to_status == COMPLETED:
            fingerprint = fingerprint or _Fingerprint(None, None, None)
            row.update(
                checksum=fingerprint.checksum,
                file_size=fingerprint.size,
                file_mtime_ns=fingerprint.mtime_ns,
                completed_at=now,
                error_message=None,
                error_category=None,
            )
        else:
            row.update(error_message=error_message, error_category=category)
        for column in _ROW_TIMESTAMPS:
            if row[column] is not None:
                row[column] = row[column].replace(tzinfo=None)
        return row

    def _rows_of_keys(
        self,
        scope: CheckpointScope,
        keys: list[str],
        condition: str,
        columns: tuple[str, ...] = (),
        *,
        params: Mapping[str, str] | None = None,
    ) -> list[tuple]:
        """``key`` and ``columns`` of the rows of ``keys`` meeting ``condition``, in one query however many keys.

        Many keys are answered by scanning the scope's rows under their common prefix and
        keeping the wanted ones in Python: for 20k keys (a first ingest's unchanged test) that
        takes a third of the time of joining the key list inside DuckDB.
        """
        if not keys:
            return []
        if len(keys) >= _SCAN_FROM_KEYS:
            wanted = set(keys)
            rows = self._rows_under(scope, os.path.commonprefix(keys), condition, columns, params)
            return [row for row in rows if row[0] in wanted]
        return self._query(
            f"""SELECT {', '.join(('key', *columns))} FROM checkpoints WHERE {condition}
                AND item_id IN (SELECT $prefix || unnest(from_json($keys, '["VARCHAR"]')))""",
            {"prefix": self._item_id(scope, ""), "keys": json.dumps(keys), **(params or {})},
        )

    def _rows_under(
        self,
        scope: CheckpointScope,
        key_prefix: str,
        condition: str,
        columns: tuple[str, ...],
        params: Mapping[str, str] | None = None,
    ) -> list[tuple]:
        """``key`` and ``columns`` of this pipeline's rows in ``scope`` whose key starts with ``key_prefix``."""
        return self._query(
            f"""SELECT {', '.join(('key', *columns))} FROM checkpoints WHERE {condition}
                AND pipeline = $pipeline AND scope = $scope AND starts_with(key, $prefix)""",
            {"pipeline": self.pipeline_name, "scope": scope.value, "prefix": key_prefix, **(params or {})},
        )

    def _transition_many(
        self,
        scope: CheckpointScope,
        to_status: str,
        keys: list[str],
        paths: list[str | None],
        fingerprints: list[_Fingerprint] | None,
        force: bool,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Many transitions to ``to_status`` in one transaction, folded by the ``_BATCH_*_SQL`` statements."""
        if len(set(keys)) != len(keys):
            duplicates = sorted(key for key, count in Counter(keys).items() if count > 1)[:_MAX_LISTED_REFUSALS]
            raise CheckpointError(
                f"A batch names the same key more than once: {duplicates}",
                category=ErrorCategory.PERMANENT,
                scope=scope.value,
            )
        if not keys:
            return
        unknown = [None] * len(keys)
        data = {
            "key": keys,
            "file_path": paths,
            "checksum": unknown if fingerprints is None else [fp.checksum for fp in fingerprints],
            "file_size": unknown if fingerprints is None else [fp.size for fp in fingerprints],
            "file_mtime_ns": unknown if fingerprints is None else [fp.mtime_ns for fp in fingerprints],
        }
        params = {
            "pipeline": self.pipeline_name,
            "scope": scope.value,
            "to": to_status,
            "now": _utcnow(),
            "run_id": self.run_id,
            "pid": os.getpid(),
            "host": _HOST,
            "metadata": json.dumps(metadata or {}, sort_keys=True, default=str),
        }
        statements = _BATCH_START_SQL if to_status == IN_PROGRESS else _BATCH_COMPLETE_SQL
        with self._transaction() as connection:
            self._shared.rows.clear()
            connection.execute(
                _LOAD_BATCH_SQL,
                {"prefix": self._item_id(scope, ""), "data": json.dumps(data), "spec": _BATCH_SPEC},
            )
            self._check_batch(connection, scope, to_status, len(keys), force)
            for statement in (_BATCH_EVENTS_SQL, *statements):
                connection.execute(statement, {name: params[name] for name in _PARAMETER.findall(statement)})
            connection.execute("DROP TABLE osaa_batch")
        logger.debug("%d %s items -> %s", len(keys), scope.value, to_status)

    def _check_batch(
        self, connection: duckdb.DuckDBPyConnection, scope: CheckpointScope, to_status: str, total: int, force: bool
    ) -> None:
        """Refuse the whole batch if any item's transition is illegal; only doubtful rows reach Python."""
        refusals = []
        suspects = connection.execute(_BATCH_SUSPECTS_SQL, {"legal": list(_ALWAYS_LEGAL_FROM[to_status])}).fetchall()
        for key, given_path, *values in suspects:
            row = None if values[ROW_COLUMNS.index("status")] is None else _as_row(values)
            reason = self._refusal(row, to_status, given_path, force)
            if reason is not None:
                refusals.append((key, PENDING if row is None else row["status"], reason))
        self._refused(scope, refusals, to_status, total)

    # -- statistics from the event log --------------------------------------------------

    def _count_interrupted(self) -> int:
        (count,) = self._query(
            f"SELECT count(*) FROM checkpoints WHERE pipeline = $pipeline AND status = '{IN_PROGRESS}' "
            "AND NOT list_contains($live, run_id)",
            {"pipeline": self.pipeline_name, "live": sorted(_LIVE_RUNS)},
        )[0]
        return count

    def _retries(self) -> dict[str, int]:
        """Restarts by cause: after a failure, after an interruption, and re-runs of completed items."""
        (after_failure, after_interruption, reruns, max_attempt) = self._query(
            f"""SELECT count(*) FILTER (WHERE from_status = '{FAILED}'),
                       count(*) FILTER (WHERE from_status = '{IN_PROGRESS}'),
                       count(*) FILTER (WHERE from_status = '{COMPLETED}'),
                       coalesce(max(attempt), 0)
                FROM checkpoint_events WHERE pipeline = ? AND to_status = '{IN_PROGRESS}'""",
            [self.pipeline_name],
        )[0]
        return {
            "total": after_failure + after_interruption + reruns,
            "after_failure": after_failure,
            "after_interruption": after_interruption,
            "reruns": reruns,
            "max_attempt": max_attempt,
        }

    def _time_to_recovery(self) -> dict[str, Any]:
        """Seconds from an item's first failure to its next completion, over every such episode."""
        (recovered, unrecovered, mean, median, longest) = self._query(
            f"""WITH outcomes AS (
                    SELECT scope, key, to_status, "at",
                           coalesce(sum(CASE WHEN to_status = '{COMPLETED}' THEN 1 ELSE 0 END) OVER (
                               PARTITION BY scope, key ORDER BY seq
                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS episode
                    FROM checkpoint_events
                    WHERE pipeline = ? AND to_status IN ('{FAILED}', '{COMPLETED}')
                ), episodes AS (
                    SELECT min("at") FILTER (WHERE to_status = '{FAILED}') AS failed_at,
                           min("at") FILTER (WHERE to_status = '{COMPLETED}') AS completed_at
                    FROM outcomes GROUP BY scope, key, episode
                ), recoveries AS (
                    SELECT epoch(completed_at) - epoch(failed_at) AS seconds FROM episodes WHERE failed_at IS NOT NULL
                )
                SELECT count(seconds), count(*) - count(seconds), avg(seconds), median(seconds), max(seconds)
                FROM recoveries""",
            [self.pipeline_name],
        )[0]
        return {
            "recovered": recovered,
            "unrecovered": unrecovered,
            "mean_seconds": mean,
            "median_seconds": median,
            "max_seconds": longest,
        }

    def _most_common_errors(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._query(
            f"""SELECT error_message, error_category, count(*) AS n FROM checkpoint_events
                WHERE pipeline = ? AND to_status = '{FAILED}'
                GROUP BY ALL ORDER BY n DESC, error_message LIMIT ?""",
            [self.pipeline_name, limit],
        )
        return [{"error_message": m, "error_category": c, "count": n} for m, c, n in rows]

    def _clear(self, condition: str, params: list[Any]) -> int:
        """Delete matching rows, logging a transition to pending for each."""
        with self._transaction() as connection:
            self._shared.rows.clear()
            connection.execute(
                f"""INSERT INTO checkpoint_events ({_EVENT_INSERT})
                    SELECT pipeline, scope, key, file_path, status, '{PENDING}', ?, attempt, ?, ?, ?, NULL, NULL
                    FROM checkpoints WHERE {condition}""",
                [_utcnow(), self.run_id, os.getpid(), _HOST, *params],
            )
            (count,) = connection.execute(f"DELETE FROM checkpoints WHERE {condition}", params).fetchone()
        logger.info("Cleared %d checkpoints of pipeline %r", count, self.pipeline_name)
        return count
