"""Options shared by the commands, so each means the same everywhere."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import click

F = Callable[..., Any]

# CheckpointScope's values, spelled out: importing the checkpoint module (and DuckDB) here
# would slow every `sqlmesh` start, since the options are defined when the commands register.
SCOPES = ["pipeline", "model", "file", "operation"]
# "interrupted": in progress, left by a run that ended (the checkpoint rows' ``interrupted`` flag).
STATUSES = ["in_progress", "completed", "failed", "interrupted"]


def db(func: F) -> F:
    return click.option(
        "--db",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Checkpoint database file. Default: checkpoint.db_path of the settings.",
    )(func)


def project(func: F) -> F:
    return click.option(
        "--project",
        type=click.Path(path_type=Path, file_okay=False),
        help="SQLMesh project whose variables.osaa settings apply. Default: the project `sqlmesh` runs in, "
        "else none (config.yaml / OSAA_CONFIG / OSAA_* variables).",
    )(func)


def json_output(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document (shape in docs/cli.md).")(func)


def pipeline(func: F) -> F:
    return click.option("--pipeline", help="Only this pipeline. Default: every pipeline in the database.")(func)


def scope(func: F) -> F:
    return click.option("--scope", type=click.Choice(SCOPES), help="Only items of this scope.")(func)


def limit(func: F) -> F:
    return click.option("--limit", type=click.IntRange(min=1), help="At most this many items (most recent first).")(func)


def target(func: F) -> F:
    """--db and --project: every command has both."""
    return db(project(func))


def writing(default_pipeline: str, pipeline_help: str) -> Callable[[F], F]:
    """--pipeline, --db, --project and --json of a command that writes: its pipeline has a default."""

    def apply(func: F) -> F:
        pipeline_option = click.option("--pipeline", default=default_pipeline, show_default=True, help=pipeline_help)
        return pipeline_option(target(json_output(func)))

    return apply


class Duration(click.ParamType):
    """An age like ``30d``, ``12h``, ``90m``, ``2w``; a bare number is days."""

    name = "duration"
    _UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    _PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        match = self._PATTERN.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration such as 30d, 12h, 90m or 2w", param, ctx)
        amount, unit = float(match.group(1)), match.group(2) or "d"
        return timedelta(**{self._UNITS[unit]: amount})
