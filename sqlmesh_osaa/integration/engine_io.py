"""Moving a model's rows between any SQLMesh engine and local parquet, through the engine adapter.

The kinds keep a native path on DuckDB (one ``COPY``, one ``read_parquet`` view). On every
other engine (PostgreSQL, Spark, ...) the SQL of that path does not exist, so:

- **export**: the model's table is read through the adapter: on PostgreSQL with
  ``COPY ... TO STDOUT`` in the text format into a local file when every column is a scalar
  type whose text round-trips exactly, else in batches of :data:`BATCH_ROWS` rows (a server-side cursor
  on PostgreSQL, a local iterator over the partitions on Spark, ``fetchmany`` elsewhere),
  each going as Arrow into a table of a private on-disk DuckDB. Either way DuckDB sees the
  rows with the model's column types and writes them with :func:`sorted_parquet_copy`, the
  very statement of the native path: the same rows give the same bytes on every engine.
  DuckDB runs under a memory limit and spills to its directory; Python holds one batch.
- **ingest**: the landing parquet is read by a private DuckDB in batches and handed to the
  engine as DataFrames through the adapter's own insert (VALUES on PostgreSQL, a Spark
  DataFrame on Spark), into a table ``osaa_landing.<source>`` that the model's query reads.
"""

from __future__ import annotations

import logging
import math
import tempfile
import typing as t
import uuid
from contextlib import contextmanager
from pathlib import Path

import duckdb
from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlmesh.utils import columns_to_types_all_known

from sqlmesh_osaa.duckdb_storage import configure_object_storage
from sqlmesh_osaa.settings import StorageSettings

_log = logging.getLogger(__name__)

NATIVE_DIALECT = "duckdb"
# Rows per batch fetched from (or inserted into) a non-DuckDB engine: bounds the memory of an export or ingest.
BATCH_ROWS = 50_000
# The private DuckDB that sorts and writes an export spills to disk beyond this.
DUCKDB_MEMORY_LIMIT = "256MB"
_STAGING_TABLE = "osaa_export_rows"
# The COPY hands every row to the file's write: a large buffer makes that a memcpy and one write(2) per MiB.
_COPY_BUFFER_BYTES = 1 << 20


def _types(*names: str) -> frozenset[exp.DataType.Type]:
    return frozenset(getattr(exp.DataType.Type, name) for name in names)


# Types whose text from PostgreSQL's COPY DuckDB reads back to the identical value (floats: shortest exact
# digits); only the string types' text can hold a backslash escape (the others print digits, signs, dates, t/f).
_ESCAPED_TYPES = _types("VARCHAR", "TEXT", "CHAR")
_TEXT_EXACT_TYPES = _ESCAPED_TYPES | _types(
    "TINYINT", "SMALLINT", "INT", "BIGINT", "FLOAT", "DOUBLE", "DECIMAL", "DATE", "TIMESTAMP", "TIMESTAMPNTZ", "BOOLEAN"
)
# COPY's text format writes these control characters as a backslash and a letter (and a backslash as two).
_TEXT_ESCAPES = {"b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}


def is_native(adapter: t.Any) -> bool:
    """Whether the adapter is DuckDB, where the kinds run their SQL in the engine itself."""
    return adapter.dialect == NATIVE_DIALECT


def sorted_parquet_copy(source: str, target: Path) -> str:
    """The DuckDB statement that writes ``source`` (a table or view name) as parquet, sorted.

    Both export paths use it, so equal content gives equal bytes whatever the engine.
    """
    path = exp.Literal.string(str(target)).sql(dialect=NATIVE_DIALECT)
    return f"COPY (SELECT * FROM {source} ORDER BY ALL) TO {path} (FORMAT parquet, COMPRESSION zstd)"


def export_parquet(
    adapter: t.Any, table_name: str, columns: t.Mapping[str, exp.DataType], target: Path, batch_rows: int = BATCH_ROWS
) -> None:
    """Write the rows of ``table_name`` on the adapter's engine to ``target`` as the native path would.

    ``columns`` are the model's column types: they, not whatever the engine's driver returns,
    decide the parquet schema, so a PostgreSQL ``numeric`` or a Spark ``int`` becomes the
    same parquet type as on DuckDB.
    """
    select = exp.select(*(exp.column(name, quoted=True) for name in columns)).from_(exp.to_table(table_name))
    staging = exp.to_identifier(_STAGING_TABLE).sql(dialect=NATIVE_DIALECT)
    copies_text = _copies_text(adapter, columns)
    # The COPY's file holds the rows, so DuckDB needs no database file of its own; the row path does.
    with _scratch_duckdb(target.parent, in_memory=copies_text) as (db, scratch):
        if copies_text:
            rows = scratch / "rows.txt"
            _postgres_copy_text(adapter, table_name, list(columns), rows)
            db.execute(f"CREATE VIEW {staging} AS {_read_copy_text(rows, columns)}")
        else:
            db.execute(f"CREATE TABLE {staging} ({_definition(columns)})")
            for batch in fetch_batches(adapter, select, batch_rows):
                _append(db, staging, batch)
        db.execute(sorted_parquet_copy(staging, target))
    _log.debug("Exported %s from the %s engine through its adapter", table_name, adapter.dialect)


def _definition(columns: t.Mapping[str, exp.DataType]) -> str:
    return ", ".join(
        f"{exp.to_identifier(name).sql(dialect=NATIVE_DIALECT, identify=True)} {dtype.sql(dialect=NATIVE_DIALECT)}"
        for name, dtype in columns.items()
    )


def _copies_text(adapter: t.Any, columns: t.Mapping[str, exp.DataType]) -> bool:
    """Whether PostgreSQL's ``COPY ... TO STDOUT`` text carries every column exactly (scalar types only)."""
    return _is_psycopg2(adapter) and all(dtype.this in _TEXT_EXACT_TYPES for dtype in columns.values())


def _is_psycopg2(adapter: t.Any) -> bool:
    """PostgreSQL through psycopg2, SQLMesh's driver for it: COPY and named cursors are there."""
    return adapter.dialect == "postgres" and type(adapter.connection).__module__.startswith("psycopg2")


def _postgres_copy_text(adapter: t.Any, table_name: str, names: list[str], target: Path) -> None:
    """Stream the table's rows to a local file with PostgreSQL's COPY: no row passes through Python.

    Run inside the adapter's transaction (SQLMesh's evaluation opens one), so COPY sees the
    table the same evaluation just wrote. The table form of COPY (not a query) is the fastest,
    and its text format costs the server and the client less than CSV (docs/decisions.md).
    A table of one column is copied with an empty second field (:func:`_padded`).
    """
    table = exp.to_table(table_name).sql(dialect="postgres", identify=True)
    listed = ", ".join(exp.to_identifier(name, quoted=True).sql(dialect="postgres") for name in names)
    source = f"(SELECT {listed}, '' FROM {table})" if _padded(len(names)) else f"{table} ({listed})"
    sql = f"COPY {source} TO STDOUT WITH (FORMAT text)"
    with adapter.transaction(), target.open("wb", buffering=_COPY_BUFFER_BYTES) as out:
        cursor = adapter.connection.cursor()
        try:
            cursor.copy_expert(sql, out)
        finally:
            cursor.close()


def _padded(columns: int) -> bool:
    """Whether the COPY of ``columns`` columns carries an empty extra field on every line.

    One column holding an empty string would be an empty line, which DuckDB's reader skips;
    a second, empty field keeps the row.
    """
    return columns == 1


def _read_copy_text(path: Path, columns: t.Mapping[str, exp.DataType]) -> str:
    """DuckDB's query of a COPY text file: tab-separated, no quoting, NULL as ``\\N``, strings unescaped.

    The file's fields are read as ``c0, c1, ...`` and selected under the model's names. Only a
    string holding a backslash pays for the unescaping (a ``contains`` test for the rest).
    """
    literal = lambda text: exp.Literal.string(text).sql(dialect=NATIVE_DIALECT)  # noqa: E731
    dtypes = [dtype.sql(dialect=NATIVE_DIALECT) for dtype in columns.values()]
    if _padded(len(dtypes)):
        dtypes.append("VARCHAR")
    types = ", ".join(f"'c{i}': {literal(dtype)}" for i, dtype in enumerate(dtypes))
    reader = (
        f"read_csv({literal(str(path))}, columns = {{{types}}}, header = false, delim = '\t', quote = '', "
        "escape = '', nullstr = '\\N', auto_detect = false)"
    )
    selected = ", ".join(
        f"{_unescaped(f'c{i}') if dtype.this in _ESCAPED_TYPES else f'c{i}'} AS "
        f"{exp.to_identifier(name, quoted=True).sql(dialect=NATIVE_DIALECT)}"
        for i, (name, dtype) in enumerate(columns.items())
    )
    return f"SELECT {selected} FROM {reader}"


def _unescaped(column: str) -> str:
    """``column`` with COPY's backslash escapes undone: split at each ``\\\\``, replace the letter escapes, join.

    In COPY's text every backslash of the data is doubled and every other backslash starts a
    letter escape, so the pieces between doubled backslashes hold letter escapes only.
    """
    piece = "p"
    for letter, code in _TEXT_ESCAPES.items():
        piece = f"replace({piece}, '\\{letter}', chr({code}))"
    undone = f"array_to_string(list_transform(string_split({column}, '\\\\'), lambda p: {piece}), '\\')"
    return f"CASE WHEN contains({column}, '\\') THEN {undone} ELSE {column} END"


def fetch_batches(adapter: t.Any, query: exp.Select, batch_rows: int) -> t.Iterator[list[tuple[t.Any, ...]]]:
    """The rows of ``query`` on the adapter's engine, ``batch_rows`` at a time, never all at once."""
    sql = query.sql(dialect=adapter.dialect, identify=True)
    if _is_psycopg2(adapter):
        yield from _server_side_batches(adapter, sql, batch_rows)
    elif getattr(adapter, "spark", None) is not None:
        yield from _spark_batches(adapter, sql, batch_rows)
    else:
        cursor = adapter.cursor
        cursor.execute(sql)
        while batch := cursor.fetchmany(batch_rows):
            yield [tuple(row) for row in batch]


def _server_side_batches(adapter: t.Any, sql: str, batch_rows: int) -> t.Iterator[list[tuple[t.Any, ...]]]:
    """A psycopg named cursor: the server keeps the result and sends ``batch_rows`` per round trip.

    Run inside the adapter's transaction (SQLMesh's evaluation opens one), so the cursor sees
    the table the same evaluation just wrote.
    """
    with adapter.transaction():
        cursor = adapter.connection.cursor(name=f"osaa_export_{uuid.uuid4().hex[:12]}")
        try:
            cursor.itersize = batch_rows
            cursor.execute(sql)
            while batch := cursor.fetchmany(batch_rows):
                yield batch
        finally:
            cursor.close()


def _spark_batches(adapter: t.Any, sql: str, batch_rows: int) -> t.Iterator[list[tuple[t.Any, ...]]]:
    """Rows streamed to the driver one partition at a time (never ``collect()`` of the whole table)."""
    batch: list[tuple[t.Any, ...]] = []
    for row in adapter.spark.sql(sql).toLocalIterator():
        batch.append(tuple(row))
        if len(batch) >= batch_rows:
            yield batch
            batch = []
    if batch:
        yield batch


def _append(db: duckdb.DuckDBPyConnection, staging: str, batch: list[tuple[t.Any, ...]]) -> None:
    """Insert one batch into the staging table; DuckDB casts each value to the column's pinned type."""
    import pyarrow as pa

    arrays = [pa.array(values) for values in zip(*batch)]
    arrow_batch = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
    db.register("osaa_batch", arrow_batch)
    try:
        db.execute(f"INSERT INTO {staging} SELECT * FROM osaa_batch")
    finally:
        db.unregister("osaa_batch")


@contextmanager
def _scratch_duckdb(directory: Path, in_memory: bool) -> t.Iterator[tuple[duckdb.DuckDBPyConnection, Path]]:
    """A private DuckDB (in memory, or a file in the scratch directory), limited in memory and
    spilling to a scratch directory under ``directory``, which is removed on exit."""
    with tempfile.TemporaryDirectory(prefix="osaa-engine-io-", dir=directory) as scratch:
        db = duckdb.connect(":memory:" if in_memory else str(Path(scratch) / "rows.duckdb"))
        try:
            db.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
            db.execute(f"SET temp_directory = {exp.Literal.string(scratch).sql(dialect=NATIVE_DIALECT)}")
            yield db, Path(scratch)
        finally:
            db.close()


@contextmanager
def landing_table(
    adapter: t.Any,
    table: exp.Table,
    uris: list[str],
    storage: StorageSettings,
    model_dialect: str,
    batch_rows: int = BATCH_ROWS,
) -> t.Iterator[None]:
    """``table`` on the adapter's engine, holding the landing files ``uris``, dropped on exit.

    Column names are normalized as the model's dialect normalizes the identifiers of its query
    (DuckDB: lower case), so the query finds them by the names it uses on DuckDB.
    """
    adapter.drop_table(table, exists=True)
    try:
        _fill_landing(adapter, table, uris, storage, model_dialect, batch_rows)
        yield
    finally:
        adapter.drop_table(table, exists=True)


def _fill_landing(
    adapter: t.Any, table: exp.Table, uris: list[str], storage: StorageSettings, model_dialect: str, batch_rows: int
) -> None:
    with duckdb.connect() as db:
        configure_object_storage(db, storage)
        db.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        source = "SELECT * FROM read_parquet($files, union_by_name = true)"
        described = db.execute(f"DESCRIBE {source}", {"files": uris}).fetchall()
        columns = _landing_columns(described, model_dialect)
        adapter.create_table(table, columns)
        as_values = _is_psycopg2(adapter)
        for batch in db.execute(source, {"files": uris}).to_arrow_reader(batch_rows):
            adapter.insert_append(table, _frame(batch, list(columns), as_values), columns)


def _frame(batch: t.Any, names: list[str], as_values: bool) -> t.Any:
    """A DataFrame of Python values: NULL stays None, an integer stays exact, a NaN stays NaN.

    SQLMesh turns a DataFrame into VALUES on PostgreSQL, and sqlglot converts a float NaN or
    infinity to NULL there; as ``as_values`` they go as typed literals instead.
    """
    import pandas as pd

    def column_values(column: t.Any) -> list[t.Any]:
        values = column.to_pylist()
        if as_values and _is_floating(column.type):
            return [_special_float(value) for value in values]
        return values

    return pd.DataFrame(
        {name: pd.Series(column_values(column), dtype=object) for name, column in zip(names, batch.columns)}
    )


def _is_floating(arrow_type: t.Any) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(arrow_type)


def _special_float(value: t.Any) -> t.Any:
    if value is None or math.isfinite(value):
        return value
    text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return exp.cast(exp.Literal.string(text), exp.DataType.build("DOUBLE"))


def _landing_columns(described: list[tuple[t.Any, ...]], model_dialect: str) -> dict[str, exp.DataType]:
    """Landing column name, as the model's query sees it, -> type.

    DuckDB makes column names unique case-insensitively when it reads the files, so no two
    names can collide once lower-cased.
    """
    return {
        normalize_identifiers(exp.to_identifier(name, quoted=True), dialect=model_dialect).name: exp.DataType.build(
            dtype, dialect=NATIVE_DIALECT
        )
        for name, dtype, *_ in described
    }


def export_columns(adapter: t.Any, table_name: str, model: t.Any) -> dict[str, exp.DataType]:
    """The model's column types when SQLMesh knows them all, else the types of the table on the engine."""
    declared = model.columns_to_types
    if declared and columns_to_types_all_known(declared):
        return dict(declared)
    return adapter.columns(table_name)
