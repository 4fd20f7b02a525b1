"""The local store flushes a batch of writes together, before the decision that names them.

Observed from outside with strace. On the real ``sqlmesh plan`` of the example project the
copies a publication stages under ``_osaa/versions/`` are renamed into place without an
fsync, and each is flushed after the last of them and before the commit decision (the entry
under ``_osaa/log/``), so nothing the decision references can be lost by a power cut once
the decision exists. A batch of a few objects is flushed file by file (a ``syncfs`` would
also write back every other process's dirty pages); a large one by one ``syncfs``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sqlmesh_project import SQLMESH, local_project, run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed"),
]

TRACED = "fsync,fdatasync,syncfs,rename,renameat,renameat2"
RENAMED_TO = re.compile(r'rename\w*\(.*"(?P<target>[^"]+)"\)')
FSYNCED = re.compile(r"fsync\(\d+<(?P<path>[^>]+)>\)")
DEFERRED_WRITES = """
import sys
from pathlib import Path
from sqlmesh_osaa.storage import LocalStore
store = LocalStore(sys.argv[1], "bucket")
source = Path(sys.argv[1]).parent / "source.txt"
source.write_bytes(b"content")
with store.deferred_durability():
    for number in range(int(sys.argv[2])):
        store.put_file(source, f"batch/object-{number}.txt")
print("SYNC", flush=True)
store.sync()
"""


def traced_plan(tmp_path: Path) -> list[str]:
    project = local_project(tmp_path)
    trace = tmp_path / "plan.strace"
    command = ["strace", "-f", "-y", "-qq", "-e", f"trace={TRACED}", "-o", str(trace), str(SQLMESH), "plan"]
    run([*command, "--auto-apply", "--no-prompts"], project.path, project.env)
    return trace.read_text().splitlines()


def renamed_into(line: str, part: str) -> bool:
    match = RENAMED_TO.search(line)
    return match is not None and part in match.group("target")


def fsynced(line: str) -> str | None:
    match = FSYNCED.search(line)
    return match.group("path") if match is not None else None


def test_staged_copies_are_flushed_after_the_last_of_them_and_before_the_decision(tmp_path: Path) -> None:
    lines = traced_plan(tmp_path)
    copies = [i for i, line in enumerate(lines) if renamed_into(line, "/_osaa/versions/")]
    decisions = [i for i, line in enumerate(lines) if renamed_into(line, "/_osaa/log/")]
    assert copies and decisions

    for copy in copies:
        decision = min(d for d in decisions if d > copy)
        last_copy = max(c for c in copies if c < decision)
        target = RENAMED_TO.search(lines[copy]).group("target")
        flushed = [i for i in range(last_copy + 1, decision) if fsynced(lines[i]) == target or "syncfs(" in lines[i]]
        assert flushed, lines[copy]
    early = [
        line for i, line in enumerate(lines) if "/_osaa/versions/" in (fsynced(line) or "") and not any(
            max((c for c in copies if c < d), default=d) < i < d for d in decisions
        )
    ]
    assert early == []


def traced_deferred_writes(tmp_path: Path, objects: int) -> list[str]:
    """The flushes of ``sync()`` after ``objects`` puts under deferred durability, from strace."""
    trace = tmp_path / "writes.strace"
    command = ["strace", "-f", "-y", "-qq", "-e", "trace=fsync,syncfs,write", "-o", str(trace)]
    subprocess.run([*command, sys.executable, "-c", DEFERRED_WRITES, str(tmp_path / "store"), str(objects)], check=True)
    lines = trace.read_text().splitlines()
    synced_from = next(i for i, line in enumerate(lines) if "SYNC" in line)
    return [line for line in lines[synced_from:] if "fsync(" in line or "syncfs(" in line]


def test_a_few_deferred_objects_are_flushed_file_by_file_without_syncfs(tmp_path: Path) -> None:
    flushes = traced_deferred_writes(tmp_path, 3)

    assert not any("syncfs(" in line for line in flushes)
    flushed = {fsynced(line) for line in flushes}
    bucket = (tmp_path / "store").resolve() / "bucket"
    assert {str(bucket / "batch" / f"object-{n}.txt") for n in range(3)} <= flushed
    assert {str(bucket / "batch"), str(bucket)} <= flushed


def test_many_deferred_objects_are_flushed_by_one_syncfs(tmp_path: Path) -> None:
    flushes = traced_deferred_writes(tmp_path, 65)

    assert len([line for line in flushes if "syncfs(" in line]) == 1
    assert not any("/batch/object-" in (fsynced(line) or "") for line in flushes)
