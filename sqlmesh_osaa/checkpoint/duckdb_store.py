"""The embedded checkpoint store: one DuckDB file, the default.

DuckDB lets one process write a database file at a time and keeps it locked while a
connection is open. That lock is the lease: while a store is open no other process can be
working on the file, so an ``in_progress`` row is live only if its run is open in this
process; any other was left by a run that ended or died, and is *interrupted*. A process
that finds the file locked waits up to ``lock_timeout`` seconds, then raises a
:class:`CheckpointError` naming the holder.

The same lock is why a single mark need not read its row from DuckDB: while a store of this
process has the file open, only this process writes it, so the rows it last wrote are the
rows on disk. They are kept in memory per file (bounded) and forgotten when the last store
on the file closes. This assumes the tables are written only through this module.

A forked child inherits DuckDB's in-process database but not the file lock, so writes it
made through it could be lost or corrupt the file: a child cannot open (or use) a file its
parent had open when it forked, and is told so at once (:class:`CheckpointError`).

File layout: version 2 adds the row state to ``checkpoint_events``, version 3 the
``id_hash`` of every row and the table of failure episodes, version 4 the tallies of
retries and failures (see docs/checkpoints.md); a file of an older layout is migrated when
opened.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# DuckDB's extension module, which the ``duckdb`` package re-exports: every name used here
# is the same object there. The package adds Python wrappers this store does not use and, at
# import, looks up its own version through importlib.metadata (the email package, zipfile,
# a scan of site-packages): about 70 ms of every command's start (docs/performance.md,
# "Store growth"). tests/test_checkpoint.py checks that the package exports these objects.
import _duckdb as duckdb

from sqlmesh_osaa import skip_index
from sqlmesh_osaa.checkpoint import episodes, tallies
from sqlmesh_osaa.checkpoint.sql_literals import inline_parameters, sql_literal, sql_timestamp
from sqlmesh_osaa.checkpoint.states import EVENT_LOG_COLUMNS, ROW_COLUMNS
from sqlmesh_osaa.checkpoint.store import (
    INSERT,
    PRUNE_EVENTS_SQL,
    PRUNE_ROWS_SQL,
    UPDATE,
    WRITE,
    CheckpointStore,
    Keys,
    Plan,
    RowFilter,
    Target,
    UniformRows,
    batch_columns,
    check_stored,
    parts_by_write,
    settable_columns,
    split_constant,
    written_rows,
)
from sqlmesh_osaa.checkpoint.transitions import EVENT_FROM_ROW, ROW_FROM_EVENT, Event, Row, RunIdentity
from sqlmesh_osaa.exceptions import CheckpointError, ErrorCategory, categorize_error
from sqlmesh_osaa.fault_points import fault_point

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 4
# ``checkpoints.id_hash`` is DuckDB's ``hash(item_id)``: a BIGINT a lookup of many keys scans
# instead of the ids themselves (_ROWS_BY_HASH). DuckDB does not promise that hash() stays
# the same across its releases, so the file records what it gave for this text
# (``checkpoint_id_hash``): a DuckDB that answers otherwise has every id_hash recomputed at open.
_HASH_PROBE = "osaa-checkpoint-id-hash"
# Separates pipeline, scope and key in ``item_id``, the one-column primary key that lets
# DuckDB answer a single-item lookup from its index (it does not for a compound key).
ID_SEPARATOR = "\x1f"
# Up to this many rows or events a write binds parameters; more travel as one JSON file (_batch_json).
_BULK_FROM = 16
# Compaction (DuckDBStore.reclaim_space): files from this size, when a fresh copy takes at
# most this share of it (so a file is never more than 1/0.75 = 1.33x what a copy would take).
COMPACT_FROM_BYTES = 1 << 20
COMPACT_WHEN_AT_MOST = 0.75
# Fault points of a compaction (crash tests): the copy is written; the copy is renamed over the file.
COMPACTION_COPIED = "compaction_copied"
COMPACTION_SWAPPED = "compaction_swapped"
# Rows a store keeps in memory per database file (module docstring).
_MAX_CACHED_ROWS = 4096
# A deallocation of at least this size flushes DuckDB's allocator (DuckDBStore.returning_memory).
_FLUSH_SETTING = "allocator_bulk_deallocation_flush_threshold"

_ROW_TYPES = {
    "pipeline": "VARCHAR",
    "scope": "VARCHAR",
    "key": "VARCHAR",
    "file_path": "VARCHAR",
    "status": "VARCHAR",
    "attempt": "INTEGER",
    "error_message": "VARCHAR",
    "error_category": "VARCHAR",
    "checksum": "VARCHAR",
    "file_size": "BIGINT",
    "file_mtime_ns": "BIGINT",
    "metadata": "VARCHAR",
    "run_id": "VARCHAR",
    "owner_pid": "INTEGER",
    "owner_host": "VARCHAR",
    "started_at": "TIMESTAMP",
    "updated_at": "TIMESTAMP",
    "completed_at": "TIMESTAMP",
}
_EVENT_TYPES = {
    "seq": "BIGINT",
    "pipeline": "VARCHAR",
    "scope": "VARCHAR",
    "key": "VARCHAR",
    "file_path": "VARCHAR",
    "from_status": "VARCHAR",
    "to_status": "VARCHAR",
    "at": "TIMESTAMP",
    "attempt": "INTEGER",
    "run_id": "VARCHAR",
    "pid": "INTEGER",
    "host": "VARCHAR",
    "error_message": "VARCHAR",
    "error_category": "VARCHAR",
    "kind": "VARCHAR",
    "checksum": "VARCHAR",
    "file_size": "BIGINT",
    "file_mtime_ns": "BIGINT",
    "metadata": "VARCHAR",
    "started_at": "TIMESTAMP",
    "completed_at": "TIMESTAMP",
}
_NOT_NULL_ROW = {"pipeline", "scope", "key", "status", "attempt", "metadata", "run_id", "owner_pid", "owner_host", "updated_at"}
_NOT_NULL_EVENT = {"pipeline", "scope", "key", "from_status", "to_status", "at", "attempt", "run_id", "pid", "host"}
_V2_EVENT_COLUMNS = tuple(_EVENT_TYPES)[14:]


def _column_ddl(types: dict[str, str], not_null: set[str], skip: Collection[str] = ()) -> str:
    return ", ".join(
        f'"{name}" {kind}{" NOT NULL" if name in not_null else ""}' for name, kind in types.items() if name not in skip
    )


_SCHEMA = (
    "CREATE SEQUENCE IF NOT EXISTS checkpoint_event_seq",
    f"""CREATE TABLE IF NOT EXISTS checkpoint_events (
        seq BIGINT NOT NULL DEFAULT nextval('checkpoint_event_seq'),
        {_column_ddl(_EVENT_TYPES, _NOT_NULL_EVENT, skip=("seq",))})""",
    f"CREATE TABLE IF NOT EXISTS checkpoints (item_id VARCHAR PRIMARY KEY, {_column_ddl(_ROW_TYPES, _NOT_NULL_ROW)}, "
    "id_hash UBIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoint_schema (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoint_id_hash (probe UBIGINT NOT NULL)",
    episodes.CREATE_SQL,
    tallies.CREATE_SQL,
)
# Version 1 -> 2: the event log gains the row state; each row gets one "snapshot" event
# holding its current state, so the log rebuilds every row from then on.
_MIGRATE_V1 = (
    *(
        f'ALTER TABLE checkpoint_events ADD COLUMN "{name}" {_EVENT_TYPES[name]}'
        + (" DEFAULT 'transition'" if name == "kind" else "")
        for name in _V2_EVENT_COLUMNS
    ),
    f"""INSERT INTO checkpoint_events ({", ".join(f'"{c}"' for c in EVENT_LOG_COLUMNS[1:])})
        SELECT pipeline, scope, key, file_path, status, status, updated_at, attempt, run_id, owner_pid, owner_host,
               error_message, error_category, 'snapshot', checksum, file_size, file_mtime_ns, metadata,
               started_at, completed_at
        FROM checkpoints ORDER BY updated_at, item_id""",
)
# Version 2 -> 3: every row gets its id_hash, and the failure episodes are built from the log
# (their table is in _SCHEMA). DuckDB refuses NOT NULL in the transaction that filled the
# column ("outstanding updates"), so that constraint comes in a second one
# (_MIGRATE_V2_CONSTRAINT, with the version); a crash between them leaves a version 2 file
# whose next open runs both again (each statement is idempotent).
_MIGRATE_V2 = (
    "ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS id_hash UBIGINT",
    "UPDATE checkpoints SET id_hash = hash(item_id) WHERE id_hash IS NULL",
    f"DELETE FROM {episodes.TABLE}",
    episodes.REBUILD_SQL,
)
# Version 3 -> 4 (and any older file, after the steps above): the tallies of retries and
# failures, built from the log (their table is in _SCHEMA).
_MIGRATE_V3 = (f"DELETE FROM {tallies.TABLE}", tallies.REBUILD_SQL)
_MIGRATE_V2_CONSTRAINT = ("ALTER TABLE checkpoints ALTER COLUMN id_hash SET NOT NULL",)
_REHASH = (
    "UPDATE checkpoints SET id_hash = hash(item_id)",
    "DELETE FROM checkpoint_id_hash",
    f"INSERT INTO checkpoint_id_hash VALUES (hash('{_HASH_PROBE}'))",
)
_LAYOUT_SQL = (
    "SELECT (SELECT max(version) FROM checkpoint_schema), "
    f"(SELECT bool_and(probe = hash('{_HASH_PROBE}')) FROM checkpoint_id_hash)"
)

_ROW_SELECT = ", ".join(ROW_COLUMNS)
_ROW_BY_ID_SQL = f"SELECT {_ROW_SELECT} FROM checkpoints WHERE item_id = {{id}}"
# The rows of many keys, in one of two plans (docs/performance.md, "Store growth"). Keys of a
# small share of the rows: the rows whose id_hash is the hash of an asked id, found by a hash
# join that reads one BIGINT per stored row (scanning the ids themselves costs DuckDB 8-10x
# more, and its ART index is slower still for thousands of keys), then fetched by rowid and kept
# only where the id is asked, so a hash shared by two ids never returns the wrong row. Keys of
# a large share of the rows (a batch completing what it started): the ids joined directly,
# which then costs less than the two steps.
# ``{keys}`` is a relation with one row and a ``keys`` list column (_json_relation).
_KEY_IDS = "WITH k AS (SELECT {prefix} || unnest(keys) AS item_id FROM {keys}) "
_ROWS_BY_HASH = (
    "FROM checkpoints c WHERE c.rowid IN (SELECT h.rowid FROM k JOIN checkpoints h ON h.id_hash = hash(k.item_id)) "
    "AND c.item_id IN (SELECT item_id FROM k)"
)
_ROWS_BY_ID = "FROM checkpoints c WHERE c.rowid IN (SELECT h.rowid FROM k JOIN checkpoints h ON h.item_id = k.item_id)"
_JOINED_BY_ID = "FROM k JOIN checkpoints c ON c.item_id = k.item_id"
# The hash plan serves keys fewer than this share of the rows (measured: equal costs at 1/10).
_BY_HASH_BELOW = 1 / 8
_ROWS_OF_KEYS_SQL = {
    True: f"{_KEY_IDS}SELECT {{columns}} {_ROWS_BY_HASH}",
    False: f"{_KEY_IDS}SELECT {{columns}} {_ROWS_BY_ID}",
}
# A bulk read of the status alone is first asked as one aggregate: a batch's items usually
# share one status (all in_progress when they are completed), and then no row need be fetched.
# The aggregate also returns these columns when they hold one value for every key (a store may
# read more than asked): a completion then carries them as constants, not from the rows in SQL,
# and its UPDATE knows without a query whether it changes them (UniformRows).
_STATUS_ONLY = ("key", "status")
_UNIFORM_EXTRAS = (
    "attempt", "started_at", "metadata", "run_id", "owner_pid", "owner_host", "error_message", "error_category",
    "checksum", "file_size", "file_mtime_ns", "completed_at", "updated_at",
)  # fmt: skip
_STATUS_AGGREGATE = "SELECT count(*), min(c.status), max(c.status), " + ", ".join(
    f"count(c.{column}), min(c.{column}), max(c.{column})" for column in _UNIFORM_EXTRAS
)
_STATUS_OF_KEYS_SQL = {
    True: f"{_KEY_IDS}{_STATUS_AGGREGATE} {_ROWS_BY_HASH}",
    False: f"{_KEY_IDS}{_STATUS_AGGREGATE} {_JOINED_BY_ID}",
}
_EVENT_INSERT = ", ".join(f'"{c}"' for c in EVENT_LOG_COLUMNS[1:])
_EVENT_INSERT_SQL = f"INSERT INTO checkpoint_events ({_EVENT_INSERT}) VALUES ({', '.join('?' * (len(EVENT_LOG_COLUMNS) - 1))})"
# The id is bound twice: once as itself, once hashed.
_ROW_INSERT_SQL = f"INSERT INTO checkpoints (item_id, id_hash, {_ROW_SELECT}) VALUES (?, hash(?){', ?' * len(ROW_COLUMNS)})"


_BATCH_TYPES = {**{column: _EVENT_TYPES[column] for column in EVENT_LOG_COLUMNS[1:]}, WRITE: "VARCHAR", "keys": "VARCHAR"}
_ROW_FROM_BATCH = ", ".join(f'"{ROW_FROM_EVENT.get(column, column)}"' for column in ROW_COLUMNS)
_ROW_BULK_INSERT_SQL = (
    f"INSERT INTO checkpoints (item_id, id_hash, {_ROW_SELECT}) SELECT item_id, hash(item_id), {_ROW_FROM_BATCH} FROM {{frame}} "
    f"WHERE {WRITE} = '{INSERT}'"
)


def _changed_sql(frame: str, columns: Sequence[str]) -> str:
    """Whether any updated row gets another value in each of ``columns``."""
    checks = ", ".join(f'bool_or(c.{column} IS DISTINCT FROM b."{ROW_FROM_EVENT.get(column, column)}")' for column in columns)
    return f"SELECT {checks} FROM {frame} AS b JOIN checkpoints AS c ON c.item_id = b.item_id WHERE b.{WRITE} = '{UPDATE}'"


def _bulk_update_sql(frame: str, columns: Sequence[str]) -> str:
    """Set ``columns`` of each updated row from the batch."""
    assignments = ", ".join(f'{column} = b."{ROW_FROM_EVENT.get(column, column)}"' for column in columns)
    return f"UPDATE checkpoints AS c SET {assignments} FROM {frame} AS b WHERE c.item_id = b.item_id AND b.{WRITE} = '{UPDATE}'"


def _bulk_event_sql(frame: str, stored: Collection[str]) -> str:
    """Append the batch's events; the columns it left as stored are read from the rows (before they are written)."""
    if not stored:
        return f"INSERT INTO checkpoint_events ({_EVENT_INSERT}) SELECT {_EVENT_INSERT} FROM {frame}"
    selected = ", ".join(
        f'c."{EVENT_FROM_ROW.get(column, column)}"' if column in stored else f'b."{column}"'
        for column in EVENT_LOG_COLUMNS[1:]
    )
    return (
        f"INSERT INTO checkpoint_events ({_EVENT_INSERT}) SELECT {selected} FROM {frame} AS b "
        "JOIN checkpoints AS c ON c.item_id = b.item_id"
    )


_DELETE_BULK_SQL = "DELETE FROM checkpoints WHERE item_id IN (SELECT unnest(from_json($ids, '[\"VARCHAR\"]')))"

# A process holding the file, or (PID -1) a compaction swapping a fresh copy in (DuckDBStore.reclaim_space).
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?:(?P<program>.*?) \(PID (?P<pid>\d+)\)|PID (?P<swap>-1))")
_MAX_COMMAND_LINE = 200
_FIRST_RETRY_DELAY = 0.02
_MAX_RETRY_DELAY = 0.5

# Runs of this process whose store is open: the only live runs of a DuckDB file.
_LIVE_RUNS: set[str] = set()


@dataclass
class _OpenFile:
    """What every store of this process on one database file shares.

    DuckDB shares the database between their connections: two transactions writing the
    same rows at once would conflict, hence one lock; and the rows they wrote are the
    file's rows only while one of them holds it open (module docstring).
    """

    lock: threading.RLock = field(default_factory=threading.RLock)
    rows: dict[str, Row] = field(default_factory=dict)
    stores: int = 0
    # Set in a forked child: the parent holds the file, the child must not touch it.
    inherited_from: int | None = None

    def remember(self, item_id: str, row: Row) -> None:
        self.rows.pop(item_id, None)
        self.rows[item_id] = row
        if len(self.rows) > _MAX_CACHED_ROWS:
            del self.rows[next(iter(self.rows))]


_OPEN_FILES: dict[str, _OpenFile] = {}
_OPEN_FILES_GUARD = threading.Lock()


def _after_fork_in_child() -> None:
    """Files the parent had open stay the parent's: mark them, and reset the guards' state."""
    global _OPEN_FILES_GUARD
    _OPEN_FILES_GUARD = threading.Lock()
    parent = os.getppid()
    for shared in _OPEN_FILES.values():
        shared.lock = threading.RLock()
        shared.rows.clear()
        shared.inherited_from = parent


os.register_at_fork(after_in_child=_after_fork_in_child)


def _not_compacted(size: int, reason: str) -> dict[str, Any]:
    logger.info("Checkpoint database not compacted: %s", reason)
    return {"action": "none", "reason": reason, "bytes_before": size, "bytes_after": size}


def _remove(path: Path) -> None:
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def item_id(pipeline: str, scope: str, key: str) -> str:
    return f"{pipeline}{ID_SEPARATOR}{scope}{ID_SEPARATOR}{key}"


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


def _locked_error(path: Path, lock_timeout: float, pid: int, program: str) -> CheckpointError:
    name = _process_name(pid, program)
    return CheckpointError(
        f"Checkpoint database {path} is locked by another process, PID {pid} ({name}), and was not released "
        f"within {lock_timeout:g}s. DuckDB lets one process at a time write a database file: wait for that "
        f"process to finish or stop it, raise checkpoint.lock_timeout_seconds, give this pipeline its own "
        f"database (checkpoint.db_path), or share checkpoints through PostgreSQL (checkpoint.backend: postgres)",
        category=ErrorCategory.TRANSIENT,
        db_path=str(path),
        holder_pid=pid,
    )


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
            pid = int(holder["pid"] or holder["swap"])
            if remaining <= 0:
                raise _locked_error(path, lock_timeout, pid, holder["program"] or "a compaction") from exc
            if delay == _FIRST_RETRY_DELAY:
                logger.info("Checkpoint database %s is locked by PID %s; waiting up to %gs", path, pid, lock_timeout)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_RETRY_DELAY)
        except duckdb.Error as exc:
            raise CheckpointError(
                f"Cannot open checkpoint database {path}: {exc}", category=categorize_error(exc), db_path=str(path)
            ) from exc


@contextmanager
def _json_relation(columns: Mapping[str, list[Any]]) -> Iterator[str]:
    """A relation of one row holding each of ``columns`` as a list, read from a temporary JSON file.

    This is how many values reach DuckDB without pandas: one ``json.dumps`` (C) writes them
    and DuckDB's JSON reader takes them back column by column. A CSV writer converted and
    quoted each value in Python, and the same arrays as SQL literals cost DuckDB's parser
    more than the load (docs/performance.md). JSON's null is NULL and its escapes keep every
    string exact; times travel as ISO text (naive UTC, as the store keeps them), which DuckDB
    casts to TIMESTAMP. The file is removed when the block ends.
    """
    document = {
        column: [None if value is None else sql_timestamp(value) for value in values]
        if _BATCH_TYPES[column] == "TIMESTAMP"
        else values
        for column, values in columns.items()
    }
    data = json.dumps(document, ensure_ascii=False).encode("utf-8")
    descriptor, path = tempfile.mkstemp(prefix="osaa-batch-", suffix=".json")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        types = ", ".join(f"'{column}': '{_BATCH_TYPES[column]}[]'" for column in columns)
        yield (
            f"read_json({sql_literal(path)}, format = 'unstructured', records = true, "
            f"maximum_object_size = {len(data) + 1}, columns = {{{types}}})"
        )
    finally:
        os.unlink(path)


def _batch_load_sql(table: str, relation: str, constant: Mapping[str, Any], varying: Collection[str]) -> str:
    """A temporary table of a batch: its varying columns unnested side by side from ``relation``, and each row's id.

    The constant columns are not stored in it (:func:`_batch_frame` adds them as literals):
    every column of a table costs DuckDB its own uncompressed segments, which a batch of
    completions, mostly constant, would pay two dozen times (docs/performance.md, "Ingest").
    """
    unnested = ", ".join(f'unnest("{column}") AS "{column}"' for column in varying)
    parts = (sql_literal(constant[part]) if part in constant else f'"{part}"' for part in ("pipeline", "scope", "key"))
    identity = f" || chr({ord(ID_SEPARATOR)}) || ".join(parts)
    kept = ", ".join(f'"{column}"' for column in varying)
    return f"CREATE TEMPORARY TABLE {table} AS SELECT {kept}, {identity} AS item_id FROM (SELECT {unnested} FROM {relation})"


def _batch_frame(table: str, constant: Mapping[str, Any]) -> str:
    """The batch as the bulk statements read it: the table's columns, the constant ones as typed literals."""
    if not constant:
        return table
    literals = ", ".join(
        f'CAST({sql_literal(value)} AS {_BATCH_TYPES[column]}) AS "{column}"' for column, value in constant.items()
    )
    return f"(SELECT *, {literals} FROM {table})"


@contextmanager
def _batch_table(
    connection: duckdb.DuckDBPyConnection, constant: Mapping[str, Any], varying: Mapping[str, list[Any]]
) -> Iterator[str]:
    """The batch's frame (:func:`_batch_frame`) over a temporary table loaded in one statement (:func:`_batch_load_sql`)."""
    name = f"osaa_batch_{uuid.uuid4().hex}"
    try:
        with _json_relation(varying) as relation:
            connection.execute(_batch_load_sql(name, relation, constant, varying))
        yield _batch_frame(name, constant)
    finally:
        connection.execute(f"DROP TABLE IF EXISTS {name}")


def _known_changes(
    settable: Sequence[str], constant: Mapping[str, Any], varying: Mapping[str, list[Any]], rows: Mapping[str, Row]
) -> dict[str, bool]:
    """Whether each of ``settable`` changes, where the batch and a uniform read tell without a query.

    A column is known when every stored row holds one value (``UniformRows``) and the batch
    sets one value (changed when they differ), or sets values none of which is NULL where every
    stored one is (changed). Any other column is left to the changed-columns aggregate.
    """
    shared = rows.shared if isinstance(rows, UniformRows) else {}
    known = {}
    for column in settable:
        if column not in shared:
            continue
        name = ROW_FROM_EVENT.get(column, column)
        if name in constant:
            known[column] = constant[name] != shared[column]
        elif shared[column] is None and None not in varying[name]:
            known[column] = True
    return known


def _shared_values(status: str, found: int, extras: Sequence[Any]) -> Row:
    """The status and each of ``_UNIFORM_EXTRAS`` that one value holds for all ``found`` rows (all NULL: None)."""
    shared: Row = {"status": status}
    for index, column in enumerate(_UNIFORM_EXTRAS):
        counted, lowest, highest = extras[3 * index : 3 * index + 3]
        if counted == 0 or (counted == found and lowest == highest):
            shared[column] = lowest
    return shared


class DuckDBStore(CheckpointStore):
    """Checkpoints in one DuckDB file; every store of a process on the file shares its lock."""

    backend = "duckdb"

    def __init__(self, db_path: str | Path, lock_timeout: float) -> None:
        self.db_path = Path(db_path).expanduser().resolve()
        self.location = str(self.db_path)
        self.lock_timeout = lock_timeout
        self._opened_in = os.getpid()
        self._shared = self._share()
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            with self._shared.lock:
                self._connection: duckdb.DuckDBPyConnection | None = _connect(self.db_path, lock_timeout)
                # Holding DuckDB's lock now, and about to write: the skip index may no longer be the file's answer.
                skip_index.discard(self.db_path)
                self._prepare()
        except BaseException:
            self._unshare()
            raise

    # -- the lease ------------------------------------------------------------------------

    def open_run(self, run: RunIdentity) -> None:
        _LIVE_RUNS.add(run.run_id)

    def close_run(self, run_id: str) -> None:
        _LIVE_RUNS.discard(run_id)

    def live_runs(self, run_ids: Collection[str]) -> set[str]:
        return {run_id for run_id in run_ids if run_id in _LIVE_RUNS}

    def close(self) -> None:
        if self._connection is None:
            return
        if os.getpid() != self._opened_in:
            # A forked child: the connection is the parent's.
            self._connection = None
            return
        with self._shared.lock:
            self._connection.close()
            self._connection = None
        self._unshare()

    # -- reads and writes -----------------------------------------------------------------

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._shared.lock:
            try:
                return self._live_connection().execute(inline_parameters(sql, params)).fetchall()
            except duckdb.Error as exc:
                raise self._error(exc) from exc

    @contextmanager
    def returning_memory(self) -> Iterator[None]:
        """Every bulk deallocation of this database flushes DuckDB's allocator inside the block.

        DuckDB's jemalloc keeps freed pages for about a second, so a burst of bulk writes (a
        commit's 1,000-file completion batches, under a second each) holds the pages of every
        batch's transient query memory on top of the rows it adds: about 11 MB of the peak of
        a first ingest of 10,000 files. Flushing them costs those writes nothing measurable,
        but done while files are converted it cost 39 % more CPU (the conversions fault their
        pages in again: docs/performance.md, "Ingest"), hence only for the block. The setting
        is this database instance's, so another DuckDB instance of the process keeps its own.
        """
        with self._shared.lock:
            try:
                self._live_connection().execute(f"SET {_FLUSH_SETTING} = '0KiB'")
            except duckdb.Error as exc:
                raise self._error(exc) from exc
        try:
            yield
        finally:
            with self._shared.lock:
                if self._connection is not None:
                    try:
                        self._connection.execute(f"RESET {_FLUSH_SETTING}")
                    except duckdb.Error as exc:
                        logger.warning("Checkpoint database %s kept flushing its allocator: %s", self.db_path, exc)

    def metadata_field(self, column: str, name: str) -> str:
        path = sql_literal(f'$."{name}"')
        return f"json_extract_string(NULLIF({column}, ''), {path})"

    def read_rows(self, pipeline: str, scope: str, keys: Sequence[str]) -> dict[str, Row]:
        with self._shared.lock:
            try:
                return self._rows_of_keys(self._live_connection(), pipeline, scope, keys, cached=False)
            except duckdb.Error as exc:
                raise self._error(exc) from exc

    def _apply_once(self, pipeline: str, target: Target, plan: Plan) -> Sequence[Event]:
        with self._transaction() as connection:
            if isinstance(target, Keys):
                rows = self._rows_of_keys(connection, pipeline, target.scope, target.keys, True, target.read_columns())
            else:
                rows = self._rows_of_filter(connection, pipeline, target)
            events = plan(rows)
            if events:
                self._write(connection, pipeline, rows, events)
        self._remember(pipeline, rows, events)
        return events

    def prune(self, pipeline: str, cutoff: datetime) -> tuple[int, int]:
        with self._transaction() as connection:
            self._shared.rows.clear()
            (rows,) = connection.execute(PRUNE_ROWS_SQL, [pipeline, cutoff]).fetchone()
            (events,) = connection.execute(PRUNE_EVENTS_SQL, [pipeline, cutoff]).fetchone()
            connection.execute(inline_parameters(episodes.PRUNE_SQL, [pipeline, cutoff]))
            for statement in tallies.PRUNE_SQL:
                connection.execute(inline_parameters(statement, [pipeline]))
        return rows, events

    def reclaim_space(self) -> dict[str, Any]:
        """Compact the file: copy what is left to a fresh file and swap it in, when that saves enough.

        DuckDB keeps the pages of deleted rows (``CHECKPOINT`` does not shrink the file), so
        the only way to give the space back is a rewrite. Under the file's lock the database
        is copied (``COPY FROM DATABASE``: every table, index and sequence) to
        ``<file>.compacting``, made durable, and renamed over the file only when it is at most
        ``COMPACT_WHEN_AT_MOST`` of its size. A SIGKILL at any moment leaves the old file (the
        copy is a side file until the rename) or the new one (the rename is atomic); a
        leftover side file is removed by the next compaction. The fresh file is locked
        (an open-file-description lock, which DuckDB's lock respects) from before the rename
        until this store reopens it, so no process opens it while the old one is let go.
        """
        with self._shared.lock:
            before = self.db_path.stat().st_size
            if self._shared.stores != 1:
                return _not_compacted(before, "another checkpoint store of this process has the file open")
            if before < COMPACT_FROM_BYTES:
                return _not_compacted(before, f"the file is smaller than {COMPACT_FROM_BYTES} bytes")
            copy = self.db_path.with_name(self.db_path.name + ".compacting")
            try:
                fresh = self._copy_database(copy)
                if fresh > before * COMPACT_WHEN_AT_MOST:
                    _remove(copy)
                    return _not_compacted(before, f"a fresh copy would take {fresh} bytes, more than {COMPACT_WHEN_AT_MOST:.0%}")
                self._swap_in(copy)
            except duckdb.Error as exc:
                _remove(copy)
                raise self._error(exc) from exc
            after = self.db_path.stat().st_size
        logger.info("Compacted checkpoint database %s from %d to %d bytes", self.db_path, before, after)
        return {"action": "compacted", "reason": None, "bytes_before": before, "bytes_after": after}

    def _copy_database(self, copy: Path) -> int:
        """Write the whole database to ``copy`` (no WAL left beside it) and fsync it; its size."""
        _remove(copy)
        connection = self._live_connection()
        # Everything committed is in the file: the old WAL is gone before the swap.
        connection.execute("CHECKPOINT")
        (name,) = connection.execute("SELECT current_database()").fetchone()
        connection.execute(f"ATTACH {sql_literal(str(copy))} AS osaa_compacting")
        try:
            connection.execute(f'COPY FROM DATABASE "{name}" TO osaa_compacting')
            fault_point(COMPACTION_COPIED)
        finally:
            connection.execute("DETACH osaa_compacting")
        for leftover in (copy.with_name(copy.name + ".wal"), self.db_path.with_name(self.db_path.name + ".wal")):
            if leftover.exists() and leftover.stat().st_size:
                raise CheckpointError(f"Compaction of {self.db_path} stopped: {leftover} was not checkpointed")
        _fsync(copy)
        return copy.stat().st_size

    def _swap_in(self, copy: Path) -> None:
        """Rename ``copy`` over the file and reopen it, the fresh file locked until this store holds it."""
        descriptor = os.open(copy, os.O_RDWR)
        try:
            fcntl.fcntl(descriptor, fcntl.F_OFD_SETLK, struct.pack("hhqqixxxx", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
            os.replace(copy, self.db_path)
            _fsync(self.db_path.parent)
            fault_point(COMPACTION_SWAPPED)
            self._live_connection().close()
            self._connection = None
        finally:
            os.close(descriptor)
        self._shared.rows.clear()
        self._connection = _connect(self.db_path, self.lock_timeout)
        self._prepare()

    # -- internals ------------------------------------------------------------------------

    def _share(self) -> _OpenFile:
        with _OPEN_FILES_GUARD:
            shared = _OPEN_FILES.setdefault(str(self.db_path), _OpenFile())
            if shared.inherited_from is not None:
                raise CheckpointError(
                    f"Checkpoint database {self.db_path} was open in the parent process (PID "
                    f"{shared.inherited_from}) when this process was forked from it; DuckDB's file lock is not "
                    "inherited, so writes from here could be lost. Open checkpoints in a process started fresh "
                    "(multiprocessing 'spawn' or 'forkserver'), or share them through PostgreSQL",
                    category=ErrorCategory.PERMANENT,
                    db_path=str(self.db_path),
                )
            shared.stores += 1
            return shared

    def _unshare(self) -> None:
        with _OPEN_FILES_GUARD:
            self._shared.stores -= 1
            if self._shared.stores == 0:
                # Another process may write the file from now on.
                self._shared.rows.clear()
                del _OPEN_FILES[str(self.db_path)]

    def _prepare(self) -> None:
        connection = self._live_connection()
        # Checkpoint statements are small: a second DuckDB thread only added scheduling
        # overhead when measured (docs/performance.md) and competes with the pipeline's work.
        connection.execute("SET threads = 1")
        version, hash_holds = self._layout(connection)
        if version is not None and version > SCHEMA_VERSION:
            return  # a newer layout is left as it is
        if version == SCHEMA_VERSION - 1:
            self._migrate_v3(connection)
            version = SCHEMA_VERSION
        if version == SCHEMA_VERSION:
            if not hash_holds:
                self._rehash(connection)
            return
        columns: dict[str, set[str]] = {"checkpoint_events": set(), "checkpoints": set()}
        with self._schema_transaction(connection):
            for table, column in connection.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_name IN ('checkpoint_events', 'checkpoints')"
            ).fetchall():
                columns[table].add(column)
            from_v1 = bool(columns["checkpoint_events"]) and "kind" not in columns["checkpoint_events"]
            migrate = bool(columns["checkpoints"])
            for statement in _SCHEMA:
                connection.execute(statement)
            for statement in (_MIGRATE_V1 if from_v1 else ()) + ((*_MIGRATE_V2, *_MIGRATE_V3) if migrate else ()):
                connection.execute(statement)
            if not connection.execute("SELECT count(*) FROM checkpoint_id_hash").fetchone()[0]:
                connection.execute(f"INSERT INTO checkpoint_id_hash VALUES (hash('{_HASH_PROBE}'))")
            if not connection.execute("SELECT count(*) FROM checkpoint_schema").fetchone()[0]:
                # A file migrated from layout 1 or 2 says 2 until its constraint is in place.
                connection.execute("INSERT INTO checkpoint_schema VALUES (?)", [2 if migrate else SCHEMA_VERSION])
        if not migrate:
            return
        with self._schema_transaction(connection):
            for statement in _MIGRATE_V2_CONSTRAINT:
                connection.execute(statement)
            connection.execute("UPDATE checkpoint_schema SET version = ? WHERE version < ?", [SCHEMA_VERSION] * 2)
        logger.warning(
            "Migrated checkpoint database %s from layout %d to %d (%s)",
            self.db_path,
            1 if from_v1 else 2,
            SCHEMA_VERSION,
            ("events carry the row state; " if from_v1 else "") + "rows an id hash; failure episodes and tallies built from the log",
        )

    def _migrate_v3(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Layout 3 -> 4 in one transaction: the tallies table, filled from the log, and the version."""
        with self._schema_transaction(connection):
            connection.execute(tallies.CREATE_SQL)
            for statement in _MIGRATE_V3:
                connection.execute(statement)
            connection.execute("UPDATE checkpoint_schema SET version = ? WHERE version < ?", [SCHEMA_VERSION] * 2)
        logger.warning("Migrated checkpoint database %s from layout 3 to %d (tallies built from the log)", self.db_path, SCHEMA_VERSION)

    @staticmethod
    @contextmanager
    def _schema_transaction(connection: duckdb.DuckDBPyConnection) -> Iterator[None]:
        connection.begin()
        try:
            yield
            connection.commit()
        except BaseException:
            connection.rollback()
            raise

    def _rehash(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Recompute every id_hash: this DuckDB's hash() is not the one the file was written with."""
        with self._schema_transaction(connection):
            for statement in _REHASH:
                connection.execute(statement)
        logger.warning("Recomputed the id hashes of checkpoint database %s (DuckDB's hash() changed)", self.db_path)

    @staticmethod
    def _layout(connection: duckdb.DuckDBPyConnection) -> tuple[int | None, bool | None]:
        """(layout version, whether DuckDB's hash() is the file's) in one cheap read, not the schema statements.

        A file without the tables is new or of an older layout; asking ``information_schema``
        and running the statements on every open cost a read-only command about 30 ms.
        """
        try:
            version, hash_holds = connection.execute(_LAYOUT_SQL).fetchone()
        except duckdb.CatalogException:
            return None, None
        return version, hash_holds

    def _live_connection(self) -> duckdb.DuckDBPyConnection:
        if self._connection is None:
            raise CheckpointError(f"Checkpoint store {self.db_path} is closed; open a new one", db_path=str(self.db_path))
        return self._connection

    def _error(self, exc: duckdb.Error) -> CheckpointError:
        return CheckpointError(f"Checkpoint database {self.db_path} failed: {exc}", category=categorize_error(exc))

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One DuckDB transaction under the file's lock; it is durable when the block returns."""
        with self._shared.lock:
            connection = self._live_connection()
            try:
                connection.begin()
                try:
                    yield connection
                except BaseException:
                    connection.rollback()
                    raise
                connection.commit()
            except duckdb.Error as exc:
                raise self._error(exc) from exc

    def _rows_of_keys(
        self,
        connection: duckdb.DuckDBPyConnection,
        pipeline: str,
        scope: str,
        keys: Sequence[str],
        cached: bool,
        columns: Sequence[str] = ROW_COLUMNS,
    ) -> dict[str, Row]:
        """Rows of ``keys``: one from memory when this process wrote it last, else in one query.

        The keys travel as one JSON file joined to the rows by the id hash when they are few
        of the rows stored, else by the id (docs/performance.md, "Store growth"): the cost
        follows the number of keys, barely the number of rows stored. A bulk
        write's read takes only ``columns`` (those its plan reads); a small one reads whole
        rows, which its row writes and the row cache need. A bulk read of the status alone
        that finds every key with one status fetches no row: one aggregate says so.
        """
        if not keys:
            return {}
        if len(keys) == 1:
            (key,) = keys
            identity = item_id(pipeline, scope, key)
            row = self._shared.rows.get(identity) if cached else None
            if row is None:
                found = connection.execute(_ROW_BY_ID_SQL.format(id=sql_literal(identity))).fetchall()
                row = dict(zip(ROW_COLUMNS, found[0])) if found else None
            return {} if row is None else {key: dict(row)}
        names = ROW_COLUMNS if len(keys) < _BULK_FROM else tuple(columns)
        prefix = sql_literal(item_id(pipeline, scope, ""))
        (stored,) = connection.execute("SELECT count(*) FROM checkpoints").fetchone()
        by_hash = len(keys) < stored * _BY_HASH_BELOW
        with _json_relation({"keys": list(keys)}) as relation:
            if names == _STATUS_ONLY:
                sql = _STATUS_OF_KEYS_SQL[by_hash].format(prefix=prefix, keys=relation)
                found, status, highest, *extras = connection.execute(sql).fetchone()
                if found == len(keys) and status == highest:
                    # Every key has a row (ids are unique, so each key matched one) and all share this status.
                    return UniformRows(keys, _shared_values(status, found, extras))
            sql = _ROWS_OF_KEYS_SQL[by_hash].format(columns=", ".join(names), prefix=prefix, keys=relation)
            found_rows = connection.execute(sql).fetchall()
        index = names.index("key")
        return {values[index]: dict(zip(names, values)) for values in found_rows}

    def _rows_of_filter(self, connection: duckdb.DuckDBPyConnection, pipeline: str, where: RowFilter) -> dict[str, Row]:
        if where.scope is None:
            raise ValueError("a write's row filter names its scope")
        condition, params = where.sql(pipeline)
        found = connection.execute(f"SELECT {_ROW_SELECT} FROM checkpoints WHERE {condition}", params).fetchall()
        return {values[2]: dict(zip(ROW_COLUMNS, values)) for values in found}

    def _write(
        self, connection: duckdb.DuckDBPyConnection, pipeline: str, rows: dict[str, Row], events: Sequence[Event]
    ) -> None:
        """Append ``events`` and write the rows they leave, in the caller's transaction."""
        if len(events) < _BULK_FROM:
            inserted, updated, deleted = written_rows(rows, events)
            for event in events:
                connection.execute(_EVENT_INSERT_SQL, [event[c] for c in EVENT_LOG_COLUMNS[1:]])
            for row in inserted:
                identity = item_id(pipeline, row["scope"], row["key"])
                connection.execute(_ROW_INSERT_SQL, [identity, identity, *row.values()])
            for row in updated:
                self._update_row(connection, pipeline, rows[row["key"]], row)
        else:
            columns, deleted = batch_columns(rows, events)
            for part in parts_by_write(columns):
                self._write_part(connection, rows, part)
        if deleted:
            scope = events[0]["scope"]
            connection.execute(_DELETE_BULK_SQL, {"ids": json.dumps([item_id(pipeline, scope, k) for k in deleted])})
        def execute(sql: str, params: Sequence[Any]) -> duckdb.DuckDBPyConnection:
            return connection.execute(inline_parameters(sql, params))

        episodes.write(events, lambda sql, params: execute(sql, params).fetchall(), execute)
        tallies.write(events, execute, merge=True)  # one process writes the file: one row per group

    def _write_part(self, connection: duckdb.DuckDBPyConnection, rows: dict[str, Row], columns: dict[str, Any]) -> None:
        """One load of a bulk write: its events appended, the rows they write inserted or updated."""
        constant, varying, stored = split_constant(columns)
        writes = {constant[WRITE]} if WRITE in constant else {INSERT, UPDATE}
        check_stored(stored, writes)
        with _batch_table(connection, constant, varying) as frame:
            connection.execute(_bulk_event_sql(frame, stored))
            if INSERT in writes:
                connection.execute(_ROW_BULK_INSERT_SQL.format(frame=frame))
            if UPDATE in writes:
                settable = settable_columns(stored)
                self._update_rows(connection, frame, settable, _known_changes(settable, constant, varying, rows))

    @staticmethod
    def _update_rows(
        connection: duckdb.DuckDBPyConnection, frame: str, settable: Sequence[str], known: Mapping[str, bool]
    ) -> None:
        """Update the batch's rows, setting only the columns some row changes.

        DuckDB's cost of an UPDATE, and of the commit that logs and checkpoints it, grows with
        the columns it sets; a completion by the run that started the items leaves half of
        them as they are (path, owner, error fields). ``known`` says for some columns (from
        the read, :func:`_known_changes`); one aggregate over the batch joined to the rows
        finds the others, for less than writing them would cost (docs/performance.md).
        """
        unknown = [column for column in settable if column not in known]
        flags = connection.execute(_changed_sql(frame, unknown)).fetchone() if unknown else ()
        differs = {**dict(zip(unknown, flags)), **known}
        changed = [column for column in settable if differs[column]]
        if changed:
            connection.execute(_bulk_update_sql(frame, changed))

    @staticmethod
    def _update_row(connection: duckdb.DuckDBPyConnection, pipeline: str, old: Row, new: Row) -> None:
        # DuckDB's cost of an UPDATE grows with the columns it sets: set only those that change.
        changed = [column for column in ROW_COLUMNS if new[column] != old[column]]
        if not changed:
            return
        connection.execute(
            f"UPDATE checkpoints SET {', '.join(f'{c} = ?' for c in changed)} WHERE item_id = ?",
            [*(new[c] for c in changed), item_id(pipeline, new["scope"], new["key"])],
        )

    def _remember(self, pipeline: str, rows: dict[str, Row], events: Sequence[Event]) -> None:
        """Keep the rows a small write left (only once committed: a rolled-back write is not the row)."""
        if len(events) >= _BULK_FROM:
            self._shared.rows.clear()
            return
        inserted, updated, deleted = written_rows(rows, events)
        for row in inserted + updated:
            self._shared.remember(item_id(pipeline, row["scope"], row["key"]), row)
        for key in deleted:
            self._shared.rows.pop(item_id(pipeline, events[0]["scope"], key), None)



def copy_consistent(db_path: str | Path, target: str | Path, lock_timeout: float) -> None:
    """Write a consistent copy of the checkpoint file to ``target`` (the ephemeral runner's push).

    Under the file's lock no transaction of this process is in flight; ``CHECKPOINT`` moves
    the WAL into the file, so its bytes alone are the database. A file no store of this process
    has open is opened for the copy (taking DuckDB's lock, so no other process writes it).
    """
    path = Path(db_path).expanduser().resolve()
    with _OPEN_FILES_GUARD:
        shared = _OPEN_FILES.get(str(path))
        lock = shared.lock if shared is not None else threading.RLock()
        with lock:
            connection = _connect(path, lock_timeout)
            try:
                connection.execute("CHECKPOINT")
                shutil.copyfile(path, target)
            except duckdb.Error as exc:
                raise CheckpointError(
                    f"Cannot copy checkpoint database {path}: {exc}", category=categorize_error(exc), db_path=str(path)
                ) from exc
            finally:
                connection.close()

