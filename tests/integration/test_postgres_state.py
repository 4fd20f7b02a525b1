"""SQLMesh state on PostgreSQL publishes exactly as SQLMesh state in the DuckDB warehouse.

Story, run twice on copies of the example project (engine DuckDB both times): once as shipped
(state in ``warehouse.duckdb``, checkpoints in a DuckDB file), once as a team runs it
(``state_connection`` on a PostgreSQL database, the checkpoint store on another database of
the same server; the password only in the ``PGPASSFILE`` libpq reads). Each story: plan prod;
change the export's query and plan the dev environment ``feature``; plan prod again (a
virtual promotion); a new raw file and ``sqlmesh run`` two days later. After every step the
objects of every environment's prefix are compared, key by key and byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import psycopg
import pytest
from sqlmesh_project import Project, local_project
from support.pgserver import ROLE, PostgresServer

from team_setup import on_postgres_state

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

STEPS = ("plan prod", "plan feature", "promotion", "run")
PREFIXES = ("prod/", "dev/")
NEW_SDG_ROWS = "INDICATOR_ID,COUNTRY_ID,YEAR,VALUE,MAGNITUDE,QUALIFIER\nCR.3,GHA,2023,51.0,,\n"


@dataclass
class Story:
    project: Project
    published: dict[str, dict[str, str]]  # step -> key -> MD5, under the environments' prefixes


def _story(project: Project) -> Story:
    published: dict[str, dict[str, str]] = {}

    def observe(step: str) -> None:
        published[step] = {key: md5 for prefix in PREFIXES for key, md5 in project.objects(prefix).items()}

    project.plan()
    observe("plan prod")
    project.edit("models/osaa/indicators_export.sql", "FROM osaa.indicators", "FROM osaa.indicators\nWHERE source <> 'opri'")
    project.plan("feature")
    observe("plan feature")
    project.plan()
    observe("promotion")
    project.write("data/raw/sdg/SDG_DATA_LATER.csv", NEW_SDG_ROWS)
    project.sqlmesh_days_later(2, "run")
    observe("run")
    return Story(project=project, published=published)


@pytest.fixture(scope="module")
def duckdb_state(tmp_path_factory: pytest.TempPathFactory) -> Story:
    return _story(local_project(tmp_path_factory.mktemp("duckdb-state")))


@pytest.fixture(scope="module")
def postgres_state(tmp_path_factory: pytest.TempPathFactory, pg_server: PostgresServer) -> Story:
    return _story(on_postgres_state(local_project(tmp_path_factory.mktemp("postgres-state")), pg_server))


@pytest.mark.parametrize("step", STEPS)
def test_each_step_publishes_the_same_objects_as_with_duckdb_state(
    step: str, duckdb_state: Story, postgres_state: Story
) -> None:
    assert postgres_state.published[step] == duckdb_state.published[step]


def test_the_story_publishes_to_prod_and_to_the_dev_prefix(postgres_state: Story) -> None:
    published = postgres_state.published
    assert "dev/feature/indicators/indicators.parquet" in published["plan feature"]
    assert published["promotion"]["prod/indicators/indicators.parquet"] == (
        published["plan feature"]["dev/feature/indicators/indicators.parquet"]
    )
    assert "prod/landing/sdg/SDG_DATA_LATER.parquet" in published["run"]


def test_sqlmesh_state_lives_in_postgres_and_not_in_the_warehouse(postgres_state: Story) -> None:
    project = postgres_state.project
    with psycopg.connect(project.state_dsn) as connection:
        environments = {name for (name,) in connection.execute("SELECT name FROM sqlmesh._environments")}
    assert environments == {"prod", "feature"}
    with duckdb.connect(str(project.path / "warehouse.duckdb"), read_only=True) as warehouse:
        schemas = {name for (name,) in warehouse.execute("SELECT schema_name FROM information_schema.schemata").fetchall()}
    assert "sqlmesh" not in schemas


def test_checkpoints_of_every_command_are_in_the_postgres_store(postgres_state: Story) -> None:
    project = postgres_state.project
    assert not (project.path / ".osaa" / "checkpoints.duckdb").exists()
    with psycopg.connect(project.checkpoint_dsn) as connection:
        commands = [key.split("|")[0] for (key,) in connection.execute(
            "SELECT key FROM checkpoints WHERE scope = 'pipeline' AND status = 'completed' ORDER BY updated_at"
        )]  # fmt: skip
    assert commands == ["plan", "plan", "plan", "run"]


def test_no_password_reaches_the_config_or_the_logs(postgres_state: Story, pg_server: PostgresServer) -> None:
    project = postgres_state.project
    texts = [project.path / "config.yaml", *sorted((project.path / "logs").glob("*"))]
    assert all(pg_server.password not in path.read_text(errors="replace") for path in texts)
    assert ROLE in (project.path / "config.yaml").read_text()


def test_recovery_cli_reads_state_and_checkpoints_from_postgres(postgres_state: Story) -> None:
    project = postgres_state.project
    reconcile = project.sqlmesh("osaa-recover", "reconcile", check=False)
    stats = project.sqlmesh("osaa-recover", "stats", "--json", check=False)
    assert (reconcile.returncode, stats.returncode) == (0, 0), reconcile.stdout + reconcile.stderr + stats.stderr
    assert '"pipeline"' in stats.stdout


def test_python_api_plans_and_runs_with_state_on_postgres(
    tmp_path: Path, pg_server: PostgresServer, duckdb_state: Story
) -> None:
    project = on_postgres_state(local_project(tmp_path), pg_server)
    project.python(
        "from sqlmesh import Context\n"
        "context = Context(paths='.')\n"
        "context.plan(auto_apply=True, no_prompts=True)\n"
        "context.run()\n"
    )
    assert {key: md5 for key, md5 in project.objects("prod/").items()} == {
        key: md5 for key, md5 in duckdb_state.published["plan prod"].items() if key.startswith("prod/")
    }
    with psycopg.connect(project.state_dsn) as connection:
        assert [name for (name,) in connection.execute("SELECT name FROM sqlmesh._environments")] == ["prod"]


def test_interval_evidence_is_read_from_postgres_state(postgres_state: Story) -> None:
    project = postgres_state.project
    with psycopg.connect(project.state_dsn) as connection:
        (name,) = {n for (n,) in connection.execute("SELECT name FROM sqlmesh._intervals") if "indicators_export" in n}
        expected = connection.execute("SELECT count(*) FROM sqlmesh._intervals WHERE name = %s", [name]).fetchone()[0]
    read = project.python(
        "from sqlmesh import Context\n"
        "from sqlmesh_osaa.integration.audit_evidence import interval_rows\n"
        f"rows = interval_rows(Context(paths='.', load=False).state_sync, [{name!r}])\n"
        "print(len(rows), sum(not row.is_dev for row in rows))\n"
    )
    count, prod_rows = map(int, read.stdout.split()[-2:])
    assert count == expected > 0
    assert prod_rows > 0
