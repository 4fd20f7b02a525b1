"""``concurrent_tasks: 4``: models evaluated on four threads lose no checkpoint and no publication.

The setting is written with Jinja, as SQLMesh allows in config.yaml: the extension must take
its settings from the parsed ``variables`` and never trip over the unrendered file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlmesh_project import Project, local_project

pytestmark = pytest.mark.slow

EXTRA_EXPORTS = 6


@dataclass
class Story:
    project: Project
    models: list[dict[str, Any]]
    pipeline: dict[str, Any]
    prod: dict[str, str]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    project = local_project(tmp_path_factory.mktemp("concurrency"))
    tasks = "\n      concurrent_tasks: {{ env_var('TEST_CONCURRENT_TASKS', 4) }}"
    project.edit("config.yaml", "database: warehouse.duckdb", "database: warehouse.duckdb" + tasks)
    for number in range(EXTRA_EXPORTS):
        project.write(
            f"models/osaa/export_{number}.sql",
            f"MODEL (name osaa.export_{number}, kind CUSTOM (materialization 'osaa_s3_export', "
            f"materialization_properties (key = 'extra/export_{number}.parquet')));\n"
            f"SELECT * FROM osaa.indicators WHERE year >= {2019 + number}",
        )
    project.plan()
    (pipeline,) = project.checkpoints("pipeline")
    return Story(project=project, models=project.checkpoints("model"), pipeline=pipeline, prod=project.objects("prod/"))


def test_every_evaluation_has_a_completed_model_checkpoint(story: Story) -> None:
    models = sorted(row["key"].split("|")[0] for row in story.models)
    expected = ["osaa.indicators", "osaa.indicators_export", *(f"osaa.export_{n}" for n in range(EXTRA_EXPORTS))]
    assert models == sorted([*expected, "osaa_raw.opri", "osaa_raw.sdg", "osaa_raw.wdi"])
    assert {row["status"] for row in story.models} == {"completed"}


def test_pipeline_checkpoint_counts_every_evaluation(story: Story) -> None:
    assert story.pipeline["status"] == "completed"
    assert story.pipeline["metadata"]["evaluations"] == len(story.models)


def test_every_export_is_published(story: Story) -> None:
    assert {f"prod/extra/export_{n}.parquet" for n in range(EXTRA_EXPORTS)} <= set(story.prod)
    assert "prod/indicators/indicators.parquet" in story.prod
