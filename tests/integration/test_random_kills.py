"""A failing blocking audit never changes the environment's prefix, wherever the plan is killed.

The named fault points (test_crash_recovery.py) prove the protocol at its edges; here plans
restating a source with a bad row are SIGKILLed at random moments (seeded, bounded), on both
stores, and prod is checked after every kill. The next plan still refuses the bad data, and
fixing it publishes.
"""

from __future__ import annotations

import random
import subprocess

import pytest
from sqlmesh_project import (
    BAD_SDG_ROWS,
    FIXED_SDG_ROWS,
    SQLMESH,
    local_project,
    s3_project,
)
from support import processes

pytestmark = pytest.mark.slow

KILLS = 3
RESTATE_SDG = ("--restate-model", "osaa_raw.sdg")


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_plans_killed_at_random_moments_never_publish_data_that_failed_its_audit(backend, tmp_path, request):
    if backend == "local":
        project = local_project(tmp_path)
    else:
        request.getfixturevalue("s3_credentials_for_tests")
        project = s3_project(tmp_path, request.getfixturevalue("s3_server"))
    project.plan()
    before = project.objects("prod/")
    project.write("data/raw/sdg/SDG_update.csv", BAD_SDG_ROWS)
    rng = random.Random(f"osaa-{backend}")

    killed = 0
    for _ in range(KILLS):
        command = [str(SQLMESH), "plan", "--auto-apply", "--no-prompts", *RESTATE_SDG]
        output = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        with processes.spawn(command, cwd=project.path, env=project.env, **output) as plan:
            try:
                plan.wait(timeout=rng.uniform(0.5, 3.0))
            except subprocess.TimeoutExpired:
                processes.kill_group(plan)
                plan.wait(timeout=60)
                killed += 1
        assert project.objects("prod/") == before
    assert killed >= 1, "every plan ended before its kill; shorten the delays"

    refused = project.plan(None, *RESTATE_SDG, check=False)
    assert refused.returncode != 0
    assert project.objects("prod/") == before

    project.write("data/raw/sdg/SDG_update.csv", FIXED_SDG_ROWS)
    project.plan(None, *RESTATE_SDG)
    after = project.objects("prod/")
    assert after["prod/indicators/indicators.parquet"] != before["prod/indicators/indicators.parquet"]
    assert "prod/landing/sdg/SDG_update.parquet" in after
