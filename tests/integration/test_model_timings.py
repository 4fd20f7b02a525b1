"""MODEL checkpoints split each evaluation's time into SQLMesh's evaluation and its audits.

The split comes from the wrapper of SQLMesh's evaluator, so a project needs no per-model
statement for it; a project that still lists ``@osaa_model_start()`` / ``@osaa_model_end()``
in ``model_defaults`` (as the extension once asked) keeps planning, with the same split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sqlmesh_project import Project, local_project

pytestmark = pytest.mark.slow

PER_MODEL_MACROS = """  pre_statements: ["@osaa_model_start()"]
  post_statements: ["@osaa_model_end()"]
"""


def completed_timings(project: Project) -> list[dict[str, Any]]:
    rows = project.checkpoints("model")
    assert rows and {row["status"] for row in rows} == {"completed"}
    return [row["metadata"] for row in rows]


def assert_split(timings: list[dict[str, Any]]) -> None:
    for metadata in timings:
        assert metadata["evaluation_seconds"] > 0, metadata
        assert metadata["audit_seconds"] >= 0, metadata
        assert metadata["evaluation_seconds"] + metadata["audit_seconds"] <= metadata["duration_seconds"], metadata


def test_the_example_project_lists_no_per_model_macro() -> None:
    config = (Path(__file__).resolve().parents[2] / "example_project" / "config.yaml").read_text()
    assert "osaa_model_start" not in config and "pre_statements" not in config


def test_every_model_checkpoint_splits_evaluation_and_audit_time_without_per_model_macros(tmp_path: Path) -> None:
    project = local_project(tmp_path)

    project.plan()

    assert_split(completed_timings(project))


def test_a_project_still_listing_the_per_model_macros_plans_with_the_same_split(tmp_path: Path) -> None:
    project = local_project(tmp_path)
    project.edit("config.yaml", "  cron: '@daily'\n", "  cron: '@daily'\n" + PER_MODEL_MACROS)

    project.plan()

    assert_split(completed_timings(project))
