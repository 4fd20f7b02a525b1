"""Promotion: the target becomes an exact copy of the source in one transaction, or stays as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.promotion import EmptySourceError, PromotionRefusedError, promote_prefix
from sqlmesh_osaa.settings import OsaaSettings, RetrySettings
from sqlmesh_osaa.storage import ObjectStore

SETTINGS = OsaaSettings(retry=RetrySettings(initial_delay=0, max_delay=0, jitter=False))


@pytest.fixture
def checkpoint(tmp_path: Path):
    with PipelineCheckpoint("transactions", tmp_path / "checkpoints.duckdb") as checkpoint:
        yield checkpoint


@pytest.fixture
def put(store: ObjectStore, tmp_path: Path):
    def put(key: str, text: str) -> None:
        local = tmp_path / "upload"
        local.write_text(text, encoding="utf-8")
        store.put_file(local, key)

    return put


def contents(store: ObjectStore, prefix: str, tmp_path: Path) -> dict[str, str]:
    """Relative key -> text of every object under ``prefix``."""
    found = {}
    for info in store.list_prefix(prefix):
        local = tmp_path / "download"
        store.get_file(info.key, local)
        found[info.key[len(prefix) :]] = local.read_text(encoding="utf-8")
    return found


def test_promote_copies_every_object_and_deletes_extras_in_one_transaction(store, checkpoint, put, tmp_path):
    put("dev/landing/a.parquet", "new a")
    put("dev/landing/wdi/b.parquet", "b")
    put("prod/landing/a.parquet", "old a")
    put("prod/landing/gone.parquet", "gone")

    result = promote_prefix(store, checkpoint, SETTINGS, "dev/landing", "prod/landing")

    assert contents(store, "prod/landing/", tmp_path) == {"a.parquet": "new a", "wdi/b.parquet": "b"}
    assert (result.copied, result.deleted) == (["prod/landing/a.parquet", "prod/landing/wdi/b.parquet"], ["prod/landing/gone.parquet"])
    journal = checkpoint.list(scope=CheckpointScope.OPERATION)
    assert [(row["status"], row["metadata"]["operation"]) for row in journal] == [("completed", "promote")]
    assert journal[0]["key"].endswith(result.transaction_id)


def test_promoting_again_with_nothing_changed_copies_nothing(store, checkpoint, put):
    put("dev/landing/a.parquet", "a")
    put("dev/landing/b.parquet", "b")
    promote_prefix(store, checkpoint, SETTINGS, "dev/landing", "prod/landing")

    again = promote_prefix(store, checkpoint, SETTINGS, "dev/landing", "prod/landing")

    assert (again.copied, again.deleted) == ([], [])
    assert again.unchanged == ["prod/landing/a.parquet", "prod/landing/b.parquet"]


@pytest.mark.parametrize(("source", "target"), [("prod", "prod/landing"), ("dev/landing/", "dev/landing")])
def test_overlapping_prefixes_are_refused_before_anything_changes(store, checkpoint, put, source, target):
    put("prod/landing/a.parquet", "a")
    put("dev/landing/b.parquet", "b")

    with pytest.raises(PromotionRefusedError, match="overlap"):
        promote_prefix(store, checkpoint, SETTINGS, source, target)

    assert sorted(info.key for info in store.list_prefix("")) == ["dev/landing/b.parquet", "prod/landing/a.parquet"]
    assert checkpoint.list(scope=CheckpointScope.OPERATION) == []


def test_an_empty_source_is_refused_and_leaves_the_target_as_it_was(store, checkpoint, put, tmp_path):
    put("prod/landing/a.parquet", "a")

    with pytest.raises(EmptySourceError, match="empty"):
        promote_prefix(store, checkpoint, SETTINGS, "dev/landing", "prod/landing")

    assert contents(store, "prod/landing/", tmp_path) == {"a.parquet": "a"}


def test_an_empty_source_empties_the_target_when_allowed(store, checkpoint, put, tmp_path):
    put("prod/landing/a.parquet", "a")

    result = promote_prefix(store, checkpoint, SETTINGS, "dev/landing", "prod/landing", allow_empty=True)

    assert result.deleted == ["prod/landing/a.parquet"]
    assert contents(store, "prod/landing/", tmp_path) == {}
