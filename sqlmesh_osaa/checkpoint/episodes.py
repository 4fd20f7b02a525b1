"""Failure episodes, kept as the events are written: what time to recovery and "failing since" read.

An item's episode runs from a failure to the next completion (*recovered*) or clear (*given
up*: the row is gone, a later run of the key is new work); failures in between belong to it.
``stats`` reported the episodes by a window over every outcome event of every item that ever
failed, so its cost grew with the history's length; the table ``checkpoint_episodes`` holds one
row per episode instead (``ended_at`` NULL while it is open), written in the transaction that
appends the events, by :func:`write` on both backends. :data:`REBUILD_SQL` derives the same
rows from the log (a layout migration; a test compares the two after random histories).

The write asks the store for nothing in the common case: a batch without failures whose
closing events cannot end an episode writes and reads no episode at all: an episode opens
with a failure, after which only a start or a clear can come, so a completion that ends one
has ``attempt >= 2``, and so has a clear of an in_progress row; a completed row has none open. Otherwise it reads the open
episodes of the batch's keys (a small set), and closes and inserts episodes in two statements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlmesh_osaa.checkpoint.states import COMPLETED, FAILED, PENDING, TRANSITION
from sqlmesh_osaa.checkpoint.transitions import STORED, Event, event_columns

TABLE = "checkpoint_episodes"
CREATE_SQL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    pipeline VARCHAR NOT NULL, scope VARCHAR NOT NULL, key VARCHAR NOT NULL,
    failed_at TIMESTAMP NOT NULL, ended_at TIMESTAMP, recovered BOOLEAN NOT NULL)"""
# The episodes the log holds: outcomes numbered by the closing events (completions, clears) before
# them, each number one episode; those with a failure are kept. Portable: both backends run it.
LOG_EPISODES_SQL = f"""
    SELECT pipeline, scope, key, failed_at, ended_at, recovered FROM (
        SELECT pipeline, scope, key,
               min("at") FILTER (WHERE to_status = '{FAILED}') AS failed_at,
               min("at") FILTER (WHERE to_status <> '{FAILED}') AS ended_at,
               coalesce(bool_or(to_status = '{COMPLETED}'), false) AS recovered
        FROM (
            SELECT pipeline, scope, key, to_status, "at",
                   coalesce(sum(CASE WHEN to_status = '{FAILED}' THEN 0 ELSE 1 END) OVER (
                       PARTITION BY pipeline, scope, key ORDER BY seq
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS episode
            FROM checkpoint_events
            WHERE kind = '{TRANSITION}' AND to_status IN ('{FAILED}', '{COMPLETED}', '{PENDING}')
        ) AS numbered
        GROUP BY pipeline, scope, key, episode
    ) AS episodes
    WHERE failed_at IS NOT NULL"""
REBUILD_SQL = f"INSERT INTO {TABLE} (pipeline, scope, key, failed_at, ended_at, recovered) {LOG_EPISODES_SQL}"
# Retention (store.prune): an episode that ended before the cutoff goes; open ones stay.
PRUNE_SQL = f"DELETE FROM {TABLE} WHERE pipeline = ? AND ended_at < ?"
# Seconds an episode took to recover, NULL while open or when given up.
RECOVERY_SECONDS = (
    "CASE WHEN recovered THEN CAST(extract(epoch FROM (ended_at - failed_at)) AS DOUBLE PRECISION) END"
)
_CLOSING = (COMPLETED, PENDING)
# Up to this many keys, the open episodes are read by key; more read every open one of the scope.
_KEYS_LISTED = 16
_BEFORE = object()  # the key's episode was open before the batch
_ROWS_PER_STATEMENT = 5_000

Read = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
Execute = Callable[[str, Sequence[Any]], None]


def _may_end_one(status: str, from_status: str, attempt: Any) -> bool:
    """Whether a closing event may end an episode: from a failure (a clear), or after a retry."""
    if status not in _CLOSING or from_status == COMPLETED:
        return False
    return from_status == FAILED or attempt is STORED or attempt is None or attempt >= 2


def _distinct(values: list[Any]) -> set[Any]:
    """The values of a column; a batch's column usually holds one object, which ``count`` finds by identity."""
    if values and values.count(values[0]) == len(values):
        return {values[0]}
    return set(values)


def touches(events: Sequence[Event]) -> bool:
    """Whether ``events`` may open, close or add an episode (cheap: no query, C loops over a batch's columns)."""
    columns = event_columns(events, ("kind", "to_status", "from_status", "attempt"))
    attempts = columns["attempt"]
    if len(events) == 1:  # a single mark: no set to build
        status, attempt = columns["to_status"][0], attempts if attempts is STORED else attempts[0]
        return columns["kind"][0] == TRANSITION and (status == FAILED or _may_end_one(status, columns["from_status"][0], attempt))
    statuses = _distinct(columns["to_status"])
    if FAILED in statuses or (PENDING in statuses and FAILED in _distinct(columns["from_status"])):
        return True
    if COMPLETED not in statuses and PENDING not in statuses:
        return False
    if attempts is STORED:
        return True
    known = _distinct(attempts)
    if not known & {None, STORED} and max(known) < 2:
        return False
    return any(
        kind == TRANSITION and _may_end_one(status, old, attempt)
        for kind, status, old, attempt in zip(columns["kind"], columns["to_status"], columns["from_status"], attempts)
    )


def write(events: Sequence[Event], read: Read, execute: Execute) -> None:
    """Open, close and add the episodes ``events`` make, in the caller's transaction (``?`` placeholders).

    ``events`` are of one pipeline and scope, in log order, all already planned on the
    stored rows (as :meth:`CheckpointStore.apply` writes them).
    """
    if not events or not touches(events):
        return
    pipeline, scope = events[0]["pipeline"], events[0]["scope"]
    columns = event_columns(events, ("kind", "key", "to_status", "at"))
    keys, statuses = columns["key"], columns["to_status"]
    open_keys = _open_keys(read, pipeline, scope, keys) if _may_find_one_open(events) else set()
    if FAILED in _distinct(statuses):
        indices: Sequence[int] = range(len(keys))
    elif open_keys:
        indices = [index for index, key in enumerate(keys) if key in open_keys]
    else:
        return
    closes, inserts = _changes(columns, indices, open_keys)
    for chunk in _chunks(closes):
        values = ", ".join("(CAST(? AS VARCHAR), CAST(? AS TIMESTAMP), CAST(? AS BOOLEAN))" for _ in chunk)
        execute(
            f"UPDATE {TABLE} AS e SET ended_at = v.ended_at, recovered = v.recovered "
            f"FROM (VALUES {values}) AS v(key, ended_at, recovered) "
            "WHERE e.pipeline = ? AND e.scope = ? AND e.key = v.key AND e.ended_at IS NULL",
            [*(value for close in chunk for value in close), pipeline, scope],
        )
    for chunk in _chunks(inserts):
        values = ", ".join("(?, ?, ?, CAST(? AS TIMESTAMP), CAST(? AS TIMESTAMP), CAST(? AS BOOLEAN))" for _ in chunk)
        execute(
            f"INSERT INTO {TABLE} (pipeline, scope, key, failed_at, ended_at, recovered) VALUES {values}",
            [value for insert in chunk for value in (pipeline, scope, *insert)],
        )


def _chunks(rows: list[Any]) -> list[list[Any]]:
    """``rows`` in runs a statement can carry: PostgreSQL takes at most 65,535 parameters (6 a row here)."""
    return [rows[start : start + _ROWS_PER_STATEMENT] for start in range(0, len(rows), _ROWS_PER_STATEMENT)]


def _may_find_one_open(events: Sequence[Event]) -> bool:
    """Whether an item of ``events`` may have had an episode open before them: a failed row, or a retry.

    A row at its first attempt has not failed since it was created (or cleared): a single
    failure at attempt 1 inserts its episode without a read.
    """
    columns = event_columns(events, ("from_status", "attempt"))
    attempts = columns["attempt"]
    if attempts is STORED or FAILED in _distinct(columns["from_status"]):
        return True
    known = _distinct(attempts)
    return bool(known & {None, STORED}) or max(known) >= 2


def _open_keys(read: Read, pipeline: str, scope: str, keys: Sequence[str]) -> set[str]:
    sql = f"SELECT key FROM {TABLE} WHERE pipeline = ? AND scope = ? AND ended_at IS NULL"
    wanted = sorted(set(keys)) if len(keys) <= _KEYS_LISTED else []
    if wanted:
        sql += f" AND key IN ({', '.join('?' * len(wanted))})"
    return {key for (key,) in read(sql, [pipeline, scope, *wanted])}


def _changes(
    columns: dict[str, list[Any]], indices: Sequence[int], open_keys: set[str]
) -> tuple[list[tuple[str, datetime, bool]], list[tuple[str, datetime, datetime | None, bool]]]:
    """(episodes open before the batch that it ends: key, ended_at, recovered; episodes it adds, ended or open)."""
    kinds, keys, statuses, ats = columns["kind"], columns["key"], columns["to_status"], columns["at"]
    state: dict[str, Any] = {}  # key -> _BEFORE, the failed_at of an episode the batch opened, or None
    closes, inserts = [], []
    for index in indices:
        status = statuses[index]
        if kinds[index] != TRANSITION or status not in (FAILED, *_CLOSING):
            continue
        key = keys[index]
        current = state[key] if key in state else (_BEFORE if key in open_keys else None)
        if status == FAILED:
            if current is None:
                current = ats[index]
        elif current is _BEFORE:
            closes.append((key, ats[index], status == COMPLETED))
            current = None
        elif current is not None:
            inserts.append((key, current, ats[index], status == COMPLETED))
            current = None
        state[key] = current
    inserts.extend((key, failed_at, None, False) for key, failed_at in state.items() if failed_at not in (None, _BEFORE))
    return closes, inserts
