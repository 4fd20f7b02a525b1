"""Without the osaa lines a project is stock SQLMesh; bad osaa kind properties stop the plan at load time."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmesh_project import SQLMESH, clean_env, local_project, run

pytestmark = pytest.mark.slow

STOCK_CONFIG = """gateways:
  local:
    connection:
      type: duckdb
      database: warehouse.duckdb
default_gateway: local
model_defaults:
  dialect: duckdb
"""


def test_project_without_osaa_lines_plans_as_stock_sqlmesh(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "config.yaml").write_text(STOCK_CONFIG)
    (tmp_path / "models" / "a.sql").write_text("MODEL (name demo.a, kind FULL);\nSELECT 1 AS id")
    (tmp_path / "models" / "b.sql").write_text("MODEL (name demo.b, kind FULL);\nSELECT id + 1 AS id FROM demo.a")

    run([str(SQLMESH), "plan", "--auto-apply", "--no-prompts"], tmp_path, clean_env())
    fetched = run([str(SQLMESH), "fetchdf", "SELECT id FROM demo.b"], tmp_path, clean_env())

    assert "2" in fetched.stdout
    assert not (tmp_path / ".osaa").exists()


BAD_PROPERTIES = {
    "missing key": (
        "models/osaa/indicators_export.sql",
        "materialization_properties (key = 'indicators/indicators.parquet')",
        "materialization_properties (key = '')",
        ("osaa.indicators_export", "'key'", "required"),
    ),
    "absolute path": (
        "models/raw/wdi.sql",
        "path = 'data/raw/wdi/*.csv'",
        "path = '/data/raw/wdi/*.csv'",
        ("osaa_raw.wdi", "'path'", "relative"),
    ),
    "parent directory in path": (
        "models/raw/sdg.sql",
        "path = 'data/raw/sdg/*.csv'",
        "path = '../outside/*.csv'",
        ("osaa_raw.sdg", "'path'", "'..'"),
    ),
    "unknown property": (
        "models/raw/opri.sql",
        "source = 'opri')",
        "source = 'opri', format = 'csv')",
        ("osaa_raw.opri", "'format'", "not a known property"),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PROPERTIES))
def test_bad_materialization_property_fails_plan_naming_model_and_property(tmp_path: Path, case: str) -> None:
    relative, old, new, expected = BAD_PROPERTIES[case]
    project = local_project(tmp_path)
    project.edit(relative, old, new)

    result = project.plan(check=False)

    output = result.stdout + result.stderr
    assert result.returncode != 0
    for text in expected:
        assert text in output, output
    assert not (project.path / ".osaa").exists()
