"""Converting one raw CSV file to parquet with DuckDB, as cheaply as a bare ``COPY``.

One ``COPY (SELECT * FROM read_csv(...)) TO ... (FORMAT parquet)`` per file: the row
count comes from the COPY result and the column names, when asked for, from the new
file's parquet footer, so the CSV is read once. Ingest does not ask: the ``DESCRIBE`` of
the footer cost about a third of a small file's COPY (docs/performance.md, "Ingest"); it
still runs when the header line is blank, the one case whose verdict needs the names. Paths travel as prepared parameters, never as SQL
text, and glob characters in them are escaped (DuckDB would otherwise read
``data[1].csv`` as the glob ``data1.csv``).

The dialect is pinned to RFC 4180 (comma, double quote, header line, no preamble) and
the reader is strict: when rows disagree about the number of columns, DuckDB's
sniffer would otherwise fall back to reading the whole file as one column, or take
the first rows for a preamble and drop them, and report success. Column types are
still auto-detected.

Decisions: a header-only file is a valid empty table (its columns, typed VARCHAR, and
no rows) — a source with no data for a period is not an error; a 0-byte file or one
whose header line is blank is refused. When a value late in the file does not fit
the type detected from the sample, the file is read once more with the whole file as
the sample instead of failing: a valid CSV must not fail on a sniffing heuristic.

Thread safety: a DuckDB connection must not be shared between threads; give each
thread its own (``duckdb.connect()`` or ``connection.cursor()``).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb

from sqlmesh_osaa.exceptions import ErrorCategory, FileConversionError, IngestError

logger = logging.getLogger(__name__)

_CSV_OPTIONS = (
    "header = true, delim = ',', quote = '\"', escape = '\"', skip = 0, "
    "strict_mode = true, null_padding = false, ignore_errors = false"
)
_COPY_SQL = "COPY (SELECT * FROM read_csv($source, {options})) TO $target (FORMAT parquet, COMPRESSION zstd)"
_COLUMNS_SQL = "SELECT column_name FROM (DESCRIBE SELECT * FROM read_parquet($path))"
_GLOB_CHARS = re.compile(r"([*?\[])")
# DuckDB appends hints ("Possible fixes: ...") and the reader's options after the problem itself.
_DETAIL_END = re.compile(r"\n\s*(Possible (fixes|Solution|solutions)|The search space|file = |LINE \d)")
_MAX_DETAIL = 400


@dataclass(frozen=True)
class ConversionResult:
    """What one conversion produced, read from the COPY result and the parquet footer.

    ``columns`` is None when the conversion was asked not to read them (``with_columns=False``).
    """

    source_path: Path
    parquet_path: Path
    rows: int
    columns: list[str] | None
    bytes: int


def convert_csv_to_parquet(
    csv_path: str | Path,
    parquet_path: str | Path,
    *,
    connection: duckdb.DuckDBPyConnection | None = None,
    with_columns: bool = True,
) -> ConversionResult:
    """Convert ``csv_path`` into a zstd parquet at ``parquet_path``, atomically.

    The parquet is written to a hidden temporary file beside the target and renamed
    over it, so a crash never leaves a torn parquet and a failed conversion leaves an
    existing target untouched. It is not fsynced: the parquet is an intermediate that
    the next run rebuilds unless its upload was committed. Pass ``connection`` to reuse
    one DuckDB connection for many files; by default an in-memory one is opened and closed.
    ``with_columns=False`` skips reading the column names back (the result's ``columns`` is None).

    Raises a permanent :class:`FileConversionError` naming the file when it is
    missing, empty, not UTF-8 or malformed, and :class:`IngestError` when DuckDB
    fails for another reason (such as a full disk).
    """
    source = Path(os.path.abspath(csv_path))
    target = Path(os.path.abspath(parquet_path))
    blank_first_line = _check_readable_csv(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    own_connection = connection is None
    db = duckdb.connect() if connection is None else connection
    try:
        rows = _copy(db, source, temporary)
        columns = _columns(db, temporary) if with_columns or blank_first_line else None
        if blank_first_line and columns == ["column0"] and _header_is_blank(source):
            raise FileConversionError(
                "CSV file has no header: its first line is blank; "
                "put the column names on the first line or remove the file",
                file_path=str(source),
            )
        size = temporary.stat().st_size
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
        if own_connection:
            db.close()
    logger.debug("Converted %s to %s: %d rows", source, target, rows)
    return ConversionResult(source_path=source, parquet_path=target, rows=rows, columns=columns if with_columns else None, bytes=size)


def _duckdb_path(path: Path) -> str:
    """Escape glob characters so DuckDB reads exactly this file (``[`` opens a class, ``*`` ``?`` match)."""
    return _GLOB_CHARS.sub(r"[\1]", str(path))


def _columns(db: duckdb.DuckDBPyConnection, parquet: Path) -> list[str]:
    return [row[0] for row in db.execute(_COLUMNS_SQL, {"path": _duckdb_path(parquet)}).fetchall()]


def _check_readable_csv(source: Path) -> bool:
    """Refuse what is no CSV text at all; returns whether the first line may be blank.

    The answer comes from the head already read for the binary test: a first line that is
    not blank there is not blank at all, so only a possibly blank one costs a look at the columns.
    """
    try:
        info = source.stat()
    except FileNotFoundError:
        raise FileConversionError(
            "CSV file not found: it was moved or deleted after it was discovered; "
            "restore it, or re-run so that it is no longer listed",
            file_path=str(source),
        ) from None
    except OSError as exc:
        raise FileConversionError(
            f"CSV file cannot be read ({exc.strerror}); fix its permissions",
            file_path=str(source),
        ) from exc
    if not stat.S_ISREG(info.st_mode):
        raise FileConversionError("Not a regular file; only regular CSV files can be converted", file_path=str(source))
    if info.st_size == 0:
        raise FileConversionError(
            "CSV file is empty (0 bytes); a CSV needs at least a header line; "
            "replace it with the complete export or remove it",
            file_path=str(source),
        )
    with source.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    kind = _binary_kind(head)
    if kind is not None:
        raise FileConversionError(
            f"Not a CSV text file: it holds binary data ({kind}) under a .csv name; "
            "replace it with the CSV export, or remove it",
            file_path=str(source),
        )
    return not head.split(b"\n", 1)[0].strip()


# Signatures of files that end up named .csv by mistake; any other NUL byte also means binary.
_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"PK\x03\x04": "a ZIP archive, e.g. an .xlsx workbook",
    b"%PDF": "a PDF document",
    b"\xff\xd8\xff": "a JPEG image",
    b"\xd0\xcf\x11\xe0": "an old Excel .xls workbook",
    b"PAR1": "a parquet file",
}
_SNIFF_BYTES = 8192


def _binary_kind(head: bytes) -> str | None:
    """What binary format a file starting with ``head`` is, if any (CSV text holds no NUL byte)."""
    for signature, kind in _SIGNATURES.items():
        if head.startswith(signature):
            return kind
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "NUL bytes"
    return None


def _copy(db: duckdb.DuckDBPyConnection, source: Path, temporary: Path) -> int:
    """Run the COPY; on a late value that breaks a sampled type, once more with the whole file as sample."""
    parameters = {"source": _duckdb_path(source), "target": str(temporary)}
    try:
        return _execute_copy(db, _CSV_OPTIONS, parameters)
    except duckdb.ConversionException as exc:
        if "auto-detected" not in str(exc):
            raise _conversion_error(exc, source) from exc
        logger.info("Re-reading %s with the whole file as type sample: %s", source, _detail(exc))
    except duckdb.Error as exc:
        raise _conversion_error(exc, source) from exc
    try:
        return _execute_copy(db, f"{_CSV_OPTIONS}, sample_size = -1", parameters)
    except duckdb.Error as exc:
        raise _conversion_error(exc, source) from exc


def _execute_copy(db: duckdb.DuckDBPyConnection, options: str, parameters: dict[str, str]) -> int:
    row = db.execute(_COPY_SQL.format(options=options), parameters).fetchone()
    return int(row[0]) if row else 0


def _conversion_error(exc: duckdb.Error, source: Path) -> IngestError:
    """Turn DuckDB's error into one that says what is wrong with the file and what to do."""
    detail = _detail(exc)
    if "utf-8" in detail.lower() or "unicode" in detail.lower():
        error: IngestError = FileConversionError(
            "CSV file is not UTF-8 encoded; re-export it as UTF-8 "
            "(for example: iconv -f latin1 -t utf-8 in.csv > out.csv)",
            file_path=str(source),
            detail=detail,
        )
    elif isinstance(exc, (duckdb.InvalidInputException, duckdb.ConversionException)):
        error = FileConversionError(
            "Malformed CSV: every row must have as many fields as the header and every quote must be closed; "
            "fix the file and re-run",
            file_path=str(source),
            detail=detail,
        )
    elif isinstance(exc, duckdb.IOException) and not os.path.exists(source):
        error = FileConversionError(
            "CSV file vanished during conversion: it was moved or deleted; restore it, "
            "or re-run so that it is no longer listed",
            file_path=str(source),
        )
    else:
        error = IngestError(
            "DuckDB could not convert the file to parquet",
            category=ErrorCategory.UNKNOWN,
            file_path=str(source),
            detail=detail,
        )
    return error


def _detail(exc: BaseException) -> str:
    """DuckDB's statement of the problem, without its hints, the echoed SQL or the offending row's data."""
    message = _DETAIL_END.split(str(exc), maxsplit=1)[0]
    lines = (line.strip() for line in message.splitlines())
    message = "; ".join(line for line in lines if line and not line.startswith("Original Line:"))
    return message if len(message) <= _MAX_DETAIL else message[: _MAX_DETAIL - 3] + "..."


def _header_is_blank(source: Path) -> bool:
    """DuckDB names a lone nameless column ``column0``; only the file can tell if that name was real."""
    with source.open("rb") as handle:
        return not handle.readline().strip()
