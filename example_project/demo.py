"""A guided tour of sqlmesh-osaa on the example project, on the embedded local store.

Run it with ``make demo``. It works on a temporary copy of this project, so every run
starts from a clean state and leaves the repository untouched (``--keep`` keeps the copy).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.storage import LocalStore

HERE = Path(__file__).resolve().parent
SQLMESH = Path(sys.executable).parent / "sqlmesh"
EXPORT_KEY = "prod/indicators/indicators.parquet"
BAD_FILE = "data/raw/sdg/SDG_DATA_UPDATE.csv"
BAD_ROWS = "INDICATOR_ID,COUNTRY_ID,YEAR,VALUE,MAGNITUDE,QUALIFIER\nCR.1,NGA,2023,74.0,,\nCR.1,KEN,2099,88.0,,\n"


def say(text: str) -> None:
    print(textwrap.fill(" ".join(text.split()), width=96), end="\n\n")


def heading(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 88 - len(text)) + "\n")


def sqlmesh(project: Path, *args: str) -> int:
    print(f"$ sqlmesh {' '.join(args)}")
    result = subprocess.run([str(SQLMESH), *args], cwd=project, capture_output=True, text=True)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    words = ("audit", "insert", "full refresh", "Error", "failed")
    interesting = [line for line in lines if any(word in line for word in words)]
    for line in interesting[-12:]:
        print(f"    {line.strip()}")
    print(f"    -> exit code {result.returncode}\n")
    return result.returncode


def published(store: LocalStore) -> dict[str, str]:
    return {info.key: (store.head(info.key).md5 or "")[:8] for info in store.list_prefix("prod/")}


def show_published(store: LocalStore, before: dict[str, str] | None = None) -> dict[str, str]:
    now = published(store)
    if not now:
        print("    (nothing under prod/)")
    for key, md5 in sorted(now.items()):
        print(f"    {key:55} md5 {md5}{_change(before, key, md5)}")
    print()
    return now


def _change(before: dict[str, str] | None, key: str, md5: str) -> str:
    if before is None:
        return ""
    if key not in before:
        return "  (new)"
    return "  (changed)" if before[key] != md5 else "  (unchanged)"


def export_rows(store: LocalStore) -> int:
    import duckdb

    with duckdb.connect() as connection:
        return connection.execute("SELECT count(*) FROM read_parquet(?)", [store.uri(EXPORT_KEY)]).fetchone()[0]


def last_failures(project: Path) -> list[dict]:
    with PipelineCheckpoint("sqlmesh", project / ".osaa" / "checkpoints.duckdb") as checkpoint:
        return checkpoint.list(scope=CheckpointScope.MODEL, status="failed")


def tour(project: Path) -> None:
    store = LocalStore(project / ".osaa" / "storage", "osaa")

    heading("1. Plan prod: ingest the raw files, build the models, publish")
    say("""The project has three raw sources (World Bank WDI, UIS SDG, UIS OPRI) as CSV files under
        data/raw/. Models of kind osaa_file_ingest convert them to parquet, a master model
        `osaa.indicators` puts them in one long table, and `osaa.indicators_export` (kind osaa_s3_export)
        is the published dataset. Nothing is published before SQLMesh's audits pass.""")
    sqlmesh(project, "plan", "--auto-apply", "--no-prompts")
    say("Published under the prod prefix of the store (.osaa/storage/osaa/ in the project copy):")
    before = show_published(store)
    say(f"The export holds {export_rows(store)} indicator values.")

    heading("2. A new SDG file arrives with a bad row: the audit blocks publication")
    say(f"""We add {BAD_FILE}: one good row, and one with the year 2099. We tell SQLMesh the source
        changed (`--restate-model osaa_raw.sdg`, SQLMesh's way to reprocess data). The model's
        `accepted_range` audit (years 1960-2030) fails, so SQLMesh does not record the interval, and
        sqlmesh-osaa publishes nothing from it.""")
    (project / BAD_FILE).write_text(BAD_ROWS, encoding="utf-8")
    sqlmesh(project, "plan", "--restate-model", "osaa_raw.sdg", "--auto-apply", "--no-prompts")
    say("The prod prefix is exactly as it was:")
    show_published(store, before)
    for row in last_failures(project):
        say(f"MODEL checkpoint {row['key'].split('|')[0]}: FAILED - {row['error_message']}")

    heading("3. Fix the file and run again: the data is published")
    (project / BAD_FILE).write_text(BAD_ROWS.replace("2099", "2023"), encoding="utf-8")
    sqlmesh(project, "plan", "--restate-model", "osaa_raw.sdg", "--auto-apply", "--no-prompts")
    show_published(store, before)
    say(f"""The export now holds {export_rows(store)} indicator values. The files that did not change
        (WDI, OPRI, the first SDG file) were neither converted nor uploaded again: their FILE
        checkpoints said so.""")

    heading("What was recorded")
    with PipelineCheckpoint("sqlmesh", project / ".osaa" / "checkpoints.duckdb") as checkpoint:
        for row in reversed(checkpoint.list(scope=CheckpointScope.PIPELINE)):
            outcome = row["status"].upper()
            print(f"    {row['key']:48} {outcome:10} published {row['metadata'].get('published_count', 0)} object(s)")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temporary project copy to look around")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="osaa-demo-"))
    project = workdir / "example_project"
    leftovers = shutil.ignore_patterns("warehouse.duckdb*", ".osaa", ".cache", "logs", "__pycache__")
    shutil.copytree(HERE, project, ignore=leftovers)
    try:
        tour(project)
    finally:
        if args.keep:
            print(f"The project copy is in {project}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
