"""The example project with SQLMesh on another engine: same models, same store, another gateway.

Only the gateway changes: the models stay in the DuckDB dialect (SQLMesh transpiles them) and
SQLMesh's state stays in a DuckDB file beside the project, as a team moving its warehouse
to PostgreSQL would first do.
"""

from __future__ import annotations

import re
from pathlib import Path

from support.pgserver import ROLE, PostgresServer

from sqlmesh_project import Project, local_project

_GATEWAY = re.compile(r"gateways:\n(?:  .*\n)+")


def postgres_project(directory: Path, server: PostgresServer) -> Project:
    """A copy of the example project whose SQLMesh engine is a fresh database on ``server``."""
    project = local_project(directory)
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


def _replace_gateway(project: Project, gateway: str) -> None:
    config = project.path / "config.yaml"
    text = config.read_text(encoding="utf-8")
    assert _GATEWAY.search(text), "the example project's config.yaml has no gateways block"
    config.write_text(_GATEWAY.sub(gateway, text, count=1), encoding="utf-8")
