"""Reconciling at the start of every ``sqlmesh plan``, including one with nothing to change.

SQLMesh runs ``before_all`` only when a plan has work to do. A run killed while publishing
(after SQLMesh finalized the environment) leaves nothing for SQLMesh to redo, so the next
plan would say "No changes" and never call ``@osaa_before_all()``. :func:`install` wraps
``Context.plan`` so that a project whose ``before_all`` uses the extension is reconciled
first, and every environment is published again when a dead run was found. ``sqlmesh run``
does not load the project, so nothing of this package is imported before a run starts; the
CLI hook (``sqlmesh_osaa.cli.sqlmesh_plugin``) wraps ``Context.run`` to call
:func:`reconcile_before_plan` for projects that enable the extension.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from sqlmesh.core.context import GenericContext

from sqlmesh_osaa.integration import runtime, state
from sqlmesh_osaa.integration.busy import busy_error
from sqlmesh_osaa.integration.publication import publish_environment
from sqlmesh_osaa.integration.reconciliation import reconcile_leftovers

_log = logging.getLogger(__name__)

_INSTALLED_MARKER = "__osaa_plan_start__"
ENABLING_MACRO = "osaa_before_all"


def uses_extension(context: Any) -> bool:
    """Whether the project enables sqlmesh-osaa: its before_all calls ``@osaa_before_all()``."""
    return any(ENABLING_MACRO in statement for statement in (context.config.before_all or []))


def reconcile_before_plan(context: Any) -> None:
    rt = runtime.activate(
        variables=context.config.variables, project_dir=context.path, pipeline_name=context.config.project or None
    )
    state_sync = context.state_sync
    report = reconcile_leftovers(rt, state_sync)
    rt.reconciled = True
    if not (report.interrupted or report.transactions.rolled_back or report.transactions.rolled_forward):
        return
    for environment in sorted(env.name for env in state_sync.get_environments()):
        snapshots = state.environment_snapshots(state_sync, environment)
        publication = publish_environment(rt, state_sync, environment, snapshots)
        _log.warning("Published %s again after a dead run: %d object(s) written", environment, len(publication.written))


def install() -> None:
    original = GenericContext.plan
    if getattr(original, _INSTALLED_MARKER, False):
        return

    @functools.wraps(original)
    def plan(self: GenericContext, *args: Any, **kwargs: Any) -> Any:
        if uses_extension(self):
            try:
                reconcile_before_plan(self)
            except Exception as error:
                if (busy := busy_error(error)) is not None:
                    raise busy from error
                _log.exception("sqlmesh-osaa could not reconcile before the plan; @osaa_before_all() tries again")
        return original(self, *args, **kwargs)

    setattr(plan, _INSTALLED_MARKER, True)
    GenericContext.plan = plan  # type: ignore[method-assign]
