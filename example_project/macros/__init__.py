# SQLMesh restores its macro registry after loading a project's macros, so a package's macros
# register only for the first Context of a process; reloading re-registers them every time.
import importlib

import sqlmesh_osaa.macros as _osaa_macros

importlib.reload(_osaa_macros)
from sqlmesh_osaa.macros import *  # noqa: E402,F401,F403
