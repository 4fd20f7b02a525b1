"""Checkpoint store speed on both backends side by side: batches, lookups, single pairs, concurrent runners.

Run: .venv/bin/python bench/checkpoints.py [--files N] [--pairs N] [--runner-marks N]

Targets (docs/performance.md, "Checkpoints"): 100k FILE completions through the batch API
<= 3 s on both backends, completed_keys of 100k keys <= 0.5 s, a single mark_started +
mark_completed pair <= 3 ms median on PostgreSQL (DuckDB's reported beside it), and 4
runner processes writing to one PostgreSQL store >= 2.5x the marks per second of one.
PostgreSQL is a throwaway server started here (tests/support/pgserver.py) with its default
durability (fsync and synchronous commit on), its data on the same disk as the DuckDB file.
Every figure is printed with the process CPU time beside the wall time: CPU well below wall
means waiting (the disk, the server, or a machine busy with something else).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint  # noqa: E402
from support.pgserver import PostgresServer  # noqa: E402

FILE = CheckpointScope.FILE
Figure = tuple[float, float | None]
RUNNERS = 4
# A runner opens its store before the window (imports, connection, lease), marks in it, and
# reports when it began and ended (CLOCK_MONOTONIC, one clock for all processes) and its CPU.
# A fourth argument is where its package must come from (bench/runners_ab.py's variants).
RUNNER = textwrap.dedent(
    """
    import sys, time
    import sqlmesh_osaa
    from sqlmesh_osaa.checkpoint import PipelineCheckpoint
    dsn, name, pairs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if sys.argv[4:] and not sqlmesh_osaa.__file__.startswith(sys.argv[4]):
        sys.exit(f"imported {sqlmesh_osaa.__file__}, not the variant under {sys.argv[4]}")
    with PipelineCheckpoint("bench-runners", dsn=dsn) as store:
        store.completed_keys("file", ["warm-up"])
        (backend,) = store.store.read("SELECT pg_backend_pid()")[0]
        print("ready", backend, flush=True)
        sys.stdin.readline()
        began, cpu = time.monotonic(), time.process_time()
        for i in range(pairs):
            store.mark_started("file", f"{name}/{i}")
            store.mark_completed("file", f"{name}/{i}")
        print(began, time.monotonic(), time.process_time() - cpu, flush=True)
        sys.stdin.readline()  # the session (and its backend's CPU figures) stays until read
    """
)
_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far, from /proc (a server backend too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


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


def open_warm(where: dict[str, Any]) -> PipelineCheckpoint:
    """An open store past one-time costs (DuckDB imports pandas/numpy at the first bound parameter)."""
    store = PipelineCheckpoint("bench", **where, lock_timeout=0)
    store.completed_keys(FILE, ["warm-up"])
    return store


def bench_batches(where: dict[str, Any], items: list[tuple[str, str, str]]) -> dict[str, Figure]:
    keys = [key for key, _, _ in items]
    pairs = [(key, path) for key, path, _ in items]
    with open_warm(where) as store:
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


def bench_pairs(where: dict[str, Any], pairs: int, preload: int) -> dict[str, Figure]:
    """Median and p90 of single mark_started + mark_completed pairs on a store holding ``preload`` rows."""
    with open_warm(where) as store:
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


def commit_latency(dsn: str, samples: int = 300) -> Figure:
    """Median of a bare one-row INSERT committed on the server: the floor of one durable PostgreSQL mark."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("CREATE TABLE commit_probe (n integer)")
        walls = [timed(lambda: connection.execute("INSERT INTO commit_probe VALUES (1)"))[0] for _ in range(samples)]
    return statistics.median(walls), None


def bench_runners(dsn: str, pairs: int, runner: str = RUNNER) -> dict[str, float]:
    """Marks per second of one runner process alone, then of RUNNERS processes at once, on one store.

    ``runner`` is the runner's program (``bench/runners_floor.py`` passes one without the package).

    Beside it, per mark: the runners' CPU, their server backends' CPU, and how much of the
    window every runner was marking (1.0: they all began and ended together).
    """

    def run(count: int, tag: str) -> dict[str, float]:
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", runner, dsn, f"{tag}-{i}", str(pairs)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            for i in range(count)
        ]
        try:
            backends = []
            for process in processes:
                word, backend = process.stdout.readline().split()
                assert word == "ready"
                backends.append(int(backend))
            served = [process_cpu(backend) for backend in backends]
            began = time.perf_counter()
            for process in processes:
                process.stdin.write("go\n")
                process.stdin.flush()
            windows = [[float(value) for value in process.stdout.readline().split()] for process in processes]
            elapsed = time.perf_counter() - began
            served = [process_cpu(backend) - before for backend, before in zip(backends, served)]
        finally:
            for process in processes:
                process.kill()
                process.wait()
        marks = 2 * pairs * count
        together = min(end for _, end, _ in windows) - max(start for start, _, _ in windows)
        span = max(end for _, end, _ in windows) - min(start for start, _, _ in windows)
        return {
            "marks/s": marks / elapsed,
            "client CPU ms/mark": 1000 * sum(cpu for _, _, cpu in windows) / marks,
            "backend CPU ms/mark": 1000 * sum(served) / marks,
            "all marking": together / span,
        }

    alone = run(1, "alone")
    together = run(RUNNERS, "together")
    figures = {f"one runner, {name}": value for name, value in alone.items() if name != "all marking"}
    figures |= {f"{RUNNERS} runners, {name}": value for name, value in together.items()}
    figures["ratio"] = together["marks/s"] / alone["marks/s"]
    return figures


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
    parser.add_argument("--runner-marks", type=int, default=2000, help="marks each concurrent runner makes")
    args = parser.parse_args()

    print(
        f"python {platform.python_version()}, duckdb {duckdb.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cores, {platform.platform()}; load average {os.getloadavg()[0]:.2f}"
    )
    server = PostgresServer(durable=True).start()
    os.environ["PGPASSFILE"] = str(server.passfile)
    try:
        with tempfile.TemporaryDirectory(prefix="osaa-bench-") as tmp:
            directory = Path(tmp)
            items = make_files(directory, args.files)
            backends = {
                "duckdb": lambda name: {"db_path": directory / f"{name}.duckdb"},
                "postgres": lambda name: {"dsn": server.create_database()},
            }
            for backend, where in backends.items():
                report(
                    f"{backend}: batch API, {args.files} FILE items (targets: completions <= 3 s, "
                    "completed_keys <= 0.5 s)",
                    bench_batches(where("batch"), items),
                )
            for backend, where in backends.items():
                pairs = bench_pairs(where("pairs"), args.pairs, args.files)
                report(
                    f"{backend}: single mark_started + mark_completed pair, store holding {args.files} rows "
                    "(target on postgres: median <= 3 ms)",
                    pairs,
                    unit="ms",
                )
            report("disk: bare small write + fsync (floor of one durable commit)", {"median": fsync_latency(directory)}, unit="ms")
            report(
                "postgres: bare one-row INSERT, autocommit (floor of one durable mark; a pair makes two)",
                {"median": commit_latency(server.create_database())},
                unit="ms",
            )
        runners = bench_runners(server.create_database(), args.runner_marks // 2)
        print(f"\npostgres: {RUNNERS} runner processes on one store, {args.runner_marks} marks each (target: ratio >= 2.5)")
        for name, value in runners.items():
            print(f"  {name:<50} {value:9.3f}")
    finally:
        server.stop()
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
