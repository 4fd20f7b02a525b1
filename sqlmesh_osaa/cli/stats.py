"""``stats``: the seed's monitoring figures per pipeline, from the checkpoint event log.

Circuit-breaker openings are the failures of the breaker's OPERATION items
(``circuit-breaker/<name>``, kept by ``error_handler.record_breaker_transitions``); rejections
are failures whose error was a call refused by an open (or half-open) circuit.
"""

from __future__ import annotations

from typing import Any, Iterable

from sqlmesh_osaa.cli.database import CheckpointSession
from sqlmesh_osaa.cli.failures import FAILED

# An item still failed after this many attempts counts as consistently failing.
CONSISTENT_FAILURE_ATTEMPTS = 2


def _pipeline_stats(session: CheckpointSession, name: str, openings: int, rejections: int) -> dict[str, Any]:
    checkpoint = session.checkpoint(name)
    stats = checkpoint.get_statistics()
    total = stats["total"]
    retries = dict(stats["retries"])
    retries["per_item"] = retries["total"] / total if total else 0.0
    consistently_failing = [
        {
            "scope": row["scope"],
            "key": row["key"],
            "file_path": row["file_path"],
            "attempt": row["attempt"],
            "error_message": row["error_message"],
        }
        for row in checkpoint.list(status=FAILED)
        if row["attempt"] >= CONSISTENT_FAILURE_ATTEMPTS
    ]
    return {
        "total": total,
        "by_status": {status: entry["count"] for status, entry in stats["by_status"].items()},
        "by_scope": stats["by_scope"],
        "interrupted": stats["interrupted"],
        "failure_rate_percent": round(stats["failure_rate"], 2),
        "retries": retries,
        "time_to_recovery": dict(stats["time_to_recovery"]),
        "most_common_errors": [dict(error) for error in stats["most_common_errors"]],
        "circuit_breaker_openings": openings,
        "circuit_breaker_rejections": rejections,
        "consistently_failing": consistently_failing,
    }


def stats(session: CheckpointSession, pipelines: Iterable[str]) -> dict[str, Any]:
    openings, rejections = session.breaker_openings(), session.breaker_rejections()
    per_pipeline = {
        name: _pipeline_stats(session, name, openings.get(name, 0), rejections.get(name, 0)) for name in pipelines
    }
    items = sum(entry["total"] for entry in per_pipeline.values())
    failed = sum(entry["by_status"].get(FAILED, 0) for entry in per_pipeline.values())
    interrupted = sum(entry["interrupted"] for entry in per_pipeline.values())
    totals = {
        "items": items,
        "failed": failed,
        "interrupted": interrupted,
        "failure_rate_percent": round(100.0 * failed / items, 2) if items else 0.0,
    }
    return {"pipelines": per_pipeline, "totals": totals}
