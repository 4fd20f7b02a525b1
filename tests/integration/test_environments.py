"""Environments map to prefixes, and a virtual promotion publishes without re-evaluating.

Story: plan prod; change the export's query; plan the dev environment ``feature``; plan
prod with no further change (SQLMesh promotes the audited snapshot by a virtual update).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlmesh_project import Project, local_project

pytestmark = pytest.mark.slow

PROD_EXPORT = "prod/indicators/indicators.parquet"
DEV_EXPORT = "dev/feature/indicators/indicators.parquet"


@dataclass
class Story:
    project: Project
    prod_first: dict[str, str]
    after_dev: dict[str, str]
    dev_rows: list[tuple[Any, ...]]
    model_events_before_promotion: int
    model_events_after_promotion: int
    after_promotion: dict[str, str]
    promotion_pipeline: dict[str, Any]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    project = local_project(tmp_path_factory.mktemp("environments"))
    project.plan()
    prod_first = project.objects("")
    export = "models/osaa/indicators_export.sql"
    project.edit(export, "FROM osaa.indicators", "FROM osaa.indicators\nWHERE source <> 'opri'")
    project.plan("feature")
    after_dev = project.objects("")
    dev_rows = project.parquet_rows(DEV_EXPORT)
    before = project.event_count("model")
    project.plan()
    return Story(
        project=project,
        prod_first=prod_first,
        after_dev=after_dev,
        dev_rows=dev_rows,
        model_events_before_promotion=before,
        model_events_after_promotion=project.event_count("model"),
        after_promotion=project.objects(""),
        promotion_pipeline=project.checkpoints("pipeline")[-1],
    )


def _under(objects: dict[str, str], prefix: str) -> dict[str, str]:
    return {key: md5 for key, md5 in objects.items() if key.startswith(prefix)}


def test_dev_plan_publishes_under_the_dev_prefix(story: Story) -> None:
    assert DEV_EXPORT in story.after_dev
    assert {row[4] for row in story.dev_rows} == {"wdi", "sdg"}


def test_dev_plan_leaves_the_prod_prefix_unchanged(story: Story) -> None:
    assert _under(story.after_dev, "prod/") == _under(story.prod_first, "prod/")


def test_dev_prefix_gets_every_output_of_the_environment(story: Story) -> None:
    landing = {key.split("/", 2)[2] for key in _under(story.after_dev, "dev/feature/landing/")}
    assert landing == {key.split("/", 1)[1] for key in _under(story.prod_first, "prod/landing/")}


def test_virtual_promotion_publishes_the_dev_export_to_prod(story: Story) -> None:
    assert story.after_promotion[PROD_EXPORT] == story.after_dev[DEV_EXPORT]
    assert story.after_promotion[PROD_EXPORT] != story.prod_first[PROD_EXPORT]


def test_virtual_promotion_evaluates_no_model(story: Story) -> None:
    assert story.model_events_after_promotion == story.model_events_before_promotion
    assert story.promotion_pipeline["metadata"]["evaluations"] == 0
    assert story.promotion_pipeline["status"] == "completed"
