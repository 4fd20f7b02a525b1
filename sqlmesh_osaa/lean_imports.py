"""Keeping pandas out of a process that never uses it.

DuckDB's Python client imports pandas (and with it numpy and pyarrow: about 80 MB of memory
and 0.3-0.6 s here) the first time a statement binds a parameter, only to test whether the
value is a pandas object. The core binds strings, numbers and datetimes and never hands DuckDB
a pandas object (checkpoint batches travel as CSV files), so a command of the core can tell
DuckDB that pandas is absent. Only processes that own their imports (the ``osaa-ingest``
console script) do so; inside ``sqlmesh`` pandas is imported already and this does nothing.
"""

from __future__ import annotations

import sys

_BLOCKED = ("pandas",)


def keep_pandas_out() -> None:
    """Make ``import pandas`` fail in this process unless it has been imported already."""
    for name in _BLOCKED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
