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


def _json_value(value: Any) -> Any:
    """What JSON cannot hold as is: datetimes as ISO 8601 (UTC), paths as strings, enums as their value."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODE = json.JSONEncoder(ensure_ascii=False, default=_json_value).encode


def json_document(data: Mapping[str, Any]) -> str:
    """The report indented: a line per top-level key and per element of a top-level list.

    Each line is encoded by the C encoder; Python's indenting encoder (``indent=2``) took
    about 40 ms for a thousand failed items.
    """
    lines = []
    for key, value in data.items():
        name = _ENCODE(str(key))
        if isinstance(value, (list, tuple)) and value:
            elements = ",\n".join(f"    {_ENCODE(element)}" for element in value)
            lines.append(f"  {name}: [\n{elements}\n  ]")
        else:
            lines.append(f"  {name}: {_ENCODE(value)}")
    return "{\n" + ",\n".join(lines) + "\n}" if lines else "{}"


def emit_json(data: Mapping[str, Any]) -> None:
    click.echo(json_document(data))


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
