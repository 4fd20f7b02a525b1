"""What happens around every ``sqlmesh plan`` and ``sqlmesh run`` of a project using sqlmesh-osaa.

``sqlmesh_patches`` wraps ``Context.plan`` and ``Context.run`` (CLI and Python API alike):

1. before: the integration is activated with the project's settings, and the command's
   state sync (SQLMesh's own: ``state_schema``/``state_connection`` apply) is what every hook
   reads state through; a plan fails at once when two models claim the same export ``key``
   or ingest ``source``; leftovers of dead runs are reconciled (``reconciliation.py``),
   before any evaluation, which keeps the audit evidence exact;
2. the command runs (``@osaa_after_all()`` publishes its environment when SQLMesh runs it);
3. after, also when the command failed: every environment in state is caught up with what
   state holds, and what environments gone from state published is removed
   (``publication.catch_up``), so a publication that failed or was killed is repaired by
   the next command, "No changes" included. A plan that applied nothing although it had
   something to apply (``--explain``, or declined at the prompt) does not publish;
4. a short publication summary goes to SQLMesh's console.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from sqlmesh.utils.errors import ConfigError

from sqlmesh_osaa.integration import model_checkpoints, notifications, pipeline_runs, runtime, state
from sqlmesh_osaa.integration.busy import busy_error
from sqlmesh_osaa.integration.publication import Publication, catch_up, summary
from sqlmesh_osaa.integration.reconciliation import reconcile_leftovers

_log = logging.getLogger(__name__)

SUMMARY_TITLE = "sqlmesh-osaa publication:"


def around(command: str, context: Any, call: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> Any:
    if command == "plan":
        check_unique_claims(context)
    try:
        rt = _begin(context, _environment(context, args, kwargs))
    except Exception as error:
        # The first use of SQLMesh's state opens the warehouse: a lock held by another process.
        if (busy := busy_error(error)) is not None:
            raise busy from error
        raise
    try:
        result = call(*args, **kwargs)
    except Exception as error:
        if command == "plan":
            pipeline_runs.finish_open_run(f"plan failed: {type(error).__name__}: {error}")
        _end(context, rt)
        raise
    if command != "plan" or _applied_or_nothing_to_apply(context, result, kwargs):
        _end(context, rt)
    return result


def _refuse_if_busy(context: Any) -> None:
    """Open the command's warehouse connection before SQLMesh's first state read.

    Otherwise that read takes a connection refused by a lock for a missing state
    ("Initializing new project state...") before the lock surfaces. Called after
    ``runtime.activate``, which pulls an ephemeral runner's synced files before anything
    opens them. Any other connection problem is left to SQLMesh, which reports it its own way.
    """
    try:
        context.engine_adapter.cursor
    except Exception as error:
        if (busy := busy_error(error)) is not None:
            raise busy from error
        _log.debug("sqlmesh-osaa: the warehouse connection could not be opened early: %s", error)


def _environment(context: Any, args: Any, kwargs: dict[str, Any]) -> str:
    """The environment the command works on, as SQLMesh resolves it (``plan``/``run`` take it first)."""
    return kwargs.get("environment") or (args[0] if args else None) or context.config.default_target_environment


def _begin(context: Any, environment: str) -> runtime.Runtime:
    rt = runtime.activate(
        variables=context.config.variables, project_dir=context.path, pipeline_name=context.config.project or None
    )
    # Before the first object-store call of the command: reconciliation may open the breaker.
    notifications.watch_breaker(rt, environment)
    _refuse_if_busy(context)
    rt.begin_command(context.state_sync)
    try:
        reconcile_leftovers(rt, context.state_sync, context.engine_adapter)
        rt.reconciled = True
    except Exception as error:
        if (busy := busy_error(error)) is not None:
            raise busy from error
        # Leftovers never reach an environment (publication decides from state); @osaa_before_all() retries.
        _log.exception("sqlmesh-osaa could not reconcile before the command")
        context.console.log_warning(f"sqlmesh-osaa could not reconcile leftovers of an earlier run: {error}")
    return rt


def _end(context: Any, rt: runtime.Runtime) -> None:
    publications: list[Publication] = list(rt.publications)
    model_checkpoints.make_durable(rt)
    try:
        publications.extend(catch_up(rt, context.state_sync, skip=rt.published_envs))
    except Exception as error:
        _log.exception("sqlmesh-osaa could not catch the environments up with state")
        context.console.log_warning(
            f"sqlmesh-osaa could not publish: {type(error).__name__}: {error}. The next plan or run publishes again."
        )
    finally:
        rt.end_command()
    lines = summary(publications)
    if lines:
        context.console.log_status_update("\n".join([SUMMARY_TITLE, *(f"  {line}" for line in lines)]))


def _applied_or_nothing_to_apply(context: Any, plan: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the plan was applied, or had nothing to apply ("No changes"); not --explain or declined."""
    if kwargs.get("explain"):
        return False
    environment = context.state_sync.get_environment(plan.environment.name)
    if environment is not None and environment.plan_id == plan.plan_id:
        return True
    return not (plan.has_changes or plan.requires_backfill or plan.restatements)


def check_unique_claims(context: Any) -> None:
    """Two models publishing the same export key or landing source would overwrite each other: refuse."""
    claims: dict[tuple[str, str], str] = {}
    for model in sorted(context.models.values(), key=lambda m: m.name):
        claim = state.claim(model)
        if claim is None:
            continue
        other = claims.setdefault(claim, model.name)
        if other != model.name:
            what, value = claim
            raise ConfigError(
                f"Models {other} and {model.name} both publish {what} '{value}': "
                f"give each osaa model its own {what} (materialization_properties)."
            )
