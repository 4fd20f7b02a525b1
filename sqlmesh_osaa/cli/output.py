"""How commands print: rich tables for people, one JSON document for machines.

Tables and progress go through rich (only the CLI uses it). When stdout is not a terminal
the console is wide and does not wrap, so a piped table keeps each value on one line.
JSON goes to stdout alone; messages and progress go to stderr. rich is imported on the
first table or message: a ``--json`` run that succeeds never loads it.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import click

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

_PIPED_WIDTH = 240
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=_PIPED_WIDTH, soft_wrap=True)
    return console


def console() -> Console:
    return _console()


def err_console() -> Console:
    return _console(stderr=True)


def jsonable(value: Any) -> Any:
    """Plain JSON values: datetimes as ISO 8601 (UTC), paths as strings, enums as their value."""
    if type(value) in _PLAIN:  # most values of a report; checked first, as the ABC checks below cost more
        return value
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def emit_json(data: Mapping[str, Any]) -> None:
    click.echo(json.dumps(jsonable(data), indent=2, ensure_ascii=False))


def error(message: str) -> None:
    """The message as written: square brackets in it (``raw[v2]``) are text, not markup."""
    from rich.markup import escape

    err_console().print(f"[bold red]Error:[/] {escape(message)}", highlight=False, markup=True)


def text(value: Any) -> str:
    """A cell: empty for None, ISO time without microseconds for datetimes."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    from rich.table import Table

    result = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*(text(cell) for cell in row))
    return result


def show(*renderables: Any) -> None:
    out = console()
    for renderable in renderables:
        out.print(renderable, highlight=False, markup=False)


def note(message: str) -> None:
    """One line of prose under the tables (counts, what to do next)."""
    console().print(message, highlight=False, markup=False)
