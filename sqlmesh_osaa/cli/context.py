"""What a command runs against: settings, SQLMesh project (if any), checkpoint database.

Inside a SQLMesh project (``--project DIR``, or the project ``sqlmesh`` was started in) the
settings are the project's ``variables.osaa``, read with SQLMesh's own config loader, and
relative paths resolve against the project directory by the SQLMesh integration's own
``resolve_paths``, so both find the same checkpoint database and store. Elsewhere they come from
``config.yaml`` / ``OSAA_CONFIG`` / ``OSAA_*`` variables. The result becomes the process-wide
settings, so the core's defaults agree with the command.

Every failure that means "the command could not look" (bad usage, bad settings, database
missing or locked) ends as one message and exit code 2, never as a traceback.
"""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import click

from sqlmesh_osaa import sections
from sqlmesh_osaa.cli import output
from sqlmesh_osaa.cli.database import CheckpointSession, MissingDatabaseError, UnknownPipelineError
from sqlmesh_osaa.exceptions import ConfigurationError, PipelineBaseError
from sqlmesh_osaa.settings import OsaaSettings, load_settings, set_settings

_log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

SQLMESH_CONFIG_FILES = ("config.yaml", "config.yml", "config.py")


class CliError(Exception):
    """A failure reported as one message and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# Named tuples and a plain class, not dataclasses: each dataclass costs 1-2 ms to define, and
# every command (an unchanged ingest re-run is little else) imports this module.


class Target(NamedTuple):
    """Settings, project and checkpoint database of one command."""

    settings: OsaaSettings
    project_dir: Path | None
    gateway: str | None
    db_path: Path


class _SQLMeshInvocation(NamedTuple):
    """What the ``sqlmesh`` group was given, when our command runs under it."""

    project_dir: Path | None
    config_name: str | None
    gateway: str | None
    dotenv: Path | None


def _sqlmesh_invocation(ctx: click.Context) -> _SQLMeshInvocation | None:
    root = ctx.find_root()
    obj = root.obj
    if isinstance(obj, str):
        project: Path | None = Path(obj)
    elif getattr(obj, "config", None) is not None:
        project = Path(obj.path)
    else:
        return None
    params = root.params
    return _SQLMeshInvocation(project, params.get("config"), params.get("gateway"), params.get("dotenv"))


def is_project(directory: Path) -> bool:
    return any((directory / name).is_file() for name in SQLMESH_CONFIG_FILES)


def _project_variables(project_dir: Path, config_name: str | None, dotenv: Path | None) -> Mapping[str, Any]:
    from sqlmesh.core.config import Config, load_configs

    try:
        configs = load_configs(config_name, Config, [project_dir], dotenv_path=dotenv)
    except Exception as error:
        raise CliError(f"Cannot read the SQLMesh project configuration in {project_dir}: {error}") from error
    return dict(next(iter(configs.values())).variables or {})


def resolve_target(ctx: click.Context, project: Path | None, db: Path | None) -> Target:
    """Settings from the project or the settings file, with ``--db`` overriding the database path."""
    invocation = _sqlmesh_invocation(ctx)
    project_dir = project or (invocation.project_dir if invocation else None)
    config_name = invocation.config_name if invocation else None
    if project_dir is not None:
        project_dir = project_dir.expanduser().resolve()
        if not project_dir.is_dir():
            raise CliError(f"Project directory {project_dir} does not exist")
        if not is_project(project_dir):
            if project is not None:
                raise CliError(f"{project_dir} is not a SQLMesh project: it has none of {', '.join(SQLMESH_CONFIG_FILES)}")
            project_dir = None
    if project_dir is None:
        settings = load_settings()
    else:
        from sqlmesh_osaa.integration.runtime import resolve_paths

        dotenv = invocation.dotenv if invocation else None
        settings = resolve_paths(load_settings(_project_variables(project_dir, config_name, dotenv)), project_dir)
    if db is not None:
        settings = sections.replace(settings, checkpoint=sections.replace(settings.checkpoint, db_path=db.expanduser().resolve()))
    set_settings(settings)
    return Target(
        settings=settings,
        project_dir=project_dir,
        gateway=invocation.gateway if invocation else None,
        db_path=Path(settings.checkpoint.db_path).expanduser().resolve(),
    )


class Run:
    """One command's target, open database and output mode.

    ``after_close`` holds what to call once the session has closed its database, whether the
    command ends well or not.
    """

    def __init__(self, ctx: click.Context, target: Target, session: CheckpointSession, as_json: bool) -> None:
        self.ctx = ctx
        self.target = target
        self.session = session
        self.as_json = as_json
        self.after_close: list[Callable[[], None]] = []

    def finish(self, report: Mapping[str, Any], render: Callable[[Mapping[str, Any]], None], exit_code: int) -> None:
        """Print the report (JSON or tables) and exit with ``exit_code``."""
        report = {"db_path": str(self.target.db_path), **report}
        if self.as_json:
            output.emit_json(report)
        else:
            render(report)
        self.ctx.exit(exit_code)


@contextmanager
def command_run(
    ctx: click.Context,
    *,
    as_json: bool,
    db: Path | None,
    project: Path | None,
    create_db: bool = False,
    writes: bool = False,
) -> Iterator[Run]:
    """Resolve the target and open its database; turn failures into a message and exit code 2.

    With ``checkpoint.sync.url`` (ephemeral runners), a command that ``writes`` takes the
    runner lease and pulls the checkpoint file first and pushes it back at the end; one that
    only reads looks at a private copy of the last pushed file.
    """
    db_path: Path | None = None
    try:
        target = resolve_target(ctx, project, db)
        db_path = target.db_path
        with ExitStack() as stack:
            if target.settings.checkpoint.sync.url is not None:
                target = _synced(ctx, target, stack, writes=writes)
                db_path = target.db_path
            session = CheckpointSession(db_path, target.settings.checkpoint.lock_timeout_seconds, create=create_db)
            run = Run(ctx, target, session, as_json)
            stack.callback(_call_each, run.after_close)
            stack.callback(session.close)
            yield run
    except CliError as error:
        _fail(ctx, str(error), error.exit_code, as_json, db_path)
    except MissingDatabaseError:
        message = (
            f"No checkpoint database at {db_path}: nothing has run with it yet, or --db / "
            "checkpoint.db_path (or the project) points elsewhere"
        )
        _fail(ctx, message, EXIT_USAGE, as_json, db_path)
    except UnknownPipelineError as error:
        name, known = error.args
        holds = ", ".join(repr(k) for k in known) or "no pipelines yet"
        _fail(ctx, f"Pipeline {name!r} is not in checkpoint database {db_path}; it holds {holds}", EXIT_USAGE, as_json, db_path)
    except ConfigurationError as error:
        _fail(ctx, f"Configuration error: {error}", EXIT_USAGE, as_json, db_path)
    except PipelineBaseError as error:
        damaged = _is_damaged_database(error.__cause__ or error)
        _fail(ctx, f"{error}. {DAMAGED_ADVICE}" if damaged else str(error), EXIT_USAGE, as_json, db_path)
    except Exception as error:
        if not _is_damaged_database(error):
            raise
        _fail(ctx, f"Cannot read checkpoint database {db_path}: {error}. {DAMAGED_ADVICE}", EXIT_USAGE, as_json, db_path)


def _call_each(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        callback()


def _synced(ctx: click.Context, target: Target, stack: ExitStack, *, writes: bool) -> Target:
    """Ephemeral runners: a writer holds the lease and pushes at the end; a reader reads a pulled copy.

    The sync module is loaded only here, for runners that configure it.
    """
    from sqlmesh_osaa.checkpoint import sync

    if writes:
        synced = sync.begin(target.settings, command=ctx.command_path, write=True, project_dir=target.project_dir)
        stack.callback(sync.end, synced)
        return target
    from tempfile import TemporaryDirectory

    pulled = sync.pull_for_reading(target.settings, Path(stack.enter_context(TemporaryDirectory(prefix="osaa-pulled-"))))
    return target if pulled is None else target._replace(db_path=pulled)


DAMAGED_ADVICE = (
    "The file is damaged (truncated or not a DuckDB database): restore it from a backup, or move it "
    "aside to start with no checkpoints (every item is then new)"
)


def _is_damaged_database(error: BaseException | None) -> bool:
    """DuckDB could not read the file itself (not a lock held by another process).

    Without DuckDB imported no error can be DuckDB's: a command that never opened the file
    (click's exit included, which passes through here) does not import it to find out.
    """
    duckdb = sys.modules.get("_duckdb")  # DuckDB's extension module, loaded by the checkpoint store and the package alike
    return duckdb is not None and isinstance(error, duckdb.IOException) and "lock" not in str(error).lower()


def _fail(ctx: click.Context, message: str, exit_code: int, as_json: bool, db_path: Path | None) -> None:
    if as_json:
        output.emit_json({"error": {"message": message, "exit_code": exit_code, "db_path": db_path and str(db_path)}})
    output.error(message)
    ctx.exit(exit_code)
