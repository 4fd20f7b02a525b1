"""Publication follows what SQLMesh state holds: restatements, run intervals, deletions, catch-up, the Python API.

Each test drives the real ``sqlmesh`` CLI (or SQLMesh's Python API) in subprocesses on a
temp copy of the example project and reads the store as a user would.
"""

from __future__ import annotations

import duckdb
import pytest
from sqlmesh_project import BAD_SDG_ROWS, FIXED_SDG_ROWS, Project, local_project, s3_project

pytestmark = pytest.mark.slow

RESTATE_SDG = ("--restate-model", "osaa_raw.sdg")
EXPORT_KEY = "prod/indicators/indicators.parquet"
CORRECTED = "INDICATOR_ID,COUNTRY_ID,YEAR,VALUE,MAGNITUDE,QUALIFIER\nCR.7,KEN,2023,{value},,\n"


def relative(objects: dict[str, str], prefix: str) -> dict[str, str]:
    return {key[len(prefix) :]: md5 for key, md5 in objects.items() if key.startswith(prefix)}


def sdg_values(project: Project, key: str = EXPORT_KEY) -> set[float]:
    return {row[3] for row in project.parquet_rows(key) if row[1] == "CR.7"}


def test_full_restatement_after_a_run_interval_publishes_the_corrected_data(tmp_path) -> None:
    project = local_project(tmp_path)
    project.write("data/raw/sdg/SDG_update.csv", CORRECTED.format(value=10.0))
    project.plan()
    project.sqlmesh_days_later(1, "run")
    assert sdg_values(project) == {10.0}

    project.write("data/raw/sdg/SDG_update.csv", CORRECTED.format(value=20.0))
    project.sqlmesh_days_later(1, "plan", "--auto-apply", "--no-prompts", *RESTATE_SDG)
    assert sdg_values(project) == {20.0}

    project.sqlmesh_days_later(1, "plan", "--auto-apply", "--no-prompts")
    assert sdg_values(project) == {20.0}


def test_dev_after_a_failed_restatement_publishes_exports_equal_to_prod(tmp_path) -> None:
    project = local_project(tmp_path)
    project.plan()
    project.write("data/raw/sdg/SDG_update.csv", BAD_SDG_ROWS)
    assert project.plan(None, *RESTATE_SDG, check=False).returncode != 0

    project.plan("dev", "--include-unmodified")

    prod = relative(project.objects("prod/"), "prod/")
    assert relative(project.objects("dev/dev/"), "dev/dev/") == prod
    assert "indicators/indicators.parquet" in prod


@pytest.mark.s3
@pytest.mark.parametrize("next_command", ["plan", "run"])
def test_publication_failed_by_an_s3_outage_is_repaired_by_the_next_command_with_no_changes(
    next_command, tmp_path, s3_server, fault_proxy, s3_credentials_for_tests
) -> None:
    project = s3_project(tmp_path, fault_proxy.url)
    project.env.update(OSAA_RETRY__MAX_ATTEMPTS="2", OSAA_RETRY__INITIAL_DELAY="0")
    project.plan()
    before = project.objects("prod/")
    project.edit("models/osaa/indicators_export.sql", "FROM osaa.indicators", "FROM osaa.indicators WHERE source <> 'opri'")

    fault_proxy.fail_always(operations=["CopyObject"])
    failed = project.plan(check=False)
    fault_proxy.clear()
    assert failed.returncode != 0
    assert project.objects("prod/") == before

    repaired = project.sqlmesh("plan", "--auto-apply", "--no-prompts") if next_command == "plan" else project.sqlmesh("run")
    after = project.objects("prod/")
    assert after[EXPORT_KEY] != before[EXPORT_KEY]
    assert "sqlmesh-osaa publication:" in repaired.stdout
    assert "prod -> prod/: 1 object(s) published" in repaired.stdout


def test_python_api_plan_with_a_state_schema_publishes(tmp_path) -> None:
    project = local_project(tmp_path)
    project.edit("config.yaml", "      database: warehouse.duckdb\n", "      database: warehouse.duckdb\n    state_schema: osaa_state\n")

    project.python(
        "from sqlmesh import Context\n"
        "Context(paths='.').plan(auto_apply=True, no_prompts=True)\n"
    )

    assert EXPORT_KEY in project.objects("prod/")
    pipelines = project.checkpoints("pipeline")
    assert [row["status"] for row in pipelines] == ["completed"]


def test_invalidated_environment_is_removed_from_the_store_after_the_janitor(tmp_path) -> None:
    project = local_project(tmp_path)
    project.plan()
    project.plan("dev", "--include-unmodified")
    assert "dev/dev/indicators/indicators.parquet" in project.objects("dev/dev/")
    prod = project.objects("prod/")

    project.sqlmesh("invalidate", "dev")
    project.sqlmesh("janitor", "--ignore-ttl", stdin="y\n")
    project.plan()

    assert project.objects("dev/dev/") == {}
    assert project.objects("prod/") == prod


def test_prod_missing_from_state_after_an_interrupted_promotion_keeps_what_prod_published(tmp_path) -> None:
    project = local_project(tmp_path)
    project.plan()
    prod = project.objects("prod/")
    # What a SIGKILL between the delete and the insert of SQLMesh's environment update leaves:
    # on DuckDB state that update is no transaction.
    with duckdb.connect(str(project.path / "warehouse.duckdb")) as warehouse:
        warehouse.execute("DELETE FROM sqlmesh._environments WHERE name = 'prod'")

    project.sqlmesh_days_later(1, "run", check=False)
    assert project.objects("prod/") == prod

    project.plan()
    assert project.objects("prod/") == prod


def test_renamed_export_key_removes_the_old_object(tmp_path) -> None:
    project = local_project(tmp_path)
    project.plan()
    project.edit("models/osaa/indicators_export.sql", "indicators/indicators.parquet", "indicators/all.parquet")

    project.plan()

    objects = project.objects("prod/indicators/")
    assert sorted(objects) == ["prod/indicators/all.parquet"]


def test_removed_export_model_removes_its_object_and_nothing_else(tmp_path) -> None:
    project = local_project(tmp_path)
    project.plan()
    (project.path / "models/osaa/indicators_export.sql").unlink()

    project.plan()

    objects = project.objects("prod/")
    assert EXPORT_KEY not in objects
    assert "prod/landing/sdg/SDG_DATA_NATIONAL.parquet" in objects


def test_osaa_ingest_output_beside_an_ingest_models_landing_prefix_survives(tmp_path) -> None:
    project = local_project(tmp_path)
    project.write("data/raw/sdg/SDG_update.csv", FIXED_SDG_ROWS)
    project.plan()
    project.write("elsewhere/sdg/SDG_manual.csv", FIXED_SDG_ROWS)
    project.sqlmesh("osaa-ingest", "elsewhere/sdg", "--source", "sdg", "--project", ".")
    assert "prod/landing/sdg/SDG_manual.parquet" in project.objects("prod/landing/sdg/")

    (project.path / "data/raw/sdg/SDG_update.csv").unlink()
    project.plan(None, *RESTATE_SDG)

    assert sorted(project.objects("prod/landing/sdg/")) == [
        "prod/landing/sdg/SDG_DATA_NATIONAL.parquet",
        "prod/landing/sdg/SDG_manual.parquet",
    ]


def test_two_models_claiming_the_same_key_fail_the_plan_naming_both(tmp_path) -> None:
    project = local_project(tmp_path)
    copy = (project.path / "models/osaa/indicators_export.sql").read_text(encoding="utf-8")
    project.write("models/osaa/indicators_copy.sql", copy.replace("osaa.indicators_export", "osaa.indicators_copy"))

    result = project.plan(check=False)

    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "osaa.indicators_copy" in message and "osaa.indicators_export" in message
    assert "indicators/indicators.parquet" in message
    assert "Traceback" not in message
    assert project.objects("prod/") == {}


@pytest.mark.parametrize("flag", ["--empty-backfill", "--skip-backfill"])
def test_plan_recording_intervals_without_audits_publishes_nothing_new(flag, tmp_path) -> None:
    project = local_project(tmp_path)
    project.plan()
    before = project.objects("prod/")
    project.edit("models/osaa/indicators_export.sql", "FROM osaa.indicators", "FROM osaa.indicators WHERE source <> 'opri'")

    result = project.plan(None, flag)

    assert project.objects("prod/") == before
    assert "held back" in result.stdout


def test_explained_plan_publishes_nothing(tmp_path) -> None:
    project = local_project(tmp_path)
    project.plan()
    published = project.objects("prod/")
    # As if the export's publication had never happened: its object and its publication record gone.
    records = [key for key in project.objects("staging/publications/prod/osaa.indicators_export/")]
    project.store.delete_many([EXPORT_KEY, *records])

    project.plan(None, "--explain")
    assert EXPORT_KEY not in project.objects("prod/")

    project.plan()
    assert project.objects("prod/") == published


def test_plan_ends_with_a_publication_summary(tmp_path) -> None:
    project = local_project(tmp_path)

    result = project.plan()

    assert "sqlmesh-osaa publication:" in result.stdout
    assert "prod -> prod/: 4 object(s) published" in result.stdout


def test_staged_output_reused_by_a_metadata_change_survives_the_janitor_expiring_its_snapshot(tmp_path) -> None:
    project = local_project(tmp_path)
    project.plan()
    staged = project.objects("staging/exports/osaa.indicators_export/")
    project.edit("models/osaa/indicators_export.sql", "  name osaa.indicators_export,", "  name osaa.indicators_export,\n  description 'published',")
    project.plan()
    project.sqlmesh("janitor", "--ignore-ttl", stdin="y\n")

    project.plan("dev", "--include-unmodified")

    assert project.objects("staging/exports/osaa.indicators_export/") == staged
    dev = relative(project.objects("dev/dev/"), "dev/dev/")
    assert dev == relative(project.objects("prod/"), "prod/")
