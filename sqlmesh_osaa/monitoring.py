"""The monitoring figures of a checkpoint database, per pipeline: what ``stats``, metrics and the report show.

One function computes them so that ``osaa-recover stats --json``, the OpenMetrics output and
the node-exporter textfile cannot disagree. Everything comes from the checkpoint's public
reads (statistics, rows, item histories in one query); nothing here knows SQLMesh, only the metadata the
SQLMesh integration records on its PIPELINE items (``environment``, ``exports``).

- Circuit-breaker openings are the failures of the breaker's OPERATION item
  (``circuit-breaker/<name>``, kept by ``error_handler.record_breaker_transitions``); the
  time it stayed open is from each opening to the next close. Rejections are failures whose
  error was a call refused by an open (or half-open) circuit.
- Last success of a pipeline: its newest completed PIPELINE item (a plan/run), or, for a
  pipeline without any (``ingest``), its newest completed item.
- Exports: every object a completed plan/run published or found already current, with the
  run's time; bytes and objects published count only what was written.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus, PipelineCheckpoint, item_history
from sqlmesh_osaa.checkpoint.states import BREAKER_KEY_PREFIX

FAILED = CheckpointStatus.FAILED.value
COMPLETED = CheckpointStatus.COMPLETED.value
# An item still failed after this many attempts counts as consistently failing.
CONSISTENT_FAILURE_ATTEMPTS = 2
# Errors of calls an open or half-open circuit refused start with this (CircuitBreaker._refusal).
REJECTION_PREFIX = "Circuit breaker is"


def _breakers(checkpoint: PipelineCheckpoint) -> dict[str, dict[str, Any]]:
    """Per breaker: openings, seconds spent open (closed spells), and whether it is open now (one query for all)."""
    rows = checkpoint.list(scope=CheckpointScope.OPERATION, key_prefix=BREAKER_KEY_PREFIX)
    histories = item_history.events_of(checkpoint.store, [(row["pipeline"], row["scope"], row["key"]) for row in rows])
    breakers = {}
    for row in rows:
        openings, open_seconds, opened_at = 0, 0.0, None
        for event in histories[(row["pipeline"], row["scope"], row["key"])]:
            if event["to_status"] == FAILED:
                openings += 1
                opened_at = event["at"]
            elif event["to_status"] == COMPLETED and opened_at is not None:
                open_seconds += (event["at"] - opened_at).total_seconds()
                opened_at = None
        name = row["key"][len(BREAKER_KEY_PREFIX) :]
        breakers[name] = {"openings": openings, "open_seconds": round(open_seconds, 3), "open": row["status"] == FAILED}
    return breakers


def _last_success(checkpoint: PipelineCheckpoint, runs: list[dict[str, Any]]) -> datetime | None:
    completed = [row["completed_at"] for row in runs if row["status"] == COMPLETED and row["completed_at"]]
    if completed:
        return max(completed)
    return item_history.newest_completion(checkpoint.store, checkpoint.pipeline_name)


def _exports(runs: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
    """Per published key, its newest publication; per environment, objects and bytes written."""
    exports: dict[str, dict[str, Any]] = {}
    published: dict[str, dict[str, int]] = {}
    for run in sorted(runs, key=lambda row: row["updated_at"]):
        metadata = run.get("metadata") or {}
        if run["status"] != COMPLETED or not isinstance(metadata.get("exports"), Mapping):
            continue
        environment = str(metadata.get("environment") or "")
        totals = published.setdefault(environment, {"objects": 0, "bytes": 0})
        for key, export in metadata["exports"].items():
            if export.get("written"):
                totals["objects"] += 1
                totals["bytes"] += int(export.get("bytes") or 0)
            exports[key] = {
                "environment": environment,
                "last_success_at": run["completed_at"],
                "bytes": export.get("bytes"),
                "md5": export.get("md5"),
                "evaluation": export.get("evaluation"),
                "run": run["key"],
            }
    return exports, published


def _consistently_failing(checkpoint: PipelineCheckpoint) -> list[dict[str, Any]]:
    return item_history.failed_at_least(checkpoint.store, checkpoint.pipeline_name, CONSISTENT_FAILURE_ATTEMPTS)


def pipeline_stats(checkpoint: PipelineCheckpoint) -> dict[str, Any]:
    """The figures of one pipeline (shape: ``PIPELINE_STATS`` in ``cli/shapes.py``)."""
    stats = checkpoint.get_statistics()
    total = stats["total"]
    retries = dict(stats["retries"])
    retries["per_item"] = retries["total"] / total if total else 0.0
    breakers = _breakers(checkpoint)
    runs = checkpoint.list(scope=CheckpointScope.PIPELINE)
    exports, published = _exports(runs)
    return {
        "total": total,
        "by_status": {status: entry["count"] for status, entry in stats["by_status"].items()},
        "by_scope": stats["by_scope"],
        "interrupted": stats["interrupted"],
        "failure_rate_percent": round(stats["failure_rate"], 2),
        "retries": retries,
        "time_to_recovery": dict(stats["time_to_recovery"]),
        "most_common_errors": [dict(error) for error in stats["most_common_errors"]],
        "circuit_breaker_openings": sum(b["openings"] for b in breakers.values()),
        "circuit_breaker_rejections": checkpoint.count_failures(REJECTION_PREFIX),
        "circuit_breakers": breakers,
        "consistently_failing": _consistently_failing(checkpoint),
        "last_success_at": _last_success(checkpoint, runs),
        "exports": exports,
        "published": published,
    }


def database_stats(checkpoints: Iterable[PipelineCheckpoint]) -> dict[str, Any]:
    """Every pipeline's figures and the totals over them."""
    per_pipeline = {checkpoint.pipeline_name: pipeline_stats(checkpoint) for checkpoint in checkpoints}
    items = sum(entry["total"] for entry in per_pipeline.values())
    failed = sum(entry["by_status"].get(FAILED, 0) for entry in per_pipeline.values())
    interrupted = sum(entry["interrupted"] for entry in per_pipeline.values())
    totals = {
        "items": items,
        "failed": failed,
        "interrupted": interrupted,
        "failure_rate_percent": round(100.0 * failed / items, 2) if items else 0.0,
    }
    return {"pipelines": per_pipeline, "totals": totals, "generated_at": datetime.now(timezone.utc)}
