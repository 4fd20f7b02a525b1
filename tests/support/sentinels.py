"""Searching everything a run left for secret values: outputs, files, DuckDB databases, object metadata.

A DuckDB file compresses its strings, so a byte search of it proves nothing: each database
found is copied (with its WAL) and every row of every table is searched as text, as well as
the raw bytes of every file.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import duckdb

_DUCKDB_MAGIC = b"DUCK"


def leaks(
    secrets: Iterable[str], *, texts: Iterable[str] = (), roots: Iterable[Path] = (), store: Any = None
) -> list[str]:
    """Where any of ``secrets`` appears: ``texts``, files under ``roots`` (DuckDB rows included), ``store``'s metadata."""
    secrets = [value for value in secrets if value]
    found = [f"output #{index}" for index, text in enumerate(texts) if any(value in text for value in secrets)]
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            found.extend(f"{path}{where}" for where in _file_leaks(path, secrets))
    if store is not None:
        for info in store.list_prefix(""):
            head = store.head(info.key)
            if head is not None and any(value in repr(dict(head.metadata)) for value in secrets):
                found.append(f"metadata of {store.bucket}/{info.key}")
    return found


def _file_leaks(path: Path, secrets: list[str]) -> list[str]:
    content = path.read_bytes()
    where = [" (bytes)"] if any(value.encode() in content for value in secrets) else []
    if content[8:12] == _DUCKDB_MAGIC:
        where.extend(f" (table {table})" for table in _duckdb_tables_holding(path, secrets))
    return where


def _duckdb_tables_holding(path: Path, secrets: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="sentinel-db-") as workdir:
        copy = Path(workdir) / path.name
        shutil.copyfile(path, copy)
        wal = path.with_name(path.name + ".wal")
        if wal.exists():
            shutil.copyfile(wal, copy.with_name(copy.name + ".wal"))
        with duckdb.connect(str(copy)) as database:
            tables = database.execute(
                "SELECT table_catalog, table_schema, table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE'"
            ).fetchall()
            holding = []
            for catalog, schema, table in tables:
                name = ".".join(f'"{part}"' for part in (catalog, schema, table))
                rows = repr(database.execute(f"SELECT * FROM {name}").fetchall())
                if any(value in rows for value in secrets):
                    holding.append(f"{schema}.{table}")
            return holding
