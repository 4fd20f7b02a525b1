"""Python models (SQLMesh ``@model``) of both osaa kinds plan and publish like their SQL forms.

The example project's ``models/python/`` holds one of each, enabled by the project variable
``python_models: true``: ``osaa.indicator_counts`` (``osaa_s3_export``, a DataFrame) and
``osaa_raw.wdi_python`` (``osaa_file_ingest``, a query over the landing view).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import pytest
from sqlmesh_project import Project, local_project

pytestmark = pytest.mark.slow


@dataclass
class Story:
    project: Project
    prod: dict[str, str]
    counts: list[tuple[Any, ...]]
    wdi_python: list[tuple[Any, ...]]
    indicators: list[tuple[Any, ...]]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    project = local_project(tmp_path_factory.mktemp("python-models"))
    project.edit("config.yaml", "variables:\n", "variables:\n  python_models: true\n")
    project.plan()
    with duckdb.connect(str(project.path / "warehouse.duckdb"), read_only=True) as warehouse:
        indicators = warehouse.execute(
            "SELECT source, count(DISTINCT indicator_id), count(*) FROM osaa.indicators GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        wdi_python = warehouse.execute("SELECT * FROM osaa_raw.wdi_python ORDER BY ALL").fetchall()
    return Story(
        project,
        project.objects("prod/"),
        project.parquet_rows("prod/indicators/indicator_counts.parquet"),
        wdi_python,
        indicators,
    )


def test_the_python_export_model_publishes_its_dataframe(story: Story) -> None:
    assert story.counts == story.indicators
    assert "prod/indicators/indicators.parquet" in story.prod


def test_the_python_ingest_model_loads_and_publishes_the_landing_of_its_raw_files(story: Story) -> None:
    assert "prod/landing/wdi_python/WDI_sample.parquet" in story.prod
    assert story.wdi_python and all(row[0] and row[1] for row in story.wdi_python)


def test_both_python_models_have_model_checkpoints(story: Story) -> None:
    keys = " ".join(row["key"] for row in story.project.checkpoints("model") if row["status"] == "completed")
    assert "osaa.indicator_counts" in keys and "osaa_raw.wdi_python" in keys
