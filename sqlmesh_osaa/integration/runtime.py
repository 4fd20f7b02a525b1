"""The integration's state in one SQLMesh process: settings, object store, checkpoints.

A ``sqlmesh plan`` or ``sqlmesh run`` is one process. ``@osaa_before_all()`` activates the
integration for it (settings from the project's ``variables: osaa:``); until then, and in a
project that does not use the extension, :func:`current` is None and every patch installed
by this package passes straight through to stock SQLMesh.

Relative paths in the settings (the local store's root, the checkpoint database) resolve
against the SQLMesh project directory, not the working directory, so ``sqlmesh -p
project plan`` and ``cd project && sqlmesh plan`` use the same files.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint, sync
from sqlmesh_osaa.checkpoint.deferred import DeferredChanges
from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.sections import replace
from sqlmesh_osaa.settings import CONFIG_ENV_VAR, DEFAULT_CONFIG_FILE, OsaaSettings, load_settings, set_settings
from sqlmesh_osaa.storage import ObjectStore, make_store

_log = logging.getLogger(__name__)

DEFAULT_PIPELINE = "sqlmesh"


@dataclass
class Runtime:
    """Everything the hooks and materializations of this process share."""

    settings: OsaaSettings
    project_dir: Path
    pipeline_name: str
    store: ObjectStore
    checkpoint: PipelineCheckpoint
    error_handler: ErrorHandler
    # MODEL checkpoint changes not yet durable (model_checkpoints.py says when they are written).
    model_changes: DeferredChanges
    # The PipelineRun of the command running now, set by @osaa_before_all.
    pipeline_run: Any = None
    # True once leftovers of dead runs were reconciled for the command running now.
    reconciled: bool = False
    # The state sync of the SQLMesh command running now (set around Context.plan/run).
    state_sync: Any = None
    # Environments @osaa_after_all() published during this command, and what it did.
    published_envs: set[str] = field(default_factory=set)
    publications: list[Any] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def begin_command(self, state_sync: Any) -> None:
        self.state_sync = state_sync
        self.reconciled = False
        self.published_envs.clear()
        self.publications.clear()

    def end_command(self) -> None:
        self.state_sync = None
        self.published_envs.clear()
        self.publications.clear()

    def note_publication(self, publication: Any) -> None:
        self.published_envs.add(publication.environment)
        self.publications.append(publication)

    def env_prefix(self, environment: str) -> str:
        return self.settings.environments.prefix_for(environment)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def current() -> Runtime | None:
    """The active runtime, or None when the extension is not enabled in this process."""
    return _runtime


def activate(
    variables: Mapping[str, Any] | None = None,
    project_dir: str | Path | None = None,
    pipeline_name: str | None = None,
) -> Runtime:
    """Enable the integration for this process (idempotent: the first activation wins)."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            return _runtime
        cli_variables, cli_dir, cli_project = sqlmesh_cli_context()
        project = Path(project_dir or cli_dir or Path.cwd()).resolve()
        settings = resolve_paths(_load(variables if variables is not None else cli_variables, project), project)
        set_settings(settings)
        _begin_sync(settings, project)
        checkpoint = PipelineCheckpoint(pipeline_name or cli_project or DEFAULT_PIPELINE, settings.checkpoint.db_path)
        _runtime = Runtime(
            settings=settings,
            project_dir=project,
            pipeline_name=checkpoint.pipeline_name,
            store=make_store(settings.storage),
            checkpoint=checkpoint,
            error_handler=ErrorHandler.from_settings(settings, name="object-storage"),
            model_changes=DeferredChanges(checkpoint, CheckpointScope.MODEL, settings.checkpoint.model_flush_seconds),
        )
        # Registered after the checkpoint opened, so it runs before the checkpoint closes at exit.
        atexit.register(_flush_at_exit, _runtime)
        _log.info("sqlmesh-osaa enabled for %s (store %r)", project, _runtime.store)
        return _runtime


def _begin_sync(settings: OsaaSettings, project: Path) -> None:
    """Ephemeral runners: lease and pull before anything opens the files; push and release at exit.

    The exit hook is registered before the PIPELINE checkpoint's (``pipeline_runs``), so it
    runs after it: the final push holds the command's outcome.
    """
    synced = sync.begin(settings, command=f"sqlmesh {cli_command()}", write=True, project_dir=project)
    if synced is not None:
        atexit.register(_end_sync, synced)


def _end_sync(synced: sync.RunnerSync) -> None:
    try:
        sync.end(synced)
    except Exception:
        _log.exception("sqlmesh-osaa could not push the checkpoint state at exit")


def _flush_at_exit(rt: Runtime) -> None:
    try:
        rt.model_changes.flush()
    except Exception:
        _log.exception("sqlmesh-osaa could not record the MODEL checkpoints of this process at exit")


def require() -> Runtime:
    """The active runtime, activating it from the project's settings when a hook was not configured."""
    return current() or activate()


def project_settings(variables: Mapping[str, Any] | None, project_dir: str | Path) -> OsaaSettings:
    """The settings ``activate`` would use for this project, without activating anything."""
    project = Path(project_dir).resolve()
    return resolve_paths(_load(variables, project), project)


def _load(variables: Mapping[str, Any] | None, project_dir: Path) -> OsaaSettings:
    """Settings from the project's variables, never reading the project's config.yaml as a settings file.

    ``load_settings`` reads ``config.yaml`` in the working directory only when it gets no
    variables; here that file is the SQLMesh project's own config: SQLMesh renders it with
    Jinja before parsing, so it need not be plain YAML, and its ``variables: osaa:`` arrive
    already parsed in ``variables``. So inside the project the variables are passed even
    when empty (no file is read, PyYAML is not imported); ``OSAA_CONFIG`` still names a real
    settings file.
    """
    in_project = Path.cwd().resolve() == project_dir.resolve()
    if os.environ.get(CONFIG_ENV_VAR) or not in_project or not (Path.cwd() / DEFAULT_CONFIG_FILE).exists():
        return load_settings(variables)
    return load_settings(variables or {})


def resolve_paths(settings: OsaaSettings, project_dir: Path) -> OsaaSettings:
    """Settings whose relative paths point inside ``project_dir``."""
    storage, checkpoint = settings.storage, settings.checkpoint
    return replace(
        settings,
        storage=replace(storage, root=_inside(project_dir, storage.root)),
        checkpoint=replace(checkpoint, db_path=_inside(project_dir, checkpoint.db_path)),
    )


def _inside(project_dir: Path, path: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_dir / path


def sqlmesh_cli_context_object() -> Any:
    """The SQLMesh Context the CLI built (kept in click's context object), or None under the Python API."""
    try:
        import click
    except ImportError:
        return None
    click_context = click.get_current_context(silent=True)
    context = getattr(click_context.find_root(), "obj", None) if click_context else None
    return context if getattr(context, "config", None) is not None else None


def sqlmesh_cli_context() -> tuple[Mapping[str, Any] | None, Path | None, str | None]:
    """Variables, directory and project name of the CLI's SQLMesh Context, when there is one."""
    context = sqlmesh_cli_context_object()
    if context is None:
        return None, None, None
    config = context.config
    return dict(config.variables or {}), Path(context.path), getattr(config, "project", None) or None


def cli_command() -> str:
    """The SQLMesh CLI command running (``plan``, ``run``), or ``sqlmesh`` under the Python API."""
    try:
        import click

        click_context = click.get_current_context(silent=True)
    except ImportError:
        return "sqlmesh"
    return (click_context.info_name if click_context else None) or "sqlmesh"
