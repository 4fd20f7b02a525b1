"""Checkpoint store speed: batch marking, batch lookups and single-item latency.

Run: .venv/bin/python bench/checkpoints.py [--files N] [--pairs N]

Targets (docs/performance.md, "Checkpoints"): 100k FILE completions through the batch API
<= 3 s, completed_keys of 100k keys <= 0.5 s, a single mark_started + mark_completed pair
<= 3 ms median on an open store. Every figure is printed with the process CPU time beside
the wall time: CPU well below wall means the machine was busy with something else. The
single pair is also timed on tmpfs, next to the disk's bare fsync latency, which separates
the store's own cost from the disk's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint  # noqa: E402

FILE = CheckpointScope.FILE
TMPFS = Path("/dev/shm")
Figure = tuple[float, float | None]


def timed(action: Callable[[], Any]) -> Figure:
    """Wall and process CPU seconds of ``action``."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def make_files(root: Path, count: int) -> list[tuple[str, str, str]]:
    """``count`` small raw files, as (key, path, md5) the way an ingest run knows them."""
    items = []
    for i in range(count):
        content = f"id,value\n{i},{i * 7}\n".encode()
        path = root / f"raw/src{i % 100:02d}/file_{i:06d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        key = f"dev/landing/src{i % 100:02d}/file_{i:06d}.parquet"
        items.append((key, str(path), hashlib.md5(content).hexdigest()))
    return items


def open_warm(db_path: Path) -> PipelineCheckpoint:
    """An open store past DuckDB's one-time import of pandas/numpy at the first bound parameter."""
    store = PipelineCheckpoint("bench", db_path, lock_timeout=0)
    store.completed_keys(FILE, ["warm-up"])
    return store


def bench_batches(directory: Path, items: list[tuple[str, str, str]]) -> dict[str, Figure]:
    keys = [key for key, _, _ in items]
    pairs = [(key, path) for key, path, _ in items]
    with open_warm(directory / "batch.duckdb") as store:
        started = timed(lambda: store.mark_started_many(FILE, pairs))
        completed = timed(lambda: store.mark_completed_many(FILE, items))
        lookup = timed(lambda: store.completed_keys(FILE, keys))
        unchanged = timed(lambda: store.unchanged_keys(FILE, pairs))
        store.mark_started_many(FILE, pairs, force=True)
        hashing = timed(lambda: store.mark_completed_many(FILE, pairs))
    return {
        "mark_started_many": started,
        "mark_completed_many (checksums given)": completed,
        "batch total (started + completed)": (started[0] + completed[0], started[1] + completed[1]),
        "completed_keys": lookup,
        "unchanged_keys (one stat per file)": unchanged,
        "mark_completed_many (MD5 read from each file)": hashing,
    }


def mark_pair(store: PipelineCheckpoint, key: str) -> None:
    store.mark_started(FILE, key)
    store.mark_completed(FILE, key)


def bench_pairs(db_path: Path, pairs: int, preload: int) -> dict[str, Figure]:
    """Median and p90 of single mark_started + mark_completed pairs on a store holding ``preload`` rows."""
    with open_warm(db_path) as store:
        store.mark_started_many(FILE, [f"preload/{i}" for i in range(preload)])
        store.mark_completed_many(FILE, [f"preload/{i}" for i in range(preload)])
        figures = [timed(lambda: mark_pair(store, f"single/{i}")) for i in range(pairs)]
    walls = sorted(wall for wall, _ in figures)
    return {
        "median": (statistics.median(walls), statistics.median(cpu for _, cpu in figures)),
        "p90": (walls[int(0.9 * len(walls))], None),
    }


def fsync_latency(directory: Path, samples: int = 100) -> Figure:
    """Median time of a small append plus fsync: the floor of one durable commit."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        walls = [timed(lambda: (os.write(fd, b"x" * 256), os.fsync(fd)))[0] for _ in range(samples)]
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(walls), None


def compare_batch_loads(rows: int) -> dict[str, Figure]:
    """Ways to move ``rows`` rows of 5 columns from Python into DuckDB, as the batch API must."""
    keys = [f"dev/landing/src/file_{i:06d}.parquet" for i in range(rows)]
    paths = [f"/data/raw/src/file_{i:06d}.csv" for i in range(rows)]
    sums = [hashlib.md5(key.encode()).hexdigest() for key in keys]
    numbers = list(range(rows))
    table = list(zip(keys, paths, sums, numbers, numbers))
    connection = duckdb.connect()
    connection.execute("SET threads = 1")
    connection.execute("SELECT ?", [0])

    def json_document() -> None:
        spec = {"k": ["VARCHAR"], "f": ["VARCHAR"], "c": ["VARCHAR"], "s": ["BIGINT"], "m": ["BIGINT"]}
        connection.execute(
            "INSERT INTO t SELECT unnest(j.k), unnest(j.f), unnest(j.c), unnest(j.s), unnest(j.m) "
            "FROM (SELECT from_json(?, ?) AS j)",
            [json.dumps({"k": keys, "f": paths, "c": sums, "s": numbers, "m": numbers}), json.dumps(spec)],
        )

    def unnest_lists() -> None:
        connection.execute(
            "INSERT INTO t SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
            "unnest(?::BIGINT[]), unnest(?::BIGINT[])",
            [keys, paths, sums, numbers, numbers],
        )

    def values_chunks(size: int = 1000) -> None:
        for start in range(0, rows, size):
            chunk = table[start : start + size]
            placeholders = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
            connection.execute(f"INSERT INTO t VALUES {placeholders}", [value for row in chunk for value in row])

    sample = min(rows, 2000)
    loads = {
        "JSON document + from_json (used)": json_document,
        "UNNEST of list parameters": unnest_lists,
        "INSERT VALUES, 1000-row chunks": values_chunks,
        f"executemany (x{rows / sample:g} of {sample} rows)": lambda: connection.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?, ?)", table[:sample]
        ),
    }
    results = {}
    for name, load in loads.items():
        connection.execute(
            "CREATE OR REPLACE TEMP TABLE t "
            "(key VARCHAR, file_path VARCHAR, checksum VARCHAR, file_size BIGINT, file_mtime_ns BIGINT)"
        )
        wall, cpu = timed(load)
        scale = rows / sample if name.startswith("executemany") else 1
        results[name] = (wall * scale, cpu * scale)
    connection.close()
    return results


def report(title: str, figures: dict[str, Figure], unit: str = "s") -> None:
    print(f"\n{title}")
    scale = 1000.0 if unit == "ms" else 1.0
    for name, (wall, cpu) in figures.items():
        cpu_text = "" if cpu is None else f"   cpu {cpu * scale:8.3f} {unit}"
        print(f"  {name:<50} {wall * scale:9.3f} {unit}{cpu_text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="files in the batch benchmarks")
    parser.add_argument("--pairs", type=int, default=300, help="single mark pairs timed")
    args = parser.parse_args()

    print(
        f"python {platform.python_version()}, duckdb {duckdb.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cores, {platform.platform()}; load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="osaa-bench-") as tmp:
        directory = Path(tmp)
        items = make_files(directory, args.files)
        report(
            f"Batch API, {args.files} FILE items (targets: total <= 3 s, completed_keys <= 0.5 s)",
            bench_batches(directory, items),
        )
        pairs = bench_pairs(directory / "pairs.duckdb", args.pairs, args.files)
        report(
            f"Single mark_started + mark_completed pair, store holding {args.files} rows (target: median <= 3 ms)",
            {f"disk, {name}": figure for name, figure in pairs.items()}
            | {"disk, bare write + fsync (floor of one commit)": fsync_latency(directory)},
            unit="ms",
        )
    if TMPFS.is_dir():
        with tempfile.TemporaryDirectory(prefix="osaa-bench-", dir=TMPFS) as tmp:
            pairs = bench_pairs(Path(tmp) / "pairs.duckdb", args.pairs, args.files)
            report("Same pair on tmpfs (no fsync cost)", {f"tmpfs, {name}": f for name, f in pairs.items()}, unit="ms")
    report(
        f"Loading {args.files} rows x 5 columns from Python into DuckDB (how the batch API loads)",
        compare_batch_loads(args.files),
    )
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
