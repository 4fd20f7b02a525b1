"""Adds ``osaa-recover``, ``osaa-ingest`` and ``osaa-promote`` to the stock ``sqlmesh`` CLI.

SQLMesh's CLI has no plugin mechanism (``sqlmesh.cli.main:cli`` is a plain click group), so
``sqlmesh_osaa_cli.pth``, which Python runs at every interpreter start, imports this module
and it puts a one-shot finder at the front of ``sys.meta_path``. The finder only waits for
``sqlmesh.cli.main``: once that module has run, the commands are added to its group and the
finder is gone. Any other program pays one string comparison per import, and nothing else of
the package loads until ``sqlmesh`` starts.

A failure to load our commands never breaks SQLMesh: the stock CLI runs unchanged and one
line on stderr says why. ``SQLMESH_OSAA_CLI=0`` turns the extension off (the variable is not
``OSAA_*``: those are settings).
"""

from __future__ import annotations

import os
import sys

# Not `typing.TYPE_CHECKING`: this module runs at every interpreter start, before anything
# imported typing, and the annotations below are never evaluated at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

TARGET_MODULE = "sqlmesh.cli.main"
DISABLE_VARIABLE = "SQLMESH_OSAA_CLI"
COMMAND_NAMES = ("osaa-recover", "osaa-ingest", "osaa-promote")
# Installed at the root of site-packages by setup.py, which also holds its one line.
PTH_NAME = "sqlmesh_osaa_cli.pth"


def enabled(environ: Any = os.environ) -> bool:
    return environ.get(DISABLE_VARIABLE, "1").strip().lower() not in {"0", "off", "false", "no"}


class _SQLMeshCLIFinder:
    """Finds nothing itself; lets the regular finders load ``sqlmesh.cli.main``, then extends it."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != TARGET_MODULE:
            return None
        uninstall()
        import importlib.util

        # Removing ourselves shifted sys.meta_path under the import system's loop, so answer
        # with a full lookup of our own rather than returning None.
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run_module = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            _extend_safely(module)

        loader.exec_module = exec_module
        return spec


def _extend_safely(main_module: ModuleType) -> None:
    try:
        register(main_module)
    except Exception as error:
        sys.stderr.write(f"sqlmesh-osaa: the osaa-* sqlmesh commands are unavailable: {error!r}\n")


def register(main_module: ModuleType) -> None:
    """Add our commands to SQLMesh's group; they build no SQLMesh Context (they read settings themselves)."""
    from sqlmesh_osaa.cli.ingest import ingest
    from sqlmesh_osaa.cli.promote import promote
    from sqlmesh_osaa.cli.recover import recover

    group = main_module.cli
    for name, command in zip(COMMAND_NAMES, (recover, ingest, promote)):
        if name not in group.commands:
            group.add_command(command, name)
    skipped = tuple(getattr(main_module, "SKIP_CONTEXT_COMMANDS", ()))
    main_module.SKIP_CONTEXT_COMMANDS = skipped + tuple(name for name in COMMAND_NAMES if name not in skipped)
    # `sqlmesh run` does not load the project, so nothing else would import the package
    # before the run decides it has nothing to do: install the Context wrappers now. They
    # import the integration only for projects whose before_all enables it.
    from sqlmesh_osaa.integration.sqlmesh_patches import install as install_patches

    install_patches()


def install() -> None:
    if enabled() and not any(isinstance(finder, _SQLMeshCLIFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SQLMeshCLIFinder())


def uninstall() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _SQLMeshCLIFinder)]


if TARGET_MODULE not in sys.modules:
    install()
