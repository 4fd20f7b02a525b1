"""Child processes that never outlive their test.

Every process a test starts goes through :func:`run` or :func:`spawn`: each child leads a
new process group (session), and that whole group is killed when the call returns, times
out or fails, so a ``sqlmesh plan`` and anything it started are reaped even when the test
is interrupted. Servers that live for the whole session register with :func:`long_lived`;
the autouse check in ``tests/conftest.py`` fails a test that leaves any other descendant
of the test process running (:func:`leftover_descendants`).
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager, suppress
from typing import Any, Iterator, Sequence

import psutil

REAP_TIMEOUT = 30.0
_long_lived: set[int] = set()


def run(command: Sequence[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` with text output captured, in its own process group, killed with it afterwards."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    stdin_text = kwargs.pop("input", None)
    if stdin_text is not None:
        kwargs["stdin"] = subprocess.PIPE
    with spawn(command, **_popen_options(kwargs)) as process:
        try:
            stdout, stderr = process.communicate(stdin_text, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            stdout, stderr = process.communicate()
            raise subprocess.TimeoutExpired(process.args, timeout, output=stdout, stderr=stderr) from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@contextmanager
def spawn(command: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen[Any]]:
    """``subprocess.Popen`` as the leader of a new process group, killed and waited for on exit."""
    process = subprocess.Popen(list(command), start_new_session=True, **kwargs)
    try:
        yield process
    finally:
        kill_group(process)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=REAP_TIMEOUT)


def kill_group(process: subprocess.Popen[Any]) -> None:
    """SIGKILL every process of ``process``'s group (the leader may already be gone)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def long_lived(process: subprocess.Popen[Any]) -> None:
    """Exempt a session-wide server (its group and its descendants) from the leftover check."""
    _long_lived.add(process.pid)


def forget(process: subprocess.Popen[Any]) -> None:
    _long_lived.discard(process.pid)


def leftover_descendants() -> list[psutil.Process]:
    """Live descendants of this process that are not a registered server, in its group or below it."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with suppress(psutil.NoSuchProcess, ProcessLookupError):
            if child.status() == psutil.STATUS_ZOMBIE or _serves_the_session(child):
                continue
            found.append(child)
    return found


def _serves_the_session(process: psutil.Process) -> bool:
    lineage = {process.pid, *(parent.pid for parent in process.parents())}
    return os.getpgid(process.pid) in _long_lived or bool(lineage & _long_lived)


def _popen_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.pop("capture_output"):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    if kwargs.pop("check", False):
        raise TypeError("processes.run does not take check=: assert on returncode so the output is shown")
    return kwargs
