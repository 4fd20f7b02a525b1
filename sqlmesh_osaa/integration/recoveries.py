"""Failures that a later success superseded are recovered, not open.

A ``sqlmesh plan``/``run`` of an environment that ends with every evaluation passed and the
environment published leaves it healthy. So when one completes, this module completes
(``resolved_by`` names the run, ``phase: resolved``) the failed items that success made
moot:

- the environment's failed PIPELINE items recorded before it (a failed plan, fixed and
  planned again, is history, not a broken environment);
- failed MODEL items of the same environment whose model has since completed an interval
  that ends no earlier than the failed one (the model's data is good again, whatever
  snapshot or interval the fix ran under).

The checkpoint's event log then measures each failure's time to recovery, and ``osaa-recover
list-failed`` / ``stats`` exit 1 only for what is still broken. A MODEL failure of another
environment, or of a model that has not succeeded since, stays open.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Mapping

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus, PipelineCheckpoint

_log = logging.getLogger(__name__)

RESOLVED_PHASE = "resolved"


def _environment(row: Mapping[str, Any]) -> str | None:
    return (row.get("metadata") or {}).get("environment")


def _interval_end(row: Mapping[str, Any]) -> str:
    return (row.get("metadata") or {}).get("interval_end") or row["key"].rsplit("|", 1)[-1]


def _model(row: Mapping[str, Any]) -> str:
    return (row.get("metadata") or {}).get("model") or row["key"].split("|", 1)[0]


def _newest_success(completed: list[dict[str, Any]], environment: str) -> dict[str, tuple[str, datetime]]:
    """Per model of ``environment``: the latest interval end it completed, and when."""
    newest: dict[str, tuple[str, datetime]] = {}
    for row in completed:
        if _environment(row) != environment or (row.get("metadata") or {}).get("phase") == RESOLVED_PHASE:
            continue
        model, end = _model(row), _interval_end(row)
        if model not in newest or end > newest[model][0]:
            newest[model] = (end, row["completed_at"] or row["updated_at"])
    return newest


def _covers(success: tuple[str, datetime], failed: Mapping[str, Any]) -> bool:
    end, at = success
    return end >= _interval_end(failed) and at >= failed["updated_at"]


def superseded(checkpoint: PipelineCheckpoint, environment: str, succeeded_key: str) -> list[dict[str, Any]]:
    """The failed PIPELINE and MODEL items of ``environment`` that ``succeeded_key``'s success supersedes."""
    succeeded = checkpoint.get(CheckpointScope.PIPELINE, succeeded_key)
    if succeeded is None or succeeded["status"] != CheckpointStatus.COMPLETED.value:
        return []
    found = [
        row
        for row in checkpoint.list(scope=CheckpointScope.PIPELINE, status=CheckpointStatus.FAILED)
        if _environment(row) == environment and row["updated_at"] <= succeeded["updated_at"]
    ]
    failed_models = checkpoint.list(scope=CheckpointScope.MODEL, status=CheckpointStatus.FAILED)
    if failed_models:
        newest = _newest_success(checkpoint.list(scope=CheckpointScope.MODEL, status=CheckpointStatus.COMPLETED), environment)
        for row in failed_models:
            success = newest.get(_model(row))
            if _environment(row) == environment and success and _covers(success, row):
                found.append(row)
    return found


def resolve_superseded(checkpoint: PipelineCheckpoint, environment: str, succeeded_key: str) -> int:
    """Complete the failures ``succeeded_key`` superseded; returns how many. Never raises."""
    try:
        rows = superseded(checkpoint, environment, succeeded_key)
        for row in rows:
            checkpoint.mark_started(row["scope"], row["key"], metadata={"resolved_by": succeeded_key})
            checkpoint.mark_completed(row["scope"], row["key"], metadata={"phase": RESOLVED_PHASE})
    except Exception:
        _log.exception("sqlmesh-osaa could not mark the failures superseded by %s as recovered", succeeded_key)
        return 0
    if rows:
        _log.info("%d failure(s) of %s recovered by %s", len(rows), environment, succeeded_key)
    return len(rows)
