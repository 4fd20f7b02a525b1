"""Every patch of SQLMesh internals sqlmesh-osaa installs, in one module.

SQLMesh 0.236 has no supported extension point for these (``docs/sqlmesh-internals.md``
says why, per patch):

- ``Scheduler.evaluate`` (evaluate -> audit -> record the interval): the only call that
  returns exactly when SQLMesh recorded an evaluation's interval, so the MODEL checkpoint and
  the audit marker of the evaluation's staged outputs are written there;
- ``SnapshotEvaluator.evaluate`` (the model's statements and insert, the first step of the
  call above): timed, so the MODEL checkpoint tells evaluation time from audit time without
  per-model pre/post statements, which SQLMesh renders with every table of the model;
- ``GenericContext.plan`` / ``GenericContext.run``: SQLMesh runs ``before_all``/``after_all``
  only when there is work, so a "No changes" plan or a run with nothing to evaluate would
  never reconcile or catch up; wrapped, every command reconciles first and catches every
  environment up afterwards (``commands.py``), and the hooks read state through the
  command's own state sync (``state_schema``/``state_connection``, also in the Python API);
- ``BaseDuckDBConnectionConfig._cursor_init``: chained so every DuckDB cursor SQLMesh opens
  gets httpfs and an S3 secret when the project's storage is S3 (``duckdb_connections.py``);
- ``execute_environment_statements`` as the scheduler and the plan evaluator call it: SQLMesh
  renders ``before_all``/``after_all`` with every snapshot of the environment (the view and
  schema name of each one, for ``@views``/``@schemas``), a cost that grows with the project.
  When the environment's statements are only ``@osaa_before_all()``/``@osaa_after_all()``,
  which read neither, they are rendered without the snapshots, and the hooks get them
  from :func:`environment_snapshots`; any other statement keeps SQLMesh's rendering.

Each wrapper passes straight through unless the integration is active (evaluate) or the
project's ``before_all`` calls ``@osaa_before_all()`` (plan, run), so a project without the
extension runs as stock SQLMesh. This module imports nothing of the package at import
time: the CLI hook installs it at every ``sqlmesh`` start. :func:`problems` checks what the
patches rely on against the installed SQLMesh; when anything moved, nothing is patched and
an error is logged (``tests/integration/test_sqlmesh_patches.py`` fails on it too).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, Callable

_log = logging.getLogger(__name__)

PINNED_VERSION = "0.236."
INSTALLED_MARKER = "__osaa_patch__"
ENABLING_MACRO = "osaa_before_all"
# (module, class, method, parameters the wrapper reads)
PATCHED = (
    ("sqlmesh.core.scheduler", "Scheduler", "evaluate", ("snapshot", "start", "end", "deployability_index", "batch_index", "environment_naming_info")),
    ("sqlmesh.core.snapshot.evaluator", "SnapshotEvaluator", "evaluate", ("snapshot",)),
    ("sqlmesh.core.context", "GenericContext", "plan", ("environment", "explain")),
    ("sqlmesh.core.context", "GenericContext", "run", ("environment",)),
)
# (module, function, parameters the wrapper reads): where SQLMesh runs before_all/after_all.
PATCHED_FUNCTIONS = (
    ("sqlmesh.core.scheduler", "execute_environment_statements", ("environment_statements", "snapshots")),
    ("sqlmesh.core.plan.evaluator", "execute_environment_statements", ("environment_statements", "snapshots")),
)
# Environment statements that read no snapshot: rendered without the environment's snapshots.
SNAPSHOT_FREE_STATEMENTS = frozenset({"@osaa_before_all()", "@osaa_after_all()"})
_environment_snapshots: ContextVar[dict[str, Any] | None] = ContextVar("osaa_environment_snapshots", default=None)
# Set by the first install(): problems() imports sqlmesh.cli.main, whose import runs the CLI
# hook's install() again before the first one has wrapped anything (sqlmesh_plugin.py).
_install_started = False


def problems() -> list[str]:
    """What the patches rely on and the installed SQLMesh no longer offers (empty when all holds)."""
    import sqlmesh

    found = []
    version = getattr(sqlmesh, "__version__", "")
    if not version.startswith(PINNED_VERSION):
        found.append(f"sqlmesh {version} is installed; sqlmesh-osaa's patches were checked against {PINNED_VERSION}x")
    for module_name, class_name, method, parameters in PATCHED:
        owner = getattr(importlib.import_module(module_name), class_name, None)
        function = getattr(owner, method, None)
        if function is None:
            found.append(f"{module_name}.{class_name}.{method} no longer exists")
            continue
        function = inspect.unwrap(function)
        missing = [p for p in parameters if p not in inspect.signature(function).parameters]
        if missing:
            found.append(f"{class_name}.{method} lost parameter(s) {missing}")
    for module_name, name, parameters in PATCHED_FUNCTIONS:
        function = getattr(importlib.import_module(module_name), name, None)
        if function is None:
            found.append(f"{module_name}.{name} no longer exists")
            continue
        missing = [p for p in parameters if p not in inspect.signature(inspect.unwrap(function)).parameters]
        if missing:
            found.append(f"{module_name}.{name} lost parameter(s) {missing}")
    found.extend(_internals_read())
    return found


def _scheduler_evaluates_then_audits() -> list[str]:
    """The evaluation/audit split assumes Scheduler.evaluate calls the evaluator, then audits, then records."""
    from sqlmesh.core.scheduler import Scheduler

    source = inspect.getsource(inspect.unwrap(Scheduler.evaluate))
    steps = [source.find(call) for call in ("self.snapshot_evaluator.evaluate(", "self._audit_snapshot(", "add_interval(")]
    if -1 in steps or steps != sorted(steps):
        return ["Scheduler.evaluate no longer calls snapshot_evaluator.evaluate, then _audit_snapshot, then add_interval"]
    return []


def _internals_read() -> list[str]:
    """Attributes read (not patched) that SQLMesh does not document as API."""
    import sqlmesh.cli.main as cli_main
    from sqlmesh.core.config.connection import BaseDuckDBConnectionConfig
    from sqlmesh.core.snapshot.definition import SnapshotTableInfo
    from sqlmesh.core.state_sync.base import DelegatingStateSync
    from sqlmesh.core.state_sync.db.facade import EngineAdapterStateSync
    from sqlmesh.core.state_sync.db.interval import IntervalState

    found = _scheduler_evaluates_then_audits()
    if "custom_materialization" not in SnapshotTableInfo.model_fields:
        found.append("SnapshotTableInfo.custom_materialization no longer exists")
    if "interval_state" not in inspect.getsource(EngineAdapterStateSync.__init__):
        found.append("EngineAdapterStateSync no longer sets interval_state")
    if "self.intervals_table" not in inspect.getsource(IntervalState.__init__):
        found.append("IntervalState no longer sets intervals_table")
    if "self.state_sync = state_sync" not in inspect.getsource(DelegatingStateSync.__init__):
        found.append("DelegatingStateSync no longer keeps the wrapped state sync in state_sync")
    if not isinstance(BaseDuckDBConnectionConfig.__dict__.get("_cursor_init"), property):
        found.append("BaseDuckDBConnectionConfig._cursor_init is no longer a property (S3 access of DuckDB models)")
    if not isinstance(getattr(cli_main, "SKIP_CONTEXT_COMMANDS", None), tuple):
        found.append("sqlmesh.cli.main.SKIP_CONTEXT_COMMANDS is gone (the osaa-* commands would build a Context)")
    return found


def install() -> None:
    """Install the patches once per process, unless the installed SQLMesh moved under them."""
    from sqlmesh.core.context import GenericContext
    from sqlmesh.core.scheduler import Scheduler
    from sqlmesh.core.snapshot.evaluator import SnapshotEvaluator

    global _install_started
    if _install_started or getattr(Scheduler.evaluate, INSTALLED_MARKER, False):
        return
    _install_started = True
    found = problems()
    if found:
        _log.error("sqlmesh-osaa did not patch SQLMesh (stock behaviour, no MODEL checkpoints): %s", "; ".join(found))
        return
    _wrap(Scheduler, "evaluate", _evaluate)
    _wrap(SnapshotEvaluator, "evaluate", _timed_evaluation)
    _wrap(GenericContext, "plan", _command("plan"))
    _wrap(GenericContext, "run", _command("run"))
    for module_name, name, _ in PATCHED_FUNCTIONS:
        _wrap(importlib.import_module(module_name), name, _snapshot_free_statements)
    from sqlmesh_osaa.integration import duckdb_connections

    duckdb_connections.install()


def _wrap(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    original = getattr(owner, name)
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, INSTALLED_MARKER, True)
    setattr(owner, name, wrapper)


def _evaluate(original: Any) -> Any:
    signature = inspect.signature(original)

    def evaluate(self: Any, *args: Any, **kwargs: Any) -> Any:
        runtime = sys.modules.get("sqlmesh_osaa.integration.runtime")
        rt = runtime.current() if runtime is not None else None
        if rt is None:
            return original(self, *args, **kwargs)
        from sqlmesh_osaa.integration.model_checkpoints import evaluate_recorded

        bound = signature.bind(self, *args, **kwargs).arguments
        return evaluate_recorded(rt, functools.partial(original, self), args, kwargs, bound)

    return evaluate


def _timed_evaluation(original: Any) -> Any:
    def evaluate(self: Any, *args: Any, **kwargs: Any) -> Any:
        checkpoints = sys.modules.get("sqlmesh_osaa.integration.model_checkpoints")
        evaluation = checkpoints.current_evaluation() if checkpoints is not None else None
        if evaluation is None:
            return original(self, *args, **kwargs)
        evaluation.sql_started = time.perf_counter()
        result = original(self, *args, **kwargs)
        evaluation.sql_ended = time.perf_counter()
        return result

    return evaluate


def _snapshot_free_statements(original: Any) -> Any:
    signature = inspect.signature(original)

    def execute(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        snapshots = bound.arguments.get("snapshots")
        if not snapshots or not reads_no_snapshot(bound.arguments["environment_statements"]):
            return original(*args, **kwargs)
        bound.arguments["snapshots"] = None
        token = _environment_snapshots.set(snapshots)
        try:
            return original(*bound.args, **bound.kwargs)
        finally:
            _environment_snapshots.reset(token)

    return execute


def reads_no_snapshot(environment_statements: Any) -> bool:
    """Whether every before_all/after_all statement is one of the package's hooks (which read no snapshot)."""
    return all(
        statement.strip() in SNAPSHOT_FREE_STATEMENTS
        for statements in environment_statements
        for statement in (*statements.before_all, *statements.after_all)
    )


def environment_snapshots(evaluator: Any) -> dict[str, Any]:
    """The snapshots of the environment whose statements ``evaluator`` renders, by name."""
    return evaluator.snapshots or _environment_snapshots.get() or {}


def uses_extension(context: Any) -> bool:
    """Whether the project enables sqlmesh-osaa: its before_all calls ``@osaa_before_all()``."""
    return any(ENABLING_MACRO in statement for statement in (context.config.before_all or []))


def _command(name: str) -> Callable[[Any], Any]:
    def make(original: Any) -> Any:
        def command(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not uses_extension(self):
                return original(self, *args, **kwargs)
            from sqlmesh_osaa.integration import commands

            return commands.around(name, self, functools.partial(original, self), args, kwargs)

        return command

    return make
