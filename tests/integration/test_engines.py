"""The osaa kinds on every SQLMesh engine: same plan, same audit gate, same promotion, same bytes.

Story, told once per engine on a copy of the example project that differs only in its
gateway: plan prod; land a raw SDG file with a year out of range and restate the source
(a blocking audit fails); fix the file and restate again; change the export's query, plan
the dev environment ``feature``, then promote it to prod by a virtual update (Spark, whose
plans take minutes in local mode, stops after the failing audit). DuckDB runs
the kinds' native SQL; the other engines go through ``engine_io``. Every published object
must be byte for byte the DuckDB engine's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from engine_projects import on_postgres, postgres_project, spark_project
from sqlmesh_project import BAD_SDG_ROWS, FIXED_SDG_ROWS, Project, local_project, s3_project

pytestmark = pytest.mark.slow

POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)
# Spark tells the short story (plan, failing audit): each plan takes minutes in local mode.
SPARK = pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.timeout(1800)])
ENGINES = ["duckdb", POSTGRES, SPARK]
OTHER_ENGINES = [POSTGRES, SPARK]
FULL_STORY_ENGINES = ["duckdb", POSTGRES]
RESTATE_SDG = ("--restate-model", "osaa_raw.sdg")
PROD_EXPORT = "prod/indicators/indicators.parquet"
DEV_EXPORT = "dev/feature/indicators/indicators.parquet"


@dataclass
class Story:
    project: Project
    prod_first: dict[str, str]
    bad_exit_code: int
    prod_after_bad: dict[str, str]
    failed_models: list[dict[str, Any]]
    prod_after_fix: dict[str, str] | None = None
    after_dev: dict[str, str] | None = None
    after_promotion: dict[str, str] | None = None


def _tell(project: Project, full: bool) -> Story:
    project.plan()
    prod_first = project.objects("prod/")
    project.write("data/raw/sdg/SDG_update.csv", BAD_SDG_ROWS)
    bad = project.plan(None, *RESTATE_SDG, check=False)
    prod_after_bad = project.objects("prod/")
    failed_models = [row for row in project.checkpoints("model") if row["status"] == "failed"]
    story = Story(project, prod_first, bad.returncode, prod_after_bad, failed_models)
    if not full:
        return story
    project.write("data/raw/sdg/SDG_update.csv", FIXED_SDG_ROWS)
    project.plan(None, *RESTATE_SDG)
    prod_after_fix = project.objects("prod/")
    project.edit("models/osaa/indicators_export.sql", "FROM osaa.indicators", "FROM osaa.indicators\nWHERE source <> 'opri'")
    project.plan("feature")
    after_dev = {**project.objects("dev/"), **project.objects("prod/")}
    project.plan()
    story.prod_after_fix, story.after_dev = prod_after_fix, after_dev
    story.after_promotion = project.objects("prod/")
    return story


@pytest.fixture(scope="module")
def story_of(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Story]:
    """The story of one engine, told once per module however many tests read it."""
    told: dict[str, Story] = {}

    def story(engine: str) -> Story:
        if engine not in told:
            directory: Path = tmp_path_factory.mktemp(f"engine-{engine}")
            if engine == "duckdb":
                project = local_project(directory)
            elif engine == "spark":
                project = spark_project(directory)
            else:
                project = postgres_project(directory, request.getfixturevalue("postgres_engine"))
            told[engine] = _tell(project, full=engine != "spark")
        return told[engine]

    return story


@pytest.mark.parametrize("engine", OTHER_ENGINES)
def test_first_plan_publishes_the_duckdb_engines_bytes(story_of: Callable[[str], Story], engine: str) -> None:
    assert story_of(engine).prod_first == story_of("duckdb").prod_first
    assert PROD_EXPORT in story_of(engine).prod_first


@pytest.mark.parametrize("engine", ENGINES)
def test_failing_blocking_audit_fails_the_plan(story_of: Callable[[str], Story], engine: str) -> None:
    assert story_of(engine).bad_exit_code != 0


@pytest.mark.parametrize("engine", ENGINES)
def test_failing_blocking_audit_holds_publication_back(story_of: Callable[[str], Story], engine: str) -> None:
    story = story_of(engine)
    assert story.prod_after_bad == story.prod_first


@pytest.mark.parametrize("engine", ENGINES)
def test_failing_blocking_audit_is_named_in_the_model_checkpoint(story_of: Callable[[str], Story], engine: str) -> None:
    failed = story_of(engine).failed_models
    assert [row["key"].split("|")[0] for row in failed] == ["osaa_raw.sdg"]
    assert failed[0]["metadata"]["failed_audits"] == [{"audit": "accepted_range", "rows": 1}]


@pytest.mark.parametrize("engine", [POSTGRES])
def test_fixed_data_is_published_as_the_duckdb_engines_bytes(story_of: Callable[[str], Story], engine: str) -> None:
    story = story_of(engine)
    assert "prod/landing/sdg/SDG_update.parquet" in story.prod_after_fix
    assert story.prod_after_fix[PROD_EXPORT] != story.prod_first[PROD_EXPORT]
    assert story.prod_after_fix == story_of("duckdb").prod_after_fix


@pytest.mark.parametrize("engine", [POSTGRES])
def test_dev_plan_publishes_the_duckdb_engines_bytes(story_of: Callable[[str], Story], engine: str) -> None:
    story = story_of(engine)
    assert DEV_EXPORT in story.after_dev
    assert story.after_dev == story_of("duckdb").after_dev


@pytest.mark.parametrize("engine", FULL_STORY_ENGINES)
def test_virtual_promotion_publishes_the_dev_export_to_prod(story_of: Callable[[str], Story], engine: str) -> None:
    story = story_of(engine)
    assert story.after_promotion[PROD_EXPORT] == story.after_dev[DEV_EXPORT]
    assert story.after_promotion[PROD_EXPORT] != story.prod_after_fix[PROD_EXPORT]


@pytest.mark.postgres
@pytest.mark.s3
def test_postgres_engine_on_s3_publishes_the_duckdb_engines_bytes(
    story_of: Callable[[str], Story],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """The landing data reaches PostgreSQL from the bucket (httpfs in engine_io's DuckDB)."""
    request.getfixturevalue("s3_credentials_for_tests")
    project = on_postgres(s3_project(tmp_path, request.getfixturevalue("s3_server")), request.getfixturevalue("postgres_engine"))
    project.plan()
    assert project.objects("prod/") == story_of("duckdb").prod_first

