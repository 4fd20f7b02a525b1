"""A prod restatement whose new data fails the export's blocking audit, killed at every fault point.

The export gets a blocking audit that refuses the value -999; a new raw SDG file carries that
value (every upstream audit passes it). The restatement stages a new export and SQLMesh
audits it; the plan is SIGKILLed at each fault point of the evaluation and publication path
(of any model: the SDG source passes and is published by the catch-up, the export fails).
After the kill a plain ``sqlmesh plan`` runs. Prod must never hold the bad value, and
``sqlmesh audit`` must pass on prod's tables (the export's table is put back to what state
vouches for). Without a kill, the failure is listed by ``osaa-recover list-failed``.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from sqlmesh_project import Project, local_project

from sqlmesh_osaa.fault_points import (
    AFTER_COMMIT_DECISION,
    AFTER_PRODUCTION_COPY,
    AFTER_STAGING,
    BEFORE_STAGING_CLEANUP,
    FAULT_POINT_ENV,
)
from sqlmesh_osaa.integration.export_kind import EXPORT_STAGED
from sqlmesh_osaa.integration.model_checkpoints import EVALUATION_FAILED, INTERVAL_RECORDED
from sqlmesh_osaa.storage import LocalStore

pytestmark = pytest.mark.slow

RESTATE_SDG = ("--restate-model", "osaa_raw.sdg")
EXPORT_KEY = "prod/indicators/indicators.parquet"
BAD_VALUE = -999.0
BAD_ROWS = f"INDICATOR_ID,COUNTRY_ID,YEAR,VALUE,MAGNITUDE,QUALIFIER\nCR.9,KEN,2023,{BAD_VALUE},,\n"
FAULT_POINTS = [
    INTERVAL_RECORDED,
    EXPORT_STAGED,
    EVALUATION_FAILED,
    AFTER_STAGING,
    AFTER_COMMIT_DECISION,
    AFTER_PRODUCTION_COPY,
    BEFORE_STAGING_CLEANUP,
]


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """Prod planned with the export's extra audit, and the bad raw file in place (not yet restated)."""
    project = local_project(tmp_path_factory.mktemp("restatement-kills"))
    project.edit(
        "models/osaa/indicators_export.sql",
        "audits (not_null(columns := (country_id, indicator_id, year, value)))",
        "audits (not_null(columns := (country_id, indicator_id, year, value)), "
        f"not_accepted_values(column := value, is_in := ({BAD_VALUE})))",
    )
    project.plan()
    project.write("data/raw/sdg/SDG_update.csv", BAD_ROWS)
    return project


def copy_of(project: Project, destination: Path) -> Project:
    path = destination / "project"
    shutil.copytree(project.path, path)
    return Project(path=path, env=project.env, store=LocalStore(path / ".osaa" / "storage", "osaa"))


def export_values(project: Project) -> set[float]:
    return {row[3] for row in project.parquet_rows(EXPORT_KEY)}


def assert_prod_unchanged_and_auditable(project: Project, before: dict[str, str]) -> None:
    assert project.objects("prod/indicators/") == before
    assert BAD_VALUE not in export_values(project)
    audit = project.sqlmesh("audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_restatement_killed_at_a_fault_point_never_publishes_data_that_failed_its_audit(
    planned: Project, point: str, tmp_path: Path
) -> None:
    project = copy_of(planned, tmp_path)
    before = project.objects("prod/indicators/")

    killed = project.plan(None, *RESTATE_SDG, check=False, extra_env={FAULT_POINT_ENV: point})
    assert killed.returncode == -signal.SIGKILL, f"{point} was not reached:\n{killed.stdout}\n{killed.stderr}"
    assert BAD_VALUE not in export_values(project)

    project.plan()
    assert_prod_unchanged_and_auditable(project, before)


def test_restatement_failing_its_audit_without_a_kill_is_listed_and_leaves_prod_auditable(
    planned: Project, tmp_path: Path
) -> None:
    project = copy_of(planned, tmp_path)
    before = project.objects("prod/indicators/")

    failed = project.plan(None, *RESTATE_SDG, check=False)

    assert failed.returncode != 0
    listed = project.sqlmesh("osaa-recover", "list-failed", "--scope", "model", "--json", check=False)
    items = json.loads(listed.stdout)["items"]
    assert [item["key"].split("|")[0] for item in items] == ["osaa.indicators_export"]
    assert "not_accepted_values" in items[0]["error_message"]
    assert_prod_unchanged_and_auditable(project, before)


def test_evaluation_killed_after_sqlmesh_recorded_its_interval_is_published_on_sqlmesh_evidence(
    planned: Project, tmp_path: Path
) -> None:
    project = copy_of(planned, tmp_path)
    update = "prod/landing/sdg/SDG_update.parquet"

    killed = project.plan(None, *RESTATE_SDG, check=False, extra_env={FAULT_POINT_ENV: INTERVAL_RECORDED})
    assert killed.returncode == -signal.SIGKILL
    assert update not in project.objects("prod/landing/sdg/")

    project.plan()

    assert update in project.objects("prod/landing/sdg/")
    markers = [key for key in project.objects("staging/exports/osaa_raw.sdg/") if key.endswith("/_osaa_audited.json")]
    evidence = set()
    for key in markers:
        local = tmp_path / "marker.json"
        project.store.get_file(key, local)
        evidence.add(json.loads(local.read_text())["evidence"])
    assert "interval row in SQLMesh state" in evidence
