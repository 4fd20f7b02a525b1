"""Publication on the local store flushes its staged copies once, before its decision names them.

Observed from outside with strace on the real ``sqlmesh plan`` of the example project: the
copies a publication stages under ``_osaa/versions/`` are renamed into place without an
fsync each, and a ``syncfs`` of the bucket's filesystem comes between the last of them and
the commit decision (the entry under ``_osaa/log/``), so nothing the decision references can
be lost by a power cut once the decision exists.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from sqlmesh_project import SQLMESH, local_project, run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed"),
]

TRACED = "fsync,fdatasync,syncfs,rename,renameat,renameat2"
RENAMED_TO = re.compile(r'rename\w*\(.*"(?P<target>[^"]+)"\)')


def traced_plan(tmp_path: Path) -> list[str]:
    project = local_project(tmp_path)
    trace = tmp_path / "plan.strace"
    command = ["strace", "-f", "-y", "-qq", "-e", f"trace={TRACED}", "-o", str(trace), str(SQLMESH), "plan"]
    run([*command, "--auto-apply", "--no-prompts"], project.path, project.env)
    return trace.read_text().splitlines()


def renamed_into(line: str, part: str) -> bool:
    match = RENAMED_TO.search(line)
    return match is not None and part in match.group("target")


def test_staged_copies_are_flushed_together_before_the_decision(tmp_path: Path) -> None:
    lines = traced_plan(tmp_path)
    copies = [i for i, line in enumerate(lines) if renamed_into(line, "/_osaa/versions/")]
    decisions = [i for i, line in enumerate(lines) if renamed_into(line, "/_osaa/log/")]
    flushes = [i for i, line in enumerate(lines) if "syncfs(" in line]
    assert copies and decisions

    for copy in copies:
        decision = min(d for d in decisions if d > copy)
        assert any(copy < flush < decision for flush in flushes), lines[copy]
    staged_fsyncs = [line for line in lines if "fsync(" in line and "/_osaa/versions/" in line]
    assert staged_fsyncs == []
