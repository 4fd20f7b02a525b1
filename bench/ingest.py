"""Ingest benchmark: our engine against the plain loops it replaces, side by side in one run.

(a) first ingest of N CSV files vs a plain loop of DuckDB ``COPY ... TO parquet`` plus one
    boto3 upload per file, into the same S3 endpoint (moto's server on 127.0.0.1);
(b) re-run with nothing changed vs a bare ``os.scandir`` + ``stat`` walk of the same files,
    at each of ``--rerun-files`` (20k and 100k files by default), interleaved round by round;
(c) bytes the client sends to S3 during the commit (counted at a proxy) vs the staged bytes.

Run: ``.venv/bin/python bench/ingest.py [--files N] [--rows R] [--rounds K]``. Figures are
medians over K rounds (``--rerun-rounds`` for (b)), reported as ratios; targets are in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import duckdb
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.faultproxy import FaultProxy  # noqa: E402
from support.s3server import MotoServer  # noqa: E402

from sqlmesh_osaa.checkpoint import PipelineCheckpoint  # noqa: E402
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy  # noqa: E402
from sqlmesh_osaa.ingest import IngestRequest, run_ingest  # noqa: E402
from sqlmesh_osaa.settings import load_settings  # noqa: E402
from sqlmesh_osaa.storage import S3Store  # noqa: E402


def make_raw(root: Path, files: int, rows: int) -> None:
    (root / "wdi").mkdir(parents=True)
    for index in range(files):
        lines = [f"C{r % 200},IND{index},{1990 + r % 35},{r * 1.5}" for r in range(rows)]
        (root / "wdi" / f"series_{index:04d}.csv").write_text("country,indicator,year,value\n" + "\n".join(lines) + "\n")


def plain_loop(raw: Path, client, bucket: str, workdir: Path) -> float:
    """What a team writes without the extension: convert and upload, file after file."""
    started = time.perf_counter()
    connection = duckdb.connect()
    for path in sorted((raw / "wdi").iterdir()):
        target = workdir / f"{path.stem}.parquet"
        connection.execute(
            f"COPY (SELECT * FROM read_csv('{path}')) TO '{target}' (FORMAT parquet, COMPRESSION zstd)"
        )
        client.upload_file(str(target), bucket, f"plain/landing/wdi/{path.stem}.parquet")
        target.unlink()
    connection.close()
    return time.perf_counter() - started


def stat_walk(raw: Path) -> float:
    started = time.perf_counter()
    stack = [str(raw)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    stack.append(entry.path)
                else:
                    entry.stat()
    return time.perf_counter() - started


def seed_completed(raw: Path, db: Path) -> None:
    """The checkpoint state a finished ingest of ``raw`` leaves, written through the batch API."""
    from sqlmesh_osaa.checkpoint import CheckpointScope
    from sqlmesh_osaa.raw_files import discover_raw_files, landing_key

    items = [(landing_key("prod", f), str(f.path)) for f in discover_raw_files(raw).files]
    with PipelineCheckpoint("ingest", db) as checkpoint:
        checkpoint.mark_started_many(CheckpointScope.FILE, items)
        checkpoint.mark_completed_many(CheckpointScope.FILE, items)


def ours(raw: Path, store: S3Store, db: Path, *, unchanged: bool = False) -> float:
    """Our ingest of ``raw``; with ``unchanged``, it must find every file unchanged (the re-run of (b))."""
    started = time.perf_counter()
    with PipelineCheckpoint("ingest", db) as checkpoint:
        result = run_ingest(
            IngestRequest(raw, "prod"),
            checkpoint=checkpoint,
            store=store,
            settings=load_settings(environ={}),
            error_handler=ErrorHandler(RetryPolicy(max_attempts=3, initial_delay=0.1)),
        )
    elapsed = time.perf_counter() - started
    assert result.ok, result.failures
    assert not (unchanged and result.landed), f"{len(result.landed)} files landed again in an unchanged re-run"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--rerun-files", type=int, nargs="+", default=[20000, 100000], help="file counts for (b), the unchanged re-run"
    )
    parser.add_argument("--rerun-rounds", type=int, default=11, help="rounds of (b): it is cheap and noisy")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[name] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

    server = MotoServer().start()
    proxy = FaultProxy(server.endpoint_url).start()
    client = boto3.client(
        "s3", endpoint_url=server.endpoint_url, config=Config(s3={"addressing_style": "path"})
    )
    first, plain, commit_bytes, staged_bytes = [], [], [], []
    reruns: dict[int, tuple[list[float], list[float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw"
            make_raw(raw, args.files, args.rows)
            for round_ in range(args.rounds):
                bucket = f"bench-{uuid.uuid4().hex[:12]}"
                client.create_bucket(Bucket=bucket)
                work = Path(tmp) / f"work{round_}"
                work.mkdir()
                plain.append(plain_loop(raw, client, bucket, work))
                store = S3Store(bucket, endpoint_url=proxy.url, addressing_style="path")
                db = Path(tmp) / f"checkpoints{round_}.duckdb"
                proxy.reset_counts()
                first.append(ours(raw, store, db))
                staged = sum(r.body_bytes for r in proxy.requests("PutObject"))
                staged_bytes.append(staged)
                commit_bytes.append(proxy.bytes_received - staged)
            store = S3Store(bucket, endpoint_url=proxy.url, addressing_style="path")
            for count in args.rerun_files:
                many = Path(tmp) / f"many{count}"
                make_raw(many, count, 3)
                db = Path(tmp) / f"rerun{count}.duckdb"
                seed_completed(many, db)
                walk, rerun = reruns.setdefault(count, ([], []))
                for _ in range(args.rerun_rounds):
                    walk.append(stat_walk(many))
                    rerun.append(ours(many, store, db, unchanged=True))
    finally:
        proxy.stop()
        server.stop()

    med = statistics.median
    print(f"files={args.files} rows/file={args.rows} rounds={args.rounds}, re-run rounds={args.rerun_rounds} (medians)")
    print(f"(a) first ingest: ours {med(first):.2f}s, plain COPY+upload loop {med(plain):.2f}s, "
          f"throughput ratio ours/plain = {med(plain) / med(first):.2f} (target >= 0.8)")
    for count, (walk, rerun) in reruns.items():
        print(f"(b) unchanged re-run of {count} files: ours {med(rerun) * 1000:.0f}ms, bare scandir+stat walk "
              f"{med(walk) * 1000:.1f}ms, ratio = {med(rerun) / med(walk):.2f}x (target <= 3x)")
    print(f"(c) commit: client sent {med(commit_bytes):.0f} bytes after staging {med(staged_bytes):.0f} bytes, "
          f"ratio = {100 * med(commit_bytes) / med(staged_bytes):.3f}% (target < 1%)")


if __name__ == "__main__":
    main()
