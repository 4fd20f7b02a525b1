"""What of the hooked project costs what: a restatement of the stock project with one addition at a time.

Run: .venv/bin/python bench/project_variants.py [--size 300] [--rounds 10] [--variants stock,+macros,hooked]

``bench/projects.py`` compares the stock project with the hooked one as a whole. This bench
takes the same generated project (``projects.generate``) and adds one thing of the hooked
project at a time, so the ratio to stock says what each costs:

- ``+variables``: the ``variables: osaa:`` block alone (the package is not enabled);
- ``+macros``: the project's ``macros/__init__.py`` as the reference user writes it
  (``projects.MACROS``), without ``before_all``/``after_all``: the package's macros are
  registered, nothing of it runs;
- ``+import``: a ``macros/__init__.py`` that only imports the modules the hooks use
  (``sqlmesh_osaa.integration.hooks``), registering nothing;
- ``+objects``: a ``macros/__init__.py`` that keeps 40,000 small Python objects alive and
  imports nothing of the package (what a bigger live heap alone costs this workload);
- ``+objects-frozen``: the same, then ``gc.freeze()`` (the collector's share of the run);
- ``hooked-full-outputs``: the hooked project with its 2 outputs of kind FULL (hooks and
  MODEL checkpoints, no export);
- ``hooked``: the hooked project of ``bench/projects.py``.

Each variant is planned once (untimed); then every round restates the seeds (``--restate-model
'bench.seed_*'``, everything downstream re-evaluated) on a fresh copy of each planned
project, the variants rotated so that none always follows the same other one; the first
round is a warm-up and is not counted. Measured per process with ``wait4``: CPU (user +
system) and wall. Printed: medians and their ratio to the first variant, and each round's CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from projects import BIN, COMMANDS, MACROS, OSAA_VARIABLES, Sample, generate, run_measured

HOOKS_IMPORT = "import sqlmesh_osaa.integration.hooks  # noqa: F401\n"
OBJECTS = "_objects = [{'a': i, 'b': str(i), 'c': (i, i)} for i in range(40000)]\n"
OBJECTS_FROZEN = "import gc\n\n" + OBJECTS + "gc.freeze()\n"


def _macros(text: str) -> Callable[[Path], None]:
    def add(project: Path) -> None:
        (project / "macros").mkdir(exist_ok=True)
        (project / "macros" / "__init__.py").write_text(text)

    return add


def _variables(project: Path) -> None:
    with (project / "config.yaml").open("a") as config:
        config.write(OSAA_VARIABLES)


def _full_outputs(project: Path) -> None:
    for path in (project / "models").glob("output_*.sql"):
        text = path.read_text()
        start, end = text.index("kind "), text.index(");\n")
        path.write_text(text[:start] + "kind FULL" + text[end:])


# Variant -> (the project it starts from, what it adds to it).
VARIANTS: dict[str, tuple[str, Callable[[Path], None] | None]] = {
    "stock": ("stock", None),
    "+variables": ("stock", _variables),
    "+macros": ("stock", _macros(MACROS)),
    "+import": ("stock", _macros(HOOKS_IMPORT)),
    "+objects": ("stock", _macros(OBJECTS)),
    "+objects-frozen": ("stock", _macros(OBJECTS_FROZEN)),
    "hooked-full-outputs": ("hooked", _full_outputs),
    "hooked": ("hooked", None),
}


def planned(workdir: Path, size: int, variant: str) -> Path:
    base, addition = VARIANTS[variant]
    project = generate(workdir / variant, size, base)
    if addition is not None:
        addition(project)
    run_measured([str(BIN / "sqlmesh"), *COMMANDS["plan"]], project, project / "plan.log")
    return project


def restated(template: Path, workdir: Path) -> Sample:
    copy = workdir / f"{template.name}-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(template, copy)
    sample = run_measured([str(BIN / "sqlmesh"), *COMMANDS["restatement"]], copy, copy / "restatement.log")
    shutil.rmtree(copy)
    return sample


def bench(size: int, rounds: int, names: list[str], workdir: Path) -> dict[str, list[Sample]]:
    templates = {name: planned(workdir, size, name) for name in names}
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for number in range(rounds + 1):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            sample = restated(templates[name], workdir)
            if number:
                samples[name].append(sample)
        print(f"round {number}/{rounds} done (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
    return samples


def report(samples: dict[str, list[Sample]]) -> None:
    first = next(iter(samples.values()))
    base_wall = statistics.median(s.wall for s in first)
    base_cpu = statistics.median(s.cpu for s in first)
    print(f"{'variant':20} {'wall':>7} {'ratio':>6} {'cpu':>7} {'ratio':>6}  cpu per round")
    for name, runs in samples.items():
        wall, cpu = statistics.median(s.wall for s in runs), statistics.median(s.cpu for s in runs)
        rounds = " ".join(f"{s.cpu:.2f}" for s in runs)
        print(f"{name:20} {wall:7.2f} {wall / base_wall:6.3f} {cpu:7.2f} {cpu / base_cpu:6.3f}  {rounds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--variants", default="stock,+variables,+macros,+import,hooked-full-outputs,hooked")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="osaa-project-variants-") as workdir:
        samples = bench(args.size, args.rounds, names, Path(workdir))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"\n{args.size} models, restatement, medians of {args.rounds} rounds (ratios to {names[0]})")
    report(samples)


if __name__ == "__main__":
    main()
