"""A checkpoint store that stays fast as it grows: the recovery CLI, completed_keys and prune, by store size.

Run: .venv/bin/python bench/store_growth.py [--repeats N] [--items N]

What users run, measured from outside: ``osaa-recover list-failed --json``, ``stats --json``
and ``history --key K --json`` as whole processes (interpreter start, imports, settings,
opening the file included) on three DuckDB stores built in SQL with the package's own layout:

- ``full``: ``--items`` FILE items (default 100k), two events each (200k events);
- ``tenth``: a tenth of it (flatness in the store's size);
- ``deep``: a tenth of the items with twenty events each (the same 200k events: flatness in
  the number of events per item).

1% of the items are failed (their last outcome), the rest completed. The stores alternate
within each repeat, so machine noise hits all alike; figures are medians of wall seconds and
of the child's CPU seconds. Beside them: ``completed_keys`` of the same 10k keys (in
process) on stores of 100k and 1M rows; and ``prune --older-than`` removing 80% of the rows
(as a whole process), the file's size after it against a fresh copy of what is left.
Targets (docs/performance.md, "Store growth"): each command <= 0.5 s on ``full``, ratio
full/tenth and deep/tenth near 1; completed_keys 1M/100k near 1; pruned size <= 1.5x the copy.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlmesh_osaa.checkpoint import PipelineCheckpoint, episodes, tallies  # noqa: E402

OSAA_RECOVER = str(Path(sys.executable).with_name("osaa-recover"))
PIPELINE = "ingest"
FAILED_EVERY = 100
KEYS = 10_000


def build_store(path: Path, items: int, events_per_item: int, old_share: float = 0.0) -> Path:
    """A store of ``items`` FILE items with ``events_per_item`` events each, written in SQL in the package's layout.

    Pairs of events start and end an attempt; the last outcome of every ``FAILED_EVERY``-th
    item is a failure, earlier outcomes alternate failed/completed. The first ``old_share``
    of the completed items were updated 60 days ago (for prune). The failure episodes are built
    from the log by the package's own statement (the one a layout migration runs); so are the
    tallies (one row per group, as DuckDB's writes keep them).
    """
    PipelineCheckpoint(PIPELINE, path).close()
    connection = duckdb.connect(str(path))
    key = "'dev/landing/source_' || lpad((i % 50)::VARCHAR, 2, '0') || '/indicator_' || lpad(i::VARCHAR, 7, '0') || '.parquet'"
    failed = f"i % {FAILED_EVERY} = 0"
    old = f"(i < {int(items * old_share)} AND NOT {failed})"
    at = f"TIMESTAMP '2026-01-01' + to_seconds(i) + to_milliseconds(j) + CASE WHEN {old} THEN INTERVAL 0 DAY ELSE INTERVAL 330 DAY END"
    metadata = """'{"store": "s3://osaa-bench/dev"}'"""
    pairs = events_per_item // 2
    connection.execute(
        f"""INSERT INTO checkpoint_events (pipeline, scope, key, file_path, from_status, to_status, "at", attempt, run_id, pid,
                host, error_message, error_category, kind, checksum, file_size, file_mtime_ns, metadata, started_at, completed_at)
        SELECT '{PIPELINE}', 'file', {key}, NULL,
               CASE WHEN j = 0 THEN 'pending' WHEN j % 2 = 1 THEN 'in_progress' WHEN (j // 2) % 2 = 1 THEN 'failed' ELSE 'completed' END,
               CASE WHEN j % 2 = 0 THEN 'in_progress'
                    WHEN j = {events_per_item - 1} THEN CASE WHEN {failed} THEN 'failed' ELSE 'completed' END
                    WHEN (j // 2) % 2 = 0 THEN 'failed' ELSE 'completed' END,
               {at}, j // 2 + 1, 'run-' || (j // 2)::VARCHAR, 4242, 'bench-host',
               CASE WHEN j % 2 = 1 AND ((j = {events_per_item - 1} AND {failed}) OR (j < {events_per_item - 1} AND (j // 2) % 2 = 0))
                    THEN 'HTTP 503: service unavailable' END,
               NULL, 'transition', md5(i::VARCHAR), 1000 + i, 1700000000000000000 + i, {metadata}, {at}, NULL
        FROM range({items}) r(i), range({events_per_item}) e(j) ORDER BY i, j"""
    )
    connection.execute(
        f"""INSERT INTO checkpoints
        SELECT '{PIPELINE}' || chr(31) || 'file' || chr(31) || {key}, '{PIPELINE}', 'file', {key}, NULL,
               CASE WHEN {failed} THEN 'failed' ELSE 'completed' END, {pairs},
               CASE WHEN {failed} THEN 'HTTP 503: service unavailable' END, CASE WHEN {failed} THEN 'transient' END,
               md5(i::VARCHAR), 1000 + i, 1700000000000000000 + i, {metadata}, 'run-{pairs - 1}', 4242, 'bench-host',
               ts, ts, CASE WHEN {failed} THEN NULL ELSE ts END, hash('{PIPELINE}' || chr(31) || 'file' || chr(31) || {key})
        FROM (SELECT i, {at.replace("(j)", f"({events_per_item - 1})")} AS ts FROM range({items}) r(i))"""
    )
    # The failure episodes the writes would have kept, derived from the log as a layout migration does.
    connection.execute(episodes.REBUILD_SQL)
    # The tallies, one row per group as DuckDB's writes keep them, by the statement a migration runs.
    connection.execute(tallies.REBUILD_SQL)
    connection.execute("CHECKPOINT")
    connection.close()
    return path


def whole_process(command: list[str]) -> tuple[float, float, int]:
    """Wall and CPU seconds of one process, and its exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.returncode


def commands(db: Path) -> dict[str, list[str]]:
    failed_key = "dev/landing/source_00/indicator_0000100.parquet"
    return {
        "list-failed --json": [OSAA_RECOVER, "list-failed", "--json", "--db", str(db)],
        "stats --json": [OSAA_RECOVER, "stats", "--json", "--db", str(db)],
        "history --key --json": [OSAA_RECOVER, "history", "--key", failed_key, "--json", "--db", str(db)],
    }


def bench_commands(stores: dict[str, Path], repeats: int) -> None:
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    baseline: list[tuple[float, float]] = []
    for _ in range(repeats + 1):
        wall, cpu, _ = whole_process([sys.executable, "-c", "pass"])
        baseline.append((wall, cpu))
        for name, db in stores.items():
            for verb, command in commands(db).items():
                wall, cpu, _ = whole_process(command)
                figures.setdefault((verb, name), []).append((wall, cpu))
    median = lambda values, i: statistics.median(v[i] for v in values[1:])  # noqa: E731  (first round warms caches)
    print(f"\nWhole processes (median of {repeats}; python -c pass: {median(baseline, 0):.3f} s wall, {median(baseline, 1):.3f} s CPU)")
    print(f"{'command':24} " + " ".join(f"{name + ' wall/cpu':>22}" for name in stores) + "   full/tenth  deep/tenth")
    for verb in commands(Path("x")):
        cells = [f"{median(figures[(verb, n)], 0):>10.3f}/{median(figures[(verb, n)], 1):<11.3f}" for n in stores]
        tenth = median(figures[(verb, "tenth")], 0)
        print(f"{verb:24} " + " ".join(cells) + f"   {median(figures[(verb, 'full')], 0) / tenth:9.2f}x {median(figures[(verb, 'deep')], 0) / tenth:9.2f}x")


HEAVY = ("pandas", "numpy", "boto3", "botocore", "sqlmesh", "sqlmesh_osaa.ingest", "tenacity")
IMPORTS = """
import sys
from sqlmesh_osaa.cli import recover_main
sys.argv = ["osaa-recover", *sys.argv[1:]]
try:
    recover_main()
finally:
    sys.stderr.write("MODULES " + " ".join(sorted(sys.modules)) + "\\n")
"""


def bench_imports(db: Path) -> None:
    """What each command imports (python -X importtime): the heavy packages it must not need."""
    print("\nImports (python -X importtime; heavy = " + ", ".join(HEAVY) + ")")
    for verb, command in commands(db).items():
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", IMPORTS, *command[1:]], capture_output=True, text=True, env=ENV)
        modules = done.stderr.rsplit("MODULES ", 1)[-1].split()
        cumulative = sum(int(line.split("|")[0].split(":")[1]) for line in done.stderr.splitlines() if line.startswith("import time:") and line.split("|")[0].split(":")[1].strip().isdigit())
        heavy = [name for name in HEAVY if name in modules]
        print(f"{verb:24} {len(modules):4d} modules, {cumulative / 1e6:.3f} s self time of imports, heavy: {', '.join(heavy) or 'none'}")


def bench_completed_keys(root: Path, repeats: int) -> None:
    small, large = root / "keys-100k.duckdb", root / "keys-1m.duckdb"
    build_store(small, 100_000, 2)
    build_store(large, 1_000_000, 2)
    keys = [f"dev/landing/source_{i % 50:02d}/indicator_{i:07d}.parquet" for i in range(0, 2 * KEYS, 2)]
    times: dict[Path, list[float]] = {small: [], large: []}
    cpu: dict[Path, list[float]] = {small: [], large: []}
    for _ in range(repeats + 1):
        for db in (small, large):
            with PipelineCheckpoint(PIPELINE, db) as checkpoint:
                began, began_cpu = time.perf_counter(), time.process_time()
                found = checkpoint.completed_keys("file", keys)
                times[db].append(time.perf_counter() - began)
                cpu[db].append(time.process_time() - began_cpu)
            assert len(found) == KEYS - KEYS // (FAILED_EVERY // 2), len(found)
    a, b = (statistics.median(times[db][1:]) for db in (small, large))
    ca, cb = (statistics.median(cpu[db][1:]) for db in (small, large))
    print(
        f"\ncompleted_keys of {KEYS} keys: 100k rows {a * 1000:.1f} ms, 1M rows {b * 1000:.1f} ms, ratio {b / a:.2f}x"
        f" (CPU {ca * 1000:.1f} / {cb * 1000:.1f} ms, {cb / ca:.2f}x)"
    )


def bench_prune(root: Path, items: int) -> None:
    db = build_store(root / "prune.duckdb", items, 2, old_share=0.8)
    before = db.stat().st_size
    wall, cpu, _ = whole_process([OSAA_RECOVER, "prune", "--older-than", "30d", "--json", "--db", str(db)])
    after = db.stat().st_size
    fresh = root / "fresh.duckdb"
    connection = duckdb.connect(str(db))
    (rows,) = connection.execute("SELECT count(*) FROM checkpoints").fetchone()
    connection.execute(f"ATTACH '{fresh}' AS fresh")
    connection.execute("COPY FROM DATABASE prune TO fresh")
    connection.execute("DETACH fresh")
    connection.close()
    copy = fresh.stat().st_size
    print(
        f"\nprune --older-than 30d of {items} items ({rows} rows left): {wall:.2f} s wall, {cpu:.2f} s CPU; "
        f"file {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB, a fresh copy {copy / 1e6:.1f} MB: {after / copy:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="osaa-store-growth-") as tmp:
        root = Path(tmp)
        stores = {
            "full": build_store(root / "full.duckdb", args.items, 2),
            "tenth": build_store(root / "tenth.duckdb", args.items // 10, 2),
            "deep": build_store(root / "deep.duckdb", args.items // 10, 20),
        }
        bench_commands(stores, args.repeats)
        bench_imports(stores["full"])
        bench_completed_keys(root, args.repeats)
        bench_prune(root, args.items)
    print(f"load average after: {os.getloadavg()}")


# As on an installed system: with Python's bytecode cache (an inherited PYTHONDONTWRITEBYTECODE
# would make every command compile the package again, which a wheel install never does).
ENV = {
    **{name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"},
    "HOME": tempfile.mkdtemp(prefix="osaa-bench-home-"),
}

if __name__ == "__main__":
    main()
