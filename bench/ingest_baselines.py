"""The plain programs ``bench/ingest_scale.py`` measures ``osaa-ingest`` against, one per process.

What a team writes without the extension, kept as small as it can honestly be:

- ``copy RAW OUT``: one DuckDB connection, a ``COPY (SELECT * FROM read_csv(...)) TO ...
  (FORMAT parquet, COMPRESSION zstd)`` per file, written under ``OUT``;
- ``upload RAW BUCKET ENDPOINT``: the same COPY to a temporary file, then one boto3
  ``upload_file`` per file into the bucket;
- ``walk RAW``: a scandir walk with one ``stat`` per file (what an unchanged re-run must at
  least do).

Each is started as its own Python process by the bench, so start-up and imports are counted
as they are for ``osaa-ingest``.
"""

from __future__ import annotations

import os
import sys
import tempfile


def _csv_files(root: str) -> list[str]:
    found, stack = [], [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    stack.append(entry.path)
                elif entry.name.endswith(".csv"):
                    found.append(entry.path)
    return sorted(found)


def _sql(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def copy(raw: str, out: str) -> None:
    import duckdb

    connection = duckdb.connect()
    for path in _csv_files(raw):
        target = os.path.join(out, os.path.relpath(path, raw)[:-4] + ".parquet")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        connection.execute(
            f"COPY (SELECT * FROM read_csv({_sql(path)})) TO {_sql(target)} (FORMAT parquet, COMPRESSION zstd)"
        )
    connection.close()


def upload(raw: str, bucket: str, endpoint: str) -> None:
    import boto3
    import duckdb
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
    connection = duckdb.connect()
    with tempfile.TemporaryDirectory() as work:
        target = os.path.join(work, "out.parquet")
        for path in _csv_files(raw):
            connection.execute(
                f"COPY (SELECT * FROM read_csv({_sql(path)})) TO {_sql(target)} (FORMAT parquet, COMPRESSION zstd)"
            )
            client.upload_file(target, bucket, "plain/landing/" + os.path.relpath(path, raw)[:-4] + ".parquet")
    connection.close()


def walk(raw: str) -> None:
    stack = [raw]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    stack.append(entry.path)
                else:
                    entry.stat()


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"copy": copy, "upload": upload, "walk": walk}[command](*arguments)
