"""The example project with SQLMesh on another engine: same models, same store, another gateway.

Only the gateway changes: the models stay in the DuckDB dialect (SQLMesh transpiles them) and
SQLMesh's state stays in a DuckDB file beside the project, as a team moving its warehouse
to PostgreSQL would first do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from support import processes
from support.pgserver import ROLE, PostgresServer

from sqlmesh_project import SQLMESH, Completed, Project, local_project

# A plan of the example project on Spark local mode takes minutes on a loaded 2-core machine.
SPARK_COMMAND_TIMEOUT = 900

_GATEWAY = re.compile(r"gateways:\n(?:  .*\n)+")


def postgres_project(directory: Path, server: PostgresServer) -> Project:
    """A copy of the example project whose SQLMesh engine is a fresh database on ``server``."""
    return on_postgres(local_project(directory), server)


def on_postgres(project: Project, server: PostgresServer) -> Project:
    """``project`` with its SQLMesh engine moved to a fresh database on ``server``."""
    database = server.create_database().split("dbname=")[1].split()[0]
    gateway = (
        "gateways:\n"
        "  local:\n"
        "    connection:\n"
        "      type: postgres\n"
        "      host: 127.0.0.1\n"
        f"      port: {server.port}\n"
        f"      user: {ROLE}\n"
        "      password: ''          # libpq reads it from PGPASSFILE\n"
        f"      database: {database}\n"
        "    state_connection:\n"
        "      type: duckdb\n"
        "      database: state.duckdb\n"
    )
    _replace_gateway(project, gateway)
    project.env["PGPASSFILE"] = str(server.passfile)
    return project


@dataclass
class SparkProject(Project):
    """A project whose ``sqlmesh`` commands may take minutes (each starts a Spark JVM, reaped with it)."""

    def sqlmesh(
        self, *args: str, check: bool = True, extra_env: dict[str, str] | None = None, stdin: str | None = None
    ) -> Completed:
        command = [str(SQLMESH), *args]
        env = {**self.env, **(extra_env or {})}
        result = processes.run(command, cwd=self.path, env=env, timeout=SPARK_COMMAND_TIMEOUT, input=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result


def spark_project(directory: Path) -> SparkProject:
    """A copy of the example project whose SQLMesh engine is Spark in local mode (one core, no UI)."""
    copy = local_project(directory)
    project = SparkProject(path=copy.path, env=copy.env, store=copy.store)
    gateway = (
        "gateways:\n"
        "  local:\n"
        "    connection:\n"
        "      type: spark\n"
        "      concurrent_tasks: 1\n"
        "      config:\n"
        "        spark.master: local[1]\n"
        f"        spark.sql.warehouse.dir: {project.path / 'spark-warehouse'}\n"
        f"        spark.driver.extraJavaOptions: -Dderby.system.home={project.path / 'derby'}\n"
        "        spark.ui.enabled: 'false'\n"
        "        spark.sql.shuffle.partitions: '1'\n"
        "        spark.driver.bindAddress: 127.0.0.1\n"
        "    state_connection:\n"
        "      type: duckdb\n"
        "      database: state.duckdb\n"
    )
    _replace_gateway(project, gateway)
    return project


def _replace_gateway(project: Project, gateway: str) -> None:
    config = project.path / "config.yaml"
    text = config.read_text(encoding="utf-8")
    assert _GATEWAY.search(text), "the example project's config.yaml has no gateways block"
    config.write_text(_GATEWAY.sub(gateway, text, count=1), encoding="utf-8")
