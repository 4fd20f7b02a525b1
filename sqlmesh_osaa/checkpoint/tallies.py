"""Counts of the log's retries and failures, kept as the events are written: what ``stats`` counts.

``stats`` reports restarts by cause (after a failure, after an interruption, re-runs of
completed items, the highest attempt), the most common errors and the calls an open circuit
refused. Each was a count over the pipeline's event log, so its cost grew with the log's
length (docs/performance.md, "Store growth"). The table ``checkpoint_tallies`` holds rows of
groups of the events those figures count (restarts by the status they left; failures by error
message and category) with the number of events and the highest attempt; ``stats`` sums them.

On DuckDB, whose file one process writes, a write updates its groups' rows (one per group);
on PostgreSQL rows are only inserted, one per group and write, so concurrent runners never
update a shared row. A write without such events (first attempts and their completions,
single or in a batch of 100k) writes none, decided in C loops over the batch's columns.
:data:`LOG_TALLIES_SQL` derives the same figures from the log: a layout migration builds the
table with it, and ``prune``, after deleting events, rebuilds the pipeline's rows with it
(which also folds PostgreSQL's rows of many writes into one per group).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from sqlmesh_osaa.checkpoint.states import COMPLETED, FAILED, IN_PROGRESS, PENDING, TRANSITION
from sqlmesh_osaa.checkpoint.transitions import Event, event_columns

TABLE = "checkpoint_tallies"
CREATE_SQL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    pipeline VARCHAR NOT NULL, scope VARCHAR NOT NULL, from_status VARCHAR NOT NULL, to_status VARCHAR NOT NULL,
    error_message VARCHAR, error_category VARCHAR, events BIGINT NOT NULL, max_attempt INTEGER)"""
_COLUMNS = "pipeline, scope, from_status, to_status, error_message, error_category, events, max_attempt"
# What a tally counts: restarts (a start from anything but pending) and failures.
_COUNTED = f"kind = '{TRANSITION}' AND ((to_status = '{IN_PROGRESS}' AND from_status <> '{PENDING}') OR to_status = '{FAILED}')"
LOG_TALLIES_SQL = f"""
    SELECT pipeline, scope, from_status, to_status, error_message, error_category, count(*),
           CASE WHEN to_status = '{IN_PROGRESS}' THEN max(attempt) END
    FROM checkpoint_events WHERE {_COUNTED} {{pipeline}}
    GROUP BY pipeline, scope, from_status, to_status, error_message, error_category"""
# Every pipeline's tallies from the log (a layout migration; the table is empty or emptied first).
REBUILD_SQL = f"INSERT INTO {TABLE} ({_COLUMNS}) {LOG_TALLIES_SQL.format(pipeline='')}"
# One pipeline's tallies again from what is left of its log (store.prune; params: pipeline twice).
# DuckDB runs the two statements (one process writes the file); PostgreSQL the one that holds
# both, so that they see the log in one snapshot: a concurrent writer's events and its tally
# are then either both seen (its tally deleted, its events counted) or neither (its tally kept).
PRUNE_SQL = (
    f"DELETE FROM {TABLE} WHERE pipeline = ?",
    f"INSERT INTO {TABLE} ({_COLUMNS}) {LOG_TALLIES_SQL.format(pipeline='AND pipeline = ?')}",
)
PRUNE_ONE_SQL = f"WITH gone AS ({PRUNE_SQL[0]}) {PRUNE_SQL[1]}"
# Restarts by the status they left, and the highest attempt of any start: a first start
# (from pending) is attempt 1 and is not tallied, so when no restart is, the log is asked
# whether any start exists (a scan that stops at the first).
RETRIES_SQL = f"""
    SELECT coalesce(CAST(sum(events) FILTER (WHERE from_status = '{FAILED}') AS BIGINT), 0),
           coalesce(CAST(sum(events) FILTER (WHERE from_status = '{IN_PROGRESS}') AS BIGINT), 0),
           coalesce(CAST(sum(events) FILTER (WHERE from_status = '{COMPLETED}') AS BIGINT), 0),
           coalesce(max(max_attempt), (SELECT 1 FROM checkpoint_events WHERE pipeline = ? AND kind = '{TRANSITION}'
                                       AND to_status = '{IN_PROGRESS}' LIMIT 1), 0)
    FROM {TABLE} WHERE pipeline = ? AND to_status = '{IN_PROGRESS}'"""
ERRORS_SQL = f"""
    SELECT error_message, error_category, CAST(sum(events) AS BIGINT) AS n FROM {TABLE}
    WHERE pipeline = ? AND to_status = '{FAILED}'
    GROUP BY error_message, error_category ORDER BY n DESC, error_message LIMIT ?"""
# Failures whose error starts with a prefix (params: pipeline, prefix, prefix).
FAILURES_WITH_PREFIX_SQL = f"""
    SELECT coalesce(CAST(sum(events) AS BIGINT), 0) FROM {TABLE}
    WHERE pipeline = ? AND to_status = '{FAILED}' AND substr(error_message, 1, length(?)) = ?"""

Execute = Callable[[str, Sequence[Any]], None]
_GROUP = ("from_status", "to_status", "error_message", "error_category")
_VALUE = "(CAST(? AS VARCHAR), CAST(? AS VARCHAR), CAST(? AS VARCHAR), CAST(? AS VARCHAR), CAST(? AS BIGINT), CAST(? AS INTEGER))"
_NEW = "v(from_status, to_status, error_message, error_category, events, max_attempt)"
_SAME_GROUP = (
    "t.pipeline = ? AND t.scope = ? AND t.from_status = v.from_status AND t.to_status = v.to_status "
    "AND t.error_message IS NOT DISTINCT FROM v.error_message AND t.error_category IS NOT DISTINCT FROM v.error_category"
)
_INSERT_SQL = f"INSERT INTO {TABLE} ({_COLUMNS}) SELECT CAST(? AS VARCHAR), CAST(? AS VARCHAR), v.* FROM (VALUES {{values}}) AS {_NEW}"
_MERGE_SQL = (
    f"UPDATE {TABLE} AS t SET events = t.events + v.events, max_attempt = greatest(t.max_attempt, v.max_attempt) "
    f"FROM (VALUES {{values}}) AS {_NEW} WHERE {_SAME_GROUP}"
)
_INSERT_NEW_SQL = f"{_INSERT_SQL} WHERE NOT EXISTS (SELECT 1 FROM {TABLE} AS t WHERE {_SAME_GROUP})"


def _one(values: list[Any]) -> bool:
    """Whether a column holds one value (a batch's column usually holds one object, found by identity)."""
    return not values or values.count(values[0]) == len(values)


def counted(events: Sequence[Event]) -> bool:
    """Whether ``events`` hold a restart or a failure (cheap: C loops over a batch's columns)."""
    columns = event_columns(events, ("kind", "to_status", "from_status"))
    statuses, olds = columns["to_status"], columns["from_status"]
    if _one(statuses) and _one(olds):  # a single mark, or a uniform batch
        status = statuses[0] if statuses else None
        return columns["kind"][0] == TRANSITION and (status == FAILED or (status == IN_PROGRESS and olds[0] != PENDING))
    return any(_counts(kind, status, old) for kind, status, old in zip(columns["kind"], statuses, olds))


def _counts(kind: str, status: str, old: str) -> bool:
    return kind == TRANSITION and (status == FAILED or (status == IN_PROGRESS and old != PENDING))


def write(events: Sequence[Event], execute: Execute, *, merge: bool = False) -> None:
    """Add the tallies of ``events`` (one pipeline and scope) in the caller's transaction (``?`` placeholders).

    With ``merge`` (a store whose writes one process makes, DuckDB) each group's one row is
    updated, or inserted when the pipeline has none: the table keeps one row per group
    whatever the writes. Without it (PostgreSQL, several writers) rows are only inserted.
    """
    if not events or not counted(events):
        return
    pipeline, scope = events[0]["pipeline"], events[0]["scope"]
    groups = _groups(event_columns(events, ("kind", *_GROUP, "attempt")))
    values = ", ".join(_VALUE for _ in groups)
    params = [value for group, (n, attempt) in groups.items() for value in (*group, n, attempt)]
    if merge:
        execute(_MERGE_SQL.format(values=values), [*params, pipeline, scope])
        execute(_INSERT_NEW_SQL.format(values=values), [pipeline, scope, *params, pipeline, scope])
    else:
        execute(_INSERT_SQL.format(values=values), [pipeline, scope, *params])


def _groups(columns: dict[str, Any]) -> dict[tuple[Any, ...], tuple[int, int | None]]:
    """Per group of counted events: (events, highest attempt of the starts, None for failures).

    A start's attempt is always known (the fold adds one to the row's); a column a plan left
    :data:`STORED` is one that no counted event sets. A uniform batch is one group, found by
    C loops; others are walked event by event.
    """
    kinds, tries = columns["kind"], columns["attempt"]
    group_columns = [columns[name] if isinstance(columns[name], list) else [None] * len(kinds) for name in _GROUP]
    if all(_one(values) for values in (kinds, *group_columns)):
        group = tuple(values[0] for values in group_columns)
        return {group: (len(kinds), max(tries) if group[1] == IN_PROGRESS else None)}
    counts: Counter[tuple[Any, ...]] = Counter()
    attempts: dict[tuple[Any, ...], int] = {}
    for index, (kind, *group) in enumerate(zip(kinds, *group_columns)):
        if not _counts(kind, group[1], group[0]):
            continue
        key = tuple(group)
        counts[key] += 1
        if group[1] == IN_PROGRESS:
            attempts[key] = max(attempts.get(key, 0), tries[index])
    return {key: (n, attempts.get(key)) for key, n in counts.items()}
