"""Hook cost as users pay it: generated SQLMesh projects, hooked against stock, whole processes.

Run: .venv/bin/python bench/projects.py [--sizes 20 100] [--repeats N]
(the issue's full sizes: ``--sizes 20 100 300``).

Per size N, two projects with the same N DuckDB models: seeds, chains, fan-in models,
incremental models with daily intervals (INCREMENTAL_BY_TIME_RANGE) and 2 outputs:

- ``stock``: no osaa line, the outputs are FULL models;
- ``hooked``: the osaa ``before_all``/``after_all`` macros, ``variables: osaa:`` (local store) and the 2 outputs of
  kind ``osaa_s3_export``, i.e. the package enabled as the reference user runs it.

Each repeat runs, on a fresh copy and in fresh ``sqlmesh`` processes, the first ``sqlmesh
plan`` (backfill of every model), a restatement of the seeds (``--restate-model
'bench.seed_*'``: everything downstream re-evaluated) and a daily ``sqlmesh run`` with the
clock one day later (every model has a new interval). Variants alternate within a repeat
(A/B interleaved) after one untimed warm-up each, so machine noise hits both alike. Measured
per process with ``wait4``: CPU (user + system), wall, peak RSS. Figures are medians; the
load average before and after is printed, because the machine is shared.

``--commands`` times only some of the commands (the others still run, untimed, so a daily
run follows its plan); ``--baseline DIR`` adds ``hooked-base``: the hooked project with the
package imported from DIR (an earlier commit's ``sqlmesh_osaa``, e.g. from ``git archive``,
first on ``PYTHONPATH``), in the same alternation, for an A/B of a change.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
OSAA_VARIABLES = """variables:
  osaa:
    storage: {backend: local, root: .osaa/storage, bucket: osaa}
    checkpoint: {db_path: .osaa/checkpoints.duckdb}
"""
OSAA_CONFIG = 'before_all: ["@osaa_before_all()"]\nafter_all: ["@osaa_after_all()"]\n' + OSAA_VARIABLES
MACROS = """import importlib

import sqlmesh_osaa.macros as _osaa_macros

importlib.reload(_osaa_macros)
from sqlmesh_osaa.macros import *  # noqa: E402,F401,F403
"""
DAY_LATER = """import sys, datetime, time_machine
from sqlmesh.cli.main import cli
sys.argv = ["sqlmesh", *sys.argv[1:]]
with time_machine.travel(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)):
    cli()
"""
COMMANDS = {
    "plan": ["plan", "--auto-apply", "--no-prompts"],
    "restatement": ["plan", "--restate-model", "bench.seed_*", "--auto-apply", "--no-prompts"],
    "daily run": ["run"],
}
VARIANTS = ("stock", "hooked")


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mb: float


def model(name: str, kind: str, query: str) -> str:
    return f"MODEL (name bench.{name}, kind {kind});\n{query}\n"


def add_chain(files: dict[str, str], chain: int, upstream: str, length: int) -> str:
    """``length`` FULL models, each filtering the one before, from ``upstream``; the last one's name."""
    for step in range(length):
        name = f"chain_{chain}_{step}"
        query = f"SELECT id, grp, x * 1.01 + {step} AS x FROM bench.{upstream} WHERE id % {step + 2} <> 1"
        files[name] = model(name, "FULL", query)
        upstream = name
    return upstream


def models(size: int, hooked: bool) -> dict[str, str]:
    """``size`` model files: seeds, incremental models, chains, fan-in models and 2 outputs."""
    seeds, incrementals, fans = max(2, size // 10), max(2, size // 5), max(3, size // 20)
    chain_models = size - seeds - incrementals - fans - 2
    files = {}
    for seed in range(seeds):
        query = (
            f"SELECT range AS id, range % 97 AS grp, random() AS x, "
            f"DATE '2024-01-01' + (range % 60)::INT AS ds FROM range({1000 * (seed + 1)})"
        )
        files[f"seed_{seed}"] = model(f"seed_{seed}", "FULL", query)
    for number in range(incrementals):
        query = f"SELECT id, grp, x, ds FROM bench.seed_{number % seeds} WHERE ds BETWEEN @start_ds AND @end_ds"
        files[f"inc_{number}"] = model(f"inc_{number}", "INCREMENTAL_BY_TIME_RANGE (time_column ds)", query)
    ends, chains = [], max(1, chain_models // 8)
    for chain in range(chains):
        upstream = f"inc_{chain % incrementals}"
        length = chain_models // chains + (1 if chain < chain_models % chains else 0)
        ends.append(add_chain(files, chain, upstream, length))
    for fan in range(fans):
        joined = [ends[(fan + i) % len(ends)] for i in range(3)]
        union = " UNION ALL ".join(f"SELECT grp, sum(x) AS total FROM bench.{end} GROUP BY grp" for end in joined)
        query = f"SELECT grp, sum(total) AS total FROM ({union}) GROUP BY grp"
        files[f"fan_{fan}"] = model(f"fan_{fan}", "FULL", query)
    for output in range(2):
        kind = "FULL"
        if hooked:
            key = f"bench/output_{output}.parquet"
            kind = f"CUSTOM (materialization 'osaa_s3_export', materialization_properties (key = '{key}'))"
        query = (
            f"SELECT a.grp, a.total, b.total AS other FROM bench.fan_{output} a "
            f"JOIN bench.fan_{output + 1} b USING (grp)"
        )
        files[f"output_{output}"] = model(f"output_{output}", kind, query)
    assert len(files) == size, (len(files), size)
    return files


def generate(directory: Path, size: int, variant: str) -> Path:
    hooked = variant == "hooked"
    (directory / "models").mkdir(parents=True)
    config = "gateways:\n  local:\n    connection:\n      type: duckdb\n      database: warehouse.duckdb\n"
    config += "default_gateway: local\nmodel_defaults:\n  dialect: duckdb\n  start: '2024-01-01'\n  cron: '@daily'\n"
    if hooked:
        config += OSAA_CONFIG
        (directory / "macros").mkdir()
        (directory / "macros" / "__init__.py").write_text(MACROS)
    (directory / "config.yaml").write_text(config)
    for name, text in models(size, hooked).items():
        (directory / "models" / f"{name}.sql").write_text(text)
    return directory


def run_measured(argv: list[str], cwd: Path, log: Path, extra_env: dict[str, str] | None = None) -> Sample:
    """One whole process: wall time, and CPU and peak RSS of exactly that process (``wait4``)."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    environment.update(extra_env or {})
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(argv, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, env=environment)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} in {cwd} exited {process.returncode}:\n{log.read_text()[-3000:]}")
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def commands_on_copy(template: Path, workdir: Path, timed: list[str], extra_env: dict[str, str]) -> dict[str, Sample]:
    project = workdir / f"{template.name}-{time.monotonic_ns()}"
    shutil.copytree(template, project)
    samples = {}
    for label, args in COMMANDS.items():
        if label == "daily run":
            argv = [sys.executable, "-c", DAY_LATER, *args]
        else:
            argv = [str(BIN / "sqlmesh"), *args]
        sample = run_measured(argv, project, project / f"{label.replace(' ', '_')}.log", extra_env)
        if label in timed:
            samples[label] = sample
    shutil.rmtree(project)
    return samples


def bench_size(
    size: int, repeats: int, workdir: Path, timed: list[str], baseline: Path | None
) -> dict[str, dict[str, list[Sample]]]:
    templates = {v: generate(workdir / f"{v}-{size}", size, v) for v in VARIANTS}
    variants = {v: (templates[v], {}) for v in VARIANTS}
    if baseline is not None:
        variants["hooked-base"] = (templates["hooked"], {"PYTHONPATH": str(baseline)})
    names = list(variants)
    for template, extra_env in variants.values():
        commands_on_copy(template, workdir, [], extra_env)
    samples: dict[str, dict[str, list[Sample]]] = {v: {c: [] for c in timed} for v in names}
    for repeat in range(repeats):
        # Rotated, so no variant always runs right after the same other one.
        shift = repeat % len(names)
        for variant in names[shift:] + names[:shift]:
            template, extra_env = variants[variant]
            for label, sample in commands_on_copy(template, workdir, timed, extra_env).items():
                samples[variant][label].append(sample)
        print(f"{size} models: repeat {repeat + 1}/{repeats} done", file=sys.stderr)
    return samples


def report(size: int, samples: dict[str, dict[str, list[Sample]]]) -> None:
    timed = list(samples["stock"])
    print(f"\n{size} models, medians of {len(samples['stock'][timed[0]])} runs")
    print(f"{'command':12} {'variant':12} {'wall':>8} {'/stock':>7} {'cpu':>8} {'/stock':>7} {'rss MB':>7}")
    for label in timed:
        stock = {m: statistics.median(getattr(s, m) for s in samples["stock"][label]) for m in ("wall", "cpu")}
        for variant, by_command in samples.items():
            median = {m: statistics.median(getattr(s, m) for s in by_command[label]) for m in ("wall", "cpu", "rss_mb")}
            print(
                f"{label:12} {variant:12} {median['wall']:8.2f} {median['wall'] / stock['wall']:7.3f} "
                f"{median['cpu']:8.2f} {median['cpu'] / stock['cpu']:7.3f} {median['rss_mb']:7.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    parser.add_argument("--baseline", type=Path, help="an earlier commit's package directory's parent, for hooked-base")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="osaa-bench-projects-") as tmp:
        results = {
            size: bench_size(size, args.repeats, Path(tmp), args.commands, args.baseline) for size in args.sizes
        }
    print(f"load average after: {os.getloadavg()}")
    for size, samples in results.items():
        report(size, samples)


if __name__ == "__main__":
    main()
