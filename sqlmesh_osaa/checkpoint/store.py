"""The checkpoint-store interface: the few primitives PipelineCheckpoint is written against.

A backend stores rows (the current state of each item) and the append-only event log, and
answers who is alive. The state machine and the fold live above it
(:mod:`sqlmesh_osaa.checkpoint.transitions`), written once. The primitives:

- :meth:`CheckpointStore.apply`: in one transaction, lock and read the rows of some keys (or
  of a filter), let a plan turn them into events, append the events and write the rows they
  leave (insert, update or delete). A concurrent writer makes the backend run the plan again
  on the fresh rows; the plan is never applied to rows that changed under it.
- :meth:`read_rows` (by keys) and :meth:`select_rows` (by scope, status, key prefix).
- :meth:`scan_events`, :meth:`prune`, and :meth:`read` for the portable aggregate queries of
  statistics and the CLI (``?`` placeholders, SQL both DuckDB and PostgreSQL run).
- The lease: :meth:`open_run` / :meth:`close_run` / :meth:`live_runs`. An ``in_progress`` row
  is *interrupted* only when its run's lease is gone.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmesh_osaa.checkpoint.states import COMPLETED, EVENT_LOG_COLUMNS, PENDING, ROW_COLUMNS, TRANSITION
from sqlmesh_osaa.checkpoint.transitions import ROW_FROM_EVENT, STORED, Event, Row, RunIdentity, event_columns, row_after
from sqlmesh_osaa.exceptions import CheckpointError, ErrorCategory

logger = logging.getLogger(__name__)

# Attempts of one apply() when concurrent writers keep changing its rows under it.
MAX_APPLY_ATTEMPTS = 20


@dataclass(frozen=True)
class Keys:
    """The rows of these keys of one scope (absent keys are pending items).

    ``columns``: the only row columns the plan reads (None: all). A backend may read more;
    its bulk path reads only those, and the fold leaves the others :data:`STORED`.
    """

    scope: str
    keys: Sequence[str]
    columns: Sequence[str] | None = None

    def read_columns(self) -> tuple[str, ...]:
        """The row columns a bulk read of these keys selects: ``columns``, key first, else every column."""
        if self.columns is None:
            return ROW_COLUMNS
        return ("key", *(column for column in self.columns if column != "key"))


@dataclass(frozen=True)
class RowFilter:
    """The rows of a pipeline matching every given field."""

    scope: str | None = None
    status: str | None = None
    exclude_status: str | None = None
    key_prefix: str | None = None

    def sql(self, pipeline: str) -> tuple[str, list[Any]]:
        """A portable WHERE clause (``?`` placeholders) and its parameters."""
        condition, params = "pipeline = ?", [pipeline]
        for column, operator, value in (
            ("scope", "=", self.scope),
            ("status", "=", self.status),
            ("status", "<>", self.exclude_status),
        ):
            if value is not None:
                condition += f" AND {column} {operator} ?"
                params.append(value)
        if self.key_prefix:
            condition += " AND starts_with(key, ?)"
            params.append(self.key_prefix)
        return condition, params


Target = Keys | RowFilter


class UniformRows(dict):
    """The rows of a bulk read whose keys all share ``shared`` (one row object, without the key).

    A batch of 100k keys then costs one dict, not one per key; the plan only reads rows.
    Both backends return it when one aggregate found every key with one value per column.
    """

    def __init__(self, keys: Sequence[str], shared: Row) -> None:
        super().__init__(dict.fromkeys(keys, shared))
        self.shared = shared


# Rows found (by key) -> the events to append; raising aborts the transaction.
Plan = Callable[[dict[str, Row]], Sequence[Event]]


# This process's id, set again in a forked child: the check below runs twice per single mark,
# and ``os.getpid`` is a system call each time.
_process_id = os.getpid()


def _after_fork_in_child() -> None:
    global _process_id
    _process_id = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def refuse_if_forked(opened_in: int, what: str) -> None:
    """Raise at once when ``what``, opened by process ``opened_in``, is used in a forked child of it."""
    if _process_id != opened_in:
        raise CheckpointError(
            f"{what} was opened by process {opened_in} and this process ({os.getpid()}) is a fork of it: it cannot "
            "write through its parent's store. Open a new PipelineCheckpoint in this process (on PostgreSQL), or "
            "start workers with multiprocessing 'spawn'",
            category=ErrorCategory.PERMANENT,
        )


class ConcurrentChange(Exception):
    """Rows changed under a transaction (another writer inserted one first): run the plan again."""


class CheckpointStore(ABC):
    """Rows and events of every pipeline of one database, and the leases of its runs."""

    backend: str
    # Where the store is, for messages and logs: a path, or a DSN without any secret.
    location: str

    # -- the lease ------------------------------------------------------------------------

    @abstractmethod
    def open_run(self, run: RunIdentity) -> None:
        """Take the lease of ``run``: until :meth:`close_run` or death, its rows are live."""

    @abstractmethod
    def close_run(self, run_id: str) -> None:
        """Give the lease back; the run's in_progress rows become interrupted."""

    @abstractmethod
    def live_runs(self, run_ids: Collection[str]) -> set[str]:
        """The runs of ``run_ids`` whose lease is held, by any process."""

    @abstractmethod
    def close(self) -> None:
        """Release the store (its connection, file lock and leases)."""

    # -- reads and writes -----------------------------------------------------------------

    @abstractmethod
    def read_rows(self, pipeline: str, scope: str, keys: Sequence[str]) -> dict[str, Row]:
        """The stored rows of ``keys``, by key, in one round trip however many keys."""

    @abstractmethod
    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a portable read-only query (``?`` placeholders)."""

    @abstractmethod
    def metadata_field(self, column: str, name: str) -> str:
        """SQL for the text of top-level field ``name`` of the JSON metadata in ``column`` (NULL when absent)."""

    @abstractmethod
    def reclaim_space(self) -> dict[str, Any]:
        """Give back the space deleted rows take (after :meth:`prune`); says what was done."""

    @contextmanager
    def returning_memory(self) -> Iterator[None]:
        """Inside the block, the store gives the memory its writes free back to the system at once, where it can.

        For a burst of bulk writes at the end of a process's work (a commit's completions):
        an embedded store's allocator otherwise keeps freed pages for reuse, which is what the
        rest of the work wants. A server-side store has nothing to give back here.
        """
        yield

    def apply(self, pipeline: str, target: Target, plan: Plan) -> Sequence[Event]:
        """Lock and read ``target``'s rows, append ``plan``'s events and write their rows, atomically."""
        for _ in range(MAX_APPLY_ATTEMPTS):
            try:
                return self._apply_once(pipeline, target, plan)
            except ConcurrentChange:
                logger.debug("Checkpoint rows of %r changed under a transaction; planning again", pipeline)
        raise ConcurrentChange(f"rows of pipeline {pipeline!r} kept changing under {MAX_APPLY_ATTEMPTS} attempts")

    @abstractmethod
    def _apply_once(self, pipeline: str, target: Target, plan: Plan) -> Sequence[Event]:
        """One attempt of :meth:`apply`; raises :class:`ConcurrentChange` to be tried again."""

    @abstractmethod
    def prune(self, pipeline: str, cutoff: datetime) -> tuple[int, int]:
        """Delete completed rows updated before ``cutoff`` and events older than it; (rows, events).

        Kept whatever their age: events of items that are not completed, and the last event
        of every remaining row (the log must still rebuild it).
        """

    # -- portable reads built on read() ---------------------------------------------------

    def select_rows(
        self,
        pipeline: str,
        where: RowFilter,
        order: str | None = None,
        limit: int | None = None,
        columns: Sequence[str] = ROW_COLUMNS,
    ) -> list[Row]:
        """Rows (only ``columns`` of them) matching ``where``; ``order`` is ``"newest"`` or ``"oldest"`` (by updated_at)."""
        condition, params = where.sql(pipeline)
        sql = f"SELECT {', '.join(columns)} FROM checkpoints WHERE {condition}"
        if order is not None:
            sql += " ORDER BY updated_at DESC, scope, key" if order == "newest" else " ORDER BY updated_at, scope, key"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [dict(zip(columns, values)) for values in self.read(sql, params)]

    def scan_events(
        self, pipeline: str | None = None, scope: str | None = None, key: str | None = None, *, all_kinds: bool = False
    ) -> list[Event]:
        """Events in log order: transitions only, or with ``all_kinds`` metadata updates too."""
        conditions, params = ["1 = 1"], []
        for column, value in (("pipeline", pipeline), ("scope", scope), ("key", key)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        if not all_kinds:
            conditions.append("kind = ?")
            params.append(TRANSITION)
        columns = ", ".join(f'"{c}"' for c in EVENT_LOG_COLUMNS)
        sql = f"SELECT {columns} FROM checkpoint_events WHERE {' AND '.join(conditions)} ORDER BY seq"
        return [dict(zip(EVENT_LOG_COLUMNS, values)) for values in self.read(sql, params)]

    def pipelines(self) -> list[str]:
        """Every pipeline with rows or events in the store."""
        sql = "SELECT pipeline FROM checkpoints UNION SELECT pipeline FROM checkpoint_events ORDER BY 1"
        return [name for (name,) in self.read(sql)]

    def failures_by_pipeline(
        self, *, scope: str | None = None, key_prefix: str | None = None, error_prefix: str | None = None
    ) -> dict[str, int]:
        """Transitions to failed per pipeline, of one scope, key prefix or error message prefix."""
        conditions, params = ["to_status = 'failed'", f"kind = '{TRANSITION}'"], []
        for condition, value in (
            ("scope = ?", scope),
            ("starts_with(key, ?)", key_prefix),
            ("starts_with(error_message, ?)", error_prefix),
        ):
            if value is not None:
                conditions.append(condition)
                params.append(value)
        sql = f"SELECT pipeline, count(*) FROM checkpoint_events WHERE {' AND '.join(conditions)} GROUP BY pipeline"
        return {pipeline: count for pipeline, count in self.read(sql, params)}


def last_index(keys: Sequence[str]) -> dict[str, int]:
    """Where each key's last event is: a batch may change one item several times, its row is what the last left."""
    return {key: index for index, key in enumerate(keys)}


def last_events(events: Sequence[Event]) -> list[Event]:
    """The last event of each key, in order: a batch may change one item several times, its row is the last."""
    last = {event["key"]: event for event in events}
    return list(last.values()) if len(last) < len(events) else list(events)


def written_rows(rows: Mapping[str, Row], events: Sequence[Event]) -> tuple[list[Row], list[Row], list[str]]:
    """What ``events`` do to the rows they were planned on: (inserted, updated, deleted keys)."""
    inserted, updated, deleted = [], [], []
    for event in last_events(events):
        row = row_after(event)
        existed = event["key"] in rows
        if row is None:
            if existed:
                deleted.append(event["key"])
        elif existed:
            updated.append(row)
        else:
            inserted.append(row)
    return inserted, updated, deleted


# The column of a bulk write saying what each event does to its item's row.
WRITE = "write"
INSERT, UPDATE, NO_WRITE = "insert", "update", "none"


def batch_columns(rows: Mapping[str, Row], events: Sequence[Event]) -> tuple[dict[str, list[Any]], list[str]]:
    """A bulk write as columns: every stored event column plus :data:`WRITE`, and the keys it deletes.

    The row of a key is what its last event leaves (row columns are event columns, renamed by
    ``ROW_FROM_EVENT``): that event inserts or updates it, every earlier one writes no row.
    """
    columns = dict(event_columns(events, EVENT_LOG_COLUMNS[1:]))
    keys, statuses = columns["key"], columns["to_status"]
    last = last_index(keys)
    every_last = len(last) == len(keys)
    if every_last and PENDING not in statuses:
        columns[WRITE] = [UPDATE if key in rows else INSERT for key in keys]
        return columns, []
    writes, deleted = [], []
    for index, (key, status) in enumerate(zip(keys, statuses)):
        if not every_last and last[key] != index:
            writes.append(NO_WRITE)
        elif status == PENDING:
            writes.append(NO_WRITE)
            if key in rows:
                deleted.append(key)
        else:
            writes.append(UPDATE if key in rows else INSERT)
    columns[WRITE] = writes
    return columns, deleted


def parts_by_write(columns: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A bulk write's columns as loads of one kind each: the events that write no row, then those that do.

    A batch that starts and completes each key holds two kinds of events; loaded together,
    almost every column varies, and each varying column costs the load its own values. Each
    key's last event stays after its earlier ones, so the log keeps every item's order.
    """
    writes = columns[WRITE]
    if NO_WRITE not in writes or all(write == NO_WRITE for write in writes):
        return [dict(columns)]
    parts = ([i for i, write in enumerate(writes) if write == NO_WRITE], [i for i, write in enumerate(writes) if write != NO_WRITE])
    return [
        {name: values if values is STORED else [values[i] for i in indexes] for name, values in columns.items()}
        for indexes in parts
    ]


def split_constant(columns: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]], list[str]]:
    """(columns with one value for the whole batch, columns that vary, :data:`STORED` columns).

    In a batch most columns are one value (the same change, time and run), so a bulk load
    sends those once, in its SQL, and loads only keys, paths and fingerprints row by row;
    a STORED column is not sent at all (the SQL takes it from the stored row). The key
    always varies, so a load is never of zero columns.
    """
    constant, varying, stored = {}, {}, []
    for name, values in columns.items():
        if values is STORED:
            stored.append(name)
        elif name != "key" and values.count(values[0]) == len(values):
            constant[name] = values[0]
        else:
            varying[name] = values
    return constant, varying, stored


def settable_columns(stored: Collection[str]) -> list[str]:
    """The row columns a bulk UPDATE may set: all but the row's identity and those the batch left as stored."""
    return [
        column
        for column in ROW_COLUMNS
        if column not in ("pipeline", "scope", "key") and ROW_FROM_EVENT.get(column, column) not in stored
    ]


def check_stored(stored: Sequence[str], writes: Iterable[str]) -> None:
    """A STORED column is read from the row an UPDATE writes: a batch that inserts or deletes has none."""
    if stored and set(writes) != {UPDATE}:
        raise ValueError(f"a batch leaves {stored} as stored but writes rows that are not stored")


PRUNE_ROWS_SQL = f"DELETE FROM checkpoints WHERE pipeline = ? AND status = '{COMPLETED}' AND updated_at < ?"
# Events older than the cutoff go, except those of items still not completed and the last
# event of every row that stays (rows must remain rebuildable from the log).
PRUNE_EVENTS_SQL = f"""
    DELETE FROM checkpoint_events WHERE pipeline = ? AND "at" < ?
    AND NOT EXISTS (
        SELECT 1 FROM checkpoints c
        WHERE c.pipeline = checkpoint_events.pipeline AND c.scope = checkpoint_events.scope
          AND c.key = checkpoint_events.key
          AND (c.status <> '{COMPLETED}' OR checkpoint_events.seq = (
              SELECT max(l.seq) FROM checkpoint_events l
              WHERE l.pipeline = c.pipeline AND l.scope = c.scope AND l.key = c.key))
    )
"""
