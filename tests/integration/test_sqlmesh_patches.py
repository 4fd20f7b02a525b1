"""The SQLMesh internals sqlmesh-osaa relies on are still there in the pinned SQLMesh.

These fail loudly when an upgrade of SQLMesh moves anything ``sqlmesh_patches.py`` or the
audit evidence uses (docs/sqlmesh-internals.md, section 9, lists each and why).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlmesh.core.config import DuckDBConnectionConfig
import sqlmesh.core.plan.evaluator as plan_evaluator
import sqlmesh.core.scheduler as scheduler
from sqlmesh.core.context import GenericContext
from sqlmesh.core.environment import EnvironmentStatements
from sqlmesh.core.scheduler import Scheduler
from sqlmesh.core.snapshot.evaluator import SnapshotEvaluator
from sqlmesh.core.state_sync.cache import CachingStateSync
from sqlmesh.core.state_sync.db.facade import EngineAdapterStateSync

import sqlmesh_osaa.integration  # noqa: F401  (installs the patches)
from sqlmesh_osaa.integration import audit_evidence, sqlmesh_patches


def test_the_installed_sqlmesh_offers_everything_the_patches_rely_on() -> None:
    assert sqlmesh_patches.problems() == []


def test_importing_the_integration_installs_the_patched_methods() -> None:
    patched = (
        Scheduler.evaluate,
        SnapshotEvaluator.evaluate,
        GenericContext.plan,
        GenericContext.run,
        scheduler.execute_environment_statements,
        plan_evaluator.execute_environment_statements,
    )
    for method in patched:
        assert getattr(method, sqlmesh_patches.INSTALLED_MARKER, False), method


WRAPPERS_PER_METHOD = """
import {first}
import sqlmesh.core.plan.evaluator as plan_evaluator
import sqlmesh.core.scheduler as scheduler
from sqlmesh.core.context import GenericContext
from sqlmesh.core.snapshot.evaluator import SnapshotEvaluator

def wrappers(function):
    count = 0
    while function is not None:
        count += bool(getattr(function, "{marker}", False))
        function = getattr(function, "__wrapped__", None)
    return count

methods = (scheduler.Scheduler.evaluate, SnapshotEvaluator.evaluate, GenericContext.plan, GenericContext.run,
           scheduler.execute_environment_statements, plan_evaluator.execute_environment_statements)
print(" ".join(str(wrappers(method)) for method in methods))
"""


def test_importing_the_package_before_sqlmesh_cli_wraps_each_method_once() -> None:
    # A Python API script or a project's macros import the package first; its check of
    # SQLMesh imports sqlmesh.cli.main, which runs the CLI hook's install() inside the first.
    for first in ("sqlmesh_osaa.macros", "sqlmesh_osaa.integration", "sqlmesh.cli.main"):
        script = WRAPPERS_PER_METHOD.format(first=first, marker=sqlmesh_patches.INSTALLED_MARKER)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        assert result.stdout.split() == ["1"] * 6, (first, result.stdout, result.stderr)


def _statements(before_all: list[str], after_all: list[str]) -> list[EnvironmentStatements]:
    return [EnvironmentStatements(before_all=before_all, after_all=after_all, python_env={})]


def test_the_package_hooks_alone_are_rendered_without_the_environment_snapshots() -> None:
    hooks_only = _statements([" @osaa_before_all() "], ["@osaa_after_all()"])

    assert sqlmesh_patches.reads_no_snapshot(hooks_only)


def test_any_other_environment_statement_keeps_sqlmesh_rendering_with_every_snapshot() -> None:
    with_views = _statements(["@osaa_before_all()"], ["@osaa_after_all()", "CREATE TABLE seen AS SELECT @views AS v"])
    with_schemas = _statements(["@osaa_before_all()", "SELECT @schemas"], ["@osaa_after_all()"])

    assert not sqlmesh_patches.reads_no_snapshot(with_views)
    assert not sqlmesh_patches.reads_no_snapshot(with_schemas)


def test_interval_rows_are_read_through_a_caching_state_sync_in_its_own_schema(tmp_path: Path) -> None:
    adapter = DuckDBConnectionConfig(database=str(tmp_path / "state.duckdb")).create_engine_adapter()
    state_sync = EngineAdapterStateSync(adapter, schema="osaa_state")
    state_sync.migrate()

    columns = adapter.columns("osaa_state._intervals")

    assert set(audit_evidence.ROW_COLUMNS) <= set(columns)
    assert audit_evidence.interval_rows(CachingStateSync(state_sync), ['"db"."osaa"."x"']) == []
