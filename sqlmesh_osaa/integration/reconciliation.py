"""Bringing object storage and checkpoints back in line with SQLMesh state after a crash.

Runs at the start of every plan/run (``@osaa_before_all()``) and from the recovery CLI
(:func:`reconcile`). It finishes what a dead process left:

- transactions: an open one is rolled back, a committing one rolled forward;
- checkpoints: a MODEL or PIPELINE item still in progress for a dead run ends *failed*
  (interrupted), so it is listed and retried rather than mistaken for live work;
- staged outputs: one without a manifest (the evaluation died while staging), one whose
  interval state does not record (its audits failed or it never finished), one whose
  snapshot is gone from state, and one superseded by a newer recorded interval of the same
  table are deleted. The newest recorded one of each table is kept: a later virtual
  promotion publishes it without re-evaluating the model.

With :func:`reconcile`, every environment is then published again (P3).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlmesh.core.snapshot import SnapshotId
from sqlmesh.core.state_sync import StateSync

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus
from sqlmesh_osaa.integration import runtime, state
from sqlmesh_osaa.integration.publication import Publication, publish_environment
from sqlmesh_osaa.integration.runtime import Runtime
from sqlmesh_osaa.integration.staged_outputs import (
    StagedOutput,
    discard,
    exports_root,
    output_prefixes,
    read_manifest,
)
from sqlmesh_osaa.transaction_manager import RecoveryReport, recover_transactions

_log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the process running it ended before it finished (killed or crashed)"
NOT_RECORDED = "SQLMesh did not record its interval (audit failed or evaluation unfinished)"


@dataclass
class ReconcileReport:
    """What reconciliation found and did."""

    transactions: RecoveryReport = field(default_factory=RecoveryReport)
    interrupted: list[str] = field(default_factory=list)
    discarded: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    published: list[Publication] = field(default_factory=list)

    @property
    def anything_done(self) -> bool:
        return bool(
            self.transactions.anything_done
            or self.interrupted
            or self.discarded
            or any(p.written or p.deleted for p in self.published)
        )

    @property
    def ok(self) -> bool:
        return not self.transactions.failed


def reconcile_leftovers(rt: Runtime, state_sync: StateSync) -> ReconcileReport:
    """Recover transactions, close interrupted checkpoints, discard staged outputs state does not vouch for."""
    report = ReconcileReport()
    report.transactions = recover_transactions(
        rt.checkpoint, rt.store, error_handler=rt.error_handler, staging_prefix=rt.settings.storage.staging_prefix
    )
    report.interrupted = close_interrupted(rt)
    _discard_unvouched(rt, state_sync, report)
    if report.anything_done:
        _log.warning(
            "Reconciled leftovers: %d transaction(s) recovered, %d interrupted item(s) closed, "
            "%d staged output(s) discarded",
            len(report.transactions.rolled_back) + len(report.transactions.rolled_forward),
            len(report.interrupted),
            len(report.discarded),
        )
    return report


def close_interrupted(rt: Runtime) -> list[str]:
    """MODEL and PIPELINE items left in progress by a dead run end failed."""
    closed = []
    for scope in (CheckpointScope.MODEL, CheckpointScope.PIPELINE):
        for row in rt.checkpoint.list(scope=scope, status=CheckpointStatus.IN_PROGRESS):
            if row["interrupted"]:
                rt.checkpoint.mark_failed(scope, row["key"], INTERRUPTED, metadata={"phase": "interrupted"})
                closed.append(row["key"])
    return closed


def _discard_unvouched(rt: Runtime, state_sync: StateSync, report: ReconcileReport) -> None:
    sealed: list[StagedOutput] = []
    for prefix, is_sealed in output_prefixes(rt.store, exports_root(rt.settings.storage.staging_prefix), depth=3):
        output = read_manifest(rt.store, prefix, rt.error_handler) if is_sealed else None
        if output is None:
            _discard(rt, report, prefix, "never sealed: its evaluation died while staging")
        else:
            sealed.append(output)
    if not sealed:
        return
    snapshots = state_sync.get_snapshots({SnapshotId(name=o.snapshot_name, identifier=o.identifier) for o in sealed})
    newest: dict[str, list[StagedOutput]] = defaultdict(list)
    for output in sealed:
        snapshot = snapshots.get(SnapshotId(name=output.snapshot_name, identifier=output.identifier))
        if snapshot is None:
            _discard(rt, report, output.prefix, "its snapshot is no longer in SQLMesh state")
        elif not state.covered((output.start, output.end), state.recorded(snapshot, output.deployable)):
            _discard(rt, report, output.prefix, NOT_RECORDED)
        else:
            newest[output.prefix.rsplit("/", 2)[0]].append(output)
    for outputs in newest.values():
        outputs.sort(key=lambda o: (o.end, o.start))
        for output in outputs[:-1]:
            _discard(rt, report, output.prefix, "superseded by a newer recorded interval of the same table")
        report.kept.append(outputs[-1].prefix)


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

    Opens the project's state without parsing its models; ``environments`` defaults to every
    environment in state. Each is published again after the leftovers are reconciled.
    """
    from sqlmesh import Context

    context = Context(paths=str(project_dir), load=False, gateway=gateway)
    rt = runtime.activate(
        variables=context.config.variables, project_dir=context.path, pipeline_name=context.config.project or None
    )
    state_sync = context.state_sync
    report = reconcile_leftovers(rt, state_sync)
    if publish:
        names = environments or sorted(env.name for env in state_sync.get_environments())
        for name in names:
            snapshots = state.environment_snapshots(state_sync, name)
            report.published.append(publish_environment(rt, state_sync, name, snapshots))
    return report
