"""Bringing object storage and checkpoints back in line with SQLMesh state after a crash.

Runs at the start of every plan/run (before any evaluation, see ``commands.py``), in
``@osaa_before_all()`` and from the recovery CLI (:func:`reconcile`). It finishes what a dead
process left:

- transactions: an open one is rolled back, a committing one rolled forward;
- checkpoints: a MODEL or PIPELINE item still in progress for a dead run ends *failed*
  (interrupted), so it is listed and retried rather than mistaken for live work; the MODEL
  completions a dead run had buffered and not written are rebuilt from SQLMesh's interval
  records (``lost_completions.py``);
- staged outputs: one without a manifest (its evaluation died while staging) is deleted; a
  sealed one without an audit marker is decided from SQLMesh's interval records
  (``audit_evidence.py``): marked audited, or deleted when SQLMesh never recorded it; the
  outputs of a physical table state no longer knows (janitored) are deleted; an audited one
  whose interval a later audited evaluation of the same table covers is deleted as
  superseded. The latest audited one of each table is kept: a later virtual promotion
  publishes it without re-evaluating the model.

Deciding before any evaluation of the command starts is what makes the evidence exact: no
later evaluation of the same table can have written an interval row yet.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmesh.core.snapshot import SnapshotId
from sqlmesh.core.state_sync import StateSync

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus
from sqlmesh_osaa.integration import audit_evidence, runtime, state
from sqlmesh_osaa.integration.publication import Publication, catch_up, publish_environment, remove_gone
from sqlmesh_osaa.integration.export_kind import NAME as EXPORT
from sqlmesh_osaa.integration.runtime import Runtime
from sqlmesh_osaa.integration.staged_outputs import (
    EVALUATION_DEPTH,
    EvaluationDir,
    StagedOutput,
    discard,
    evaluation_dirs,
    exports_root,
    latest_first,
    mark_audited,
    read_manifest,
)
from sqlmesh_osaa.integration.lost_completions import rebuild_completions
from sqlmesh_osaa.integration.table_restore import restore_safely
from sqlmesh_osaa.transaction_manager import RecoveryReport, recover_transactions

_log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the process running it ended before it finished (killed or crashed)"
NOT_RECORDED = "SQLMesh did not record its interval (audit failed or evaluation unfinished)"


@dataclass
class ReconcileReport:
    """What reconciliation found and did."""

    transactions: RecoveryReport = field(default_factory=RecoveryReport)
    interrupted: list[str] = field(default_factory=list)
    # MODEL completions a killed run had not written, rebuilt from SQLMesh's interval records.
    rebuilt: list[str] = field(default_factory=list)
    discarded: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    published: list[Publication] = field(default_factory=list)

    @property
    def anything_done(self) -> bool:
        return bool(
            self.transactions.anything_done
            or self.interrupted
            or self.rebuilt
            or self.discarded
            or any(p.written or p.deleted for p in self.published)
        )

    @property
    def ok(self) -> bool:
        return not self.transactions.failed


def reconcile_leftovers(rt: Runtime, state_sync: StateSync, engine_adapter: Any = None) -> ReconcileReport:
    """Recover transactions, close interrupted checkpoints, discard staged outputs state does not vouch for.

    With ``engine_adapter``, an export table a dead evaluation overwrote is put back to its
    last audited content (``table_restore.py``).
    """
    report = ReconcileReport()
    report.transactions = recover_transactions(
        rt.checkpoint, rt.store, error_handler=rt.error_handler, staging_prefix=rt.settings.storage.staging_prefix
    )
    report.interrupted, dead_since = _close_interrupted(rt)
    if dead_since is not None:
        report.rebuilt = rebuild_completions(rt, state_sync, dead_since)
    unrecorded = _discard_unvouched(rt, state_sync, report)
    if engine_adapter is not None:
        _restore_tables(rt, state_sync, engine_adapter, unrecorded)
    if report.anything_done:
        _log.warning(
            "Reconciled leftovers: %d transaction(s) recovered, %d interrupted item(s) closed, "
            "%d MODEL completion(s) rebuilt, %d staged output(s) discarded",
            len(report.transactions.rolled_back) + len(report.transactions.rolled_forward),
            len(report.interrupted),
            len(report.rebuilt),
            len(report.discarded),
        )
    return report


def close_interrupted(rt: Runtime) -> list[str]:
    """MODEL and PIPELINE items left in progress by a dead run end failed."""
    return _close_interrupted(rt)[0]


def _close_interrupted(rt: Runtime) -> tuple[list[str], datetime | None]:
    """:func:`close_interrupted`, and when the earliest dead PIPELINE run started (its lost MODEL rows are rebuilt)."""
    closed = []
    starts = []
    for scope in (CheckpointScope.MODEL, CheckpointScope.PIPELINE):
        for row in rt.checkpoint.list(scope=scope, status=CheckpointStatus.IN_PROGRESS):
            if row["interrupted"]:
                rt.checkpoint.mark_failed(scope, row["key"], INTERRUPTED, metadata={"phase": "interrupted"})
                closed.append(row["key"])
                if scope == CheckpointScope.PIPELINE and row["started_at"] is not None:
                    starts.append(row["started_at"])
    return closed, min(starts, default=None)


def _discard_unvouched(rt: Runtime, state_sync: StateSync, report: ReconcileReport) -> list[StagedOutput]:
    """Sort every staged output; returns the sealed ones SQLMesh never recorded (now discarded)."""
    tables: dict[str, list[EvaluationDir]] = defaultdict(list)
    for directory in evaluation_dirs(rt.store, exports_root(rt.settings.storage.staging_prefix), EVALUATION_DEPTH):
        if directory.sealed:
            tables[directory.table_prefix].append(directory)
        else:
            _discard(rt, report, directory.prefix, "never sealed: its evaluation died while staging")
    outputs: dict[str, dict[str, StagedOutput]] = {}
    for table, dirs in tables.items():
        # Every output of a table shares its name and version: one manifest per table is enough,
        # plus the manifest of each output still waiting for its audit verdict.
        wanted = [d for d in dirs if not d.audited] + [d for d in dirs if d.audited][:1]
        outputs[table] = {
            d.prefix: output for d in wanted if (output := read_manifest(rt.store, d.prefix, rt.error_handler))
        }
    names = {output.snapshot_name for found in outputs.values() for output in found.values()}
    rows = audit_evidence.interval_rows(state_sync, names)
    unrecorded: list[StagedOutput] = []
    for table, dirs in tables.items():
        unrecorded.extend(_sort_table(rt, report, dirs, outputs[table], rows))
    return unrecorded


def _restore_tables(rt: Runtime, state_sync: StateSync, adapter: Any, unrecorded: list[StagedOutput]) -> None:
    tables = {(o.snapshot_name, o.identifier, o.deployable): o for o in unrecorded if o.materialization == EXPORT}
    if not tables:
        return
    snapshots = state_sync.get_snapshots({SnapshotId(name=name, identifier=identifier) for name, identifier, _ in tables})
    for name, identifier, deployable in sorted(tables):
        snapshot = snapshots.get(SnapshotId(name=name, identifier=identifier))
        if snapshot is not None:
            restore_safely(rt, state_sync, adapter, snapshot, deployable)


def _sort_table(
    rt: Runtime,
    report: ReconcileReport,
    dirs: list[EvaluationDir],
    outputs: dict[str, StagedOutput],
    rows: list[audit_evidence.IntervalRow],
) -> list[StagedOutput]:
    audited = []
    unrecorded = []
    for directory in latest_first(dirs):
        output = outputs.get(directory.prefix)
        if directory.audited:
            audited.append(directory)
        elif output is not None and audit_evidence.recorded_by_sqlmesh(output, rows, dirs):
            mark_audited(rt.store, directory.prefix, "interval row in SQLMesh state", rt.error_handler)
            audited.append(directory)
        else:
            _discard(rt, report, directory.prefix, NOT_RECORDED)
            if output is not None:
                unrecorded.append(output)
    sample = next((outputs[d.prefix] for d in dirs if d.prefix in outputs), None)
    if audited and (sample is None or not audit_evidence.table_in_state(sample, rows)):
        for directory in audited:
            _discard(rt, report, directory.prefix, "its physical table is no longer in SQLMesh state")
        return unrecorded
    kept: list[EvaluationDir] = []
    for directory in audited:
        if any(state.covered((directory.start, directory.end), [(k.start, k.end)]) for k in kept):
            _discard(rt, report, directory.prefix, "superseded by a later audited evaluation of the same table")
        else:
            kept.append(directory)
            report.kept.append(directory.prefix)
    return unrecorded


def _discard(rt: Runtime, report: ReconcileReport, prefix: str, reason: str) -> None:
    discard(rt.store, prefix, rt.error_handler)
    report.discarded[prefix] = reason


def reconcile(
    project_dir: str | Path = ".",
    *,
    environments: list[str] | None = None,
    publish: bool = True,
    gateway: str | None = None,
) -> ReconcileReport:
    """Reconcile a SQLMesh project's object storage with its state, outside ``sqlmesh plan``/``run``.

    Opens the project's state through SQLMesh (``state_schema``/``state_connection`` apply)
    without parsing its models. ``environments`` defaults to every environment in state, and
    then what environments gone from state published is removed too.
    """
    from sqlmesh import Context

    context = Context(paths=str(project_dir), load=False, gateway=gateway)
    rt = runtime.activate(
        variables=context.config.variables, project_dir=context.path, pipeline_name=context.config.project or None
    )
    state_sync = context.state_sync
    report = reconcile_leftovers(rt, state_sync, context.engine_adapter)
    if not publish:
        return report
    if environments:
        for name in environments:
            snapshots = state.environment_snapshots(state_sync, name)
            if snapshots is None:
                publication = remove_gone(rt, state_sync, name)
            else:
                publication = publish_environment(rt, state_sync, name, snapshots)
            if publication is not None:
                report.published.append(publication)
    else:
        report.published.extend(catch_up(rt, state_sync))
    return report
