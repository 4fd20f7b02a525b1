"""``engine_io`` on a real PostgreSQL engine adapter: the same parquet bytes as DuckDB's native COPY.

SQLMesh's own ``PostgresEngineAdapter`` (psycopg2) on the session's server, against a DuckDB
file holding the same rows: the export must match byte for byte whatever the batch size,
with NULLs, empty strings, non-ASCII text, decimals, dates, timestamps and booleans; the
ingest side must give PostgreSQL the landing rows under the names the model's query uses.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pytest
from sqlglot import exp
from sqlmesh.core.config.connection import PostgresConnectionConfig
from support.pgserver import ROLE, PostgresServer

from sqlmesh_osaa.integration import engine_io
from sqlmesh_osaa.settings import StorageSettings

pytestmark = pytest.mark.postgres

COLUMNS = {
    "name": "VARCHAR",
    "n": "INTEGER",
    "big": "BIGINT",
    "x": "DOUBLE",
    "amount": "DECIMAL(18, 3)",
    "day": "DATE",
    "at": "TIMESTAMP",
    "flag": "BOOLEAN",
}
ROWS = [
    "('Côte d''Ivoire', 1, 9007199254740993, 0.1, 12.5, DATE '2024-01-31', TIMESTAMP '2024-01-31 10:11:12.123456', TRUE)",
    "('', NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "(NULL, -7, -1, -2.5e300, -0.001, DATE '1960-01-01', TIMESTAMP '1999-12-31 23:59:59', FALSE)",
    "('zz \"quoted\", comma', 3, 3, 1e-300, 999999999999999.999, DATE '2030-12-31', TIMESTAMP '2030-01-01 00:00:00', NULL)",
    "('b', 2, NULL, NULL, NULL, NULL, NULL, NULL)",
]

# Strings with backslashes, quotes, commas and control characters, or that look like a NULL, an escape or
# the end-of-data marker of COPY's text format.
ESCAPED_COLUMNS = {"s": "VARCHAR", "n": "INTEGER"}
ESCAPED_ROWS = [
    f"({value}, {i})"
    for i, value in enumerate(
        [
            r"'a\b'", r"'\\'", r"'\N'", r"'\'", r"'x\'", r"'\t'", r"'\\n'", "'N'", "''", "NULL",
            "'tab' || chr(9) || 'x'", "chr(10)", "chr(13) || chr(10)", "chr(8) || chr(12) || chr(11)",
            r"'\' || chr(10)", r"chr(10) || '\'", r"'\' || chr(9) || '\\'", "chr(1)", r"'é\ü,\"q\"'",
            r"'\.'", "chr(13)", "' padded '", "'\"'", r"'a longer string than twelve bytes \n with \\ escapes'",
            r"'\b\f\n\r\t\v'", "',,'", r"'a,\,b'", "chr(8) || chr(12) || chr(10) || chr(13) || chr(9) || chr(11)",
        ]
    )
]

# Types PostgreSQL's CSV cannot carry exactly: these take the server-side cursor and Arrow batches.
NESTED_COLUMNS = {"name": "VARCHAR", "tags": "VARCHAR[]", "at": "TIMESTAMPTZ"}
NESTED_ROWS = [
    "('a', ['x', 'y, z'], TIMESTAMPTZ '2024-01-31 10:11:12.5+00')",
    "('b', NULL, NULL)",
    "('c', CAST([] AS VARCHAR[]), TIMESTAMPTZ '1999-12-31 23:00:00+02')",
]


@pytest.fixture
def adapter(postgres_engine: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("PGPASSFILE", str(postgres_engine.passfile))
    database = postgres_engine.create_database().split("dbname=")[1].split()[0]
    config = PostgresConnectionConfig(
        host="127.0.0.1", port=postgres_engine.port, user=ROLE, password="", database=database
    )
    engine = config.create_engine_adapter()
    try:
        yield engine
    finally:
        engine.close()


def _types(columns: dict[str, str] = COLUMNS) -> dict[str, exp.DataType]:
    return {name: exp.DataType.build(dtype, dialect="duckdb") for name, dtype in columns.items()}


def _table_sql(table: str, rows: list[str], columns: dict[str, str] = COLUMNS) -> list[str]:
    definition = ", ".join(f'"{name}" {dtype}' for name, dtype in columns.items())
    statements = [f"CREATE TABLE {table} ({definition})"]
    if rows:
        statements.append(f"INSERT INTO {table} VALUES {', '.join(rows)}")
    return statements


def _native_export(tmp_path: Path, rows: list[str], columns: dict[str, str] = COLUMNS) -> bytes:
    target = tmp_path / "native.parquet"
    with duckdb.connect(str(tmp_path / "native.duckdb")) as db:
        for statement in _table_sql("t", rows, columns):
            db.execute(statement)
        db.execute(engine_io.sorted_parquet_copy("t", target))
    return target.read_bytes()


def _postgres_export(
    adapter: Any, tmp_path: Path, rows: list[str], batch_rows: int, columns: dict[str, str] = COLUMNS
) -> bytes:
    adapter.execute("CREATE SCHEMA IF NOT EXISTS s")
    for statement in _table_sql("s.t", rows, columns):
        adapter.execute(exp.maybe_parse(statement, dialect="duckdb"))
    target = tmp_path / "engine.parquet"
    engine_io.export_parquet(adapter, "s.t", _types(columns), target, batch_rows=batch_rows)
    return target.read_bytes()


@pytest.mark.parametrize("batch_rows", [1, 2, 50_000])
def test_postgres_export_is_byte_identical_to_duckdbs_native_copy(
    adapter: Any, tmp_path: Path, batch_rows: int
) -> None:
    assert _postgres_export(adapter, tmp_path, ROWS, batch_rows) == _native_export(tmp_path, ROWS)


def test_postgres_export_of_strings_with_escapes_and_control_characters_is_byte_identical_to_duckdbs(
    adapter: Any, tmp_path: Path
) -> None:
    exported = _postgres_export(adapter, tmp_path, ESCAPED_ROWS, 50_000, ESCAPED_COLUMNS)
    assert exported == _native_export(tmp_path, ESCAPED_ROWS, ESCAPED_COLUMNS)


def test_postgres_export_gives_back_every_escaped_string_as_postgresql_holds_it(adapter: Any, tmp_path: Path) -> None:
    _postgres_export(adapter, tmp_path, ESCAPED_ROWS, 50_000, ESCAPED_COLUMNS)
    held = dict((n, s) for s, n in adapter.fetchall('SELECT s, n FROM s.t'))
    with duckdb.connect() as db:
        exported = dict((n, s) for s, n in db.execute(f"SELECT s, n FROM '{tmp_path / 'engine.parquet'}'").fetchall())
    assert exported == held
    assert held[3] == chr(92) and held[9] is None and held[8] == ""


@pytest.mark.parametrize("batch_rows", [1, 50_000])
def test_postgres_export_of_lists_and_time_zones_is_byte_identical_to_duckdbs(
    adapter: Any, tmp_path: Path, batch_rows: int
) -> None:
    exported = _postgres_export(adapter, tmp_path, NESTED_ROWS, batch_rows, NESTED_COLUMNS)
    assert exported == _native_export(tmp_path, NESTED_ROWS, NESTED_COLUMNS)


def test_postgres_export_of_an_empty_table_is_byte_identical_to_duckdbs(adapter: Any, tmp_path: Path) -> None:
    assert _postgres_export(adapter, tmp_path, [], 10) == _native_export(tmp_path, [])


def test_postgres_export_of_a_single_text_column_keeps_its_empty_strings(adapter: Any, tmp_path: Path) -> None:
    rows = ["('')", "('a')", "('')", "(NULL)"]
    columns = {"s": "VARCHAR"}
    assert _postgres_export(adapter, tmp_path, rows, 10, columns) == _native_export(tmp_path, rows, columns)


def test_postgres_export_of_many_rows_with_escaped_strings_is_byte_identical_to_duckdbs(
    adapter: Any, tmp_path: Path
) -> None:
    rows = (
        "SELECT 'r' || CAST(i AS VARCHAR) || CASE WHEN i % 7 = 0 THEN chr(9) || chr(92) || 'n' ELSE '' END AS s, "
        "CAST(i AS DOUBLE) / 3 AS x FROM generate_series(1, 200000) AS g(i)"
    )
    with duckdb.connect() as db:
        db.execute(f"CREATE TABLE t AS {rows}")
        db.execute(engine_io.sorted_parquet_copy("t", tmp_path / "native.parquet"))
    adapter.execute(exp.maybe_parse(f"CREATE TABLE big AS {rows}", dialect="duckdb"))
    engine_io.export_parquet(adapter, "big", _types({"s": "VARCHAR", "x": "DOUBLE"}), tmp_path / "engine.parquet")
    assert (tmp_path / "engine.parquet").read_bytes() == (tmp_path / "native.parquet").read_bytes()


def test_postgres_rows_arrive_in_batches_of_at_most_the_batch_size(adapter: Any) -> None:
    adapter.execute("CREATE TABLE series AS SELECT generate_series(1, 10) AS i")
    batches = list(engine_io.fetch_batches(adapter, exp.select("i").from_("series"), 4))
    assert [len(batch) for batch in batches] == [4, 4, 2]


def test_postgres_export_leaves_no_scratch_file_behind(adapter: Any, tmp_path: Path) -> None:
    _postgres_export(adapter, tmp_path, ROWS, 2)
    assert [path.name for path in tmp_path.iterdir()] == ["engine.parquet"]


def test_postgres_export_raises_when_the_copy_fails(
    adapter: Any, tmp_path: Path
) -> None:
    adapter.execute("CREATE SCHEMA IF NOT EXISTS s")
    for statement in _table_sql("s.t", ROWS):
        adapter.execute(exp.maybe_parse(statement, dialect="duckdb"))
    adapter.execute("CREATE VIEW s.v AS SELECT * FROM s.t")  # COPY refuses a view
    with pytest.raises(Exception, match="cannot copy from view"):
        engine_io.export_parquet(adapter, "s.v", _types(), tmp_path / "engine.parquet")
    assert adapter.fetchall("SELECT count(*) FROM s.t") == [(len(ROWS),)]
    assert list(tmp_path.iterdir()) == []


def test_postgres_export_that_duckdb_rejects_raises_and_leaves_the_connection_usable(
    adapter: Any, tmp_path: Path
) -> None:
    adapter.execute("CREATE TABLE wide AS SELECT i AS n FROM generate_series(1, 300000) AS s(i)")
    adapter.execute("ALTER TABLE wide ALTER COLUMN n TYPE TEXT")
    adapter.execute("INSERT INTO wide VALUES ('not a number')")
    with pytest.raises(duckdb.Error, match="not a number"):
        engine_io.export_parquet(adapter, "wide", _types({"n": "INTEGER"}), tmp_path / "engine.parquet")
    assert adapter.fetchall("SELECT count(*) FROM wide") == [(300001,)]


def _landing_file(tmp_path: Path) -> str:
    path = tmp_path / "landing.parquet"
    with duckdb.connect() as db:
        db.execute(
            "COPY (SELECT * FROM (VALUES ('NGA', 'CR.1', 2023, 74.0, 9007199254740993), "
            "('KEN', NULL, 2023, NULL, NULL), ('UGA', 'CR.2', NULL, 'NaN'::DOUBLE, -1)) "
            f"AS v(\"Country Code\", INDICATOR_ID, \"2023\", VALUE, BIG)) TO '{path}' (FORMAT parquet)"
        )
    return str(path)


def test_postgres_landing_table_holds_the_landing_rows_under_the_models_names(adapter: Any, tmp_path: Path) -> None:
    adapter.execute("CREATE SCHEMA IF NOT EXISTS osaa_landing")
    table = exp.table_("sdg", db="osaa_landing")
    storage = StorageSettings(backend="local", root=tmp_path)
    with engine_io.landing_table(adapter, table, [_landing_file(tmp_path)], storage, "duckdb"):
        rows = adapter.fetchall('SELECT "country code", indicator_id, "2023", value, big FROM osaa_landing.sdg ORDER BY 1')
    assert rows[:2] == [("KEN", None, 2023, None, None), ("NGA", "CR.1", 2023, 74.0, 9007199254740993)]
    assert rows[2][:3] == ("UGA", "CR.2", None) and math.isnan(rows[2][3]) and rows[2][4] == -1


def test_postgres_landing_table_is_dropped_after_the_model_read_it(adapter: Any, tmp_path: Path) -> None:
    adapter.execute("CREATE SCHEMA IF NOT EXISTS osaa_landing")
    table = exp.table_("sdg", db="osaa_landing")
    storage = StorageSettings(backend="local", root=tmp_path)
    with engine_io.landing_table(adapter, table, [_landing_file(tmp_path)], storage, "duckdb"):
        pass
    assert not adapter.table_exists(table)
