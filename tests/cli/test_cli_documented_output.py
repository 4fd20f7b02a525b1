"""Every command and verb answers --help, and every --json output has its documented shape."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_workspace import BAD_CSV, GOOD_CSV, Workspace, clean_environment
from shape_check import assert_documented, mismatches

from sqlmesh_osaa.cli import reference
from sqlmesh_osaa.cli.recover import recover
from sqlmesh_osaa.cli.shapes import ERROR, EXIT_CODES, SHAPES

VERBS = ["list-failed", "retry", "clear", "stats", "report", "verify", "transactions", "reconcile", "history", "prune"]
GROUPS = {"lease": ["show", "break"]}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """One ingest with a bad file, shared by the read-only verbs of this module."""
    workspace = Workspace(tmp_path_factory.mktemp("populated"), clean_environment())
    workspace.write("raw/wdi/good.csv", GOOD_CSV)
    workspace.write("raw/wdi/bad.csv", BAD_CSV)
    assert workspace.run("osaa-ingest", "raw").returncode == 1
    return workspace


def test_docs_cli_md_is_generated_from_the_click_definitions() -> None:
    assert DOCS.read_text(encoding="utf-8") == reference.render(), (
        "docs/cli.md is stale: python -m sqlmesh_osaa.cli.reference > docs/cli.md"
    )


def test_every_verb_of_the_issue_has_a_documented_shape_and_exit_codes() -> None:
    assert sorted(recover.commands) == sorted([*VERBS, *GROUPS])
    for verb in [*VERBS, *(f"{group} {sub}" for group, subs in GROUPS.items() for sub in subs)]:
        assert f"osaa-recover {verb}" in SHAPES and f"osaa-recover {verb}" in EXIT_CODES


def test_standalone_help_lists_every_verb(workspace: Workspace) -> None:
    result = workspace.run("osaa-recover", "--help")
    assert result.returncode == 0
    for verb in VERBS:
        assert verb in result.stdout


def test_sqlmesh_help_lists_the_three_commands(workspace: Workspace) -> None:
    result = workspace.run("sqlmesh", "--help")
    assert result.returncode == 0, result.stderr
    for command in ("osaa-recover", "osaa-ingest", "osaa-promote"):
        assert command in result.stdout


def test_sqlmesh_osaa_recover_help_lists_every_verb(workspace: Workspace) -> None:
    result = workspace.run("sqlmesh", "osaa-recover", "--help")
    assert result.returncode == 0, result.stderr
    for verb in VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["list-failed"],
        ["retry"],
        ["clear"],
        ["stats"],
        ["report", "--html", "report.html"],
        ["verify"],
        ["transactions"],
        ["reconcile"],
        ["prune", "--older-than", "30d"],
    ],
)
def test_every_verb_gives_documented_json_and_exit_0_on_an_empty_database(empty_db: Workspace, args: list[str]) -> None:
    document = empty_db.json("osaa-recover", *args, expect=0)
    assert_documented(document, f"osaa-recover {args[0]}")
    assert document["db_path"] == str(empty_db.db)


def test_history_of_an_unknown_key_is_a_usage_error_with_a_json_error_document(empty_db: Workspace) -> None:
    document = empty_db.json("osaa-recover", "history", "--key", "nope", expect=2)
    assert not mismatches(document, ERROR)
    assert "nope" in document["error"]["message"] and document["error"]["exit_code"] == 2


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        (["list-failed"], 1),
        (["clear", "--status", "failed"], 0),
        (["stats"], 1),
        (["report", "--html", "report.html"], 0),
        (["verify"], 0),
        (["transactions", "--all"], 0),
        (["reconcile"], 0),
        (["history", "--key", "prod/landing/wdi/bad.parquet"], 0),
        (["prune", "--older-than", "30d"], 0),
    ],
)
def test_every_verb_gives_documented_json_on_a_populated_database(populated: Workspace, args: list[str], exit_code: int) -> None:
    document = populated.json("osaa-recover", *args, expect=exit_code)
    assert_documented(document, f"osaa-recover {args[0]}")


def test_retry_gives_documented_json_on_a_populated_database(ingested: Workspace) -> None:
    ingested.write("raw/wdi/bad.csv", "a,b\n1,2\n")
    document = ingested.json("osaa-recover", "retry", expect=0)
    assert_documented(document, "osaa-recover retry")
    assert [item["outcome"] for item in document["items"]] == ["recovered"]


def test_sqlmesh_osaa_recover_gives_the_same_documented_json(populated: Workspace) -> None:
    standalone = populated.json("osaa-recover", "list-failed", expect=1)
    under_sqlmesh = populated.json("sqlmesh", "osaa-recover", "list-failed", expect=1)
    assert_documented(under_sqlmesh, "osaa-recover list-failed")
    assert under_sqlmesh == standalone


def test_ingest_json_is_documented(workspace: Workspace) -> None:
    workspace.write("raw/wdi/good.csv", "country,value\nKEN,1\n")
    document = workspace.json("osaa-ingest", "raw", expect=0)
    assert_documented(document, "osaa-ingest")
    assert document["landed"] == ["prod/landing/wdi/good.parquet"]


def test_promote_json_is_documented(populated: Workspace) -> None:
    document = populated.json("osaa-promote", "--from", "prod/landing", "--to", "archive/landing", "--dry-run", expect=0)
    assert_documented(document, "osaa-promote")


def test_the_light_command_modules_repeat_the_cores_defaults_exactly() -> None:
    from sqlmesh_osaa import ingest as core_ingest
    from sqlmesh_osaa import raw_files, transaction_manager
    from sqlmesh_osaa.checkpoint import CheckpointScope
    from sqlmesh_osaa.cli import ingest, options, promote

    assert options.SCOPES == [scope.value for scope in CheckpointScope]
    assert ingest.INGEST_PIPELINE == core_ingest.DEFAULT_PIPELINE and ingest.DEFAULT_PATTERN == raw_files.DEFAULT_PATTERN
    assert promote.TRANSACTIONS_PIPELINE == transaction_manager.DEFAULT_PIPELINE
