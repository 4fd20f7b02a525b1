"""The ``sqlmesh`` extension: stock commands unchanged, a broken extension never breaks SQLMesh,
project settings apply, and the .pth file ships in editable installs and wheels."""

from __future__ import annotations

import shutil
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from cli_workspace import TIMEOUT, Workspace
from support import processes

from sqlmesh_osaa.checkpoint import PipelineCheckpoint
from sqlmesh_osaa.cli.sqlmesh_plugin import COMMAND_NAMES, DISABLE_VARIABLE, PTH_NAME

PACKAGE = Path(__file__).resolve().parents[2] / "sqlmesh_osaa"
REPO = PACKAGE.parent
PROJECT_CONFIG = """
gateways:
  local:
    connection:
      type: duckdb
      database: warehouse.duckdb
default_gateway: local
model_defaults:
  dialect: duckdb
variables:
  osaa:
    checkpoint:
      db_path: state/checkpoints.duckdb
"""


def _broken_copy(tmp_path: Path, module: str) -> str:
    """A copy of the package, first on PYTHONPATH, whose ``module`` raises on import."""
    shutil.copytree(PACKAGE, tmp_path / "shadow" / "sqlmesh_osaa", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "shadow" / "sqlmesh_osaa" / module).write_text("raise RuntimeError('broken on purpose')\n")
    return str(tmp_path / "shadow")


def test_the_pth_file_is_installed_in_site_packages() -> None:
    pth = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    assert "import sqlmesh_osaa.cli.sqlmesh_plugin" in pth.read_text()


def test_stock_sqlmesh_help_is_unchanged_but_for_the_three_commands(workspace: Workspace) -> None:
    extended = workspace.run("sqlmesh", "--help")
    stock = workspace.run("sqlmesh", "--help", extra_env={DISABLE_VARIABLE: "0"})
    assert extended.returncode == stock.returncode == 0
    ours = [line for line in extended.stdout.splitlines() if line.strip().startswith(COMMAND_NAMES)]
    assert len(ours) == 3
    assert [line for line in extended.stdout.splitlines() if line not in ours] == stock.stdout.splitlines()
    assert stock.stderr == extended.stderr == ""


def test_sqlmesh_still_works_when_our_commands_fail_to_import(workspace: Workspace, tmp_path: Path) -> None:
    shadow = _broken_copy(tmp_path, "cli/recover.py")
    result = workspace.run("sqlmesh", "--help", extra_env={"PYTHONPATH": shadow})
    assert result.returncode == 0
    assert "plan" in result.stdout and "osaa-recover" not in result.stdout
    assert "sqlmesh-osaa: the osaa-* sqlmesh commands are unavailable: RuntimeError('broken on purpose')" in result.stderr
    assert "Traceback" not in result.stderr


def test_python_still_starts_when_the_hook_itself_fails_to_import(workspace: Workspace, tmp_path: Path) -> None:
    shadow = _broken_copy(tmp_path, "cli/sqlmesh_plugin.py")
    result = workspace.run("python", "-c", "print('started')", extra_env={"PYTHONPATH": shadow})
    assert result.returncode == 0 and result.stdout == "started\n"
    assert "sqlmesh-osaa: sqlmesh CLI extension disabled: RuntimeError('broken on purpose')" in result.stderr


def test_inside_a_sqlmesh_project_the_commands_read_its_variables(workspace: Workspace) -> None:
    project = workspace.path / "project"
    workspace.write("project/config.yaml", PROJECT_CONFIG)
    expected = project / "state" / "checkpoints.duckdb"
    PipelineCheckpoint("ingest", expected).close()
    under_sqlmesh = workspace.json("sqlmesh", "-p", str(project), "osaa-recover", "stats", expect=0)
    standalone = workspace.json("osaa-recover", "stats", "--project", str(project), expect=0)
    assert under_sqlmesh["db_path"] == standalone["db_path"] == str(expected)


@pytest.mark.slow
def test_a_wheel_ships_the_pth_file_and_it_extends_sqlmesh(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".osaa", "example_project", "tests")
    )
    build = processes.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        timeout=TIMEOUT,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "import sqlmesh_osaa.cli.sqlmesh_plugin" in archive.read(PTH_NAME).decode()
    target = tmp_path / "site"
    install = processes.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        timeout=TIMEOUT,
    )
    assert install.returncode == 0, install.stderr
    # A fresh interpreter without site processing: sqlmesh from this environment, then the wheel's site dir.
    script = (
        "import site, sys; sys.path.append(sys.argv[1]); site.addsitedir(sys.argv[2]);"
        "from sqlmesh.cli.main import cli; import sqlmesh_osaa;"
        "assert sqlmesh_osaa.__file__.startswith(sys.argv[2]), sqlmesh_osaa.__file__;"
        "print(sorted(c for c in cli.commands if c.startswith('osaa')))"
    )
    result = processes.run(
        [sys.executable, "-S", "-c", script, sysconfig.get_paths()["purelib"], str(target)],
        cwd=tmp_path, timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(sorted(COMMAND_NAMES))
