"""Checking ``materialization_properties`` of the osaa model kinds while SQLMesh loads a model.

A bad property must stop ``sqlmesh plan`` before anything runs, with a message that names
the model and the property. SQLMesh builds a custom kind without telling it which model it
belongs to, so :func:`model_being_loaded` reads the model's name from the SQLMesh frame
building it (sqlmesh 0.236, pinned); when it cannot, the loader's own prefix still names the
model's file.

These checks also run when snapshots are read back from state (``sqlmesh run``), so they
must never become stricter for values that were once accepted.
"""

from __future__ import annotations

import sys
from pathlib import PurePosixPath
from typing import Any, Iterable, Mapping

from sqlglot import exp
from sqlmesh.utils.errors import ConfigError


_MODEL_FACTORIES = frozenset({"_create_model", "create_sql_model", "create_python_model", "load_sql_based_model"})


def model_being_loaded() -> str | None:
    """The name of the model whose kind is being validated, read from the SQLMesh frame building it.

    ``model/definition.py:_create_model`` builds the kind with the model's ``name`` (a string
    or a parsed table) in scope;
    pydantic validation of a model passes it in ``info.data``.
    """
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_locals.get("name") if frame.f_code.co_name in _MODEL_FACTORIES else None
        if isinstance(name, exp.Expression):
            name = name.sql()
        if isinstance(name, str) and name:
            return name
        data = getattr(frame.f_locals.get("info"), "data", None)
        if isinstance(data, Mapping) and isinstance(data.get("name"), str):
            return str(data["name"])
        frame = frame.f_back
    return None


def property_error(materialization: str, prop: str, problem: str) -> ConfigError:
    model = model_being_loaded()
    subject = f"model {model}" if model else "this model"
    return ConfigError(
        f"{subject}: materialization '{materialization}' property '{prop}' {problem}"
    )


def check_names(
    materialization: str, properties: Mapping[str, Any], required: Iterable[str], optional: Iterable[str]
) -> None:
    """Unknown properties and missing required ones are errors, each named."""
    allowed = set(required) | set(optional)
    for prop in sorted(set(properties) - allowed):
        raise property_error(
            materialization, prop, f"is not a known property (allowed: {', '.join(sorted(allowed))})"
        )
    for prop in required:
        if properties.get(prop) in (None, ""):
            raise property_error(materialization, prop, "is required")


def relative_path(materialization: str, prop: str, value: Any) -> str:
    """A non-empty relative POSIX path that cannot climb out of its root."""
    if not isinstance(value, str):
        raise property_error(materialization, prop, f"must be a string, got {value!r}")
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("\\") or (len(value) > 1 and value[1] == ":"):
        raise property_error(materialization, prop, f"must be a relative path, got {value!r}")
    if any(part == ".." for part in path.parts):
        raise property_error(materialization, prop, f"must not contain '..', got {value!r}")
    if not path.parts or str(path) == ".":
        raise property_error(materialization, prop, f"must name a path, got {value!r}")
    return str(path)


def plain_name(materialization: str, prop: str, value: Any) -> str:
    """A name usable as one object-key segment."""
    if not isinstance(value, str) or not value or "/" in value or value in (".", "..") or value.startswith("."):
        raise property_error(materialization, prop, f"must be a plain name without '/', got {value!r}")
    return value
