"""What the end of a ``sqlmesh plan``/``run`` tells operators.

Called once by ``PipelineRun.finish`` after the PIPELINE checkpoint is closed: a success marks
the failures it superseded as recovered (``recoveries``); a failure announces each failed
model through the notification targets (``notifications``); either way the pipeline's metrics
textfile is rewritten when ``monitoring.textfile_directory`` is set (``metrics``). None of
this may change the command's outcome: each step logs its own failure.
"""

from __future__ import annotations

from typing import Any

from sqlmesh_osaa.integration import notifications, recoveries, runtime
from sqlmesh_osaa.metrics import write_textfile


def run_ended(rt: runtime.Runtime, run: Any, succeeded: bool) -> None:
    if succeeded:
        recoveries.resolve_superseded(rt.checkpoint, run.environment, run.key)
    else:
        notifications.run_failures(rt, run.environment, run.failures)
    write_textfile(rt.settings.monitoring.textfile_directory, rt.checkpoint)
