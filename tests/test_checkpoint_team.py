"""Acceptance: four runner processes share one PostgreSQL store while one of them is killed at random times.

No mark is lost, no live item of another runner is ever reported interrupted, and the killed
runner's items become interrupted once its lease is gone (then its next incarnation resumes them).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
FILE = CheckpointScope.FILE
RUNNERS = 4
MARKS = 2000
CHUNK = 20
KILLS = 4
LEASE_END_WAIT = 30.0

RUNNER = textwrap.dedent(
    """
    import sys
    from sqlmesh_osaa.checkpoint import PipelineCheckpoint

    dsn, name, marks, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    keys = [f"{name}/file-{n:05d}.parquet" for n in range(marks)]
    with PipelineCheckpoint("team", dsn=dsn) as checkpoint:
        print(checkpoint.run_id, flush=True)
        done = checkpoint.completed_keys("file", keys)
        todo = [key for key in keys if key not in done]
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            checkpoint.mark_started_many("file", batch)  # resumes what a killed incarnation left
            for key in batch:
                checkpoint.mark_completed("file", key)
    """
)


class Team:
    """The runner processes, which runs are live, and what an observer saw."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.processes: dict[str, subprocess.Popen] = {}
        self.live_runs: set[str] = set()
        self.runs_of: dict[str, list[str]] = {}
        self.guard = threading.Lock()
        self.violations: list[str] = []
        self.observations = 0

    def start(self, name: str) -> None:
        process = subprocess.Popen(
            [sys.executable, "-c", RUNNER, self.dsn, name, str(MARKS), str(CHUNK)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        run_id = process.stdout.readline().strip()
        assert run_id, f"runner {name} did not start"
        with self.guard:
            self.processes[name] = process
            self.live_runs.add(run_id)
            self.runs_of.setdefault(name, []).append(run_id)

    def kill(self, name: str) -> str:
        process, run_id = self.processes[name], self.runs_of[name][-1]
        with self.guard:
            self.live_runs.discard(run_id)  # dead from now on, before the signal can take effect
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        return run_id

    def wait(self, name: str) -> int:
        code = self.processes[name].wait(timeout=600)
        with self.guard:
            self.live_runs.discard(self.runs_of[name][-1])
        return code

    def observe(self, stop: threading.Event) -> None:
        """Until ``stop``: no in_progress row of a live run may be reported interrupted."""
        with PipelineCheckpoint("team", dsn=self.dsn) as observer:
            while not stop.is_set():
                rows = observer.list(status="in_progress")
                with self.guard:
                    live = set(self.live_runs)
                self.violations += [f"{r['key']} of live run {r['run_id']}" for r in rows if r["interrupted"] and r["run_id"] in live]
                self.observations += 1

    def reap(self) -> None:
        for process in self.processes.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=60)


@pytest.fixture
def team(pg_dsn: str) -> Iterator[Team]:
    with PipelineCheckpoint("team", dsn=pg_dsn):
        pass  # the schema exists before the runners race to use it
    crew = Team(pg_dsn)
    try:
        yield crew
    finally:
        crew.reap()


def wait_until_interrupted(observer: PipelineCheckpoint, run_id: str) -> int:
    """Poll until every in_progress row of ``run_id`` is reported interrupted; how many there are."""
    deadline = time.monotonic() + LEASE_END_WAIT
    while time.monotonic() < deadline:
        rows = [row for row in observer.list(status="in_progress") if row["run_id"] == run_id]
        if all(row["interrupted"] for row in rows):
            return len(rows)
        time.sleep(0.05)
    raise AssertionError(f"rows of killed run {run_id} still live {LEASE_END_WAIT}s after the kill")


def test_four_runners_with_one_killed_at_random_lose_no_mark_and_never_fail_live_work(team: Team) -> None:
    chance = random.Random(int.from_bytes(os.urandom(4), "big"))
    names = [f"runner-{i}" for i in range(RUNNERS)]
    victim = names[0]
    stop = threading.Event()
    observer_thread = threading.Thread(target=team.observe, args=(stop,))
    observer_thread.start()
    interrupted_after_kills = []
    try:
        for name in names:
            team.start(name)
        with PipelineCheckpoint("team", dsn=team.dsn) as observer:
            for _ in range(KILLS):
                time.sleep(chance.uniform(0.2, 1.2))
                if team.processes[victim].poll() is not None:
                    break
                killed_run = team.kill(victim)
                interrupted_after_kills.append(wait_until_interrupted(observer, killed_run))
                team.start(victim)
        codes = {name: team.wait(name) for name in names}
    finally:
        stop.set()
        observer_thread.join(timeout=120)

    assert codes == dict.fromkeys(names, 0)
    assert team.violations == [] and team.observations > 0
    assert interrupted_after_kills, "the victim finished before it could be killed"
    all_keys = [f"{name}/file-{n:05d}.parquet" for name in names for n in range(MARKS)]
    with PipelineCheckpoint("team", dsn=team.dsn) as checkpoint:
        assert checkpoint.completed_keys(FILE, all_keys) == set(all_keys)
        completions = checkpoint.store.read("SELECT count(*) FROM checkpoint_events WHERE to_status = 'completed'")
        assert completions == [(RUNNERS * MARKS,)]  # each item completed exactly once, kills or not
        assert checkpoint.get_statistics()["interrupted"] == 0
