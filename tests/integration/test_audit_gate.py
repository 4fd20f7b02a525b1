"""A blocking audit is the validator of the publication transaction, on both stores.

Story, run once per store: plan prod; add a raw SDG file with a year out of range and
restate the source (SQLMesh's way to reprocess changed data); fix the file and restate again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sqlmesh_project import BAD_SDG_ROWS, FIXED_SDG_ROWS, Completed, Project, local_project, s3_project

pytestmark = pytest.mark.slow

RESTATE_SDG = ("--restate-model", "osaa_raw.sdg")
EXPORT_KEY = "prod/indicators/indicators.parquet"


@dataclass
class Story:
    project: Project
    prod_before: dict[str, str]
    bad_exit_code: int
    prod_after_bad: dict[str, str]
    models_after_bad: list[dict[str, Any]]
    pipelines_after_bad: list[dict[str, Any]]
    sdg_staged_before: dict[str, str]
    sdg_staged_after_bad: dict[str, str]
    prod_after_fix: dict[str, str]
    export_rows_after_fix: list[tuple[Any, ...]]
    list_failed_after_bad: Completed
    stats_after_fix: Completed


@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def story(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Story:
    directory: Path = tmp_path_factory.mktemp(f"audit-gate-{request.param}")
    if request.param == "local":
        project = local_project(directory)
    else:
        request.getfixturevalue("s3_credentials_for_tests")
        project = s3_project(directory, request.getfixturevalue("s3_server"))
    project.plan()
    prod_before = project.objects("prod/")
    sdg_staged_before = project.objects("staging/exports/osaa_raw.sdg/")
    project.write("data/raw/sdg/SDG_update.csv", BAD_SDG_ROWS)
    bad = project.plan(None, *RESTATE_SDG, check=False)
    observed = dict(
        prod_after_bad=project.objects("prod/"),
        models_after_bad=project.checkpoints("model"),
        pipelines_after_bad=project.checkpoints("pipeline"),
        sdg_staged_after_bad=project.objects("staging/exports/osaa_raw.sdg/"),
        list_failed_after_bad=project.sqlmesh("osaa-recover", "list-failed", "--scope", "model", "--json", check=False),
    )
    project.write("data/raw/sdg/SDG_update.csv", FIXED_SDG_ROWS)
    project.plan(None, *RESTATE_SDG)
    return Story(
        project=project,
        prod_before=prod_before,
        sdg_staged_before=sdg_staged_before,
        bad_exit_code=bad.returncode,
        **observed,
        prod_after_fix=project.objects("prod/"),
        export_rows_after_fix=project.parquet_rows(EXPORT_KEY),
        stats_after_fix=project.sqlmesh("osaa-recover", "stats", "--json", check=False),
    )


def test_first_plan_publishes_the_export_and_the_landing_files(story: Story) -> None:
    assert sorted(story.prod_before) == [
        "prod/indicators/indicators.parquet",
        "prod/landing/opri/OPRI_DATA_NATIONAL.parquet",
        "prod/landing/sdg/SDG_DATA_NATIONAL.parquet",
        "prod/landing/wdi/WDI_sample.parquet",
    ]


def test_failed_blocking_audit_fails_the_plan(story: Story) -> None:
    assert story.bad_exit_code != 0


def test_failed_blocking_audit_leaves_every_prod_object_unchanged(story: Story) -> None:
    assert story.prod_after_bad == story.prod_before


def test_model_checkpoint_of_failed_audit_names_the_audit_and_its_row_count(story: Story) -> None:
    sdg = [row for row in story.models_after_bad if row["key"].startswith("osaa_raw.sdg|")]
    assert [row["status"] for row in sdg] == ["failed"]
    assert "accepted_range" in sdg[0]["error_message"]
    assert sdg[0]["metadata"]["failed_audits"] == [{"audit": "accepted_range", "rows": 1}]


def test_model_checkpoint_of_failed_audit_says_the_evaluation_ran_and_the_audit_failed(story: Story) -> None:
    (sdg,) = [row for row in story.models_after_bad if row["key"].startswith("osaa_raw.sdg|")]
    assert sdg["metadata"]["phase"] == "audit"
    assert sdg["metadata"]["evaluation_seconds"] > 0


def test_failed_plan_is_recorded_as_a_failed_pipeline_checkpoint(story: Story) -> None:
    assert [(row["status"], row["metadata"]["environment"]) for row in story.pipelines_after_bad] == [
        ("completed", "prod"),
        ("failed", "prod"),
    ]


def test_failed_restatement_discards_its_own_staged_output_and_keeps_the_recorded_one(story: Story) -> None:
    assert story.sdg_staged_before
    assert story.sdg_staged_after_bad == story.sdg_staged_before


def test_fixed_data_is_published_to_prod(story: Story) -> None:
    assert "prod/landing/sdg/SDG_update.parquet" in story.prod_after_fix
    assert story.prod_after_fix[EXPORT_KEY] != story.prod_before[EXPORT_KEY]
    assert ("KEN", "CR.1", 2023, 88.0, "sdg") in story.export_rows_after_fix


def test_unchanged_raw_files_are_not_converted_again(story: Story) -> None:
    files = {row["key"]: row for row in story.project.checkpoints("file")}
    assert files["staging/ingest/landing/sdg/SDG_DATA_NATIONAL.parquet"]["attempt"] == 1
    assert files["staging/ingest/landing/sdg/SDG_update.parquet"]["attempt"] == 2


def test_recovery_cli_lists_the_failed_model_with_its_audit(story: Story) -> None:
    assert story.list_failed_after_bad.returncode == 1, story.list_failed_after_bad.stderr
    items = json.loads(story.list_failed_after_bad.stdout)["items"]
    sdg = [item for item in items if item["key"].startswith("osaa_raw.sdg|")]
    assert sdg, items
    assert "accepted_range" in sdg[0]["error_message"]


def test_recovery_cli_stats_show_the_audit_failure_recovered(story: Story) -> None:
    assert story.stats_after_fix.returncode in (0, 1), story.stats_after_fix.stderr
    recoveries = list(_values_of("time_to_recovery", json.loads(story.stats_after_fix.stdout)))
    assert recoveries and sum(r["recovered"] for r in recoveries) >= 1, story.stats_after_fix.stdout
    assert all(r["mean_seconds"] is None or r["mean_seconds"] > 0 for r in recoveries)


def _values_of(name: str, document: Any) -> Any:
    """Every value stored under ``name`` anywhere in a JSON document."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key == name:
                yield value
            else:
                yield from _values_of(name, value)
    elif isinstance(document, list):
        for value in document:
            yield from _values_of(name, value)
