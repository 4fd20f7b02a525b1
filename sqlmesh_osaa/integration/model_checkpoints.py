"""One MODEL checkpoint per model evaluation, decided after SQLMesh's audits.

SQLMesh runs a model's post-statements before its audits, so a post-statement cannot know
whether the interval will count. ``sqlmesh_patches`` wraps ``Scheduler.evaluate`` (evaluate ->
audit -> record the interval in state), the one call that sees the whole outcome, and calls
:func:`evaluate_recorded`:

- it returns: the interval is recorded in state -> *completed*, with the audit results, and
  the evaluation's staged outputs get their audit marker (``staged_outputs.mark_audited``);
- it raises ``NodeAuditsErrors``: a blocking audit failed, the interval is not recorded
  -> *failed*, naming each failing audit and its row count;
- it raises anything else: the evaluation failed -> *failed* with the error.

In both failure cases this evaluation's own staged outputs are discarded at once (an earlier
evaluation of the same interval keeps its directory). The wrapper
runs in SQLMesh's worker threads (``concurrent_tasks``); the checkpoint is thread safe and
the per-evaluation timing lives in a thread-local, because SQLMesh runs one interval's
pre-statements, insert, post-statements and audits on one thread. The split into evaluation
and audit time comes from the wrapper of ``SnapshotEvaluator.evaluate`` (the first step of
``Scheduler.evaluate``; the audits follow it), so no per-model pre/post statement is needed.

The key is ``<model>|<snapshot fingerprint>|<interval start>|<interval end>``: a re-run of
the same snapshot and interval (retry, restatement) is a new attempt of the same item.
SQLMesh merges missing intervals, so a failed interval is often retried as part of a wider
one: when an evaluation completes, the failed items of the same snapshot whose interval it
covers are completed too (``resolved_by`` names it), so failures listed are the open ones.
When the integration is not active in the process the wrapper only calls through.

**Durability (decision, docs/sqlmesh-integration.md).** A start or a completion costs no
durable commit on the evaluation path: it is buffered (``runtime.Runtime.model_changes``)
and written in one transaction by :func:`make_durable`, which runs before publication
(``@osaa_after_all()``, the catch-up after the command), at the end of the command, at exit,
and whenever a change has waited ``checkpoint.model_flush_seconds`` (60 s). A failure is made durable at
once (rare, and what operators list). A process killed before a flush loses the buffered
starts and completions only: SQLMesh re-evaluates an interval it did not record, and the
next command's reconciliation rebuilds the completion of each interval the dead run recorded
from SQLMesh's interval rows (``reconciliation.rebuild_completions``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlmesh.utils.date import to_timestamp
from sqlmesh.utils.errors import NodeAuditsErrors

from sqlmesh_osaa.checkpoint import COMPLETED, FAILED, IN_PROGRESS, CheckpointScope, ItemChange
from sqlmesh_osaa.exceptions import categorize_error
from sqlmesh_osaa.fault_points import fault_point
from sqlmesh_osaa.integration import runtime
from sqlmesh_osaa.integration.staged_outputs import discard, mark_audited

_log = logging.getLogger(__name__)

# Crash tests kill the process here: SQLMesh recorded the interval, its audit marker is not written yet.
INTERVAL_RECORDED = "osaa_interval_recorded"
# ...and here: a blocking audit failed, the evaluation's staged output is not discarded yet.
EVALUATION_FAILED = "osaa_evaluation_failed"
_current = threading.local()
# Keys of failed MODEL items, loaded once per process, kept current by this module.
_failed_keys: set[str] | None = None
_failed_lock = threading.Lock()


@dataclass
class Evaluation:
    """One interval evaluation of one snapshot; ``sql_*`` are set around SQLMesh's evaluator (the audits follow)."""

    key: str
    model: str
    environment: str | None
    started: float = field(default_factory=time.perf_counter)
    sql_started: float | None = None
    sql_ended: float | None = None
    # Staged-output directories this evaluation wrote (appended by the osaa kinds' insert).
    outputs: list[str] = field(default_factory=list)

    def timings(self) -> dict[str, float]:
        now = time.perf_counter()
        timings = {"duration_seconds": round(now - self.started, 6)}
        if self.sql_started is not None and self.sql_ended is not None:
            timings["evaluation_seconds"] = round(self.sql_ended - self.sql_started, 6)
            timings["audit_seconds"] = round(now - self.sql_ended, 6)
        return timings


def current_evaluation() -> Evaluation | None:
    """The evaluation running on this thread (the evaluator's timing wrapper and the osaa kinds read it)."""
    return getattr(_current, "evaluation", None)


def note_output(prefix: str) -> None:
    """Tell the evaluation running on this thread that it staged ``prefix`` (marked or discarded with it)."""
    evaluation = current_evaluation()
    if evaluation is not None:
        evaluation.outputs.append(prefix)


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def model_name(snapshot: Any) -> str:
    """The name a MODEL key starts with: the model's own name (``osaa.x``), else the snapshot's."""
    return snapshot.model.name if snapshot.is_model else snapshot.name


def model_key(model: str, fingerprint: str, start: int, end: int) -> str:
    return f"{model}|{fingerprint}|{_iso(start)}|{_iso(end)}"


def evaluate_recorded(rt: runtime.Runtime, original: Any, args: Any, kwargs: Any, bound: dict[str, Any]) -> Any:
    """Run SQLMesh's evaluate-audit-record call for one interval and record its outcome."""
    snapshot = bound["snapshot"]
    start, end = to_timestamp(bound["start"]), to_timestamp(bound["end"])
    naming = bound.get("environment_naming_info")
    deployable = bound["deployability_index"].is_deployable(snapshot)
    model = model_name(snapshot)
    evaluation = Evaluation(model_key(model, snapshot.identifier, start, end), model, naming.name if naming else None)
    metadata = {
        "model": model,
        "snapshot": snapshot.name,
        "fingerprint": snapshot.identifier,
        "version": snapshot.version,
        "environment": evaluation.environment,
        "interval_start": _iso(start),
        "interval_end": _iso(end),
        "batch_index": bound.get("batch_index"),
        "deployable": deployable,
    }
    _safely(rt.model_changes.add, ItemChange(evaluation.key, IN_PROGRESS, metadata, force=True))
    _current.evaluation = evaluation
    try:
        results = original(*args, **kwargs)
    except NodeAuditsErrors as error:
        audits = [{"audit": e.audit_name, "rows": e.count} for e in error.errors]
        message = "; ".join(f"blocking audit '{a['audit']}' failed: {a['rows']} row(s)" for a in audits)
        _record_failure(rt, evaluation, message, error, {"failed_audits": audits, "phase": "audit"})
        fault_point(EVALUATION_FAILED)
        _discard_outputs(rt, evaluation)
        _restore_table(rt, bound, snapshot, deployable)
        raise
    except BaseException as error:
        phase = "audit" if evaluation.sql_ended is not None else "evaluation"
        _record_failure(rt, evaluation, f"{type(error).__name__}: {error}", error, {"phase": phase})
        _discard_outputs(rt, evaluation)
        if evaluation.outputs:
            _restore_table(rt, bound, snapshot, deployable)
        raise
    finally:
        _current.evaluation = None
    fault_point(INTERVAL_RECORDED)
    for prefix in evaluation.outputs:
        # SQLMesh recorded the interval: this evaluation's outputs passed their audits.
        _safely(mark_audited, rt.store, prefix, "recorded by Scheduler.evaluate", rt.error_handler)
    audits = [
        {"audit": r.audit.name, "rows": r.count, "blocking": r.blocking} for r in results if getattr(r, "audit", None)
    ]
    # Metadata merges across attempts: clear what a failed attempt of this key left.
    done = {**evaluation.timings(), "audits": audits, "phase": "recorded", "failed_audits": None, "resolved_by": None}
    completion = ItemChange(evaluation.key, COMPLETED, done)
    _safely(rt.model_changes.add, completion, *_resolve_covered_failures(rt, evaluation.key))
    _note_outcome(rt, evaluation, None)
    return results


def _failed(rt: runtime.Runtime) -> set[str]:
    """The failed MODEL keys; call with ``_failed_lock`` held."""
    global _failed_keys
    if _failed_keys is None:
        _failed_keys = {row["key"] for row in rt.checkpoint.list(scope=CheckpointScope.MODEL, status="failed")}
    return _failed_keys


def make_durable(rt: runtime.Runtime) -> None:
    """Write the buffered MODEL checkpoints in one transaction (before publication, at the end of a command)."""
    _safely(rt.model_changes.flush)


def _resolve_covered_failures(rt: runtime.Runtime, key: str) -> list[ItemChange]:
    """The changes completing failed items of the same snapshot whose interval ``key``'s interval covers."""
    model_and_fingerprint, start, end = key.rsplit("|", 2)
    with _failed_lock:
        try:
            failed = _failed(rt)
        except Exception:
            _log.exception("sqlmesh-osaa could not read the failed MODEL checkpoints")
            return []
        failed.discard(key)
        covered = []
        for candidate in list(failed):
            head, low, high = candidate.rsplit("|", 2)
            if head == model_and_fingerprint and start <= low and high <= end:
                covered.append(candidate)
                failed.discard(candidate)
    changes = []
    for candidate in covered:
        changes.append(ItemChange(candidate, IN_PROGRESS, {"resolved_by": key}))
        changes.append(ItemChange(candidate, COMPLETED, {"phase": "resolved"}))
    return changes


def _record_failure(
    rt: runtime.Runtime, evaluation: Evaluation, message: str, error: BaseException, extra: dict[str, Any]
) -> None:
    metadata = {**evaluation.timings(), **extra}
    category = categorize_error(error) if isinstance(error, Exception) else None
    _safely(rt.model_changes.add, ItemChange(evaluation.key, FAILED, metadata, message, category))
    # Failures are what operators list and alerts count: durable at once, with what was buffered before.
    make_durable(rt)
    _safely(_remember_failure, rt, evaluation.key)
    _note_outcome(rt, evaluation, message)


def _remember_failure(rt: runtime.Runtime, key: str) -> None:
    with _failed_lock:
        _failed(rt).add(key)


def _note_outcome(rt: runtime.Runtime, evaluation: Evaluation, failure: str | None) -> None:
    run = rt.pipeline_run
    if run is not None:
        run.note_evaluation(evaluation.model, failure)


def _discard_outputs(rt: runtime.Runtime, evaluation: Evaluation) -> None:
    """An interval SQLMesh did not record must never be published: drop what this evaluation staged."""
    for prefix in evaluation.outputs:
        _safely(discard, rt.store, prefix, rt.error_handler)


def _restore_table(rt: runtime.Runtime, bound: dict[str, Any], snapshot: Any, deployable: bool) -> None:
    """The failed evaluation's rows are in the table (SQLMesh keeps them): put back what state vouches for."""
    from sqlmesh_osaa.integration.table_restore import restore_safely

    scheduler = bound["self"]
    adapter = scheduler.snapshot_evaluator.get_adapter(getattr(snapshot, "model_gateway", None))
    restore_safely(rt, scheduler.state_sync, adapter, snapshot, deployable)


def _safely(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Bookkeeping must not change SQLMesh's outcome; a failure here is logged (reconciliation repairs it)."""
    try:
        return func(*args, **kwargs)
    except Exception:
        _log.exception("sqlmesh-osaa could not record %s", getattr(func, "__name__", func))
        return None
