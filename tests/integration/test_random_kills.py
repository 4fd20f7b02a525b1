"""Prod holds only data that passed its audits, never a torn object, wherever plans and runs are killed.

The named fault points (test_crash_recovery.py, test_restatement_kills.py) prove the protocol
at its edges; here 20 rounds (seeded) each write new SDG raw data, good in most rounds and
failing the source's blocking audit in others, then start a restating ``sqlmesh plan`` or a
``sqlmesh run`` a day later than the last one, and SIGKILL it at a random moment (or let it
end). After every round prod's export and SDG landing file are read in full: readable
parquet, and no row of data that failed its audit. A final plan with good data publishes it.
"""

from __future__ import annotations

import random
import subprocess

import pytest

from sqlmesh_project import SQLMESH, Project, local_project, s3_project
from support import processes

pytestmark = pytest.mark.slow

ROUNDS = 20
BAD_YEAR = 2099
HEADER = "INDICATOR_ID,COUNTRY_ID,YEAR,VALUE,MAGNITUDE,QUALIFIER\n"
EXPORT_KEY = "prod/indicators/indicators.parquet"
LANDING_KEY = "prod/landing/sdg/SDG_update.parquet"


def raw_rows(round_: int, bad: bool) -> str:
    year = BAD_YEAR if bad else 2023
    return HEADER + f"CR.5,KEN,{year},{float(round_)},,\n"


def audited_only(project: Project) -> set[float]:
    """Values of the CR.5 rows prod holds; fails on a torn object or on data that failed its audit."""
    export = project.parquet_rows(EXPORT_KEY)
    assert all(row[2] != BAD_YEAR for row in export), export
    if LANDING_KEY in project.objects("prod/landing/sdg/"):
        landing = project.parquet_rows(LANDING_KEY)
        assert all(row[2] != BAD_YEAR for row in landing), landing
    return {row[3] for row in export if row[1] == "CR.5"}


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_plans_and_runs_killed_at_random_moments_publish_only_audited_data(backend, tmp_path, request):
    if backend == "local":
        project = local_project(tmp_path)
    else:
        request.getfixturevalue("s3_credentials_for_tests")
        project = s3_project(tmp_path, request.getfixturevalue("s3_server"))
    project.plan()
    rng = random.Random(f"osaa-kills-{backend}")
    good_values: set[float] = set()

    killed = 0
    for round_ in range(1, ROUNDS + 1):
        bad = rng.random() < 0.35
        project.write("data/raw/sdg/SDG_update.csv", raw_rows(round_, bad))
        if not bad:
            good_values.add(float(round_))
        if rng.random() < 0.5:
            command = [str(SQLMESH), "plan", "--auto-apply", "--no-prompts", "--restate-model", "osaa_raw.sdg"]
        else:
            command = project.days_later_command(round_, "run")
        output = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        with processes.spawn(command, cwd=project.path, env=project.env, **output) as process:
            try:
                process.wait(timeout=rng.uniform(0.5, 6.0))
            except subprocess.TimeoutExpired:
                killed += 1
        values = audited_only(project)
        assert values <= good_values, (round_, values, good_values)
    assert killed >= ROUNDS // 4, f"only {killed} of {ROUNDS} commands were killed; lengthen the commands or shorten the delays"

    project.write("data/raw/sdg/SDG_update.csv", raw_rows(ROUNDS + 1, bad=False))
    project.sqlmesh_days_later(ROUNDS, "plan", "--auto-apply", "--no-prompts", "--restate-model", "osaa_raw.sdg")
    assert audited_only(project) == {float(ROUNDS + 1)}
