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
clock one day later (every model has a new interval). Variants alternate command by command
(stock's plan, hooked's plan, stock's restatement, ...; the order swapped every repeat) after
one untimed warm-up each, so machine noise hits both samples of a pair alike. Measured
per process with ``wait4``: CPU (user + system), wall, peak RSS. Figures are medians, and
the median of the paired ratios (each repeat's sample over stock's sample of the same repeat,
so a drift of the machine between repeats cancels) with their range; the load average before
and after is printed, because the machine is shared.

``--concurrent`` starts the variants' processes of each command at the same time, one per
core: both samples of a pair then see the same machine, which on a VM whose speed drifts by
tens of per cent within a minute gives paired ratios a spread of a few per cent instead of
tens. Each process shares the machine with the other, so absolute figures are slower than
alone; read the paired ratios.

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


@dataclass
class Running:
    """A started process and what its sample needs."""

    process: subprocess.Popen
    argv: list[str]
    cwd: Path
    log: Path
    started: float


def start(argv: list[str], cwd: Path, log: Path, extra_env: dict[str, str] | None = None) -> Running:
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    environment.update(extra_env or {})
    with log.open("w") as output:
        process = subprocess.Popen(argv, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, env=environment)
    return Running(process, argv, cwd, log, time.perf_counter())


def finish(running: Running) -> Sample:
    """Wall time, and CPU and peak RSS of exactly that process (``wait4``)."""
    try:
        _, status, usage = os.wait4(running.process.pid, 0)
    except BaseException:
        running.process.kill()
        running.process.wait()
        raise
    return _sample(running, status, usage, time.perf_counter())


def finish_all(running: dict[str, Running]) -> dict[str, Sample]:
    """Each process reaped as it ends, so its wall time is its own, not the longest one's."""
    by_pid = {process.process.pid: name for name, process in running.items()}
    samples = {}
    try:
        while by_pid:
            pid, status, usage = os.wait4(-1, 0)
            name = by_pid.pop(pid, None)
            if name is not None:
                samples[name] = _sample(running[name], status, usage, time.perf_counter())
    except BaseException:
        for pid in by_pid:
            running[by_pid[pid]].process.kill()
        raise
    return {name: samples[name] for name in running}


def _sample(running: Running, status: int, usage: os.struct_rusage, ended: float) -> Sample:
    running.process.returncode = returncode = os.waitstatus_to_exitcode(status)
    if returncode != 0:
        tail = running.log.read_text()[-3000:]
        raise SystemExit(f"{' '.join(running.argv)} in {running.cwd} exited {returncode}:\n{tail}")
    return Sample(ended - running.started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def run_measured(argv: list[str], cwd: Path, log: Path, extra_env: dict[str, str] | None = None) -> Sample:
    """One whole process, measured alone."""
    return finish(start(argv, cwd, log, extra_env))


def command_argv(label: str) -> list[str]:
    if label == "daily run":
        return [sys.executable, "-c", DAY_LATER, *COMMANDS[label]]
    return [str(BIN / "sqlmesh"), *COMMANDS[label]]


def _log(project: Path, label: str) -> Path:
    return project / f"{label.replace(' ', '_')}.log"


def commands_side_by_side(
    variants: dict[str, tuple[Path, dict[str, str]]],
    order: list[str],
    workdir: Path,
    timed: list[str],
    concurrent: bool,
) -> dict[str, dict[str, Sample]]:
    """Each variant on a fresh copy of its template; every command run by each variant in turn.

    A pair of samples of one command is then seconds apart (``concurrent``: the same seconds),
    so a drift of the machine's speed hits both alike; each copy still runs plan, restatement
    and daily run in that order.
    """
    projects = {}
    for variant in order:
        template = variants[variant][0]
        projects[variant] = workdir / f"{variant}-{time.monotonic_ns()}"
        shutil.copytree(template, projects[variant])
    samples: dict[str, dict[str, Sample]] = {variant: {} for variant in order}
    for label in COMMANDS:

        def launch(variant: str) -> Running:
            project = projects[variant]
            return start(command_argv(label), project, _log(project, label), variants[variant][1])

        if concurrent:
            finished = finish_all({variant: launch(variant) for variant in order})
        else:
            finished = {variant: finish(launch(variant)) for variant in order}
        if label in timed:
            for variant, sample in finished.items():
                samples[variant][label] = sample
    for project in projects.values():
        shutil.rmtree(project)
    return samples


def bench_size(
    size: int, repeats: int, workdir: Path, timed: list[str], baseline: Path | None, concurrent: bool
) -> dict[str, dict[str, list[Sample]]]:
    templates = {v: generate(workdir / f"{v}-{size}", size, v) for v in VARIANTS}
    variants = {v: (templates[v], {}) for v in VARIANTS}
    if baseline is not None:
        variants["hooked-base"] = (templates["hooked"], {"PYTHONPATH": str(baseline)})
    names = list(variants)
    commands_side_by_side(variants, names, workdir, [], concurrent)
    samples: dict[str, dict[str, list[Sample]]] = {v: {c: [] for c in timed} for v in names}
    for repeat in range(repeats):
        # Rotated, so no variant always runs right after the same other one.
        shift = repeat % len(names)
        by_variant = commands_side_by_side(variants, names[shift:] + names[:shift], workdir, timed, concurrent)
        for variant, by_command in by_variant.items():
            for label, sample in by_command.items():
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
    print("paired ratios (each repeat's sample over stock's of the same repeat): median [min, max]")
    for label in timed:
        for variant, by_command in samples.items():
            if variant == "stock":
                continue
            pairs = list(zip(by_command[label], samples["stock"][label]))
            cells = []
            for metric in ("wall", "cpu"):
                ratios = [getattr(one, metric) / getattr(base, metric) for one, base in pairs]
                cells.append(f"{metric} {statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]")
            print(f"{label:12} {variant:12} " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    parser.add_argument("--baseline", type=Path, help="an earlier commit's package directory's parent, for hooked-base")
    parser.add_argument(
        "--concurrent", action="store_true", help="start the variants' processes of a command at the same time"
    )
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="osaa-bench-projects-") as tmp:
        results = {
            size: bench_size(size, args.repeats, Path(tmp), args.commands, args.baseline, args.concurrent)
            for size in args.sizes
        }
    print(f"load average after: {os.getloadavg()}")
    for size, samples in results.items():
        report(size, samples)


if __name__ == "__main__":
    main()
