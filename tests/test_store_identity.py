"""A store's identity is known from the settings alone, as the store itself records it in FILE checkpoints.

The skip index of an unchanged re-run (docs/decisions.md) names the store by these settings
without creating one; a different string would only disable the index, a shared one for two
stores would let it answer for the wrong key space.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlmesh_osaa.storage import LocalStore, S3Store
from sqlmesh_osaa.store_identity import configured_identity


def test_a_local_store_is_named_by_its_resolved_root_and_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert configured_identity("local", Path("store"), "osaa", None) == LocalStore(Path("store"), "osaa").identity
    assert configured_identity("local", Path("store"), "other", None) != LocalStore(Path("store"), "osaa").identity


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:5000", "http://127.0.0.1:5000/", "https://s3.example.org/base/"])
def test_an_s3_store_with_an_endpoint_is_named_as_its_client_names_it(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    identity = configured_identity("s3", Path("."), "osaa-bench", endpoint)
    assert identity == S3Store("osaa-bench", endpoint_url=endpoint).identity


def test_an_s3_store_without_an_endpoint_has_no_configured_identity() -> None:
    assert configured_identity("s3", Path("."), "osaa-bench", None) is None
