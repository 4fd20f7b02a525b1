"""Any DuckDB model reads the bucket: landing parquet on the moto S3 server through ``@osaa_landing``.

Story, as the reference user runs it, in a HOME with nothing in it: ``sqlmesh osaa-ingest``
lands the raw files in prod; ``sqlmesh --debug plan`` builds ``osaa.sdg_from_landing``, a
plain FULL model reading ``read_parquet(@osaa_landing('sdg', 'SDG_DATA_NATIONAL'))``; then a
smaller SDG file lands in dev (``environments.prefixes: {dev: dev}``: the ``dev/landing``
layout), the model changes, and ``plan dev`` / ``run dev`` read dev's landing. The config has
no gateway ``extensions:``/``secrets:``, and the credentials are sentinels searched for
everywhere afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from sqlmesh_project import Completed, Project, sentinel_project
from support.sentinels import leaks

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SENTINEL_SECRET = "sentinel-secret-Qx7Vb2"
SENTINEL_TOKEN = "sentinel-token-Lm4Zr9"
MODEL = "models/landing/sdg_from_landing.sql"
SDG_CSV = "data/raw/sdg/SDG_DATA_NATIONAL.csv"
DEV_ROWS = 3


@dataclass
class Story:
    project: Project
    home: Path
    outputs: list[Completed]
    prod_rows: int
    dev_rows: int
    sdg_rows: int


def table_rows(project: Project, table: str) -> int:
    with duckdb.connect(str(project.path / "warehouse.duckdb"), read_only=True) as warehouse:
        return warehouse.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, s3_server: str, s3_credentials_for_tests: None) -> Story:
    base = tmp_path_factory.mktemp("s3-models")
    project = sentinel_project(base, s3_server, secret_key=SENTINEL_SECRET, session_token=SENTINEL_TOKEN)
    home = Path(project.env["HOME"])
    project.edit(
        "config.yaml",
        "variables:\n  osaa:\n",
        "variables:\n  landing_models: true\n  osaa:\n    environments:\n      prefixes: {dev: dev}\n",
    )
    outputs = [
        project.sqlmesh("osaa-ingest", "data/raw"),
        project.sqlmesh("--debug", "plan", "--auto-apply", "--no-prompts"),
    ]
    prod_rows = table_rows(project, "osaa.sdg_from_landing")

    lines = (project.path / SDG_CSV).read_text(encoding="utf-8").splitlines(keepends=True)
    project.write(SDG_CSV, "".join(lines[: 1 + DEV_ROWS]))
    project.edit(MODEL, "VALUE::DOUBLE AS value", "VALUE::DOUBLE AS value,\n  'landing' AS origin")
    outputs += [
        project.sqlmesh("osaa-ingest", "data/raw", "--env", "dev"),
        project.plan("dev"),
        project.sqlmesh("--debug", "run", "dev"),
    ]
    return Story(project, home, outputs, prod_rows, table_rows(project, "osaa__dev.sdg_from_landing"), len(lines) - 1)


def test_the_config_has_no_gateway_extensions_or_secrets(story: Story) -> None:
    config = (story.project.path / "config.yaml").read_text(encoding="utf-8")
    assert "extensions:" not in config and "secrets:" not in config
    assert "@osaa_landing('sdg', 'SDG_DATA_NATIONAL')" in (story.project.path / MODEL).read_text(encoding="utf-8")


def test_a_plain_model_reads_the_prod_landing_from_the_bucket(story: Story) -> None:
    assert story.project.store.head("prod/landing/sdg/SDG_DATA_NATIONAL.parquet") is not None
    assert story.prod_rows == story.sdg_rows > DEV_ROWS


def test_a_dev_plan_and_run_read_the_dev_landing_of_the_reference_layout(story: Story) -> None:
    assert story.project.store.head("dev/landing/sdg/SDG_DATA_NATIONAL.parquet") is not None
    assert story.dev_rows == DEV_ROWS
    assert story.prod_rows == story.sdg_rows  # prod's table is untouched
    assert all(output.returncode == 0 for output in story.outputs)


def test_duckdb_downloaded_and_installed_nothing(story: Story) -> None:
    assert not (story.home / ".duckdb").exists()


def test_no_credential_reaches_outputs_logs_state_checkpoints_or_metadata(story: Story) -> None:
    texts = [output.stdout + output.stderr for output in story.outputs]
    debug_logs = sorted((story.project.path / "logs").glob("sqlmesh_*.log"))
    logged = "".join(log.read_text(errors="replace") for log in debug_logs)
    assert "X-Amz-Security-Token': b'***'" in logged  # botocore's DEBUG request lines were written, masked
    found = leaks(
        [SENTINEL_SECRET, SENTINEL_TOKEN],
        texts=texts,
        roots=[story.project.path, story.home],
        store=story.project.store,
    )
    assert found == []
