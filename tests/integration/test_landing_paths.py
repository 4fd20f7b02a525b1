"""``@osaa_landing`` resolves an environment's landing objects in the layout the ingest writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmesh.utils.errors import ConfigError

from sqlmesh_osaa.exceptions import ConfigurationError
from sqlmesh_osaa.integration.landing import landing_key, landing_uri
from sqlmesh_osaa.settings import OsaaSettings, load_settings


def settings(**environments: object) -> OsaaSettings:
    return load_settings({"osaa": {"environments": environments}}, environ={})


def test_prod_and_dev_environments_get_their_prefix_by_default() -> None:
    assert landing_key(settings(), "prod", "sdg", "SDG_DATA_NATIONAL") == "prod/landing/sdg/SDG_DATA_NATIONAL.parquet"
    assert (
        landing_key(settings(), "alice", "sdg", "SDG_DATA_NATIONAL")
        == "dev/alice/landing/sdg/SDG_DATA_NATIONAL.parquet"
    )


def test_named_prefixes_express_the_reference_layout() -> None:
    reference = settings(prefixes={"dev": "dev"})

    assert landing_key(reference, "dev", "sdg", "SDG_DATA_NATIONAL") == "dev/landing/sdg/SDG_DATA_NATIONAL.parquet"
    assert landing_key(reference, "alice", "sdg", "x") == "dev/alice/landing/sdg/x.parquet"


def test_without_a_name_every_landing_file_of_the_source_is_meant() -> None:
    assert landing_key(settings(), "prod", "wdi") == "prod/landing/wdi/*.parquet"


def test_a_local_store_resolves_to_a_path_and_s3_to_a_uri(tmp_path: Path) -> None:
    local = load_settings({"osaa": {"storage": {"root": str(tmp_path)}}}, environ={})
    on_s3 = load_settings(
        {"osaa": {"storage": {"backend": "s3", "bucket": "un-osaa", "endpoint_url": "http://127.0.0.1:1"}}}, environ={}
    )

    assert landing_uri(local, "prod", "sdg", "A") == str(tmp_path / "osaa" / "prod/landing/sdg/A.parquet")
    assert landing_uri(on_s3, "prod", "sdg", "A") == "s3://un-osaa/prod/landing/sdg/A.parquet"


@pytest.mark.parametrize("bad", ["../etc", "a/b", ""])
def test_a_name_that_is_not_plain_is_refused_with_an_example(bad: str) -> None:
    with pytest.raises(ConfigError, match="plain name"):
        landing_key(settings(), "prod", "sdg", bad)


@pytest.mark.parametrize(
    ("prefixes", "problem"),
    [
        ({"prod": "live"}, "prod_prefix"),
        ({"dev": "prod"}, "share prod's prefix"),
        ({"a": "x", "b": "x"}, "share a prefix"),
    ],
)
def test_named_prefixes_never_let_two_environments_share_a_prefix(prefixes: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        settings(prefixes=prefixes)
