"""Reading SQLMesh state: the commit log that publication follows.

Only an interval recorded in state passed its blocking audits, so every publication
decision is taken from state, read fresh: the snapshots SQLMesh hands to ``after_all``
carry the intervals as they were before the run.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from sqlmesh.core.snapshot import DeployabilityIndex, Snapshot
from sqlmesh.core.state_sync import StateSync

from sqlmesh_osaa.integration.export_kind import NAME as EXPORT
from sqlmesh_osaa.integration.ingest_kind import NAME as INGEST

_log = logging.getLogger(__name__)

PUBLISHING_MATERIALIZATIONS = frozenset({EXPORT, INGEST})


def state_sync_for() -> StateSync:
    """The state sync of the SQLMesh command running now (CLI or Python API).

    ``Context.plan``/``Context.run`` hand theirs to the runtime (``commands.py``); under the
    CLI the click context holds the Context too. There is no guessing from the engine
    adapter: state may live in another schema or connection.
    """
    from sqlmesh_osaa.integration.runtime import current, sqlmesh_cli_context_object

    rt = current()
    if rt is not None and rt.state_sync is not None:
        return rt.state_sync
    context = sqlmesh_cli_context_object()
    if context is not None:
        return context.state_sync
    raise RuntimeError(
        "sqlmesh-osaa cannot tell which SQLMesh state this command uses: call Context.plan() or "
        "Context.run() (Context.apply() alone does not go through them), or run `sqlmesh osaa-recover reconcile`"
    )


def claim(model: Any) -> tuple[str, str] | None:
    """What an osaa model publishes that no other model may: its export key or its landing source."""
    materialization = getattr(model.kind, "materialization", None)
    properties = getattr(model.kind, "materialization_properties", None) or {}
    name = {EXPORT: "key", INGEST: "source"}.get(str(materialization))
    if name is None or name not in properties:
        return None
    return (name, str(properties[name]).strip("/"))


def publishes(snapshot: Snapshot) -> bool:
    """Whether the snapshot's model stages objects for publication (an osaa kind)."""
    if not snapshot.is_model:
        return False
    kind = snapshot.model.kind
    return getattr(kind, "materialization", None) in PUBLISHING_MATERIALIZATIONS


def ingests(snapshot: Snapshot) -> bool:
    """Whether the snapshot's model is an ``osaa_file_ingest`` model."""
    return snapshot.is_model and getattr(snapshot.model.kind, "materialization", None) == INGEST


def fresh(state_sync: StateSync, snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    """Copies of ``snapshots`` with the intervals state records now."""
    copies = [snapshot.copy() for snapshot in snapshots]
    return state_sync.refresh_snapshot_intervals(copies) if copies else []


def recorded(snapshot: Snapshot, deployable: bool) -> list[tuple[int, int]]:
    return list(snapshot.intervals if deployable else snapshot.dev_intervals)


def covered(interval: tuple[int, int], intervals: Iterable[tuple[int, int]]) -> bool:
    start, end = interval
    return any(low <= start and end <= high for low, high in intervals)


def fresh_publishing(
    state_sync: StateSync, environment: str, snapshots: Iterable[Snapshot]
) -> tuple[list[Snapshot], DeployabilityIndex]:
    """The environment's publishing snapshots with the intervals state records now, and which tables its views read.

    Prod's views read every deployable table, so only the publishing snapshots are read
    again (two of 300 in a typical project, instead of every one); a dev environment's
    deployability follows every snapshot's intervals (``DeployabilityIndex.create``), so
    there all of them are.
    """
    snapshots = list(snapshots)
    if environment == "prod":
        return fresh(state_sync, [s for s in snapshots if publishes(s)]), DeployabilityIndex.all_deployable()
    refreshed = fresh(state_sync, snapshots)
    index = DeployabilityIndex.create({s.snapshot_id: s for s in refreshed})
    return [s for s in refreshed if publishes(s)], index


def environment_snapshots(state_sync: StateSync, environment: str) -> list[Snapshot] | None:
    """The snapshots an environment points to now, with fresh intervals; None if it does not exist."""
    env = state_sync.get_environment(environment)
    if env is None:
        return None
    return list(state_sync.get_snapshots(env.snapshots).values())
