"""Checks a JSON document against the notation of ``sqlmesh_osaa.cli.shapes``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

_SCALARS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "datetime": lambda v: isinstance(v, str) and datetime.fromisoformat(v) is not None,
}


def mismatches(value: Any, shape: Any, where: str = "$", nullable: frozenset[str] = frozenset()) -> list[str]:
    """Every place where ``value`` does not have ``shape``; empty when it conforms."""
    if where in nullable and value is None:
        return []
    if isinstance(shape, str):
        kinds = shape.split("|")
        if value is None:
            return [] if "null" in kinds else [f"{where}: null, expected {shape}"]
        return [] if any(_SCALARS[kind](value) for kind in kinds if kind != "null") else [f"{where}: {value!r} is not {shape}"]
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [problem for i, item in enumerate(value) for problem in mismatches(item, shape[0], f"{where}[{i}]", nullable)]
    if not isinstance(value, dict):
        return [f"{where}: expected an object"]
    keys = list(shape)
    if len(keys) == 1 and keys[0].startswith("<"):
        return [p for k, v in value.items() for p in mismatches(v, shape[keys[0]], f"{where}.{k}", nullable)]
    problems = [f"{where}: keys {sorted(value)} != documented {sorted(shape)}"] if set(value) != set(shape) else []
    return problems + [p for k in shape if k in value for p in mismatches(value[k], shape[k], f"{where}.{k}", nullable)]


def assert_documented(document: dict[str, Any], command: str) -> None:
    from sqlmesh_osaa.cli.shapes import NULLABLE_OBJECTS, SHAPES

    nullable = frozenset(f"$.{key}" for owner, key in NULLABLE_OBJECTS if owner == command)
    problems = mismatches(document, SHAPES[command], nullable=nullable)
    assert not problems, "\n".join(problems)
