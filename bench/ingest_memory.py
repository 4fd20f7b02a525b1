"""Where the memory of a first ``osaa-ingest`` goes: resident size per step of one whole process.

A first ingest of a generated raw tree (``ingest_scale.make_small_tree``) runs as a fresh
``osaa-ingest`` process (empty HOME, settings from ``OSAA_*``) with a sampler thread started
before the command: every ``--interval`` seconds it reads the process's VmRSS from
``/proc/self/status`` and names the step the main thread is in (the innermost frame of the
package whose function is one of ``STEPS``). The table gives, per step in the order first
seen, the resident size when it was first seen and the most seen during it; the last line is
the kernel's peak (VmHWM) at exit. The most seen is also split into anonymous memory (the heaps)
and file-backed pages (the code of DuckDB and of Python's extensions, mapped and touched).
``--tracemalloc`` adds the Python heap (traced current and peak) per step, at the cost of a
slower and larger process: read it for the Python part only;
``--detail`` splits each step by the innermost function of the package running in it.

``--checkpoint-writes`` runs, instead of the ingest, only its FILE checkpoint writes in a fresh
process, as the commit's finish writes them (staging writes none): in batches of
``COMPLETION_BATCH``, each a read of the recorded fingerprints, then one write that starts and
completes the rows; then the fingerprints read back and the ``CHECKPOINT`` the skip index takes)
and prints, per phase, the resident size and DuckDB's own accounting (``duckdb_memory()``):
what DuckDB holds live against what the process holds. ``--sql STATEMENT`` runs a statement on
the store's connection first (a DuckDB setting to try); ``DUCKDB_JE_MALLOC_CONF`` in ``--env``
configures DuckDB's allocator.

Run: ``.venv/bin/python bench/ingest_memory.py --files 3000 [--tracemalloc] [--code PATH]``
(``--code``: a directory holding another ``sqlmesh_osaa``, put first on ``PYTHONPATH``), or
``... --files 10000 --checkpoint-writes [--sql "SET ..."]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ingest_scale import BIN, Bench, make_small_tree, run_child

STEPS = (
    "_discover",
    "_split_unchanged",
    "begin",
    "prefetch_production",
    "_convert_chunk",
    "upload_many",
    "_validate",
    "decide",
    "update_metadata",
    "apply_entry",
    "complete_files",
    "_end_row",
    "finish",
    "_record_index",
    "commit",
    "_convert_and_commit",
    "run_ingest",
    "command_run",
)

# Runs in the child: the sampler, then the console script's own entry point.
_CHILD = r"""
import atexit, gc, json, os, sys, threading, time
steps, interval, out = set(sys.argv[1].split(",")), float(sys.argv[2]), sys.argv[3]
traced, detail = sys.argv[4][0] == "1", sys.argv[4][1] == "1"
if traced:
    import tracemalloc
    tracemalloc.start()
seen, main, stop = {}, threading.main_thread().ident, threading.Event()
def rss(fields=("VmRSS", "RssAnon", "RssFile")):
    with open("/proc/self/status") as status:
        found = dict(line.split(":", 1) for line in status if line.startswith(fields))
    return [int(found[field].split()[0]) / 1024 for field in fields]
def frames():
    # CPython 3.11 holds its thread-list lock while sys._current_frames() builds its dict; a
    # collection starting there that frees a threading.local takes that lock again: deadlock.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if enabled:
            gc.enable()
def step():
    frame, innermost = frames().get(main), None
    while frame is not None:
        code = frame.f_code
        if "sqlmesh_osaa" in code.co_filename:
            innermost = innermost or code.co_name
            if code.co_name in steps:
                return code.co_name if not detail or innermost == code.co_name else f"{code.co_name}: {innermost}"
        frame = frame.f_back
    return "start-up and exit"
def sample():
    name, (now, anon, mapped) = step(), rss()
    python = tracemalloc.get_traced_memory() if traced else (0, 0)
    first = seen.setdefault(name, [now, now, python[0], python[1], len(seen), anon, mapped])
    first[1] = max(first[1], now)
    first[3] = max(first[3], python[1])
    first[5] = max(first[5], anon)
    first[6] = max(first[6], mapped)
def loop():
    while not stop.wait(interval):
        sample()
def report():
    stop.set()
    sample()
    with open(out, "w") as handle:
        json.dump({"steps": seen, "peak": rss(("VmHWM",))[0]}, handle)
atexit.register(report)
threading.Thread(target=loop, daemon=True).start()
sys.argv = ["osaa-ingest", *sys.argv[5:]]
from sqlmesh_osaa.cli import ingest_main
ingest_main()
"""

# Runs in the child of --checkpoint-writes: the FILE writes of a first ingest of argv[1] files, nothing else.
_WRITES = r"""
import json, os, resource, sys
count, database, statements = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
from sqlmesh_osaa.lean_imports import keep_pandas_out
keep_pandas_out()
from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.checkpoint.states import Fingerprint
from sqlmesh_osaa.commit_protocol import COMPLETION_BATCH
def status(fields=("VmRSS", "RssAnon", "VmHWM")):
    with open("/proc/self/status") as handle:
        found = dict(line.split(":", 1) for line in handle if line.startswith(fields))
    return [int(found[field].split()[0]) / 1024 for field in fields]
def phase(name):
    duckdb = dict(connection.execute(
        "SELECT tag, memory_usage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 0").fetchall())
    print(json.dumps([name, *status(), {tag: size / 2**20 for tag, size in duckdb.items()}]), flush=True)
checkpoint = PipelineCheckpoint("ingest", db_path=database)
connection = checkpoint.store._connection
for statement in statements:
    connection.execute(statement)
phase("opened")
keys = [f"dev/landing/{('wdi', 'sdg')[i % 2]}/part{i // 1000:03d}/series_{i:05d}.parquet" for i in range(count)]
path = {key: f"{os.path.dirname(database)}/raw/{key[12:-8]}.csv" for key in keys}
where = {"store": f"local:{os.path.dirname(database)}/store"}
for start in range(0, count, COMPLETION_BATCH):
    batch = keys[start : start + COMPLETION_BATCH]
    checkpoint.recorded_fingerprints(CheckpointScope.FILE, batch, metadata=where)
    fingerprints = [Fingerprint("0" * 32, 120 + n, 1_700_000_000_000_000_000 + n) for n in range(len(batch))]
    checkpoint.mark_completed_many(
        CheckpointScope.FILE,
        [(key, path[key], known) for key, known in zip(batch, fingerprints)],
        metadata=where,
        start_first=True,
    )
phase(f"{count:,} started and completed in batches of {COMPLETION_BATCH:,}")
checkpoint.completed_fingerprints(CheckpointScope.FILE, "dev/landing/", metadata=where)
phase("fingerprints read back")
checkpoint.store.read("CHECKPOINT")
phase("CHECKPOINT")
checkpoint.close()
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps(["closed", *status(), {"cpu_s": usage.ru_utime + usage.ru_stime}]), flush=True)
"""


def checkpoint_writes(args: argparse.Namespace, env: dict[str, str], work: Path, cwd: Path) -> None:
    """The FILE checkpoint writes of a first ingest alone: resident size and DuckDB's accounting per phase."""
    import subprocess

    command = [str(BIN / "python"), "-c", _WRITES, str(args.files), str(work / "db.duckdb"), json.dumps(args.sql)]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"checkpoint writes failed ({done.returncode}):\n{done.stderr}")
    print(f"{args.files:,} FILE rows, load average {os.getloadavg()[0]:.1f}; settings: {args.sql or 'none'}")
    print("| phase | VmRSS | anonymous | VmHWM so far | DuckDB's accounting (duckdb_memory, MB) |")
    print("|---|---|---|---|---|")
    for line in done.stdout.splitlines():
        name, rss, anon, peak, duckdb = json.loads(line)
        held = ", ".join(f"{tag} {size:.1f}" for tag, size in duckdb.items())
        print(f"| {name} | {rss:.1f} MB | {anon:.1f} MB | {peak:.1f} MB | {held} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--detail", action="store_true", help="name the innermost function of the package too")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the command's environment")
    parser.add_argument("--code", type=Path, help="a directory holding the sqlmesh_osaa to measure")
    parser.add_argument("--checkpoint-writes", action="store_true", help="only the FILE checkpoint writes of the ingest")
    parser.add_argument("--sql", action="append", default=[], help="with --checkpoint-writes: a statement run first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="osaa-memory-") as tmp:
        bench = Bench(Path(tmp), None)
        if args.checkpoint_writes:
            work = bench.fresh("work")
            env = bench.ours_env(work)
            env.update(variable.split("=", 1) for variable in args.env)
            if args.code is not None:
                env["PYTHONPATH"] = str(args.code.resolve())
            return checkpoint_writes(args, env, work, bench.cwd)
        raw = make_small_tree(bench.fresh("raw"), args.files, args.rows)
        work = bench.fresh("work")
        env = bench.ours_env(work)
        env.update(variable.split("=", 1) for variable in args.env)
        if args.code is not None:
            env["PYTHONPATH"] = str(args.code.resolve())
        out = work / "memory.json"
        command = [str(BIN / "python"), "-c", _CHILD, ",".join(STEPS), str(args.interval), str(out),
                   f"{int(args.tracemalloc)}{int(args.detail)}", str(raw), "--json"]
        sample = run_child(command, env, bench.cwd)
        found = json.loads(out.read_text())
        shutil.rmtree(work)
    print(f"{args.files:,} files, load average {os.getloadavg()[0]:.1f}; CPU {sample.cpu:.2f} s, wall {sample.wall:.2f} s")
    print("| step | VmRSS first seen | VmRSS max | anonymous max | file-backed max | Python heap first seen | Python heap peak |")
    print("|---|---|---|---|---|---|---|")
    for name, (first, most, heap, heap_peak, _, anon, mapped) in sorted(found["steps"].items(), key=lambda item: item[1][4]):
        print(f"| {name} | {first:.1f} MB | {most:.1f} MB | {anon:.1f} MB | {mapped:.1f} MB | {heap / 2**20:.1f} MB "
              f"| {heap_peak / 2**20:.1f} MB |")
    print(f"peak (VmHWM) {found['peak']:.1f} MB; ru_maxrss {sample.rss_mb:.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
