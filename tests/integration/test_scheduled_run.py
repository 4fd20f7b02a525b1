"""``sqlmesh run``: new intervals are published when audited, and a failed run publishes what passed.

Story: plan prod today; a bad SDG file arrives; ``sqlmesh run`` two days later (new daily
intervals for every model); the file is fixed; ``sqlmesh run`` three days later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlmesh_project import BAD_SDG_ROWS, FIXED_SDG_ROWS, Project, local_project

pytestmark = pytest.mark.slow

EXPORT_KEY = "prod/indicators/indicators.parquet"


@dataclass
class Story:
    project: Project
    prod_before: dict[str, str]
    failed_run_exit_code: int
    prod_after_failed_run: dict[str, str]
    pipelines_after_failed_run: list[dict[str, Any]]
    prod_after_fixed_run: dict[str, str]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    project = local_project(tmp_path_factory.mktemp("scheduled-run"))
    project.plan()
    prod_before = project.objects("prod/")
    project.write("data/raw/sdg/SDG_update.csv", BAD_SDG_ROWS)
    failed = project.sqlmesh_days_later(2, "run", check=False)
    observed = dict(
        failed_run_exit_code=failed.returncode,
        prod_after_failed_run=project.objects("prod/"),
        pipelines_after_failed_run=project.checkpoints("pipeline"),
    )
    project.write("data/raw/sdg/SDG_update.csv", FIXED_SDG_ROWS)
    project.sqlmesh_days_later(3, "run")
    return Story(project=project, prod_before=prod_before, **observed, prod_after_fixed_run=project.objects("prod/"))


def test_failed_run_exits_non_zero_and_leaves_prod_unchanged(story: Story) -> None:
    assert story.failed_run_exit_code != 0
    assert story.prod_after_failed_run == story.prod_before


def test_failed_run_is_recorded_with_the_failing_model(story: Story) -> None:
    run = story.pipelines_after_failed_run[-1]
    assert (run["key"].split("|")[0], run["status"]) == ("run", "failed")
    assert any(failure.startswith("osaa_raw.sdg:") for failure in run["metadata"]["failed_evaluations"])
    assert run["metadata"]["evaluations"] == 3


def test_next_run_publishes_the_fixed_data(story: Story) -> None:
    assert "prod/landing/sdg/SDG_update.parquet" in story.prod_after_fixed_run
    assert story.prod_after_fixed_run[EXPORT_KEY] != story.prod_before[EXPORT_KEY]


def test_failed_interval_is_resolved_by_the_evaluation_that_covers_it(story: Story) -> None:
    sdg = [row for row in story.project.checkpoints("model") if row["key"].startswith("osaa_raw.sdg|")]
    assert len(sdg) == 3
    assert {row["status"] for row in sdg} == {"completed"}
    (resolved,) = [row for row in sdg if row["metadata"].get("phase") == "resolved"]
    assert resolved["error_message"] is None
    assert resolved["metadata"]["failed_audits"] == [{"audit": "accepted_range", "rows": 1}]
    assert resolved["metadata"]["resolved_by"] in {row["key"] for row in sdg if row is not resolved}
