"""Start-up cost of the ``sqlmesh`` CLI extension: ``sqlmesh`` with sqlmesh-osaa installed vs without.

Run: .venv/bin/python bench/cli_startup.py [--repeats N]

The package reaches a ``sqlmesh`` start only through the ``.pth`` files it installs
(``sqlmesh_osaa_cli.pth``, which adds the ``osaa-*`` commands, and, in an editable install,
setuptools' finder). So both variants start the same interpreter with ``python -S`` and a
driver that processes this environment's site-packages exactly as Python's ``site`` module
does (``site.addpackage`` for each ``.pth`` in sorted order), then runs
``sqlmesh.cli.main:cli`` as the ``sqlmesh`` console script does:

- ``without``: every ``.pth`` file except the package's: SQLMesh as if sqlmesh-osaa were not
  installed (the check below confirms ``osaa-recover`` is absent);
- ``with``: every ``.pth`` file: the hook runs and registers the commands.

Commands: ``sqlmesh --help`` and ``sqlmesh info`` on a one-model DuckDB project. Variants
alternate, after one warm-up each (bytecode caches), so machine noise hits both alike.
Figures are medians of wall seconds and of the child's CPU seconds (user + system; less
sensitive to other load on a shared machine), and the minimum CPU seconds (the start's own
cost with the least interference). Target: with/without <= 1.05.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from importlib.metadata import distributions
from pathlib import Path

DRIVER = """
import os, site, sys
sitedir, skipped, *argv = sys.argv[1:]
skipped = set(filter(None, skipped.split(",")))
known = set()
sys.path.append(sitedir)
for name in sorted(os.listdir(sitedir)):
    if name.endswith(".pth") and not name.startswith(".") and name not in skipped:
        site.addpackage(sitedir, name, known)
sys.argv = ["sqlmesh", *argv]
from sqlmesh.cli.main import cli
sys.exit(cli())
"""

PROJECT_CONFIG = """gateways:
  local:
    connection:
      type: duckdb
      database: bench.duckdb
default_gateway: local
model_defaults:
  dialect: duckdb
"""
MODEL = "MODEL (name bench.one, kind FULL);\nSELECT 1 AS id\n"


def package_pth_files() -> list[str]:
    """The .pth files sqlmesh-osaa installed in this environment, from its RECORD."""
    [installed] = distributions(name="sqlmesh-osaa", path=[sysconfig.get_paths()["purelib"]])
    files = installed.files or []
    return sorted(str(f) for f in files if str(f).endswith(".pth") and "/" not in str(f))


def make_project(root: Path) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "config.yaml").write_text(PROJECT_CONFIG)
    (root / "models" / "one.sql").write_text(MODEL)
    return root


def run_once(args: list[str], skipped: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of one start, and its stdout."""
    command = [sys.executable, "-S", "-c", DRIVER, sysconfig.get_paths()["purelib"], ",".join(skipped), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    options = parser.parse_args()
    ours = package_pth_files()
    variants = {"without": ours, "with": []}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSAA_", "SQLMESH_"))}
    commands = {"sqlmesh --help": ["--help"], "sqlmesh info": ["info"]}
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"package .pth files skipped in 'without': {', '.join(ours)}")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="osaa-bench-cli-") as workdir:
        project = make_project(Path(workdir) / "project")
        for label, args in commands.items():
            for variant, skipped in variants.items():
                _, _, out = run_once(args, skipped, project, env)
                listed = "osaa-recover" in out
                if label == "sqlmesh --help" and listed != (variant == "with"):
                    raise SystemExit(f"variant {variant!r}: osaa-recover listed={listed}; the comparison is not valid")
            for _ in range(options.repeats):
                for variant, skipped in variants.items():
                    wall, cpu, _ = run_once(args, skipped, project, env)
                    results.setdefault((label, variant), []).append((wall, cpu))
    print(f"\nMedians of {options.repeats} alternating runs per variant:\n")
    print("| Command | Variant | Wall, median | CPU, median | CPU, min |")
    print("|---|---|---|---|---|")
    figures = {}
    for label in commands:
        for variant in variants:
            walls, cpus = zip(*results[(label, variant)])
            figures[(label, variant)] = (statistics.median(walls), statistics.median(cpus), min(cpus))
            wall, cpu, least = figures[(label, variant)]
            print(f"| `{label}` | {variant} | {wall:.3f} s | {cpu:.3f} s | {least:.3f} s |")
        ratios = [w / wo for w, wo in zip(figures[(label, "with")], figures[(label, "without")])]
        print(f"| `{label}` | **with / without** | {ratios[0]:.3f} | {ratios[1]:.3f} | {ratios[2]:.3f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
