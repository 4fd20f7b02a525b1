"""Statistics of a pipeline, in SQL both backends run, from what the writes keep beside the log.

Counts by status come from the rows; restarts and errors from the tallies
(:mod:`~sqlmesh_osaa.checkpoint.tallies`), time to recovery from the failure episodes
(:mod:`~sqlmesh_osaa.checkpoint.episodes`): none reads the event log, whose length grows with
every item's history (docs/performance.md, "Store growth").
"""

from __future__ import annotations

from typing import Any

from sqlmesh_osaa.checkpoint import episodes, tallies
from sqlmesh_osaa.checkpoint.states import FAILED, IN_PROGRESS, CheckpointStatus
from sqlmesh_osaa.checkpoint.store import CheckpointStore

_BY_SCOPE_SQL = "SELECT scope, status, count(*) FROM checkpoints WHERE pipeline = ? GROUP BY scope, status ORDER BY 1, 2"
_RUNNING_SQL = f"SELECT run_id, count(*) FROM checkpoints WHERE pipeline = ? AND status = '{IN_PROGRESS}' GROUP BY run_id"
# Episodes are kept as the events are written (checkpoint/episodes.py): this reads one row per
# episode, whatever the length of the items' histories (docs/performance.md, "Store growth").
_RECOVERY_SQL = f"""
    SELECT count(seconds), count(*) - count(seconds), CAST(avg(seconds) AS DOUBLE PRECISION),
           CAST(percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS DOUBLE PRECISION), max(seconds)
    FROM (SELECT {episodes.RECOVERY_SECONDS} AS seconds FROM {episodes.TABLE} WHERE pipeline = ?) AS recoveries
"""


def statistics(store: CheckpointStore, pipeline: str) -> dict[str, Any]:
    """Counts by status and scope, failure rate, interrupted items, retries, time to recovery, top errors."""
    by_status = {status.value: {"count": 0} for status in CheckpointStatus}
    by_scope: dict[str, dict[str, int]] = {}
    for scope, status, count in store.read(_BY_SCOPE_SQL, [pipeline]):
        by_status[status]["count"] += count
        by_scope.setdefault(scope, {})[status] = count
    total = sum(entry["count"] for entry in by_status.values())
    return {
        "pipeline": pipeline,
        "by_status": by_status,
        "by_scope": by_scope,
        "total": total,
        "interrupted": _interrupted(store, pipeline),
        "failure_rate": 100.0 * by_status[FAILED]["count"] / total if total else 0.0,
        "retries": _retries(store, pipeline),
        "time_to_recovery": _time_to_recovery(store, pipeline),
        "most_common_errors": _most_common_errors(store, pipeline),
    }


def _interrupted(store: CheckpointStore, pipeline: str) -> int:
    """In-progress rows of dead runs, counted again once their runs are known dead.

    A run may complete its items and close between the first count and the lease check:
    only rows still in progress after the check are interrupted.
    """
    running = dict(store.read(_RUNNING_SQL, [pipeline]))
    dead = sorted(set(running) - store.live_runs(set(running))) if running else []
    if not dead:
        return 0
    marks = ", ".join("?" * len(dead))
    sql = f"SELECT count(*) FROM checkpoints WHERE pipeline = ? AND status = '{IN_PROGRESS}' AND run_id IN ({marks})"
    return store.read(sql, [pipeline, *dead])[0][0]


def _retries(store: CheckpointStore, pipeline: str) -> dict[str, int]:
    """Restarts by cause: after a failure, after an interruption, and re-runs of completed items."""
    (after_failure, after_interruption, reruns, max_attempt) = store.read(tallies.RETRIES_SQL, [pipeline, pipeline])[0]
    return {
        "total": after_failure + after_interruption + reruns,
        "after_failure": after_failure,
        "after_interruption": after_interruption,
        "reruns": reruns,
        "max_attempt": max_attempt,
    }


def _time_to_recovery(store: CheckpointStore, pipeline: str) -> dict[str, Any]:
    """Seconds from an item's first failure to its next completion, over every episode (cleared ones: unrecovered)."""
    (recovered, unrecovered, mean, median, longest) = store.read(_RECOVERY_SQL, [pipeline])[0]
    return {
        "recovered": recovered,
        "unrecovered": unrecovered,
        "mean_seconds": mean,
        "median_seconds": median,
        "max_seconds": longest,
    }


def _most_common_errors(store: CheckpointStore, pipeline: str, limit: int = 10) -> list[dict[str, Any]]:
    rows = store.read(tallies.ERRORS_SQL, [pipeline, limit])
    return [{"error_message": m, "error_category": c, "count": n} for m, c, n in rows]
