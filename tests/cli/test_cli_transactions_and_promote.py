"""``transactions``/``reconcile`` after real crashes, and ``osaa-promote`` as one transaction."""

from __future__ import annotations

import hashlib

import pytest
from cli_workspace import GOOD_CSV, Workspace

KEY = "prod/landing/wdi/good.parquet"


def _crash_ingest(workspace: Workspace, fault_point: str) -> None:
    workspace.write("raw/wdi/good.csv", GOOD_CSV)
    result = workspace.run("osaa-ingest", "raw", extra_env={"SQLMESH_OSAA_FAULT_POINT": fault_point})
    assert result.returncode == -9, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("fault_point", "phase", "recovered_by", "lands"),
    # Killed right after its decision reached the commit log: the local row still says open,
    # the store says decided, and the store wins.
    [("after_staging", "open", "rolled_back", False), ("after_commit_decision", "open", "rolled_forward", True)],
)
def test_reconcile_finishes_a_transaction_of_a_killed_ingest(
    workspace: Workspace, fault_point: str, phase: str, recovered_by: str, lands: bool
) -> None:
    _crash_ingest(workspace, fault_point)
    listed = workspace.json("osaa-recover", "transactions", expect=1)
    [transaction] = listed["transactions"]
    assert (transaction["phase"], transaction["interrupted"]) == (phase, True)
    assert [area["state"] for area in listed["staging"]] == ["awaiting_recovery"]
    decided = [(d["transaction_id"], d["state"]) for d in listed["decisions"]]
    assert decided == ([(transaction["transaction_id"], "applying")] if lands else [])

    reconciled = workspace.json("osaa-recover", "reconcile", expect=0)
    assert reconciled["transactions"][recovered_by] == [transaction["transaction_id"]]
    assert reconciled["sqlmesh"] is None
    assert (workspace.bucket / KEY).is_file() is lands
    after = workspace.json("osaa-recover", "transactions", expect=0)
    assert after["transactions"] == [] and after["staging"] == []


def test_retry_recovers_an_interrupted_transaction_and_then_its_file(workspace: Workspace) -> None:
    _crash_ingest(workspace, "after_staging")
    document = workspace.json("osaa-recover", "retry", expect=0)
    assert [(item["scope"], item["outcome"]) for item in document["items"]] == [("operation", "recovered"), ("file", "recovered")]
    assert (workspace.bucket / KEY).is_file()


def _objects(workspace: Workspace, prefix: str) -> dict[str, str]:
    root = workspace.bucket / prefix
    return {
        str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_sqlmesh_osaa_promote_makes_the_target_an_exact_copy_in_one_transaction(workspace: Workspace) -> None:
    workspace.write("raw/wdi/a.csv", GOOD_CSV)
    workspace.write("raw/wdi/b.csv", "country,value\nKEN,1\n")
    assert workspace.run("sqlmesh", "osaa-ingest", "raw", "--env", "dev").returncode == 0
    workspace.write("raw/wdi/stale.csv", "country,value\nGHA,2\n")
    assert workspace.run("osaa-ingest", "raw", "--prefix", "prod").returncode == 0

    planned = workspace.json("osaa-promote", "--from", "dev/dev/landing", "--to", "prod/landing", "--dry-run", expect=0)
    assert planned["deleted"] == ["prod/landing/wdi/stale.parquet"] and planned["transaction_id"] is None
    assert "wdi/stale.parquet" in _objects(workspace, "prod/landing")

    result = workspace.run("sqlmesh", "osaa-promote", "--from", "dev/dev/landing", "--to", "prod/landing")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _objects(workspace, "prod/landing") == _objects(workspace, "dev/dev/landing")
    [transaction] = workspace.json("osaa-recover", "transactions", "--all", "--pipeline", "transactions", expect=0)["transactions"]
    assert (transaction["operation"], transaction["phase"], transaction["puts"], transaction["deletes"]) == ("promote", "committed", 2, 1)


def test_promote_refuses_an_empty_source_and_overlapping_prefixes(ingested: Workspace) -> None:
    before = _objects(ingested, "prod/landing")
    empty = ingested.run("osaa-promote", "--from", "dev/landing", "--to", "prod/landing")
    assert empty.returncode == 2 and "--allow-empty" in empty.stderr
    overlap = ingested.run("osaa-promote", "--from", "prod", "--to", "prod/landing")
    assert overlap.returncode == 2 and "overlap" in overlap.stderr
    assert _objects(ingested, "prod/landing") == before
