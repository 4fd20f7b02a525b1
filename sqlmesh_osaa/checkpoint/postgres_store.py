"""The team checkpoint store: PostgreSQL, shared by any number of runner processes and hosts.

Liveness without a file lock: each run holds a session-level advisory lock (its *lease*)
on its store's connection for as long as it is open. A run that ends closes it; a process
that dies loses its session, and the server drops the lock with it (TCP keepalives bound
how long a vanished host keeps it). An ``in_progress`` row is *interrupted* exactly when no
session holds its run's lock, so live work of another runner is never taken for dead.

Writes lock the rows they read (``SELECT ... FOR UPDATE``, in key order so two batches
cannot deadlock); a row another writer inserted first makes the transaction roll back and
plan again on the fresh rows. Connection, serialization and deadlock errors are transient.

Credentials never pass through here: the DSN names host, port, database and user; libpq
takes the password from ``PGPASSWORD``, ``PGPASSFILE`` or ``~/.pgpass`` (a DSN holding a
password is refused, so it cannot reach settings, logs or messages).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlmesh_osaa.checkpoint import episodes, tallies
from sqlmesh_osaa.checkpoint.states import EVENT_LOG_COLUMNS, ROW_COLUMNS
from sqlmesh_osaa.checkpoint.store import (
    INSERT,
    NO_WRITE,
    PRUNE_EVENTS_SQL,
    PRUNE_ROWS_SQL,
    UPDATE,
    WRITE,
    CheckpointStore,
    ConcurrentChange,
    Keys,
    Plan,
    RowFilter,
    Target,
    UniformRows,
    batch_columns,
    check_stored,
    refuse_if_forked,
    settable_columns,
    split_constant,
    written_rows,
)
from sqlmesh_osaa.checkpoint.transitions import (
    EVENT_FROM_ROW,
    ROW_FROM_EVENT,
    Event,
    Row,
    RunIdentity,
    event_columns,
    row_after,
)
from sqlmesh_osaa.exceptions import CheckpointError, ConfigurationError, ErrorCategory, categorize_error
from sqlmesh_osaa.settings import describe_dsn, dsn_password_problem

logger = logging.getLogger(__name__)

# The first key of every advisory lock this package takes ("OSAA"), the second a run's hash.
LOCK_NAMESPACE = 0x05AA_0C4B
_SCHEMA_LOCK = 0
# SQLSTATEs after which the transaction is simply planned again: serialization, deadlock.
_REPLAN_SQLSTATES = {"40001", "40P01"}

_SQL_TYPES = {
    "attempt": "integer",
    "owner_pid": "integer",
    "pid": "integer",
    "file_size": "bigint",
    "file_mtime_ns": "bigint",
    "started_at": "timestamp",
    "updated_at": "timestamp",
    "completed_at": "timestamp",
    "at": "timestamp",
}
# The type names a binary COPY is told (psycopg's names of _SQL_TYPES' types).
_COPY_TYPES = {"text": "text", "integer": "int4", "bigint": "int8", "timestamp": "timestamp"}
_NOT_NULL = {
    "pipeline", "scope", "key", "status", "attempt", "metadata", "run_id", "owner_pid", "owner_host", "updated_at",
    "from_status", "to_status", "at", "pid", "host", "kind",
}  # fmt: skip
_ROW_KEY = ("pipeline", "scope", "key")


def _ddl(columns: Sequence[str]) -> str:
    return ", ".join(
        f'"{c}" {_SQL_TYPES.get(c, "text")}{" NOT NULL" if c in _NOT_NULL else ""}' for c in columns
    )


# Layout 3: room on each row page for a second version of every row, so a batch's UPDATE of rows
# the previous batch wrote stays on their pages (a HOT update: no new primary-key entry), and one
# index on the events (nothing looks an event up by seq; seq still orders the log).
SCHEMA_VERSION = 5
_FILLFACTOR = 50
_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS checkpoints ({_ddl(ROW_COLUMNS)}, PRIMARY KEY (pipeline, scope, key))
        WITH (fillfactor = {_FILLFACTOR})""",
    f"CREATE TABLE IF NOT EXISTS checkpoint_events (seq bigserial NOT NULL, {_ddl(EVENT_LOG_COLUMNS[1:])})",
    # An item's history and prune's "last event of a row"; the key alone is selective enough.
    "CREATE INDEX IF NOT EXISTS checkpoint_events_key ON checkpoint_events (key)",
    "CREATE TABLE IF NOT EXISTS checkpoint_schema (version integer NOT NULL)",
    # Layout 4: failure episodes (checkpoint/episodes.py); a write finds an item's open one by this index.
    episodes.CREATE_SQL,
    f"CREATE INDEX IF NOT EXISTS checkpoint_episodes_open ON {episodes.TABLE} (pipeline, scope, key) WHERE ended_at IS NULL",
    # Layout 5: tallies of retries and failures (checkpoint/tallies.py), only ever inserted.
    tallies.CREATE_SQL,
)
# Layout 2 -> 3 when a store opens (docs/checkpoints.md): the new fill factor applies to pages
# written from then on; dropping the index of seq takes an exclusive lock for a moment.
_MIGRATION_TO_3 = (
    f"ALTER TABLE checkpoints SET (fillfactor = {_FILLFACTOR})",
    "ALTER TABLE checkpoint_events DROP CONSTRAINT IF EXISTS checkpoint_events_pkey",
    "UPDATE checkpoint_schema SET version = 3",
)
# Layout 3 -> 4: the failure episodes, built from the log (the table and its index are in _SCHEMA).
_MIGRATION_TO_4 = (
    f"DELETE FROM {episodes.TABLE}",
    episodes.REBUILD_SQL,
    "UPDATE checkpoint_schema SET version = 4",
)
# Layout 4 -> 5: the tallies, built from the log (the table is in _SCHEMA).
_MIGRATION_TO_5 = (
    f"DELETE FROM {tallies.TABLE}",
    tallies.REBUILD_SQL,
    f"UPDATE checkpoint_schema SET version = {SCHEMA_VERSION}",
)
_ROW_SELECT = ", ".join(f'"{c}"' for c in ROW_COLUMNS)
# The rows of many keys: a join with the keys unnested. ``key = ANY(array)`` was planned with the
# 100k-element constant and filtered every row of the scope against it: 1.6 s against 0.36 s.
# The keys travel in binary (%b): psycopg dumps 100k strings as a text array in 0.39 s, in 0.09 s so.
_C_ROW_SELECT = ", ".join(f'c."{c}"' for c in ROW_COLUMNS)
_BY_KEYS = "FROM unnest(%b::text[]) AS k(key) JOIN checkpoints c ON c.pipeline = %s AND c.scope = %s AND c.key = k.key"


def _unnest(columns: Sequence[str]) -> str:
    """``unnest`` of one array parameter per column: many rows in one statement."""
    arrays = ", ".join(f"%s::{_SQL_TYPES.get(c, 'text')}[]" for c in columns)
    return f"unnest({arrays})"


_EVENT_COLUMNS = EVENT_LOG_COLUMNS[1:]
_EVENT_NAMES = ", ".join(f'"{c}"' for c in _EVENT_COLUMNS)
_EVENTS_COPY_SQL = f"COPY checkpoint_events ({_EVENT_NAMES}) FROM STDIN (FORMAT BINARY)"
_EVENT_INSERT_SQL = (
    f"INSERT INTO checkpoint_events ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in _EVENT_COLUMNS)}) "
    f"SELECT * FROM {_unnest(_EVENT_COLUMNS)}"
)
_ROW_INSERT_SQL = (
    f"INSERT INTO checkpoints ({_ROW_SELECT}) SELECT * FROM {_unnest(ROW_COLUMNS)} ON CONFLICT DO NOTHING"
)
_ROW_UPDATE_SQL = (
    f"UPDATE checkpoints c SET ({_ROW_SELECT}) = ({', '.join(f'u.{chr(34)}{col}{chr(34)}' for col in ROW_COLUMNS)}) "
    f"FROM {_unnest(ROW_COLUMNS)} AS u({_ROW_SELECT}) "
    "WHERE c.pipeline = u.pipeline AND c.scope = u.scope AND c.key = u.key"
)
# Row columns an event carries from its row whatever the change (a completion keeps them), read
# by a bulk read of some columns: every event column is then known, so the events are copied
# into the log (a multi-row insert) instead of derived from the rows in SQL.
_CARRIED_BY_CHANGE = ("attempt", "metadata", "started_at")
# From this many events a write goes through COPY (PostgresStore._write).
_COPY_FROM = 16
# A bulk write's varying columns are copied here (the constant ones are parameters of the INSERTs).
# The version (xmin) of the row each item's change was planned on: a bulk write of keys checks it.
VERSION = "version"
_BATCH_COLUMNS = (*_EVENT_COLUMNS, WRITE, VERSION)
# What the table holds when the events are copied into the log directly: what the rows need.
_BATCH_ROW_COLUMNS = {ROW_FROM_EVENT.get(c, c) for c in ROW_COLUMNS} | {WRITE, VERSION}
_BATCH_TABLE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS osaa_batch_items ("
    + ", ".join(f'"{c}" {_SQL_TYPES.get(c, "text")}' for c in _BATCH_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
# Set for the session once connected (before any temporary table, as the server requires): a
# batch's temporary table (100k rows: ~18 MB) stays in memory (the default 8 MB is written out
# and read back; memory is taken only as the table grows). A SET rather than a startup option,
# which connection poolers such as PgBouncer refuse unless told to ignore it.
_SESSION_SQL = "SET temp_buffers = '32MB'"
# A bulk transaction's hash joins of 100k rows fit in memory, and its statements are not JIT-compiled
# (compiling them costs more than the few passes it would speed up).
_BATCH_SETTINGS_SQL = "SELECT set_config('work_mem', '64MB', true), set_config('jit', 'off', true)"
# The version of a row a single mark planned on: any later write of it has another xmin.
_VERSIONED_ROW_SQL = f"SELECT xmin::text, {_ROW_SELECT} FROM checkpoints WHERE pipeline = %s AND scope = %s AND key = %s"
_ROW_VALUES = ", ".join(f"%s::{_SQL_TYPES.get(c, 'text')}" for c in ROW_COLUMNS)
_KEY_MATCHES = "pipeline = %s AND scope = %s AND key = %s AND xmin = %s::xid"
_SINGLE_WRITE_SQL = {
    INSERT: f"INSERT INTO checkpoints ({_ROW_SELECT}) VALUES ({_ROW_VALUES}) ON CONFLICT DO NOTHING "
    "RETURNING xmin::text AS version, *",
    UPDATE: f"UPDATE checkpoints SET ({_ROW_SELECT}) = ({_ROW_VALUES}) WHERE {_KEY_MATCHES} RETURNING xmin::text AS version, *",
    NO_WRITE: f"DELETE FROM checkpoints WHERE {_KEY_MATCHES} RETURNING NULL::text AS version",
}
# The events of a single mark: one that leaves a row is that row (row_after) plus what only an
# event holds, taken from the row written, so its values are sent once; more travel as arrays.
_EVENT_ONLY = tuple(c for c in _EVENT_COLUMNS if c not in ROW_COLUMNS and c not in ROW_FROM_EVENT.values())
_ONE_EVENT = (
    "SELECT "
    + ", ".join("%s::text" if c in _EVENT_ONLY else f'w."{EVENT_FROM_ROW.get(c, c)}"' for c in _EVENT_COLUMNS)
    + " FROM w"
)
_EVENTS = f"SELECT * FROM {_unnest(_EVENT_COLUMNS)} WHERE EXISTS (SELECT 1 FROM w)"


def _mark_sql(write: str, events: str, result: str = "SELECT version FROM w", tally: str = "") -> str:
    """One statement, so one round trip and one (durable) commit: the row written only if it is still
    the version read, the events appended only if it was (and ``tally``, a CTE, too); by default
    only the new version comes back."""
    return f"WITH w AS ({_SINGLE_WRITE_SQL[write]}), e AS (INSERT INTO checkpoint_events ({_EVENT_NAMES}) {events}){tally} {result}"


# Built once: psycopg prepares a statement it has run a few times, keyed by its text.
_SINGLE_MARK_SQL = {(write, True): _mark_sql(write, _ONE_EVENT) for write in (INSERT, UPDATE)} | {
    (write, False): _mark_sql(write, _EVENTS) for write in (INSERT, UPDATE, NO_WRITE)
}
# A single restart (a start of a failed, interrupted or completed row) also adds its tally
# (checkpoint/tallies.py) in the same statement, only if the row was written: one round trip.
_RESTART_MARK_SQL = _mark_sql(
    UPDATE,
    _ONE_EVENT,
    tally=f", t AS (INSERT INTO {tallies.TABLE} (pipeline, scope, from_status, to_status, events, max_attempt) "
    "SELECT w.pipeline, w.scope, %s::text, w.status, 1, w.attempt FROM w)",
)
# The first mark of a key, planned on no row: the row and its event are inserted if there is
# still no row, else the stored row comes back (planned on at once): one round trip either way.
_FIRST_MARK_SQL = _mark_sql(
    INSERT,
    _ONE_EVENT,
    f"SELECT true, version, {', '.join(['NULL'] * len(ROW_COLUMNS))} FROM w "
    f"UNION ALL SELECT false, xmin::text, {_ROW_SELECT} FROM checkpoints "
    "WHERE pipeline = %s AND scope = %s AND key = %s AND NOT EXISTS (SELECT 1 FROM w)",
)
# A row's values in the order of ROW_COLUMNS, the single marks' parameters.
_ROW_VALUES_OF = itemgetter(*ROW_COLUMNS)
# Rows (and their versions) single marks of this store last wrote; at most this many.
_MAX_CACHED_ROWS = 4096
_LIVE_LOCKS_SQL = """
    SELECT objid FROM pg_locks
    WHERE locktype = 'advisory' AND classid = %s AND objsubid = 2 AND granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def run_lock_key(run_id: str) -> int:
    """The second (signed 32-bit) key of a run's advisory lock."""
    value = zlib.crc32(run_id.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise CheckpointError(
            "The PostgreSQL checkpoint store needs psycopg: pip install 'sqlmesh-osaa[postgres]'",
            category=ErrorCategory.PERMANENT,
        ) from exc
    return psycopg


class PostgresStore(CheckpointStore):
    """Checkpoints in a PostgreSQL database; one connection (and its leases) per store."""

    backend = "postgres"

    def __init__(self, dsn: str, connect_timeout: float, *, synchronous_commit: bool = True) -> None:
        if problem := dsn_password_problem(dsn):
            raise ConfigurationError(
                f"Refusing checkpoint DSN ({describe_dsn(dsn)}): {problem}; remove it and let libpq find it in "
                "PGPASSWORD, PGPASSFILE or ~/.pgpass",
                setting="checkpoint.dsn",
            )
        self._psycopg = _psycopg()
        self._dsn = dsn
        self.location = describe_dsn(dsn)
        self.connect_timeout = connect_timeout
        self.synchronous_commit = synchronous_commit
        self._lock = threading.RLock()
        self._runs: set[str] = set()
        # (pipeline, scope, key) -> (row, xmin) of rows single marks last read or wrote (_apply_single).
        self._versions: dict[tuple[str, str, str], tuple[Row, str | None]] = {}
        # One cursor per single-mark statement (_run_mark), of the current connection.
        self._cursors: dict[str, Any] = {}
        self._opened_in = os.getpid()
        self._closed = False
        self._connection = self._connect()
        self._prepare()

    # -- the lease ------------------------------------------------------------------------

    def open_run(self, run: RunIdentity) -> None:
        with self._lock:
            self._take_lease(self._live_connection(), run.run_id)
            self._runs.add(run.run_id)

    def close_run(self, run_id: str) -> None:
        with self._lock:
            self._runs.discard(run_id)
            if self._connection is not None and not self._connection.closed and os.getpid() == self._opened_in:
                try:
                    self._connection.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, run_lock_key(run_id)])
                except self._psycopg.Error as exc:
                    logger.warning("Could not release the lease of run %s (%s); it ends with the session", run_id, exc)

    def live_runs(self, run_ids: Collection[str]) -> set[str]:
        live = {run_id for run_id in run_ids if run_id in self._runs}
        others = [run_id for run_id in run_ids if run_id not in live]
        if not others:
            return live
        held = {objid for (objid,) in self._execute(_LIVE_LOCKS_SQL, [LOCK_NAMESPACE])}
        return live | {run_id for run_id in others if run_lock_key(run_id) & 0xFFFF_FFFF in held}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connection, self._connection = self._connection, None
            if connection is not None and os.getpid() == self._opened_in:
                # Ending the session ends every lease this store held.
                connection.close()

    # -- reads and writes -----------------------------------------------------------------

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._execute(sql.replace("?", "%s"), list(params))

    def read_rows(self, pipeline: str, scope: str, keys: Sequence[str]) -> dict[str, Row]:
        """Rows of ``keys``: a join of the keys with the rows (index lookups for a few, a hash join for many)."""
        if not keys:
            return {}
        found = self._execute(f"SELECT {_C_ROW_SELECT} {_BY_KEYS}", [list(keys), pipeline, scope])
        return {values[2]: dict(zip(ROW_COLUMNS, values)) for values in found}

    def metadata_field(self, column: str, name: str) -> str:
        quoted = "'" + name.replace("'", "''") + "'"
        return f"(NULLIF({column}, '')::jsonb ->> {quoted})"

    def reclaim_space(self) -> dict[str, Any]:
        """``VACUUM (ANALYZE)`` both tables: pruned rows' space is reused, the files do not shrink.

        Plain VACUUM marks dead rows' space free for new rows of the same table and truncates
        empty pages at a table's end, without blocking runners; ``VACUUM FULL`` would return
        it all to the operating system but locks the tables exclusively while it rewrites
        them, so it is left to a maintenance window (docs/checkpoints.md).
        """
        sizes = "SELECT pg_total_relation_size('checkpoints') + pg_total_relation_size('checkpoint_events')"
        (before,) = self._execute(sizes, [])[0]
        for table in ("checkpoints", "checkpoint_events"):
            self._execute_command(f"VACUUM (ANALYZE) {table}")
        (after,) = self._execute(sizes, [])[0]
        return {"action": "vacuumed", "reason": None, "bytes_before": before, "bytes_after": after}

    def _apply_once(self, pipeline: str, target: Target, plan: Plan) -> Sequence[Event]:
        if isinstance(target, Keys) and len(target.keys) == 1:
            events = self._apply_single(pipeline, target.scope, target.keys[0], plan)
            if events is not None:
                return events
        self._versions.clear()
        if isinstance(target, Keys) and len(target.keys) >= _COPY_FROM:
            return self._apply_bulk(pipeline, target, plan)
        with self._transaction() as connection:
            if isinstance(target, Keys):
                if not target.keys:
                    return []
                found = connection.execute(
                    f"""SELECT {_ROW_SELECT} FROM checkpoints WHERE pipeline = %s AND scope = %s AND key = ANY(%s)
                        ORDER BY key FOR UPDATE""",
                    [pipeline, target.scope, list(target.keys)],
                ).fetchall()
            else:
                condition, params = target.sql(pipeline)
                found = connection.execute(
                    f"SELECT {_ROW_SELECT} FROM checkpoints WHERE {condition.replace('?', '%s')} ORDER BY key FOR UPDATE",
                    params,
                ).fetchall()
            rows = {values[2]: dict(zip(ROW_COLUMNS, values)) for values in found}
            events = plan(rows)
            if events:
                self._write(connection, pipeline, rows, events)
            return events

    def _apply_bulk(self, pipeline: str, target: Keys, plan: Plan) -> Sequence[Event]:
        """:meth:`apply` of many keys without locking them: read the rows with their versions, plan, write if unchanged.

        Locking 100k rows (``FOR UPDATE``) writes a lock into each and logs it (5 MB of WAL,
        a second of the server's time, docs/performance.md); instead the writes check each
        row's ``xmin`` against the version read, and a row another writer changed meanwhile
        rolls the whole transaction back and the plan runs again (:class:`ConcurrentChange`).
        Only the columns the plan reads are read (``target.columns``).
        """
        names = target.read_columns()
        if target.columns is not None:
            names += tuple(column for column in _CARRIED_BY_CHANGE if column not in names)
        with self._transaction() as connection:
            connection.execute(_BATCH_SETTINGS_SQL)
            if target.columns is None:
                found = connection.execute(
                    f"SELECT c.xmin::text, {', '.join(f'c.{chr(34)}{c}{chr(34)}' for c in names)} {_BY_KEYS}",
                    [list(target.keys), pipeline, target.scope],
                ).fetchall()
                rows, versions = _rows_and_versions(names, found)
            else:
                found = connection.execute(
                    _uniform_read_sql(names), [list(target.keys), pipeline, target.scope, len(target.keys)]
                ).fetchall()
                if found and found[0][0]:
                    # Every key has a row, and all rows hold one version and one value per column read.
                    _, version, *values = found[0]
                    rows = UniformRows(target.keys, {n: v for n, v in zip(names, values) if n != "key"})
                    versions = dict.fromkeys(target.keys, version)
                else:
                    rows, versions = _rows_and_versions(names, [values[1:] for values in found])
            events = plan(rows)
            if events:
                self._write(connection, pipeline, rows, events, versions)
            return events

    def _apply_single(self, pipeline: str, scope: str, key: str, plan: Plan) -> Sequence[Event] | None:
        """:meth:`apply` of one key without a lock: read its row (or recall it), plan, write it if unchanged.

        Two round trips, or one when this store wrote the row last: the read, then one
        statement that writes the row only if it is still the version read (its ``xmin``)
        and appends the events only if it did, committed (durably) as it returns. A row
        changed meanwhile writes nothing and the plan runs again on the fresh row
        (:class:`ConcurrentChange`). A plan refused on a recalled row is tried once more on
        the row read afresh. None: the change writes no row (pending to pending), so there is
        no version to check it against, or it changes a failure episode (a failure, a retried
        item's completion), which one statement does not write; the caller takes the locking path.
        """
        identity = (pipeline, scope, key)
        with self._lock:
            recalled = self._versions.pop(identity, None)
            if recalled is None:
                inserted, row, version = self._insert_first(identity, plan)
                if inserted is not None:
                    return inserted
            else:
                row, version = recalled
            try:
                events = plan({} if row is None else {key: row})
            except Exception:
                if recalled is None:
                    raise
                row, version = self._read_versioned(identity)
                events = plan({} if row is None else {key: row})
            if not events:
                self._remember(identity, row, version)
                return events
            if episodes.touches(events):
                # A failure or a retried item's completion writes an episode too: the locking path does both.
                return None
            left = row_after(events[-1])
            if row is None and left is None:
                return None
            write = NO_WRITE if left is None else (UPDATE if row is not None else INSERT)
            # What else episodes.touches lets through that is counted is a restart: its tally joins the statement.
            restart = tallies.counted(events)
            if restart and (len(events) != 1 or write != UPDATE):
                return None
            params = [] if left is None else [*_ROW_VALUES_OF(left)]
            if row is not None:
                params += [*identity, version]
            one = len(events) == 1 and left is not None
            columns = event_columns(events, _EVENT_ONLY if one else _EVENT_COLUMNS)
            params += [values[0] for values in columns.values()] if one else list(columns.values())
            if restart:
                params.append(events[0]["from_status"])
            written = self._run_mark(_RESTART_MARK_SQL if restart else _SINGLE_MARK_SQL[write, one], params)
            if not written:
                raise ConcurrentChange(f"checkpoint row {key!r} changed since it was read")
            if left is not None:
                self._remember(identity, left, written[0][0])
            return events

    def _insert_first(
        self, identity: tuple[str, str, str], plan: Plan
    ) -> tuple[Sequence[Event] | None, Row | None, str | None]:
        """A mark of a key this store does not recall: plan it on no row and insert it (:data:`_FIRST_MARK_SQL`).

        Returns the events when the row was inserted, else (None, the stored row, its version)
        to plan on. A plan that no row refuses (a completion) or that inserts nothing reads
        the row first, as does a row another writer inserts in the same moment.
        """
        try:
            events = plan({})
        except Exception:
            return None, *self._read_versioned(identity)
        left = row_after(events[-1]) if len(events) == 1 else None
        if left is None:
            return None, *self._read_versioned(identity)
        columns = event_columns(events, _EVENT_ONLY)
        params = [*_ROW_VALUES_OF(left), *[values[0] for values in columns.values()], *identity]
        found = self._run_mark(_FIRST_MARK_SQL, params)
        if not found:
            return None, *self._read_versioned(identity)
        inserted, version, *values = found[0]
        if inserted:
            self._remember(identity, left, version)
            return events, None, None
        return None, dict(zip(ROW_COLUMNS, values)), version

    def _run_mark(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """A single-mark statement on a cursor of its own, prepared on the server the first time it runs.

        The server then neither parses nor plans it again, and a cursor that runs the same
        query object again keeps its adapters (docs/performance.md).
        """
        connection = self._live_connection()
        try:
            cursor = self._cursors.get(sql)
            if cursor is None or cursor.connection is not connection:
                cursor = self._cursors[sql] = connection.cursor()
            return cursor.execute(sql, params, prepare=True).fetchall()
        except self._psycopg.Error as exc:
            raise self._replan_or_error(exc) from exc

    def _read_versioned(self, identity: tuple[str, str, str]) -> tuple[Row | None, str | None]:
        found = self._run_mark(_VERSIONED_ROW_SQL, identity)
        if not found:
            return None, None
        version, *values = found[0]
        return dict(zip(ROW_COLUMNS, values)), version

    def _remember(self, identity: tuple[str, str, str], row: Row | None, version: str | None) -> None:
        """Recall a row this store wrote or read (a later mark of it need not read it; its version is checked)."""
        if row is None:
            return
        self._versions[identity] = (row, version)
        if len(self._versions) > _MAX_CACHED_ROWS:
            del self._versions[next(iter(self._versions))]

    def prune(self, pipeline: str, cutoff: datetime) -> tuple[int, int]:
        self._versions.clear()
        with self._transaction() as connection:
            rows = connection.execute(PRUNE_ROWS_SQL.replace("?", "%s"), [pipeline, cutoff]).rowcount
            events = connection.execute(PRUNE_EVENTS_SQL.replace("?", "%s"), [pipeline, cutoff]).rowcount
            connection.execute(episodes.PRUNE_SQL.replace("?", "%s"), [pipeline, cutoff])
            connection.execute(tallies.PRUNE_ONE_SQL.replace("?", "%s"), [pipeline, pipeline])
        return rows, events

    # -- internals ------------------------------------------------------------------------

    def _connect(self) -> Any:
        try:
            connection = self._psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout)),
                application_name="sqlmesh-osaa",
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
                # Off: a commit returns before its WAL reaches the server's disk (a server crash,
                # not a client crash, may lose the last fraction of a second of marks).
                options="" if self.synchronous_commit else "-c synchronous_commit=off",
            )
            try:
                connection.execute(_SESSION_SQL)
            except BaseException:
                connection.close()
                raise
            return connection
        except self._psycopg.Error as exc:
            raise CheckpointError(
                f"Cannot connect to the checkpoint database ({self.location}): {exc}".strip(),
                category=categorize_error(exc),
                location=self.location,
            ) from exc

    def _prepare(self) -> None:
        with self._transaction() as connection:
            # Runners starting together would race on CREATE ... IF NOT EXISTS: one at a time.
            connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK_NAMESPACE, _SCHEMA_LOCK])
            for statement in _SCHEMA:
                connection.execute(statement)
            (version,) = connection.execute("SELECT max(version) FROM checkpoint_schema").fetchone()
            if version is None:
                connection.execute("INSERT INTO checkpoint_schema VALUES (%s)", [SCHEMA_VERSION])
            elif version < SCHEMA_VERSION:
                older = (*(_MIGRATION_TO_3 if version < 3 else ()), *(_MIGRATION_TO_4 if version < 4 else ()))
                for statement in (*older, *_MIGRATION_TO_5):
                    connection.execute(statement)
                logger.warning("Migrated the checkpoint tables of %s from layout %d to %d", self.location, version, SCHEMA_VERSION)

    def _take_lease(self, connection: Any, run_id: str) -> None:
        (taken,) = connection.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", [LOCK_NAMESPACE, run_lock_key(run_id)]
        ).fetchone()
        if not taken:
            # Another live run's lock has the same hash: it keeps this run's rows live too (the safe side).
            logger.warning("Run %s shares its lease key with another live run", run_id)

    def _live_connection(self) -> Any:
        refuse_if_forked(self._opened_in, f"Checkpoint store ({self.location})")
        if self._closed:
            raise CheckpointError(f"Checkpoint store ({self.location}) is closed; open a new one")
        if self._connection is None or self._connection.closed:
            logger.warning("Reconnecting to the checkpoint database (%s); re-taking %d leases", self.location, len(self._runs))
            self._connection = self._connect()
            for run_id in self._runs:
                self._take_lease(self._connection, run_id)
        return self._connection

    def _error(self, exc: Exception) -> CheckpointError:
        return CheckpointError(
            f"Checkpoint database ({self.location}) failed: {exc}", category=categorize_error(exc), location=self.location
        )

    def _execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._live_connection().execute(sql, params).fetchall()
            except self._psycopg.Error as exc:
                raise self._error(exc) from exc

    def _execute_command(self, sql: str) -> None:
        """A statement outside any transaction block (the connection autocommits), e.g. VACUUM."""
        with self._lock:
            try:
                self._live_connection().execute(sql)
            except self._psycopg.Error as exc:
                raise self._error(exc) from exc

    def _replan_or_error(self, exc: Exception) -> Exception:
        """Serialization failures and deadlocks as :class:`ConcurrentChange` (plan again), other errors named."""
        if getattr(exc, "sqlstate", None) in _REPLAN_SQLSTATES:
            return ConcurrentChange(str(exc))
        return self._error(exc)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One PostgreSQL transaction on this store's connection; durable when the block returns."""
        with self._lock:
            try:
                connection = self._live_connection()
                with connection.transaction():
                    yield connection
            except self._psycopg.Error as exc:
                raise self._replan_or_error(exc) from exc

    def _write(
        self,
        connection: Any,
        pipeline: str,
        rows: dict[str, Row],
        events: Sequence[Event],
        versions: dict[str, str] | None = None,
    ) -> None:
        """Append ``events`` and write the rows they leave, in the caller's transaction.

        A few rows travel as array parameters of one statement each; a batch is copied into
        temporary tables first (COPY is several times faster than arrays of 100k values).
        With ``versions`` (rows read unlocked, by key), a row whose version changed is not
        written and the transaction is planned again.
        """
        if versions is None and len(events) < _COPY_FROM:
            inserted, updated, deleted = written_rows(rows, events)
            connection.execute(_EVENT_INSERT_SQL, [[event[c] for event in events] for c in _EVENT_COLUMNS])
            count = 0
            if inserted:
                count = connection.execute(_ROW_INSERT_SQL, [[row[c] for row in inserted] for c in ROW_COLUMNS]).rowcount
            if updated:
                connection.execute(_ROW_UPDATE_SQL, [[row[c] for row in updated] for c in ROW_COLUMNS])
            expected = len(inserted)
        else:
            count, expected, deleted = self._write_batch(connection, rows, events, versions)
        if count != expected:
            raise ConcurrentChange(f"{expected - count} rows were written by another writer")
        if deleted and versions is not None:
            kept = connection.execute(
                "DELETE FROM checkpoints c USING unnest(%s::text[], %s::text[]) AS d(key, version) "
                "WHERE c.pipeline = %s AND c.scope = %s AND c.key = d.key AND c.xmin = d.version::xid",
                [deleted, [versions[key] for key in deleted], pipeline, events[0]["scope"]],
            ).rowcount
            if kept != len(deleted):
                raise ConcurrentChange(f"{len(deleted) - kept} rows to clear were written by another writer")
        elif deleted:
            connection.execute(
                "DELETE FROM checkpoints WHERE pipeline = %s AND scope = %s AND key = ANY(%s)",
                [pipeline, events[0]["scope"], deleted],
            )
        def execute(sql: str, params: Sequence[Any]) -> Any:
            return connection.execute(sql.replace("?", "%s"), params)

        episodes.write(events, lambda sql, params: execute(sql, params).fetchall(), execute)
        tallies.write(events, execute)

    def _write_batch(
        self, connection: Any, rows: dict[str, Row], events: Sequence[Event], versions: dict[str, str] | None
    ) -> tuple[int, int, list[str]]:
        """A bulk write: the events copied into the log, the rows written from one COPY of what varies.

        The events go by COPY straight into ``checkpoint_events``: the server inserts them a
        page at a time (one WAL record per page, not per event) and parses them while the
        client still encodes the rest. The row columns that vary are copied into a temporary
        table, analyzed so the planner joins 100k rows by hash rather than by a nested loop
        the statistics of a small ``checkpoints`` table would suggest; the columns with one
        value for the batch are parameters of the INSERT and UPDATE. With ``versions`` the
        UPDATE writes only rows still at the version read: a row changed since is missing
        from the count, and the transaction (its events too) rolls back to be planned again.
        A column the plan left :data:`STORED` is taken from the row in SQL, so then the events
        are inserted from the table. Returns (rows written, rows meant to be written, keys deleted).
        """
        columns, deleted = batch_columns(rows, events)
        if versions is not None:
            columns[VERSION] = [versions.get(key) for key in columns["key"]]
        constant, varying, stored = split_constant(columns)
        writes = columns[WRITE]
        check_stored(stored, writes)
        connection.execute(_BATCH_SETTINGS_SQL)
        encoded = None
        if not stored:
            # Encoded on a thread while the server loads the batch and updates the rows; copied after.
            encoded = _encode_meanwhile(connection, {c: columns[c] for c in _EVENT_COLUMNS})
            varying = {name: values for name, values in varying.items() if name in _BATCH_ROW_COLUMNS}
        connection.execute(_BATCH_TABLE_SQL)
        self._copy(connection, f"osaa_batch_items ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in varying)})", varying)
        connection.execute("ANALYZE osaa_batch_items (key)")

        def values(names: Sequence[str]) -> tuple[list[str], list[Any]]:
            """SQL of each column (from the table, the stored row, or a parameter when constant) and the parameters."""
            sql, params = [], []
            for name in names:
                if name in varying:
                    sql.append(f'b."{name}"')
                elif name in stored:
                    sql.append(f'c."{EVENT_FROM_ROW.get(name, name)}"')
                else:
                    sql.append(f"%s::{_SQL_TYPES.get(name, 'text')}")
                    params.append(constant[name])
            return sql, params

        key_sql, key_params = values(_ROW_KEY)
        matches = " AND ".join(f"c.{column} = {sql}" for column, sql in zip(_ROW_KEY, key_sql))
        (write_sql,), write_params = values([WRITE])
        if stored:
            # Columns the batch left as stored are read from the rows, before they are written.
            event_sql, event_params = values(_EVENT_COLUMNS)
            connection.execute(
                f"INSERT INTO checkpoint_events ({_EVENT_NAMES}) SELECT {', '.join(event_sql)} "
                f"FROM osaa_batch_items b JOIN checkpoints c ON {matches}",
                event_params + key_params,
            )
        inserts = expected = writes.count(INSERT)
        updates = writes.count(UPDATE)
        count = 0
        if inserts:
            row_sql, row_params = values([ROW_FROM_EVENT.get(column, column) for column in ROW_COLUMNS])
            count = connection.execute(
                f"INSERT INTO checkpoints ({_ROW_SELECT}) SELECT {', '.join(row_sql)} FROM osaa_batch_items b "
                f"WHERE {write_sql} = '{INSERT}' ON CONFLICT DO NOTHING",
                row_params + write_params,
            ).rowcount
        if updates:
            # Set what the batch changes: not the key (it matched), not what it left as stored.
            changed = settable_columns(stored)
            row_sql, row_params = values([ROW_FROM_EVENT.get(column, column) for column in changed])
            condition, params = f"{write_sql} = '{UPDATE}'", write_params
            if updates == len(writes):
                condition, params = "true", []
            if versions is not None:
                (version_sql,), version_params = values([VERSION])
                condition, params = f"{condition} AND c.xmin = ({version_sql})::xid", params + version_params
            updated = connection.execute(
                f"UPDATE checkpoints c SET ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in changed)}) = "
                f"ROW({', '.join(row_sql)}) FROM osaa_batch_items b WHERE {matches} AND {condition}",
                [*row_params, *key_params, *params],
            ).rowcount
            if versions is not None:
                count, expected = count + updated, expected + updates
        if encoded is not None:
            data = encoded()
            if count == expected:
                with connection.cursor().copy(_EVENTS_COPY_SQL) as copy:
                    copy.write(data)
        return count, expected, deleted

    @staticmethod
    def _copy(connection: Any, table: str, columns: dict[str, list[Any]]) -> None:
        """COPY ``columns`` into ``table`` (named with the same columns, in order), in binary.

        Binary, because the server then parses no text: the times and numbers of 100k rows
        in text format were a fifth of its work on a bulk write.
        """
        if not next(iter(columns.values())):
            return
        with connection.cursor().copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
            _write_rows(copy, columns)


def _write_rows(copy: Any, columns: dict[str, list[Any]]) -> None:
    """The rows of ``columns`` into a binary COPY, each value sent as its column's type."""
    copy.set_types([_COPY_TYPES[_SQL_TYPES.get(column, "text")] for column in columns])
    for values in zip(*columns.values()):
        copy.write_row(values)


def _uniform_read_sql(names: Sequence[str]) -> str:
    """A bulk read of ``names`` that returns one shared row when every key's row holds the same values.

    The first column says which: true and one row (the version and values all rows share, no
    key) when every key was found with one version and one value (or none) per column, else
    false and every row found, with its version. A batch completing the items one batch
    started is the first case: the client then decodes one row and builds one dict, not 100k.
    The rows are joined and aggregated once (materialized CTEs) whichever comes back.
    """
    shared = ("version", *(name for name in names if name != "key"))
    uniform = " AND ".join(
        f'(count("{c}") = 0 OR (count("{c}") = count(*) AND min("{c}") = max("{c}")))' for c in shared
    )
    values = ", ".join(f'min("{c}") AS "{c}"' for c in shared)
    first = ", ".join("NULL::text" if name == "key" else f'"{name}"' for name in names)
    quoted = ", ".join(f'"{name}"' for name in names)
    selected = ", ".join(f'c."{name}"' for name in names)
    return (
        f"WITH r AS MATERIALIZED (SELECT c.xmin::text AS version, {selected} {_BY_KEYS}), "
        f"a AS MATERIALIZED (SELECT count(*) = %s AND {uniform} AS uniform, {values} FROM r) "
        f"SELECT true, version, {first} FROM a WHERE uniform "
        f"UNION ALL SELECT false, version, {quoted} FROM r WHERE NOT (SELECT uniform FROM a)"
    )


def _rows_and_versions(names: Sequence[str], found: Sequence[Sequence[Any]]) -> tuple[dict[str, Row], dict[str, str]]:
    """Rows of a bulk read (each the version, then ``names``) by key, and the version of each."""
    index = names.index("key") + 1
    versions = {values[index]: values[0] for values in found}
    rows = {values[index]: dict(zip(names, values[1:])) for values in found}
    return rows, versions


def _encode_meanwhile(connection: Any, columns: dict[str, list[Any]]) -> Callable[[], memoryview]:
    """The binary COPY data of ``columns`` encoded on a thread; the returned call waits for it.

    The encoding (client CPU, 0.5 s for 100k events) then runs while the same connection's
    statements run on the server (the waiting thread releases the GIL); a connection takes
    no COPY data while another statement runs, so the bytes are sent afterwards.
    """
    from psycopg.copy import Copy, FileWriter

    data = io.BytesIO()
    outcome: list[BaseException] = []
    cursor = connection.cursor()

    def encode() -> None:
        try:
            with Copy(cursor, binary=True, writer=FileWriter(data)) as copy:
                _write_rows(copy, columns)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=encode, name="osaa-copy-encoding", daemon=True)
    thread.start()

    def wait() -> memoryview:
        thread.join()
        if outcome:
            raise outcome[0]
        return data.getbuffer()

    return wait
