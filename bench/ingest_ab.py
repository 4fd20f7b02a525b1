"""Interleaved A/B of whole ``osaa-ingest`` first ingests: two checkouts of the code and the plain loop.

Each round runs, in an order that alternates between rounds, a first ingest of the same raw tree
by every variant, each a fresh process (empty HOME, settings from ``OSAA_*`` variables) reaped with
``wait4``: wall time, CPU of the child (user + system) and its peak RSS. A variant is
``NAME=PATH``, a directory holding a ``sqlmesh_osaa`` package put first on ``PYTHONPATH`` (for
example ``git archive main sqlmesh_osaa | tar -x -C /tmp/main``), optionally followed by
``@VAR=VALUE``, one more environment variable for that variant's process, or ``plain`` for
``bench/ingest_baselines.py copy``. On a shared machine, read the CPU medians and the load average.

Run: ``.venv/bin/python bench/ingest_ab.py --files 1000 --rounds 3 main=/tmp/main this=. plain``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from ingest_scale import BASELINES, BIN, Bench, Sample, make_small_tree, run_child

_INGEST = "import sys; from sqlmesh_osaa.cli import ingest_main; sys.argv[0] = 'osaa-ingest'; sys.exit(ingest_main())"


def run_variant(bench: Bench, variant: str, raw: Path) -> Sample:
    work = bench.fresh("ab")
    try:
        if variant == "plain":
            return run_child([sys.executable, BASELINES, "copy", str(raw), str(work / "out")], bench.env, bench.cwd)
        location, _, variable = variant.partition("=")[2].partition("@")
        env = {**bench.ours_env(work), "PYTHONPATH": str(Path(location).resolve())}
        if variable:
            env.update([variable.split("=", 1)])
        return run_child([str(BIN / "python"), "-c", _INGEST, str(raw), "--json"], env, bench.cwd)
    finally:
        shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="NAME=PATH (a checkout's directory) or plain")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    samples: dict[str, list[Sample]] = {variant: [] for variant in args.variants}
    with tempfile.TemporaryDirectory(prefix="osaa-ab-") as tmp:
        bench = Bench(Path(tmp), None)
        raw = make_small_tree(bench.fresh("raw"), args.files, args.rows)
        loads = [os.getloadavg()[0]]
        for round_ in range(args.rounds):
            order = args.variants if round_ % 2 == 0 else args.variants[::-1]
            for variant in order:
                samples[variant].append(run_variant(bench, variant, raw))
            loads.append(os.getloadavg()[0])
            print(f"round {round_ + 1}: " + ", ".join(
                f"{v.partition('=')[0]} {s[-1].cpu:.2f} s CPU {s[-1].rss_mb:.1f} MB" for v, s in samples.items()), flush=True)
    print(f"{args.files:,} files, {args.rounds} rounds, load average {min(loads):.1f}-{max(loads):.1f}; medians")
    print("| variant | wall | CPU | CPU per file | peak RSS |")
    print("|---|---|---|---|---|")
    for variant, runs in samples.items():
        wall, cpu, rss = (statistics.median(getattr(run, name) for run in runs) for name in ("wall", "cpu", "rss_mb"))
        print(f"| {variant.partition('=')[0]} | {wall:.2f} s | {cpu:.2f} s | {1000 * cpu / args.files:.2f} ms "
              f"| {rss:.1f} MB |")


if __name__ == "__main__":
    main()
