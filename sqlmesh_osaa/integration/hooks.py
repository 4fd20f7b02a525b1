"""What the two command macros do; ``sqlmesh_osaa.macros`` registers them with SQLMesh.

- ``@osaa_before_all()``: enable the integration for this process, open the command's
  PIPELINE checkpoint, create the ingest kind's landing schema, reconcile what a crashed
  run left behind;
- ``@osaa_after_all()``: publish the environment's audited outputs (a virtual promotion
  included), close the PIPELINE checkpoint.

MODEL checkpoints need no per-model statement: they are written around SQLMesh's
evaluate-audit-record step (``model_checkpoints.py``). Every hook returns None: it adds no
SQL to the statements SQLMesh runs.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlmesh_osaa.fault_points import fault_point
from sqlmesh_osaa.integration import (
    duckdb_connections,
    exports,
    model_checkpoints,
    notifications,
    pipeline_runs,
    runtime,
    state,
)
from sqlmesh_osaa.integration.sqlmesh_patches import environment_snapshots
from sqlmesh_osaa.integration.ingest_kind import create_landing_schema
from sqlmesh_osaa.integration.publication import publish_environment
from sqlmesh_osaa.integration.reconciliation import reconcile_leftovers

_log = logging.getLogger(__name__)

# Crash tests kill the process here: @osaa_after_all() made the MODEL checkpoints durable, publication not begun.
PUBLICATION_STARTED = "osaa_publication_started"


def before_all(evaluator: Any) -> None:
    rt = runtime.activate()
    pipeline_runs.begin(rt, evaluator.this_env)
    duckdb_connections.configure_adapter(evaluator.engine_adapter, rt.settings.storage)
    notifications.watch_breaker(rt, evaluator.this_env)
    if any(state.ingests(snapshot) for snapshot in environment_snapshots(evaluator).values()):
        create_landing_schema(evaluator.engine_adapter)
    if rt.reconciled:
        return
    try:
        reconcile_leftovers(rt, state.state_sync_for(), evaluator.engine_adapter)
        rt.reconciled = True
    except Exception as error:
        # Leftovers never reach an environment (publication reads state), so this run may go on;
        # the next plan/run or `osaa-recover reconcile` tries again.
        _log.exception("sqlmesh-osaa could not reconcile leftovers of an earlier run")
        notifications.recovery_needed(rt, evaluator.this_env, error)


def after_all(evaluator: Any) -> None:
    rt = runtime.require()
    environment = evaluator.this_env
    run = rt.pipeline_run
    model_checkpoints.make_durable(rt)
    fault_point(PUBLICATION_STARTED)
    try:
        publication = publish_environment(
            rt, state.state_sync_for(), environment, environment_snapshots(evaluator).values()
        )
    except Exception as error:
        pipeline_runs.finish_open_run(f"publication to {rt.env_prefix(environment)}/ failed: {error}")
        notifications.publication_failed(rt, environment, error, environment_snapshots(evaluator).values())
        raise
    rt.note_publication(publication)
    if run is not None:
        run.exports.update(exports.published(rt, publication))
        run.published.extend(publication.written + [f"deleted {key}" for key in publication.deleted])
        run.finish()

