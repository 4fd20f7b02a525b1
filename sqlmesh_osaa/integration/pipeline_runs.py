"""One PIPELINE checkpoint per ``sqlmesh plan`` / ``sqlmesh run``.

``@osaa_before_all()`` opens it and ``@osaa_after_all()`` closes it: *completed* when every
model evaluation of the command passed, *failed* naming those that did not. ``sqlmesh
plan`` skips after_all when the plan fails, so :func:`install` also wraps the plan
evaluator to close the checkpoint with the plan's error; a process that exits with the
checkpoint still open (after_all not configured) closes it at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any

from sqlmesh_osaa.checkpoint import CheckpointScope
from sqlmesh_osaa.exceptions import ErrorCategory
from sqlmesh_osaa.integration import model_checkpoints, run_reports, runtime

_log = logging.getLogger(__name__)

_MAX_LISTED = 10


class PipelineRun:
    """The PIPELINE checkpoint of one command, and what its evaluations did."""

    def __init__(self, rt: runtime.Runtime, command: str, environment: str) -> None:
        self.command = command
        self.environment = environment
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.key = f"{command}|{environment}|{stamp}"
        self._rt = rt
        self._lock = threading.Lock()
        self._started = time.perf_counter()
        self.evaluations = 0
        self.failures: list[str] = []
        self.published: list[str] = []
        # What the command's publication wrote, per key (``exports.published``), kept with the outcome.
        self.exports: dict[str, Any] = {}
        self.open = True
        rt.checkpoint.mark_started(
            CheckpointScope.PIPELINE,
            self.key,
            metadata={"command": command, "environment": environment, "pid": os.getpid()},
        )

    def note_evaluation(self, model: str, failure: str | None) -> None:
        with self._lock:
            self.evaluations += 1
            if failure is not None:
                self.failures.append(f"{model}: {failure}")

    def finish(self, error: str | None = None) -> None:
        """Record the outcome once; later calls do nothing."""
        with self._lock:
            if not self.open:
                return
            self.open = False
            failures = list(self.failures)
        # The end of the run reads MODEL items (recoveries, alerts): what it buffered is written first.
        model_checkpoints.make_durable(self._rt)
        metadata = {
            "duration_seconds": round(time.perf_counter() - self._started, 3),
            "evaluations": self.evaluations,
            "failed_evaluations": failures[:_MAX_LISTED],
            "published": self.published[:_MAX_LISTED],
            "published_count": len(self.published),
        }
        if self.exports:
            metadata["exports"] = dict(self.exports)
        if error is None and not failures:
            self._rt.checkpoint.mark_completed(
                CheckpointScope.PIPELINE, self.key, metadata={**metadata, "outcome": "completed"}
            )
            run_reports.run_ended(self._rt, self, succeeded=True)
            return
        evaluations = f"{len(failures)} model evaluation(s) failed: " + "; ".join(failures[:3]) if failures else None
        message = "; ".join(part for part in (error, evaluations) if part)
        audits_only = bool(failures) and all("blocking audit" in failure for failure in failures)
        self._rt.checkpoint.mark_failed(
            CheckpointScope.PIPELINE,
            self.key,
            message,
            metadata={**metadata, "outcome": "failed"},
            category=ErrorCategory.DATA if audits_only else None,
        )
        _log.warning("sqlmesh %s %s failed: %s", self.command, self.environment, message)
        run_reports.run_ended(self._rt, self, succeeded=False)


_exit_hook_registered = False


def begin(rt: runtime.Runtime, environment: str) -> PipelineRun:
    """Open the PIPELINE checkpoint of the command now running."""
    global _exit_hook_registered
    with rt.lock:
        if not _exit_hook_registered:
            # Registered after the checkpoint opened, so it runs before the checkpoint closes at exit.
            atexit.register(finish_open_run, "the process exited before @osaa_after_all() ran")
            _exit_hook_registered = True
        if rt.pipeline_run is not None and rt.pipeline_run.open:
            rt.pipeline_run.finish("superseded by a new plan/run in the same process before after_all ran")
        rt.pipeline_run = PipelineRun(rt, runtime.cli_command(), environment)
        return rt.pipeline_run


def finish_open_run(error: str) -> None:
    rt = runtime.current()
    run = rt.pipeline_run if rt is not None else None
    if run is not None and run.open:
        try:
            run.finish(error)
        except Exception:
            _log.exception("sqlmesh-osaa could not record the end of %s", run.key)
