"""The state machine and the one fold from events to rows, shared by every backend and path.

A change (mark, clear, metadata update) is turned into an *event* that carries the whole
state it leaves behind; the item's row is then derived from that event by :func:`row_after`.
So single marks, batches and a rebuild from the log (:func:`replay`) compute rows the same
way, and the event log alone is enough to rebuild every row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from datetime import datetime
from pathlib import Path
from typing import Any, overload

from sqlmesh_osaa.checkpoint.files import file_matches
from sqlmesh_osaa.checkpoint.states import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    METADATA,
    NO_FINGERPRINT,
    PENDING,
    TRANSITION,
    Fingerprint,
)

Row = dict[str, Any]
Event = dict[str, Any]

# Transitions that are legal whatever the row holds; in_progress -> in_progress (resume)
# and completed -> in_progress (changed input, forced re-run) depend on the row.
ALWAYS_LEGAL_FROM = {
    IN_PROGRESS: (PENDING, FAILED),
    COMPLETED: (IN_PROGRESS,),
    FAILED: (IN_PROGRESS,),
}


@dataclass(frozen=True)
class RunIdentity:
    """Who makes a change: the run and the process that owns it."""

    run_id: str
    pid: int
    host: str


@dataclass(slots=True)
class Change:
    """One requested change of one item; :func:`advance` turns it into an event (one per item of a batch)."""

    to_status: str
    at: datetime
    run: RunIdentity
    kind: str = TRANSITION
    file_path: str | None = None
    metadata: Mapping[str, Any] | None = None
    fingerprint: Fingerprint | None = None
    error_message: str | None = None
    error_category: str | None = None


def merged_metadata(old: str | None, new: Mapping[str, Any] | None) -> str:
    """The stored JSON of ``old`` updated with ``new``; values JSON cannot hold are stored as text."""
    if not new:
        return "{}" if old is None else old
    base = json.loads(old) if old else {}
    return json.dumps({**base, **(new or {})}, sort_keys=True, default=str)


_NO_ROW: Row = {
    "status": PENDING,
    "file_path": None,
    "attempt": 0,
    "error_message": None,
    "error_category": None,
    "checksum": None,
    "file_size": None,
    "file_mtime_ns": None,
    "metadata": None,
    "started_at": None,
    "completed_at": None,
    "run_id": None,
    "owner_pid": None,
    "owner_host": None,
}


class _Stored:
    """The type of :data:`STORED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "STORED"


# An event column that is, for every item of a fold, what the item's stored row holds: the
# plan did not read it (:func:`completion_reads`), so a bulk write takes it from the row in SQL.
STORED = _Stored()


class Events(Sequence[Event]):
    """The events of one fold, held column by column (a list of dicts on demand).

    A batch of 100k items reaches a backend's bulk load as columns, with no per-item
    event object on the way. A column may be :data:`STORED` (not read, left as stored).
    """

    __slots__ = ("columns",)

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["key"])

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return {column: values if values is STORED else values[index] for column, values in self.columns.items()}


def concatenated(first: Events, then: Events) -> Events:
    """The events of two folds as one batch, ``first``'s before ``then``'s (none :data:`STORED`)."""
    return Events({column: values + then.columns[column] for column, values in first.columns.items()})


def event_columns(events: Sequence[Event], columns: Sequence[str]) -> dict[str, list[Any]]:
    """``columns`` of ``events`` as lists: free for :class:`Events`, built for a list of dicts."""
    if isinstance(events, Events):
        return {column: events.columns[column] for column in columns}
    return {column: [event[column] for event in events] for column in columns}


def completion_reads(file_paths: Sequence[str | None], metadata: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The row columns :func:`fold` reads to complete items: the rest of an event is set or :data:`STORED`.

    A completion sets the fingerprint, times, owner and error fields and carries the rest
    (attempt, start time, metadata without a merge) unchanged, so a batch of completions
    need not read those from the store: only the status (to check the transition), the
    recorded path of items completed without one, and the metadata when some is merged.
    """
    columns = ["key", "status"]
    if None in file_paths:
        columns.append("file_path")
    if metadata:
        columns.append("metadata")
    return tuple(columns)


# The row columns a fold reads from each item's row (what a change carries, or starts from).
_CARRIED = (
    "status", "attempt", "error_message", "error_category", "checksum", "file_size", "file_mtime_ns", "metadata",
    "started_at", "completed_at", "run_id", "owner_pid", "owner_host",
)  # fmt: skip
_CARRY = itemgetter(*_CARRIED)


def _carried_unless_unread(column: str, sample: Row, bases: Sequence[Row], uniform: bool) -> list[Any] | _Stored:
    """A column of rows read with only some columns: the values, or STORED when it was not read.

    ``uniform``: every base is ``sample`` (a backend's bulk read found one row for all items).
    """
    if column in sample:
        return [sample[column]] * len(bases) if uniform else [base[column] for base in bases]
    return STORED


def fold(
    pipeline: str,
    scope: str,
    keys: Sequence[str],
    olds: Sequence[Row | None],
    change: Change,
    file_paths: Sequence[str | None] | None = None,
    prints: Sequence[Fingerprint | None] | None = None,
) -> Events:
    """The events ``change`` makes of the items ``keys`` whose rows are ``olds`` (None: pending).

    The one fold: a single mark is a batch of one (:func:`advance`). Each event carries the
    state its item is left in (the row is :func:`row_after` of it); ``file_paths`` and
    ``prints`` (the fingerprints of a completion) vary per item, the rest of ``change`` is
    shared. Computed column by column, so a batch builds no object per item. Rows read
    with only some columns (a bulk read of :func:`completion_reads`) leave the columns the
    change carries from them :data:`STORED`.
    """
    count = len(keys)
    bases = [_NO_ROW if old is None else old for old in olds]
    # Rows read without some columns (completion_reads): those are carried as STORED.
    sample = next((base for base in bases if base is not _NO_ROW), _NO_ROW)
    if not _NO_ROW.keys() <= sample.keys():
        uniform = all(base is sample for base in bases)
        if not uniform and any(base is _NO_ROW for base in bases) and not set(_CARRIED) <= sample.keys():
            unread = sorted(set(_CARRIED) - sample.keys())
            raise ValueError(f"a fold of rows read without {unread} includes items without a row")
        old = {column: _carried_unless_unread(column, sample, bases, uniform) for column in _CARRIED}
    elif bases:
        # Every carried column of every row in one pass of C loops (a single mark pays no call per column).
        old = dict(zip(_CARRIED, map(list, zip(*map(_CARRY, bases)))))
    else:
        old = {column: [] for column in _CARRIED}
    from_status = old["status"]
    if change.kind == TRANSITION:
        status, owner = change.to_status, change.run
        to_status, run_id, pid, host = [status] * count, [owner.run_id] * count, [owner.pid] * count, [owner.host] * count
    else:
        status, to_status = None, from_status
        run_id, pid, host = old["run_id"], old["owner_pid"], old["owner_host"]
    paths = [change.file_path] * count if file_paths is None else file_paths
    columns: dict[str, list[Any] | _Stored] = {
        "pipeline": [pipeline] * count,
        "scope": [scope] * count,
        "key": list(keys),
        "kind": [change.kind] * count,
        "file_path": (
            list(paths)
            if None not in paths
            else [path if path is not None else base["file_path"] for path, base in zip(paths, bases)]
        ),
        "from_status": from_status,
        "to_status": to_status,
        "at": [change.at] * count,
        "attempt": old["attempt"],
        "run_id": run_id,
        "pid": pid,
        "host": host,
        "error_message": old["error_message"],
        "error_category": old["error_category"],
        "checksum": old["checksum"],
        "file_size": old["file_size"],
        "file_mtime_ns": old["file_mtime_ns"],
        "metadata": _merged_column(old["metadata"], change.metadata),
        "started_at": old["started_at"],
        "completed_at": old["completed_at"],
    }
    if status == IN_PROGRESS:
        columns.update(
            attempt=[attempt + 1 for attempt in columns["attempt"]],
            started_at=[change.at] * count,
            error_message=[None] * count,
            error_category=[None] * count,
        )
    elif status == COMPLETED:
        given = [change.fingerprint] * count if prints is None else prints
        taken = [NO_FINGERPRINT if fingerprint is None else fingerprint for fingerprint in given]
        columns.update(
            checksum=[fingerprint.checksum for fingerprint in taken],
            file_size=[fingerprint.size for fingerprint in taken],
            file_mtime_ns=[fingerprint.mtime_ns for fingerprint in taken],
            completed_at=[change.at] * count,
            error_message=[None] * count,
            error_category=[None] * count,
        )
    elif status == FAILED:
        columns.update(error_message=[change.error_message] * count, error_category=[change.error_category] * count)
    return Events(columns)


def _merged_column(old: list[str | None] | _Stored, new: Mapping[str, Any] | None) -> list[str] | _Stored:
    """:func:`merged_metadata` of each stored value, computed once per distinct value (unread: left as stored)."""
    if old is STORED:
        if new:
            raise ValueError("metadata is merged into rows read without it")
        return STORED
    merged: dict[str | None, str] = {}
    return [merged[value] if value in merged else merged.setdefault(value, merged_metadata(value, new)) for value in old]


def advance(pipeline: str, scope: str, key: str, old: Row | None, change: Change) -> Event:
    """The event that ``change`` makes of one item: :func:`fold` of a batch of one."""
    return fold(pipeline, scope, [key], [old], change)[0]


# How a row's columns are named in the event that leaves it (the others have the same name).
ROW_FROM_EVENT = {"status": "to_status", "owner_pid": "pid", "owner_host": "host", "updated_at": "at"}
# The row column each of those event columns is written to.
EVENT_FROM_ROW = {event: row for row, event in ROW_FROM_EVENT.items()}


def row_after(event: Mapping[str, Any]) -> Row | None:
    """The row an event leaves: its state, or None when it made the item pending (cleared)."""
    if event["to_status"] == PENDING:
        return None
    return {
        "pipeline": event["pipeline"],
        "scope": event["scope"],
        "key": event["key"],
        "file_path": event["file_path"],
        "status": event["to_status"],
        "attempt": event["attempt"],
        "error_message": event["error_message"],
        "error_category": event["error_category"],
        "checksum": event["checksum"],
        "file_size": event["file_size"],
        "file_mtime_ns": event["file_mtime_ns"],
        "metadata": event["metadata"],
        "run_id": event["run_id"],
        "owner_pid": event["pid"],
        "owner_host": event["host"],
        "started_at": event["started_at"],
        "updated_at": event["at"],
        "completed_at": event["completed_at"],
    }


def replay(events: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], Row]:
    """Rows rebuilt from the event log alone (events in ``seq`` order), keyed by (pipeline, scope, key)."""
    rows: dict[tuple[str, str, str], Row] = {}
    for event in events:
        identity = (event["pipeline"], event["scope"], event["key"])
        row = row_after(event)
        if row is None:
            rows.pop(identity, None)
        else:
            rows[identity] = row
    return rows


def refusal(
    row: Mapping[str, Any] | None,
    to_status: str,
    file_path: str | Path | None,
    force: bool,
    run_id: str,
    is_live: Callable[[str], bool],
) -> str | None:
    """Why moving ``row`` to ``to_status`` is illegal and what to do instead, or None if it is legal."""
    from_status = PENDING if row is None else row["status"]
    if from_status in ALWAYS_LEGAL_FROM[to_status]:
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
        if row["run_id"] == run_id:
            return "this run already started it; call mark_completed or mark_failed"
        if is_live(row["run_id"]):
            return (
                f"run {row['run_id']} (PID {row['owner_pid']} on {row['owner_host']}) is still working on it; "
                "wait for it, or pass force=True if that run is stuck"
            )
        return None
    path = file_path if file_path is not None else row["file_path"]
    if path is None:
        return "it is completed; pass force=True to run it again, or file_path so a changed input is detected"
    if file_matches(row, path, verify_checksum=False):
        return f"it is completed and {path} is unchanged; skip it, or pass force=True to run it again"
    return None
