"""Named points where crash tests kill the process, to prove recovery from each of them.

A crash test sets ``SQLMESH_OSAA_FAULT_POINT=<name>`` (or ``<name>:<n>`` for the n-th time
the point is reached, counted from 1) in a child process; when that process reaches the
point it is killed with SIGKILL: no ``finally`` block, no atexit handler, no flush runs,
exactly like a machine losing power or an OOM kill. Unset, a fault point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

FAULT_POINT_ENV = "SQLMESH_OSAA_FAULT_POINT"

AFTER_STAGING = "after_staging"
AFTER_COMMIT_DECISION = "after_commit_decision"
AFTER_PRODUCTION_COPY = "after_production_copy"
BEFORE_STAGING_CLEANUP = "before_staging_cleanup"

_reached: Counter[str] = Counter()
_lock = threading.Lock()


def fault_point(name: str) -> None:
    """Kill this process here if the environment asks for it."""
    armed = os.environ.get(FAULT_POINT_ENV)
    if not armed:
        return
    target, _, nth = armed.partition(":")
    if target != name:
        return
    with _lock:
        _reached[name] += 1
        hit = _reached[name] == int(nth or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
