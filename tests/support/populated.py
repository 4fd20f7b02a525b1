"""A checkpoint database with something of everything monitoring reports, made through the public API.

Pipeline ``ingest``: a file that completed at once, one that failed and was retried to
completion (a recovery), one still failing after two attempts, and one refused by an open
circuit; the ``object-storage`` circuit breaker opened once and closed again. Pipeline
``sqlmesh``: a failed plan of prod, then a completed one that published two objects (one
written, one already current).
"""

from __future__ import annotations

from pathlib import Path

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.error_handler import CircuitBreaker, record_breaker_transitions
from sqlmesh_osaa.exceptions import ErrorCategory

FILE, PIPELINE = CheckpointScope.FILE, CheckpointScope.PIPELINE
EXPORTS = {
    "prod/indicators/indicators.parquet": {"bytes": 1547, "md5": "55f0c37c", "written": True, "evaluation": "osaa.indicators_export/3/1-2"},
    "prod/landing/wdi/WDI.parquet": {"bytes": 1786, "md5": "6101a032", "written": False, "evaluation": "osaa_raw.wdi/9/1-2"},
}


def _trip_and_close(checkpoint: PipelineCheckpoint) -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, timeout_seconds=5, name="object-storage", clock=lambda: now[0])
    record_breaker_transitions(breaker, checkpoint)

    def fail() -> None:
        raise ConnectionError("endpoint unreachable")

    try:
        breaker.call(fail)
    except ConnectionError:
        pass
    now[0] = 10.0
    breaker.call(lambda: None)


def populate(db_path: Path) -> None:
    with PipelineCheckpoint("ingest", db_path) as ingest:
        ingest.mark_started(FILE, "prod/landing/wdi/a.parquet")
        ingest.mark_completed(FILE, "prod/landing/wdi/a.parquet")
        ingest.mark_started(FILE, "prod/landing/wdi/b.parquet")
        ingest.mark_failed(FILE, "prod/landing/wdi/b.parquet", "Connection reset", category=ErrorCategory.TRANSIENT)
        ingest.mark_started(FILE, "prod/landing/wdi/b.parquet")
        ingest.mark_completed(FILE, "prod/landing/wdi/b.parquet")
        for _ in range(2):
            ingest.mark_started(FILE, "prod/landing/sdg/bad[v2].parquet")
            ingest.mark_failed(FILE, "prod/landing/sdg/bad[v2].parquet", "Malformed CSV", category=ErrorCategory.PERMANENT)
        ingest.mark_started(FILE, "prod/landing/opri/c.parquet")
        ingest.mark_failed(FILE, "prod/landing/opri/c.parquet", "Circuit breaker is open", category=ErrorCategory.TRANSIENT)
        _trip_and_close(ingest)
    with PipelineCheckpoint("sqlmesh", db_path) as sqlmesh:
        failed = "plan|prod|2026-01-01T00:00:00.000000Z"
        sqlmesh.mark_started(PIPELINE, failed, metadata={"environment": "prod", "command": "plan"})
        sqlmesh.mark_failed(PIPELINE, failed, "osaa.indicators: blocking audit 'not_null' failed: 1 row(s)", category=ErrorCategory.DATA)
        done = "plan|prod|2026-01-01T01:00:00.000000Z"
        sqlmesh.mark_started(PIPELINE, done, metadata={"environment": "prod", "command": "plan"})
        sqlmesh.mark_completed(PIPELINE, done, metadata={"exports": EXPORTS, "duration_seconds": 1.5, "outcome": "completed"})
