"""CSV to parquet with DuckDB: what lands, and what each kind of bad file is told."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from sqlmesh_osaa.conversion import ConversionResult, convert_csv_to_parquet
from sqlmesh_osaa.exceptions import ErrorCategory, FileConversionError


def write_csv(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def read_parquet(path: Path) -> list[tuple]:
    connection = duckdb.connect()
    try:
        return connection.execute("SELECT * FROM read_parquet($path)", {"path": str(path)}).fetchall()
    finally:
        connection.close()


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_a_good_csv_becomes_a_parquet_with_its_rows_and_columns(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "gdp.csv", "country,year,value\nNGA,2020,1.5\nKEN,2021,2.25\n")
    target = tmp_path / "out" / "gdp.parquet"

    result = convert_csv_to_parquet(csv, target)

    assert result == ConversionResult(
        source_path=csv,
        parquet_path=target,
        rows=2,
        columns=["country", "year", "value"],
        bytes=target.stat().st_size,
    )
    assert read_parquet(target) == [("NGA", 2020, 1.5), ("KEN", 2021, 2.25)]


def test_the_parquet_is_zstd_compressed(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "a.csv", "a\n1\n")
    target = tmp_path / "a.parquet"

    convert_csv_to_parquet(csv, target)

    codecs = duckdb.sql(f"SELECT DISTINCT compression FROM parquet_metadata('{target}')").fetchall()
    assert codecs == [("ZSTD",)]


def test_quoted_fields_with_commas_quotes_and_newlines_survive(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "notes.csv", 'id,note\n1,"a, b"\n2,"say ""hi"""\n3,"two\nlines"\n')
    target = tmp_path / "notes.parquet"

    convert_csv_to_parquet(csv, target)

    assert read_parquet(target) == [(1, "a, b"), (2, 'say "hi"'), (3, "two\nlines")]


def test_one_connection_converts_many_files(tmp_path: Path) -> None:
    connection = duckdb.connect()
    results = [
        convert_csv_to_parquet(
            write_csv(tmp_path, f"f{index}.csv", f"n\n{index}\n"),
            tmp_path / f"f{index}.parquet",
            connection=connection,
        )
        for index in range(3)
    ]

    assert [read_parquet(result.parquet_path) for result in results] == [[(0,)], [(1,)], [(2,)]]
    assert connection.execute("SELECT 42").fetchone() == (42,)


def test_a_failed_file_does_not_spoil_the_shared_connection(tmp_path: Path) -> None:
    connection = duckdb.connect()
    bad = write_csv(tmp_path, "bad.csv", "a,b\n1,2,3\n")
    good = write_csv(tmp_path, "good.csv", "a\n1\n")
    with pytest.raises(FileConversionError):
        convert_csv_to_parquet(bad, tmp_path / "bad.parquet", connection=connection)

    result = convert_csv_to_parquet(good, tmp_path / "good.parquet", connection=connection)

    assert result.rows == 1


@pytest.mark.parametrize(
    "name",
    [
        "it's.csv",
        'say "hi".csv',
        "with space.csv",
        "ünïcødé 数据.csv",
        "-leading-dash.csv",
        "x'); DROP TABLE t; --.csv",
    ],
)
def test_awkward_file_names_convert(tmp_path: Path, name: str) -> None:
    csv = write_csv(tmp_path / f"dir '{name}'", name, "a\n1\n2\n")
    target = tmp_path / f"out '{name}'" / f"{name}.parquet"

    result = convert_csv_to_parquet(csv, target)

    assert result.rows == 2
    assert read_parquet(target) == [(1,), (2,)]


def test_glob_characters_in_a_name_read_exactly_that_file(tmp_path: Path) -> None:
    exact = write_csv(tmp_path, "data[1].csv", "a\n1\n")
    write_csv(tmp_path, "data1.csv", "a\n9\n9\n9\n")
    wildcard = write_csv(tmp_path, "d*?.csv", "a\n5\n")

    assert convert_csv_to_parquet(exact, tmp_path / "exact.parquet").rows == 1
    assert convert_csv_to_parquet(wildcard, tmp_path / "wildcard.parquet").rows == 1
    assert read_parquet(tmp_path / "exact.parquet") == [(1,)]


def test_a_newline_in_a_file_name_is_passed_safely(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "two\nlines.csv", "a\n1\n")

    assert convert_csv_to_parquet(csv, tmp_path / "out\n.parquet").rows == 1


def test_a_header_only_file_is_a_valid_empty_table(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "nothing-yet.csv", "country,year,value\n")
    target = tmp_path / "nothing-yet.parquet"

    result = convert_csv_to_parquet(csv, target)

    assert (result.rows, result.columns) == (0, ["country", "year", "value"])
    assert read_parquet(target) == []


def test_a_late_value_that_breaks_the_sampled_type_is_kept_as_text(tmp_path: Path) -> None:
    lines = ["code,value"] + [f"{index},{index}" for index in range(30_000)] + ["n/a,1"]
    csv = write_csv(tmp_path, "late.csv", "\n".join(lines) + "\n")
    target = tmp_path / "late.parquet"

    result = convert_csv_to_parquet(csv, target)

    assert result.rows == 30_001
    assert read_parquet(target)[-1] == ("n/a", 1)


def assert_refused(csv: Path, target: Path, *fragments: str) -> FileConversionError:
    with pytest.raises(FileConversionError) as info:
        convert_csv_to_parquet(csv, target)
    error = info.value
    assert error.category is ErrorCategory.PERMANENT
    assert str(csv) in str(error)
    for fragment in fragments:
        assert fragment in str(error)
    return error


def test_a_row_with_too_many_fields_is_a_malformed_csv(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "ragged.csv", "a,b\n1,2\n3,4,5\n6,7\n")

    assert_refused(csv, tmp_path / "ragged.parquet", "Malformed CSV", "as many fields as the header")


def test_a_ragged_row_beyond_the_sniffer_sample_is_a_malformed_csv(tmp_path: Path) -> None:
    lines = ["a,b"] + [f"{index},x" for index in range(30_000)] + ["1,2,3"]
    csv = write_csv(tmp_path, "late-ragged.csv", "\n".join(lines) + "\n")

    assert_refused(csv, tmp_path / "late-ragged.parquet", "Malformed CSV", "Line: 30002")


def test_a_row_with_too_few_fields_is_a_malformed_csv(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "short.csv", "a,b,c\n1,2,3\n4,5\n6,7,8\n")

    assert_refused(csv, tmp_path / "short.parquet", "Malformed CSV")


def test_an_unclosed_quote_is_a_malformed_csv(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "quote.csv", 'a,b\n1,"2\n3,4\n')

    assert_refused(csv, tmp_path / "quote.parquet", "Malformed CSV")


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "empty.csv", "")

    assert_refused(csv, tmp_path / "empty.parquet", "empty (0 bytes)")


def test_a_file_whose_header_line_is_blank_is_refused(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "blank.csv", "\n")

    assert_refused(csv, tmp_path / "blank.parquet", "no header")


def test_a_blank_header_line_is_refused_also_when_the_columns_are_not_asked_for(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "blank.csv", "  \r\n")

    with pytest.raises(FileConversionError, match="no header"):
        convert_csv_to_parquet(csv, tmp_path / "blank.parquet", with_columns=False)
    assert not (tmp_path / "blank.parquet").exists()


def test_without_columns_the_conversion_reports_rows_and_size_but_no_column_names(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "gdp.csv", "country,year\nNGA,2020\n")
    target = tmp_path / "gdp.parquet"

    result = convert_csv_to_parquet(csv, target, with_columns=False)

    assert (result.rows, result.columns, result.bytes) == (1, None, target.stat().st_size)
    assert read_parquet(target) == [("NGA", 2020)]


def test_a_non_utf8_file_is_refused_with_how_to_reencode_it(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "latin1.csv", "country,name\nCIV,Côte d'Ivoire\n".encode("latin-1"))

    assert_refused(csv, tmp_path / "latin1.parquet", "not UTF-8", "iconv")


def test_a_file_that_vanished_after_discovery_is_refused(tmp_path: Path) -> None:
    assert_refused(tmp_path / "gone.csv", tmp_path / "gone.parquet", "not found", "moved or deleted")


def test_a_directory_is_not_converted(tmp_path: Path) -> None:
    directory = tmp_path / "dir.csv"
    directory.mkdir()

    assert_refused(directory, tmp_path / "dir.parquet", "Not a regular file")


def test_a_failed_conversion_leaves_no_temporary_file(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "raw", "ragged.csv", "a,b\n1,2\n3,4,5\n")
    out = tmp_path / "out"

    with pytest.raises(FileConversionError):
        convert_csv_to_parquet(csv, out / "ragged.parquet")

    assert files_in(out) == []


def test_a_failed_conversion_leaves_the_existing_parquet_untouched(tmp_path: Path) -> None:
    target = tmp_path / "data.parquet"
    convert_csv_to_parquet(write_csv(tmp_path, "v1.csv", "a\n1\n"), target)
    before = target.read_bytes()

    with pytest.raises(FileConversionError):
        convert_csv_to_parquet(write_csv(tmp_path, "v2.csv", "a,b\n1,2\n3,4,5\n"), target)

    assert target.read_bytes() == before
    assert files_in(tmp_path) == ["data.parquet", "v1.csv", "v2.csv"]


def test_a_successful_conversion_replaces_the_existing_parquet(tmp_path: Path) -> None:
    target = tmp_path / "data.parquet"
    convert_csv_to_parquet(write_csv(tmp_path, "v1.csv", "a\n1\n"), target)

    convert_csv_to_parquet(write_csv(tmp_path, "v2.csv", "a\n2\n3\n"), target)

    assert read_parquet(target) == [(2,), (3,)]
    assert files_in(tmp_path) == ["data.parquet", "v1.csv", "v2.csv"]
