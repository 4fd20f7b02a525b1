"""A guided tour of sqlmesh-osaa on the example project, on the embedded local store.

Run it with ``make demo``. It works on a fresh copy of this project in ``.demo/example_project``
at the repository root (``--workdir`` to choose another place), replaced at every run and
kept afterwards, so you can look inside and run the commands yourself. The repository's
own ``example_project`` is never touched.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from sqlmesh_osaa.storage import LocalStore

HERE = Path(__file__).resolve().parent
DEFAULT_WORKDIR = HERE.parent / ".demo"
BIN = Path(sys.executable).parent
EXPORT_KEY = "prod/indicators/indicators.parquet"
NEW_FILE = "data/raw/sdg/SDG_DATA_UPDATE.csv"
HEADER = "INDICATOR_ID,COUNTRY_ID,YEAR,VALUE,MAGNITUDE,QUALIFIER\n"
BAD_ROWS = HEADER + "CR.1,NGA,2023,74.0,,\nCR.2,KEN,2022,,,\n"
FIXED_ROWS = BAD_ROWS.replace("2022,,,", "2022,88.0,,")
WIDTH = 100


def say(text: str) -> None:
    print(textwrap.fill(" ".join(text.split()), width=WIDTH), end="\n\n")


def heading(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, WIDTH - 5 - len(text)) + "\n")


def sqlmesh(project: Path, *args: str) -> int:
    """Run a sqlmesh command and show the lines that tell the story (audits, publication, errors)."""
    print(f"$ sqlmesh {' '.join(args)}")
    result = subprocess.run([str(BIN / "sqlmesh"), *args], cwd=project, capture_output=True, text=True)
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    words = ("audits passed", "audit", "sqlmesh-osaa published", "Error", "failed")
    for line in [line for line in lines if any(word in line for word in words)][-8:]:
        print(f"    {line}")
    print(f"    -> exit code {result.returncode}\n")
    return result.returncode


def recover(project: Path, *args: str) -> int:
    """Run ``sqlmesh osaa-recover`` with its own output, as an operator would see it."""
    print(f"$ sqlmesh osaa-recover {' '.join(args)}")
    sys.stdout.flush()
    result = subprocess.run([str(BIN / "sqlmesh"), "osaa-recover", *args], cwd=project)
    print(f"    -> exit code {result.returncode}\n")
    return result.returncode


def show_published(store: LocalStore) -> None:
    keys = sorted(info.key for info in store.list_prefix("prod/"))
    for key in keys or ["(nothing under prod/)"]:
        print(f"    {key}")
    print()


def export_rows(store: LocalStore) -> int:
    import duckdb

    with duckdb.connect() as connection:
        return connection.execute("SELECT count(*) FROM read_parquet(?)", [store.uri(EXPORT_KEY)]).fetchone()[0]


def tour(project: Path) -> None:
    store = LocalStore(project / ".osaa" / "storage", "osaa")

    heading("1. The first plan: ingest the raw files, build the models, publish")
    say("""The project has three raw sources (World Bank WDI, UIS SDG, UIS OPRI) as CSV files in data/raw/.
        Three models turn them into tables, `osaa.indicators` puts them in one long table, and
        `osaa.indicators_export` is the dataset we publish. Nothing is published before SQLMesh's audits
        pass. We plan the prod environment:""")
    sqlmesh(project, "plan", "--auto-apply", "--no-prompts")
    say("These objects are now published under the prod prefix of the store (.osaa/storage/osaa/prod/):")
    show_published(store)
    say(f"The published dataset holds {export_rows(store)} indicator values.")

    heading("2. New data arrives with a hole in it")
    say(f"""A new SDG file arrives, {NEW_FILE}. One of its rows has no value. The SDG model itself accepts
        it (its audits check ids and years, not values), but the master table's `not_null` audit refuses
        it. We tell SQLMesh the source changed, with `--restate-model osaa_raw.sdg`:""")
    (project / NEW_FILE).write_text(BAD_ROWS, encoding="utf-8")
    sqlmesh(project, "plan", "--restate-model", "osaa_raw.sdg", "--auto-apply", "--no-prompts")
    say("""The plan failed, and nothing was published from it: prod holds exactly what it held before.
        A team that set up notification targets for SQLMesh (Slack, e-mail) would have got one message
        saying the publication of prod is held back, for which model, and why. Here is what an operator
        sees:""")
    recover(project, "list-failed")
    say("""The model failure is a data error: running it again cannot help until the data changes. What
        should we do? `retry` reads SQLMesh's graph of models and finds where the data comes from:""")
    recover(project, "retry", "--scope", "model")

    heading("3. Fix the data, and let retry apply the fix")
    say("""We correct the file (the value was 88.0) and ask `retry` to run the plan it proposed. It restates
        only the source whose file changed, and SQLMesh re-runs everything downstream of it:""")
    (project / NEW_FILE).write_text(FIXED_ROWS, encoding="utf-8")
    recover(project, "retry", "--scope", "model", "--apply")
    say(f"""The published dataset now holds {export_rows(store)} indicator values. The files that did not
        change were neither converted nor uploaded again: their checkpoints said so.""")

    heading("4. Where things stand")
    say("""Nothing is broken any more, so `list-failed` exits 0. The failed plan is not forgotten: it counts
        as recovered, and `stats` says how long the recovery took.""")
    recover(project, "list-failed")
    recover(project, "stats")
    report = project / "report.html"
    recover(project, "report", "--html", str(report))
    say(f"""Open {report} in a browser: runs over time with the failure marked, time to recovery, the
        slowest models, and what prod publishes and from which evaluation. For Prometheus, `sqlmesh
        osaa-recover stats --format openmetrics` prints the same numbers as metrics.""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where the project copy goes (replaced)")
    args = parser.parse_args()
    project = args.workdir.resolve() / "example_project"
    shutil.rmtree(project, ignore_errors=True)
    leftovers = shutil.ignore_patterns("warehouse.duckdb*", ".osaa", ".cache", "logs", "__pycache__", "demo.py")
    shutil.copytree(HERE, project, ignore=leftovers)
    print(f"The demo works on a copy of the example project in {project}; it stays there afterwards.")
    tour(project)
    print(f"The project copy is in {project}: `cd` there and try `sqlmesh osaa-recover history --key osaa.indicators`.")


if __name__ == "__main__":
    main()
