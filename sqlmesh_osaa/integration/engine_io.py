"""Moving a model's rows between any SQLMesh engine and local parquet, through the engine adapter.

The kinds keep a native path on DuckDB (one ``COPY``, one ``read_parquet`` view). On every
other engine (PostgreSQL, Spark, ...) the SQL of that path does not exist, so:

- **export**: the model's table is read through the adapter in batches of
  :data:`BATCH_ROWS` rows (a server-side cursor on PostgreSQL, a local iterator over the
  partitions on Spark, ``fetchmany`` elsewhere). Each batch goes, as Arrow, into a
  table of a private on-disk DuckDB whose columns have the model's types, and that table
  is written with :func:`sorted_parquet_copy`, the very statement of the native path: the
  same rows give the same bytes on every engine. DuckDB runs under a memory limit and
  spills to its directory, so memory is bounded by the batch, not by the table.
- **ingest**: the landing parquet is read by a private DuckDB in batches and handed to the
  engine as DataFrames through the adapter's own insert (VALUES on PostgreSQL, a Spark
  DataFrame on Spark), into a table ``osaa_landing.<source>`` that the model's query reads.
"""

from __future__ import annotations

import logging
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
_POSTGRES_DIALECTS = ("postgres", "redshift")


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
) -> int:
    """Write the rows of ``table_name`` on the adapter's engine to ``target``; returns the row count.

    ``columns`` are the model's column types: they, not whatever the engine's driver returns,
    decide the parquet schema, so a PostgreSQL ``numeric`` or a Spark ``int`` becomes the
    same parquet type as on DuckDB.
    """
    staging = exp.to_identifier(_STAGING_TABLE).sql(dialect=NATIVE_DIALECT)
    definition = ", ".join(
        f"{exp.to_identifier(name).sql(dialect=NATIVE_DIALECT, identify=True)} {dtype.sql(dialect=NATIVE_DIALECT)}"
        for name, dtype in columns.items()
    )
    select = exp.select(*(exp.column(name, quoted=True) for name in columns)).from_(exp.to_table(table_name))
    rows = 0
    with _scratch_duckdb(target.parent) as db:
        db.execute(f"CREATE TABLE {staging} ({definition})")
        for batch in fetch_batches(adapter, select, batch_rows):
            _append(db, staging, list(columns), batch)
            rows += len(batch)
        db.execute(sorted_parquet_copy(staging, target))
    _log.debug("Exported %d row(s) of %s from %s through the engine adapter", rows, table_name, adapter.dialect)
    return rows


def fetch_batches(adapter: t.Any, query: exp.Select, batch_rows: int) -> t.Iterator[list[tuple[t.Any, ...]]]:
    """The rows of ``query`` on the adapter's engine, ``batch_rows`` at a time, never all at once."""
    sql = query.sql(dialect=adapter.dialect, identify=True)
    if adapter.dialect in _POSTGRES_DIALECTS:
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


def _append(db: duckdb.DuckDBPyConnection, staging: str, names: list[str], batch: list[tuple[t.Any, ...]]) -> None:
    """Insert one batch into the staging table; DuckDB casts each value to the column's pinned type."""
    import pyarrow as pa

    arrays = [pa.array(values) for values in zip(*batch)]
    arrow_batch = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(names))])
    db.register("osaa_batch", arrow_batch)
    try:
        db.execute(f"INSERT INTO {staging} SELECT * FROM osaa_batch")
    finally:
        db.unregister("osaa_batch")


@contextmanager
def _scratch_duckdb(directory: Path) -> t.Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB file of its own under ``directory``, limited in memory, spilling beside it, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="osaa-engine-io-", dir=directory) as scratch:
        db = duckdb.connect(str(Path(scratch) / "rows.duckdb"))
        try:
            db.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
            db.execute(f"SET temp_directory = {exp.Literal.string(scratch).sql(dialect=NATIVE_DIALECT)}")
            yield db
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
        for batch in db.execute(source, {"files": uris}).to_arrow_reader(batch_rows):
            frame = batch.to_pandas()
            frame.columns = list(columns)
            adapter.insert_append(table, frame.astype(object).where(frame.notna(), None), columns)


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
