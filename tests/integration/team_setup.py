"""The example project as a team runs it: SQLMesh state and checkpoints on one PostgreSQL server.

The engine stays DuckDB (``warehouse.duckdb``); ``state_connection`` moves SQLMesh's state to
one database and ``checkpoint:`` moves the package's checkpoint store to another database of
the same server. No password is written anywhere: libpq (psycopg2 under SQLMesh, psycopg 3
under the checkpoint store) reads it from the ``PGPASSFILE`` the server wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

from support.pgserver import ROLE, PostgresServer

from sqlmesh_project import Project

_GATEWAY_END = "      database: warehouse.duckdb\n"
_CHECKPOINT = "    checkpoint:\n      db_path: .osaa/checkpoints.duckdb   # never the warehouse file: DuckDB allows one writer per file\n"


@dataclass
class TeamProject(Project):
    """A project whose SQLMesh state and checkpoints are databases on a PostgreSQL server."""

    state_dsn: str = ""
    checkpoint_dsn: str = ""


def on_postgres_state(project: Project, server: PostgresServer) -> TeamProject:
    """``project`` with ``state_connection`` and the checkpoint store on fresh databases of ``server``."""
    state_dsn, checkpoint_dsn = server.create_database(), server.create_database()
    state_database = state_dsn.split("dbname=")[1].split()[0]
    config = project.path / "config.yaml"
    text = config.read_text(encoding="utf-8")
    assert _GATEWAY_END in text and _CHECKPOINT in text, "the example project's config.yaml changed shape"
    state = (
        "    state_connection:\n"
        "      type: postgres\n"
        "      host: 127.0.0.1\n"
        f"      port: {server.port}\n"
        f"      user: {ROLE}\n"
        "      password: ''          # libpq reads it from PGPASSFILE\n"
        f"      database: {state_database}\n"
    )
    checkpoint = f"    checkpoint:\n      backend: postgres\n      dsn: '{checkpoint_dsn}'\n"
    text = text.replace(_GATEWAY_END, _GATEWAY_END + state, 1).replace(_CHECKPOINT, checkpoint, 1)
    config.write_text(text, encoding="utf-8")
    env = {**project.env, "PGPASSFILE": str(server.passfile)}
    return TeamProject(path=project.path, env=env, store=project.store, state_dsn=state_dsn, checkpoint_dsn=checkpoint_dsn)
