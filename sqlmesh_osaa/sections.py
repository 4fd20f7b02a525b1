"""Settings sections: frozen value objects that check and coerce their own fields.

A section is a subclass of :class:`Section` whose annotated fields are plain types (``str``,
``int``, ``float``, ``bool``, ``Path``, ``Literal[...]``, ``X | None``, ``dict[str, str]``) or
other sections. Constructing one (directly, from plain data with :meth:`Section.from_data`,
or with :func:`replace`) coerces lax inputs the way settings arrive (``"5"`` from an
environment variable becomes ``5``, ``"false"`` becomes ``False``, a string becomes a
``Path``), enforces the bounds given with :func:`setting`, runs the section's own checks, and
raises :class:`Invalid` naming the field's location, the reason and the value. Sections are
immutable, compare and hash by value.

Why not pydantic: importing it and building the settings models cost 0.17-0.25 s of CPU at
every command's start, more than an unchanged ``osaa-ingest`` re-run needs for all its work
(docs/decisions.md, "Settings are frozen value objects"). Why not ``dataclasses`` either: each
frozen dataclass generates its methods with ``exec`` when its module is imported, 1-2 ms a
class; one generic implementation here costs nothing per class.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

S = TypeVar("S", bound="Section")
_MISSING: Any = object()
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})
_NONE_TYPE = type(None)


class Invalid(ValueError):
    """A field (``location``, outermost first; empty for the whole document) that cannot be used."""

    def __init__(self, location: tuple[str, ...], reason: str, value: Any, *, unknown: bool = False) -> None:
        super().__init__(f"{'.'.join(location) or 'settings'}: {reason}")
        self.location = location
        self.reason = reason
        self.value = value
        self.unknown = unknown

    def inside(self, name: str) -> Invalid:
        return Invalid((name, *self.location), self.reason, self.value, unknown=self.unknown)


class Field:
    """A section's field as declared: its default (or factory) and its bounds."""

    __slots__ = ("default", "default_factory", "bounds")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | None, bounds: Mapping[str, Any]) -> None:
        self.default = default
        self.default_factory = default_factory
        self.bounds = bounds

    def initial(self, owner: str, name: str) -> Any:
        if self.default_factory is not None:
            return self.default_factory()
        if self.default is _MISSING:
            raise TypeError(f"{owner}() missing the setting {name!r}")
        return self.default


def setting(
    default: Any = _MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
) -> Any:
    """A field with bounds: numbers ``ge``/``gt``/``le``, strings ``min_length``/``max_length``/``pattern``."""
    bounds = {"ge": ge, "gt": gt, "le": le, "min_length": min_length, "max_length": max_length, "pattern": pattern}
    return Field(default, default_factory, {name: value for name, value in bounds.items() if value is not None})


def _check_bounds(value: Any, bounds: Mapping[str, Any]) -> None:
    if value is None:
        return
    if "ge" in bounds and value < bounds["ge"]:
        raise ValueError(f"must be greater than or equal to {bounds['ge']}")
    if "gt" in bounds and value <= bounds["gt"]:
        raise ValueError(f"must be greater than {bounds['gt']}")
    if "le" in bounds and value > bounds["le"]:
        raise ValueError(f"must be less than or equal to {bounds['le']}")
    if "min_length" in bounds and len(value) < bounds["min_length"]:
        raise ValueError(f"must have at least {bounds['min_length']} characters")
    if "max_length" in bounds and len(value) > bounds["max_length"]:
        raise ValueError(f"must have at most {bounds['max_length']} characters")
    if "pattern" in bounds and not re.match(bounds["pattern"], value):
        raise ValueError(f"must match the pattern {bounds['pattern']!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("must be a boolean (true or false)")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError("must be an integer")


def _to_float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError("must be a number")


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError("must be a string")


def _to_path(value: Any) -> Path:
    if isinstance(value, (str, PathLike)):
        return Path(value)
    raise ValueError("must be a path")


def _to_str_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("must be a mapping of names to strings")
    return dict(value)


_SCALARS: dict[Any, Callable[[Any], Any]] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, Path: _to_path}


def _coerce(hint: Any, value: Any) -> Any:
    """``value`` as the type ``hint`` names; ValueError (or Invalid, inside a section) when it is not one."""
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value in choices:
            return value
        raise ValueError(f"must be one of {', '.join(repr(choice) for choice in choices)}")
    if origin in (Union, types.UnionType):
        options = [option for option in get_args(hint) if option is not _NONE_TYPE]
        if value is None and len(options) < len(get_args(hint)):
            return None
        return _coerce(options[0], value)
    if origin is dict:
        return _to_str_dict(value)
    if isinstance(hint, type) and issubclass(hint, Section):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return hint.from_data(value)
        raise ValueError("must be a mapping of settings")
    return _SCALARS[hint](value)


def _hashable(value: Any) -> Any:
    return tuple(sorted(value.items())) if isinstance(value, dict) else value


class Section:
    """Base of the settings sections; a subclass may add ``_checks`` per field and a whole-section ``_check``."""

    # Per field: a function of the coerced value returning the value to keep, raising ValueError.
    _checks: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    _fields: ClassVar[dict[str, Field]] = {}
    _hints: ClassVar[dict[str, Any] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = dict(cls._fields)
        for name in cls.__dict__.get("__annotations__", {}):
            if name.startswith("_"):
                continue
            declared = cls.__dict__.get(name, _MISSING)
            fields[name] = declared if isinstance(declared, Field) else Field(declared, None, {})
            if declared is not _MISSING:
                delattr(cls, name)
        cls._fields = fields
        cls._hints = None

    def __init__(self, **values: Any) -> None:
        cls = type(self)
        unknown = set(values) - set(cls._fields)
        if unknown:
            raise TypeError(f"{cls.__name__}() got unknown settings: {', '.join(sorted(unknown))}")
        if cls._hints is None:
            cls._hints = get_type_hints(cls)
        for name, field in cls._fields.items():
            raw = values[name] if name in values else field.initial(cls.__name__, name)
            try:
                value = _coerce(cls._hints[name], raw)
                _check_bounds(value, field.bounds)
                if name in self._checks:
                    value = self._checks[name](value)
            except Invalid as invalid:
                raise invalid.inside(name) from None
            except ValueError as error:
                raise Invalid((name,), str(error), raw) from None
            object.__setattr__(self, name, value)
        try:
            self._check()
        except Invalid:
            raise
        except ValueError as error:
            raise Invalid((), str(error), None) from None

    def _check(self) -> None:
        """Checks across fields; raise ValueError."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: make a changed copy with sections.replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, *(_hashable(value) for value in self._values())))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({shown})"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls._fields)

    @classmethod
    def from_data(cls: type[S], data: Mapping[str, Any]) -> S:
        """The section from plain data (YAML, environment strings); unknown keys are :class:`Invalid`."""
        for key, value in data.items():
            if key not in cls._fields:
                raise Invalid((str(key),), "unknown setting", value, unknown=True)
        return cls(**data)


def replace(section: S, **changes: Any) -> S:
    """A copy of ``section`` with ``changes``, checked like any new section."""
    return type(section)(**{**{name: getattr(section, name) for name in section.field_names()}, **changes})
