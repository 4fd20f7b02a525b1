"""The one build step pyproject.toml cannot declare: ``sqlmesh_osaa_cli.pth`` in site-packages.

The .pth line runs at every interpreter start of the environment. It imports
``sqlmesh_osaa.cli.sqlmesh_plugin``, which only installs a one-shot import hook that adds the
``osaa-*`` commands to the stock ``sqlmesh`` CLI; if that import fails, it warns and Python
goes on. Everything else about the package is declared in pyproject.toml.

A regular wheel gets the file at its root (site-packages) through ``build_lib``. An editable
install (PEP 660) ignores ``build_lib``: setuptools assembles the editable wheel from the
directory it sets as ``install.install_lib`` (where it also writes data files and scripts), so
the file goes there.
"""

from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build

PTH_NAME = "sqlmesh_osaa_cli.pth"
# Outer string: the line Python's site module executes; inner exec: a try/except on one line.
PTH_LINE = (
    "import sys; exec(\"try: import sqlmesh_osaa.cli.sqlmesh_plugin\\nexcept Exception as error: "
    "sys.stderr.write('sqlmesh-osaa: sqlmesh CLI extension disabled: %r\\\\n' % (error,))\")\n"
)


class build_osaa_pth(Command):
    """Write the .pth file where the wheel being built takes its site-packages files from."""

    description = "write sqlmesh_osaa_cli.pth (adds the osaa-* commands to the sqlmesh CLI)"
    user_options: list = []
    editable_mode = False

    def initialize_options(self) -> None:
        self.build_lib = None

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def run(self) -> None:
        for target in self.get_outputs():
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_text(PTH_LINE, encoding="utf-8")

    def get_outputs(self) -> list:
        root = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        return [str(Path(root, PTH_NAME))]

    def get_output_mapping(self) -> dict:
        return {}

    def get_source_files(self) -> list:
        return []


class build_with_osaa_pth(build):
    sub_commands = [*build.sub_commands, ("build_osaa_pth", None)]


setup(cmdclass={"build": build_with_osaa_pth, "build_osaa_pth": build_osaa_pth})
