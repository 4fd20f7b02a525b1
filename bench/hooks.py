"""Overhead of the SQLMesh integration: a 50-model project with and without sqlmesh-osaa.

Run: .venv/bin/python bench/hooks.py [--repeats N]

Three generated projects with the same 50 models (5 seeds, 5 chains of 8, 3 fan-in models
joining chain ends, 2 outputs), planned side by side in one run with the real ``sqlmesh``
CLI, alternating so that machine noise hits every variant alike:

- ``stock``: no osaa line; the outputs are FULL models;
- ``hooks``: the same models plus the two osaa command macros and ``variables: osaa:`` (PIPELINE and
  MODEL checkpoints, reconciliation, publication check). Target: hooks/stock <= 1.10;
- ``exports``: ``hooks`` with the two outputs of kind ``osaa_s3_export`` (parquet staged and
  published on the local store): what the feature itself costs, for information.

Each repeat times two commands on a fresh copy: the first ``sqlmesh plan`` (backfill of all
50 models) and ``sqlmesh plan --restate-model 'bench.seed_*'`` (every model evaluated again).
Figures are medians per command, including the CLI's start-up: wall seconds, and the CPU
seconds (user + system) of the ``sqlmesh`` process (``wait4``), which other load on the
machine disturbs much less than wall time. The order of the variants rotates every repeat,
so no variant always runs right after another; the load average is printed before and after.

``--baseline DIR`` adds ``hooks-base`` and ``exports-base``: the same projects with the
package imported from DIR (a checkout of an earlier commit, first on ``PYTHONPATH``), run in
the same rotation, for an A/B of a change against the commit before it.

The commands run as on an installed system: with Python's bytecode cache (an inherited
``PYTHONDONTWRITEBYTECODE`` is dropped, else this package, unlike SQLMesh, is compiled
again by every command) and after one untimed run of each variant that fills it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from projects import MACROS, OSAA_CONFIG, add_chain, model, run_measured

SQLMESH = Path(sys.executable).parent / "sqlmesh"
SEEDS, CHAINS, CHAIN_LENGTH, FAN_IN = 5, 5, 8, 3
COMMANDS = {
    "first plan": ["plan", "--auto-apply", "--no-prompts"],
    "restatement": ["plan", "--restate-model", "bench.seed_*", "--auto-apply", "--no-prompts"],
}


def generate(directory: Path, variant: str) -> Path:
    """Write the 50-model project of ``variant`` (stock, hooks or exports) and return its path."""
    models = directory / "models"
    models.mkdir(parents=True)
    config = "gateways:\n  local:\n    connection:\n      type: duckdb\n      database: warehouse.duckdb\n"
    config += "default_gateway: local\nmodel_defaults:\n  dialect: duckdb\n  start: '2024-01-01'\n  cron: '@daily'\n"
    if variant != "stock":
        config += OSAA_CONFIG
        (directory / "macros").mkdir()
        (directory / "macros" / "__init__.py").write_text(MACROS)
    (directory / "config.yaml").write_text(config)
    files = {}
    for seed in range(SEEDS):
        rows = 2000 * (seed + 1)
        query = f"SELECT range AS id, range % 97 AS grp, random() AS x FROM range({rows})"
        files[f"seed_{seed}"] = model(f"seed_{seed}", "FULL", query)
    ends = []
    for chain in range(CHAINS):
        ends.append(add_chain(files, chain, f"seed_{chain % SEEDS}", CHAIN_LENGTH))
    for fan in range(FAN_IN):
        joined = ends[fan : fan + 3]
        query = " UNION ALL ".join(f"SELECT grp, sum(x) AS total FROM bench.{end} GROUP BY grp" for end in joined)
        files[f"fan_{fan}"] = model(
            f"fan_{fan}", "FULL", f"SELECT grp, sum(total) AS total FROM ({query}) GROUP BY grp"
        )
    for output in range(2):
        kind = "FULL"
        if variant == "exports":
            kind = (
                "CUSTOM (materialization 'osaa_s3_export', "
                f"materialization_properties (key = 'bench/output_{output}.parquet'))"
            )
        query = f"SELECT * FROM bench.fan_{output} JOIN bench.fan_{output + 1} USING (grp)"
        files[f"output_{output}"] = model(f"output_{output}", kind, query)
    assert len(files) == 50, len(files)
    for name, text in files.items():
        (models / f"{name}.sql").write_text(text)
    return directory


def timed_commands(
    template: Path, workdir: Path, extra_env: dict[str, str] | None = None
) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of each command on a fresh copy of ``template``."""
    project = workdir / f"{template.name}-{time.monotonic_ns()}"
    shutil.copytree(template, project)
    seconds = {}
    for label, args in COMMANDS.items():
        sample = run_measured([str(SQLMESH), *args], project, project / f"{label.replace(' ', '_')}.log", extra_env)
        seconds[label] = (sample.wall, sample.cpu)
    shutil.rmtree(project)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a source tree holding the sqlmesh_osaa to compare against")
    args = parser.parse_args()
    kinds = {"stock": "stock", "hooks": "hooks", "exports": "exports"}
    environments: dict[str, dict[str, str]] = {}
    if args.baseline is not None:
        kinds.update({"hooks-base": "hooks", "exports-base": "exports"})
        base = {"PYTHONPATH": str(args.baseline.resolve())}
        environments = {"hooks-base": base, "exports-base": base}
    variants = tuple(kinds)
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="osaa-bench-hooks-") as tmp:
        workdir = Path(tmp)
        templates = {variant: generate(workdir / variant, kind) for variant, kind in kinds.items()}
        samples: dict[str, dict[str, list[tuple[float, float]]]] = {v: {c: [] for c in COMMANDS} for v in variants}
        for variant in variants:
            timed_commands(templates[variant], workdir, environments.get(variant))
        for repeat in range(args.repeats):
            shift = repeat % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                for label, seconds in timed_commands(templates[variant], workdir, environments.get(variant)).items():
                    samples[variant][label].append(seconds)
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    print(f"load average after: {os.getloadavg()}")
    print(f"\n50-model project, medians of {args.repeats} runs in seconds (sqlmesh CLI start-up included)\n")
    others = variants[1:]
    print(f"{'command':20} " + " ".join(f"{v:>12}" for v in variants) + " " + " ".join(f"{v + '/stock':>18}" for v in others))
    for label in COMMANDS:
        for measure, index in (("wall", 0), ("cpu", 1)):
            median = {v: statistics.median(sample[index] for sample in samples[v][label]) for v in variants}
            print(
                f"{label + ' ' + measure:20} "
                + " ".join(f"{median[v]:12.2f}" for v in variants)
                + " "
                + " ".join(f"{median[v] / median['stock']:18.3f}" for v in others)
            )


if __name__ == "__main__":
    main()
