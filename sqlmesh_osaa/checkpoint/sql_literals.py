"""DuckDB SQL literals, so a read binds no parameter.

DuckDB's Python client imports pandas and numpy (0.4 s) at the first bound parameter; a
read-only command (``osaa-recover list-failed``) would pay that at every start. Reads of the
DuckDB store therefore inline their parameters as literals: strings single-quoted with quotes
doubled (a NUL is refused), numbers, timestamps and NULL, so nothing reaches SQL unescaped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime, timezone
from typing import Any

_UNUSED = object()


def sql_literal(value: Any) -> str:
    """``value`` as a DuckDB SQL literal (an aware datetime as naive UTC, as the store keeps times)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"CAST('{value!r}' AS DOUBLE)"
    if isinstance(value, datetime):
        return f"TIMESTAMP '{sql_timestamp(value)}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, str):
        if "\0" in value:
            raise ValueError("a checkpoint query parameter holds a NUL character")
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for a {type(value).__name__} checkpoint query parameter")


def sql_timestamp(value: datetime) -> str:
    """The text DuckDB casts to the TIMESTAMP the store keeps: naive UTC (an aware datetime converted)."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat(sep=" ")


def inline_parameters(sql: str, params: Sequence[Any]) -> str:
    """``sql`` with each ``?`` placeholder outside quotes replaced by its parameter's literal."""
    values = iter(params)

    def literal(_: re.Match[str]) -> str:
        value = next(values, _UNUSED)
        if value is _UNUSED:
            raise ValueError("fewer parameters than placeholders in a checkpoint query")
        return sql_literal(value)

    parts = re.split(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")", sql)
    for index in range(0, len(parts), 2):
        parts[index] = re.sub(r"\?", literal, parts[index])
    if next(values, _UNUSED) is not _UNUSED:
        raise ValueError("more parameters than placeholders in a checkpoint query")
    return "".join(parts)

