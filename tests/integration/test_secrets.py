"""The sentinel test: no credential reaches an output, a log, a DuckDB file or an object's metadata.

The secret key, the session token and an endpoint URL's password are distinctive values.
Every command of the package runs on the moto S3 server, succeeding and failing: the
SQLMesh plan and run under ``sqlmesh --debug``, ``osaa-ingest`` (a bad file among good
ones), every ``osaa-recover`` verb and ``osaa-promote`` with ``--json`` and again with
Python DEBUG logging, then the same commands against an endpoint URL holding the
password and against an endpoint that is down. Afterwards every output, every file under
the project and HOME (DuckDB databases row by row) and every object's metadata is
searched for the three values.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlmesh_project import SQLMESH, Completed, Project, run, sentinel_project
from support.s3server import free_port
from support.sentinels import leaks

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SECRET_KEY = "sentinel-secret-Hd83kQ"
SESSION_TOKEN = "sentinel-token-Zp51wX"
URL_PASSWORD = "sentinel-urlpw-Tc62nB"
SENTINELS = [SECRET_KEY, SESSION_TOKEN, URL_PASSWORD]
BIN = Path(sys.executable).parent
BAD_CSV = "a,b\n1,2,3,4\n5\n"
# A package command with Python's root logger at DEBUG (the CLIs have no flag for it).
DEBUG_RUNNER = (
    "import logging, sys\n"
    "logging.basicConfig(level=logging.DEBUG)\n"
    "import sqlmesh_osaa.cli as cli\n"
    "main = getattr(cli, sys.argv.pop(1))\n"
    "sys.argv[0] = 'osaa'\n"
    "main()\n"
)
RECOVER_VERBS = [
    ["list-failed"],
    ["stats"],
    ["verify"],
    ["transactions", "--all"],
    ["history", "--key", "prod/landing/bad/bad.parquet"],
    ["retry"],
    ["clear", "--status", "failed"],
    ["prune"],
    ["reconcile"],
]


@dataclass
class Story:
    project: Project
    home: Path
    outputs: list[Completed] = field(default_factory=list)
    password_url: list[Completed] = field(default_factory=list)
    endpoint_down: list[Completed] = field(default_factory=list)


def debug(program: str, *args: str) -> list[str]:
    return [sys.executable, "-c", DEBUG_RUNNER, program, *args]


def package_commands(project: Project, env: dict[str, str]) -> list[Completed]:
    """Every package command with --json, the ones that write with DEBUG logging too; exit codes are the test's."""
    outputs = [
        run([str(SQLMESH), "osaa-ingest", "data/raw", "--json"], project.path, env, check=False),
        run(debug("ingest_main", "data/raw"), project.path, env, check=False),
        run([str(SQLMESH), "--debug", "plan", "--auto-apply", "--no-prompts"], project.path, env, check=False),
        run([str(SQLMESH), "--debug", "run"], project.path, env, check=False),
        run(
            [str(BIN / "osaa-promote"), "--from", "prod/landing", "--to", "archive/landing", "--json"],
            project.path,
            env,
            check=False,
        ),
        run(debug("promote_main", "--from", "prod/landing", "--to", "copy/landing"), project.path, env, check=False),
    ]
    for verb in RECOVER_VERBS:
        outputs.append(run([str(BIN / "osaa-recover"), *verb, "--json"], project.path, env, check=False))
    for verb in (["list-failed"], ["retry"], ["reconcile"]):
        outputs.append(run(debug("recover_main", *verb), project.path, env, check=False))
    return outputs


def failing_commands(project: Project, env: dict[str, str]) -> list[Completed]:
    """The commands that reach the store, against a store they cannot use."""
    return [
        run([str(SQLMESH), "osaa-ingest", "data/raw", "--json"], project.path, env, check=False),
        run(debug("ingest_main", "data/raw"), project.path, env, check=False),
        run([str(SQLMESH), "--debug", "plan", "--auto-apply", "--no-prompts"], project.path, env, check=False),
        run([str(BIN / "osaa-recover"), "reconcile", "--json"], project.path, env, check=False),
        run([str(BIN / "osaa-recover"), "list-failed", "--json"], project.path, env, check=False),
    ]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, s3_server: str, s3_credentials_for_tests: None) -> Story:
    base = tmp_path_factory.mktemp("secrets")
    project = sentinel_project(base, s3_server, secret_key=SECRET_KEY, session_token=SESSION_TOKEN)
    home = Path(project.env["HOME"])
    project.write("data/raw/bad/bad.csv", BAD_CSV)
    story = Story(project, home)
    story.outputs = package_commands(project, project.env)
    with_password = s3_server.replace("http://", f"http://osaa:{URL_PASSWORD}@")
    story.password_url = failing_commands(project, {**project.env, "OSAA_STORAGE__ENDPOINT_URL": with_password})
    boto_env = {k: v for k, v in project.env.items() if k != "OSAA_STORAGE__ENDPOINT_URL"}
    story.password_url += failing_commands(project, {**boto_env, "AWS_ENDPOINT_URL": with_password})
    down = f"http://127.0.0.1:{free_port()}"
    # Every retry still happens and is logged; only the waits between them are shortened.
    quick_retries = {"OSAA_RETRY__INITIAL_DELAY": "0.01", "OSAA_RETRY__MAX_DELAY": "0.05"}
    story.endpoint_down = failing_commands(project, {**project.env, **quick_retries, "OSAA_STORAGE__ENDPOINT_URL": down})
    return story


def test_the_commands_ran_and_the_plan_published(story: Story) -> None:
    ingest, _, plan, run_, promote, *_ = story.outputs
    assert ingest.returncode == 1 and "bad/bad.csv" in ingest.stdout  # the bad file failed, the others landed
    assert plan.returncode == 0, plan.stderr
    assert run_.returncode == 0, run_.stderr
    assert promote.returncode == 0, promote.stderr
    assert story.project.store.head("prod/indicators/indicators.parquet") is not None


def test_an_endpoint_url_with_a_password_is_refused_with_a_message_that_says_what_to_do(story: Story) -> None:
    from_settings, from_boto = story.password_url[0], story.password_url[len(story.password_url) // 2]
    for refused in (from_settings, from_boto):
        shown = refused.stdout + refused.stderr
        assert refused.returncode == 2, shown
        assert "user name or password" in shown and "127.0.0.1" in shown  # names the endpoint, not its password
        assert "Traceback" not in shown


def test_an_endpoint_that_is_down_fails_the_commands_that_need_it(story: Story) -> None:
    ingest = story.endpoint_down[0]
    assert ingest.returncode != 0


def test_no_sentinel_appears_in_any_output_log_database_or_object_metadata(story: Story) -> None:
    texts = [output.stdout + output.stderr for output in story.outputs + story.password_url + story.endpoint_down]
    logs = "".join(path.read_text(errors="replace") for path in (story.project.path / "logs").glob("*.log"))
    assert "X-Amz-Security-Token': b'***'" in logs  # the DEBUG request lines were written, masked
    assert any("botocore" in text for text in texts)  # so were botocore's DEBUG lines on stderr

    found = leaks(SENTINELS, texts=texts, roots=[story.project.path, story.home], store=story.project.store)

    assert found == []


def test_the_search_finds_a_sentinel_in_a_duckdb_row(tmp_path: Path) -> None:
    import duckdb

    with duckdb.connect(str(tmp_path / "planted.duckdb")) as database:
        database.execute("CREATE TABLE t AS SELECT ? AS message FROM range(1000)", [f"error at {SESSION_TOKEN}"])

    assert leaks(SENTINELS, roots=[tmp_path]) != []
