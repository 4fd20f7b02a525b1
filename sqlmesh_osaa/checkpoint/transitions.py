"""The state machine and the one fold from events to rows, shared by every backend and path.

A change (mark, clear, metadata update) is turned into an *event* that carries the whole
state it leaves behind; the item's row is then derived from that event by :func:`row_after`.
So single marks, batches and a rebuild from the log (:func:`replay`) compute rows the same
way, and the event log alone is enough to rebuild every row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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
}


def advance(pipeline: str, scope: str, key: str, old: Row | None, change: Change) -> Event:
    """The event that ``change`` makes of the item whose row is ``old`` (None: pending).

    It carries the state the item is left in: the row is :func:`row_after` of it.
    """
    base = _NO_ROW if old is None else old
    from_status = base["status"]
    status = from_status if change.kind == METADATA else change.to_status
    owner = change.run if change.kind == TRANSITION else RunIdentity(base["run_id"], base["owner_pid"], base["owner_host"])
    event: Event = {
        "pipeline": pipeline,
        "scope": scope,
        "key": key,
        "kind": change.kind,
        "file_path": change.file_path if change.file_path is not None else base["file_path"],
        "from_status": from_status,
        "to_status": status,
        "at": change.at,
        "attempt": base["attempt"],
        "run_id": owner.run_id,
        "pid": owner.pid,
        "host": owner.host,
        "error_message": base["error_message"],
        "error_category": base["error_category"],
        "checksum": base["checksum"],
        "file_size": base["file_size"],
        "file_mtime_ns": base["file_mtime_ns"],
        "metadata": merged_metadata(base["metadata"], change.metadata),
        "started_at": base["started_at"],
        "completed_at": base["completed_at"],
    }
    if change.kind == METADATA or status == PENDING:
        return event
    if status == IN_PROGRESS:
        event.update(attempt=event["attempt"] + 1, started_at=change.at, error_message=None, error_category=None)
    elif status == COMPLETED:
        fingerprint = change.fingerprint or NO_FINGERPRINT
        event.update(
            checksum=fingerprint.checksum,
            file_size=fingerprint.size,
            file_mtime_ns=fingerprint.mtime_ns,
            completed_at=change.at,
            error_message=None,
            error_category=None,
        )
    elif status == FAILED:
        event.update(error_message=change.error_message, error_category=change.error_category)
    return event


# How a row's columns are named in the event that leaves it (the others have the same name).
ROW_FROM_EVENT = {"status": "to_status", "owner_pid": "pid", "owner_host": "host", "updated_at": "at"}


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
