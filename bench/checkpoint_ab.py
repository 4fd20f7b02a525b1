"""Interleaved A/B of DuckDB checkpoint batches: two checkouts of the code, each round in fresh processes.

Each round runs every variant once, in an order that alternates between rounds, as a fresh
process (reaped with ``wait4``, so its own CPU time is read) that opens a DuckDB checkpoint
file, makes ``mark_started_many`` of N FILE items ``(key, path)`` and then the measured
``mark_completed_many`` of ``(key, path, md5)`` (each file stat'ed, as in
``bench/checkpoints.py``), then closes the store. The child reports wall and CPU seconds of each
call (``close`` too, so work moved out of the completion would show there). A variant is
``NAME=PATH``, a directory holding a ``sqlmesh_osaa`` package put first on ``PYTHONPATH`` (for
example ``git archive main sqlmesh_osaa | tar -x -C /tmp/main``); the child checks it imported
that one. On a shared machine, read the CPU medians, the ratios and the load average.

Run: ``.venv/bin/python bench/checkpoint_ab.py --files 100000 --rounds 5 main=/tmp/main this=.``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

from ingest_scale import BIN, run_child

CALLS = ("mark_started_many", "mark_completed_many", "close")
CHILD = textwrap.dedent(
    """
    import hashlib, json, sys, time
    root, db, count, expected, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    import sqlmesh_osaa
    from sqlmesh_osaa.checkpoint import PipelineCheckpoint
    if not sqlmesh_osaa.__file__.startswith(expected):
        sys.exit(f"imported {sqlmesh_osaa.__file__}, not the variant under {expected}")
    items = [
        (f"dev/landing/src{i % 100:02d}/file_{i:06d}.parquet", f"{root}/src{i % 100:02d}/file_{i:06d}.csv",
         hashlib.md5(f"id,value\\n{i},{i * 7}\\n".encode()).hexdigest())
        for i in range(count)
    ]
    figures = {}
    def timed(name, action):
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        figures[name] = (time.perf_counter() - wall, time.process_time() - cpu)
    store = PipelineCheckpoint("bench", db_path=db, lock_timeout=0)
    store.completed_keys("file", ["warm-up"])
    timed("mark_started_many", lambda: store.mark_started_many("file", [(k, p) for k, p, _ in items]))
    timed("mark_completed_many", lambda: store.mark_completed_many("file", items))
    timed("close", store.close)
    with open(out, "w") as handle:
        json.dump(figures, handle)
    """
)


def make_files(root: Path, count: int) -> None:
    """The raw files of ``bench/checkpoints.py``: ``count`` small CSV files in 100 directories."""
    for i in range(count):
        path = root / f"src{i % 100:02d}/file_{i:06d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"id,value\n{i},{i * 7}\n".encode())


def run_variant(variant: str, raw: Path, work: Path, count: int) -> dict[str, tuple[float, float]]:
    """One fresh child of ``variant``: the figures of each call, and of the whole process under ``process``."""
    name, _, where = variant.partition("=")
    package = Path(where).resolve()
    db, out = work / f"{name}.duckdb", work / f"{name}.json"
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "PYTHONPATH": str(package)}
    command = [str(BIN / "python"), "-c", CHILD, str(raw), str(db), str(count), str(package / "sqlmesh_osaa"), str(out)]
    sample = run_child(command, env, work)
    figures = {call: tuple(value) for call, value in json.loads(out.read_text()).items()}
    for leftover in (db, db.with_name(db.name + ".wal"), out):
        leftover.unlink(missing_ok=True)
    return {**figures, "process": (sample.wall, sample.cpu)}


def report(samples: dict[str, list[dict[str, tuple[float, float]]]], names: list[str], files: int, loads: list[float]) -> None:
    """Medians per call and variant, and the CPU ratio of the last variant to the first."""
    print(f"\n{files:,} FILE items, {len(samples[names[0]])} rounds, load average {min(loads):.2f}-{max(loads):.2f}; medians")
    print("| call | " + " | ".join(f"{name} wall / CPU" for name in names) + f" | CPU {names[-1]}/{names[0]} |")
    print("|---|" + "---|" * (len(names) + 1))
    for call in (*CALLS, "process"):
        medians = {
            name: [statistics.median(sample[call][i] for sample in samples[name]) for i in (0, 1)] for name in names
        }
        ratio = medians[names[-1]][1] / medians[names[0]][1]
        cells = " | ".join(f"{wall:.3f} / {cpu:.3f} s" for wall, cpu in medians.values())
        print(f"| {call} | {cells} | {ratio:.2f} |")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="NAME=PATH: a directory holding a sqlmesh_osaa package")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--raw", type=Path, help="keep the raw files in this directory (made once, reused by later runs)")
    args = parser.parse_args()
    names = [variant.partition("=")[0] for variant in args.variants]
    samples: dict[str, list[dict[str, tuple[float, float]]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="osaa-ckpt-ab-") as tmp:
        raw, work = args.raw or Path(tmp) / "raw", Path(tmp)
        if not (raw / f"src{(args.files - 1) % 100:02d}/file_{args.files - 1:06d}.csv").exists():
            make_files(raw, args.files)
        loads = [os.getloadavg()[0]]
        for round_ in range(args.rounds):
            order = args.variants if round_ % 2 == 0 else args.variants[::-1]
            for variant in order:
                samples[variant.partition("=")[0]].append(run_variant(variant, raw, work, args.files))
            loads.append(os.getloadavg()[0])
            print(
                f"round {round_ + 1} (load {loads[-1]:.2f}): "
                + ", ".join(f"{name} completion {s[-1]['mark_completed_many'][1]:.3f} s CPU" for name, s in samples.items()),
                flush=True,
            )
        report(samples, names, args.files, loads)


if __name__ == "__main__":
    main()
