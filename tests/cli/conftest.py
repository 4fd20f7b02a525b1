"""Running the installed commands in subprocesses, in a scratch directory with its own settings.

Each test gets a working directory with local storage and a checkpoint database under
``.osaa/`` (the defaults), and an environment without the developer's ``OSAA_*`` and
``AWS_*`` variables. Observations are what a user sees: exit codes, stdout/stderr, objects
in the store, rows in the checkpoint database.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_workspace import BAD_CSV, GOOD_CSV, Workspace, clean_environment


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, clean_environment())


@pytest.fixture
def empty_db(workspace: Workspace) -> Workspace:
    """A checkpoint database with its tables and no row."""
    from sqlmesh_osaa.checkpoint import PipelineCheckpoint

    PipelineCheckpoint("ingest", workspace.db).close()
    return workspace


@pytest.fixture
def ingested(workspace: Workspace) -> Workspace:
    """One ingest run: wdi/good.csv landed, wdi/bad.csv failed."""
    workspace.write("raw/wdi/good.csv", GOOD_CSV)
    workspace.write("raw/wdi/bad.csv", BAD_CSV)
    result = workspace.run("osaa-ingest", "raw")
    assert result.returncode == 1, result.stdout + result.stderr
    return workspace
