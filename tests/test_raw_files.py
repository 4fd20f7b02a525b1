"""Discovery of raw files: what is found, in which order, and what is refused and why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sqlmesh_osaa.exceptions import ErrorCategory, IngestError
from sqlmesh_osaa.raw_files import Baseline, RawFile, discover_raw_files, landing_key, resolve_inside


def write(root: Path, relative: str, content: str = "a,b\n1,2\n") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def relatives(discovery) -> list[str]:
    return [raw.relative for raw in discovery.files]


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    root.mkdir()
    return root


def test_files_are_sorted_by_relative_path_whatever_the_creation_order(raw: Path) -> None:
    for relative in ["wdi/z.csv", "sdg/b.csv", "wdi/a.csv", "sdg/a/deep.csv", "edu/x.csv"]:
        write(raw, relative)

    assert relatives(discover_raw_files(raw)) == [
        "edu/x.csv",
        "sdg/a/deep.csv",
        "sdg/b.csv",
        "wdi/a.csv",
        "wdi/z.csv",
    ]


def test_a_raw_file_carries_source_name_and_the_stat_values_of_the_file(raw: Path) -> None:
    path = write(raw, "wdi/WDICSV.csv", "a\n1\n")

    (found,) = discover_raw_files(raw).files

    info = path.stat()
    assert found.path == path.resolve()
    assert found == RawFile(
        real_path=str(path.resolve()),
        relative="wdi/WDICSV.csv",
        source="wdi",
        name="WDICSV",
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
    )


def test_files_below_a_source_keep_their_subdirectories_in_the_name(raw: Path) -> None:
    write(raw, "sdg/2023/goal.1.csv")

    (found,) = discover_raw_files(raw).files

    assert (found.source, found.name) == ("sdg", "2023/goal.1")


def test_a_given_source_names_every_file_of_a_root_that_is_one_source(raw: Path) -> None:
    write(raw, "WDICSV.csv")
    write(raw, "extra/notes.csv")

    discovery = discover_raw_files(raw, source="wdi")

    assert [(raw_file.source, raw_file.name) for raw_file in discovery.files] == [
        ("wdi", "WDICSV"),
        ("wdi", "extra/notes"),
    ]


def test_hidden_files_and_hidden_directories_are_skipped(raw: Path) -> None:
    write(raw, "wdi/.hidden.csv")
    write(raw, "wdi/.cache/inside.csv")
    write(raw, ".git/objects.csv")
    write(raw, "wdi/data.csv")

    discovery = discover_raw_files(raw)

    assert relatives(discovery) == ["wdi/data.csv"]
    assert discovery.refused == ()


@pytest.mark.parametrize(
    "temporary",
    ["data.csv~", "data.csv.tmp", "data.csv.part", "data.csv.crdownload", "~$data.csv", "DATA.CSV.TMP"],
)
@pytest.mark.parametrize("pattern", ["**/*", "**/*.csv", "wdi/**", "wdi/*a*"])
def test_temporary_files_are_skipped(raw: Path, temporary: str, pattern: str) -> None:
    write(raw, f"wdi/{temporary}")
    write(raw, "wdi/data.csv")

    assert relatives(discover_raw_files(raw, pattern=pattern)) == ["wdi/data.csv"]


def test_the_pattern_selects_files_by_their_relative_path(raw: Path) -> None:
    write(raw, "wdi/a.csv")
    write(raw, "wdi/a.txt")
    write(raw, "sdg/b.csv")
    write(raw, "sdg/deeper/c.csv")

    assert relatives(discover_raw_files(raw, pattern="wdi/*.csv")) == ["wdi/a.csv"]
    assert relatives(discover_raw_files(raw, pattern="sdg/*")) == ["sdg/b.csv"]
    assert relatives(discover_raw_files(raw, pattern="sdg/**/*.csv")) == ["sdg/b.csv", "sdg/deeper/c.csv"]
    assert relatives(discover_raw_files(raw, pattern="sdg/**")) == ["sdg/b.csv", "sdg/deeper/c.csv"]
    assert relatives(discover_raw_files(raw, pattern="*/?.c?v")) == ["sdg/b.csv", "wdi/a.csv"]


@pytest.mark.parametrize(
    "name",
    ["it's.csv", 'say "hi".csv', "with space.csv", "ünïcødé 数据.csv", "-leading-dash.csv", "[1] a*b?.csv"],
)
def test_awkward_but_valid_names_are_discovered(raw: Path, name: str) -> None:
    path = write(raw, f"wdi/{name}")

    (found,) = discover_raw_files(raw).files

    assert found.path == path.resolve()
    assert found.name == name[: -len(".csv")]


def test_a_name_with_a_newline_is_refused_because_object_keys_cannot_carry_it(raw: Path) -> None:
    write(raw, "wdi/two\nlines.csv")
    write(raw, "wdi/good.csv")

    discovery = discover_raw_files(raw)

    assert relatives(discovery) == ["wdi/good.csv"]
    (refused,) = discovery.refused
    assert refused.relative == "wdi/two\nlines.csv"
    assert "control characters" in str(refused.error)
    assert refused.error.category is ErrorCategory.PERMANENT


def test_a_file_directly_in_the_root_is_refused_for_lack_of_a_source(raw: Path) -> None:
    write(raw, "orphan.csv")

    discovery = discover_raw_files(raw)

    assert discovery.files == ()
    (refused,) = discovery.refused
    assert refused.relative == "orphan.csv"
    assert "no source" in str(refused.error)


def test_a_symlink_leading_out_of_the_root_is_refused_naming_path_and_root(raw: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "elsewhere", "secret.csv")
    (raw / "wdi").mkdir()
    (raw / "wdi" / "linked.csv").symlink_to(outside)
    write(raw, "wdi/good.csv")

    discovery = discover_raw_files(raw)

    assert relatives(discovery) == ["wdi/good.csv"]
    (refused,) = discovery.refused
    assert refused.relative == "wdi/linked.csv"
    message = str(refused.error)
    assert "outside the raw root" in message
    assert str(raw / "wdi" / "linked.csv") in message
    assert str(raw.resolve()) in message
    assert refused.error.category is ErrorCategory.PERMANENT


def test_a_symlink_out_of_the_root_that_the_pattern_skips_is_ignored(raw: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "elsewhere", "notes.txt")
    write(raw, "wdi/data.csv")
    (raw / "wdi" / "notes.txt").symlink_to(outside)

    discovery = discover_raw_files(raw)

    assert relatives(discovery) == ["wdi/data.csv"]
    assert discovery.refused == ()


def test_a_symlinked_directory_leading_out_of_the_root_is_refused_not_walked(raw: Path, tmp_path: Path) -> None:
    write(tmp_path / "elsewhere", "wdi/secret.csv")
    (raw / "wdi").symlink_to(tmp_path / "elsewhere" / "wdi", target_is_directory=True)

    discovery = discover_raw_files(raw)

    assert discovery.files == ()
    assert [refused.relative for refused in discovery.refused] == ["wdi"]


def test_symlinks_that_stay_inside_the_root_are_followed(raw: Path) -> None:
    target = write(raw, "store/v2/data.csv")
    (raw / "wdi").mkdir()
    (raw / "wdi" / "current.csv").symlink_to(target)
    (raw / "sdg").symlink_to(raw / "store" / "v2", target_is_directory=True)

    discovery = discover_raw_files(raw)

    assert relatives(discovery) == ["sdg/data.csv", "store/v2/data.csv", "wdi/current.csv"]
    assert {raw_file.path for raw_file in discovery.files} == {target.resolve()}
    assert discovery.refused == ()


def test_a_symlink_loop_is_not_followed_forever(raw: Path) -> None:
    write(raw, "wdi/data.csv")
    (raw / "wdi" / "again").symlink_to(raw / "wdi", target_is_directory=True)

    assert relatives(discover_raw_files(raw)) == ["wdi/data.csv"]


def test_a_dangling_symlink_is_refused_with_its_path(raw: Path) -> None:
    (raw / "wdi").mkdir()
    (raw / "wdi" / "gone.csv").symlink_to(raw / "wdi" / "missing.csv")

    discovery = discover_raw_files(raw)

    (refused,) = discovery.refused
    assert refused.relative == "wdi/gone.csv"
    assert "cannot be read" in str(refused.error)


def test_files_that_would_land_under_the_same_name_are_all_refused(raw: Path) -> None:
    write(raw, "wdi/data.csv")
    write(raw, "wdi/data.txt")
    write(raw, "wdi/other.csv")

    discovery = discover_raw_files(raw, pattern="**/*")

    assert relatives(discovery) == ["wdi/other.csv"]
    assert [refused.relative for refused in discovery.refused] == ["wdi/data.csv", "wdi/data.txt"]
    assert "same name" in str(discovery.refused[0].error)


def test_a_missing_raw_root_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-raw"

    with pytest.raises(IngestError, match="does not exist") as info:
        discover_raw_files(missing)

    assert str(missing) in str(info.value)
    assert info.value.category is ErrorCategory.PERMANENT


def test_a_raw_root_that_is_a_file_raises(tmp_path: Path) -> None:
    not_a_dir = write(tmp_path, "raw.csv")

    with pytest.raises(IngestError, match="is not a directory"):
        discover_raw_files(not_a_dir)


@pytest.mark.parametrize("pattern", ["../*.csv", "/etc/*.csv", "wdi/../../*.csv", ""])
def test_a_pattern_reaching_out_of_the_root_raises(raw: Path, pattern: str) -> None:
    with pytest.raises(IngestError, match="relative glob") as info:
        discover_raw_files(raw, pattern=pattern)

    assert info.value.category is ErrorCategory.PERMANENT


@pytest.mark.parametrize("source", ["", "..", "a/b", "x\ny"])
def test_an_unusable_source_name_raises(raw: Path, source: str) -> None:
    with pytest.raises(IngestError, match="Source name"):
        discover_raw_files(raw, source=source)


def test_a_raw_root_reached_through_a_symlink_is_walked_as_its_target(raw: Path, tmp_path: Path) -> None:
    write(raw, "wdi/data.csv")
    alias = tmp_path / "alias"
    alias.symlink_to(raw, target_is_directory=True)

    discovery = discover_raw_files(alias)

    assert discovery.root == raw.resolve()
    assert relatives(discovery) == ["wdi/data.csv"]


def test_landing_key_follows_the_osaa_layout(raw: Path) -> None:
    write(raw, "wdi/WDICSV.csv")
    write(raw, "sdg/2023/goal 1.csv")
    wdi_file, sdg_file = sorted(discover_raw_files(raw).files, key=lambda raw_file: raw_file.source, reverse=True)

    assert landing_key("dev/alice", wdi_file) == "dev/alice/landing/wdi/WDICSV.parquet"
    assert landing_key("prod/", sdg_file) == "prod/landing/sdg/2023/goal 1.parquet"
    assert landing_key("", wdi_file) == "landing/wdi/WDICSV.parquet"


def fingerprint(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def test_files_matching_the_baseline_are_listed_as_unchanged_by_landing_key(raw: Path) -> None:
    same = write(raw, "wdi/same.csv")
    changed = write(raw, "sdg/2023/changed.csv")
    write(raw, "sdg/new.csv")
    baseline = Baseline(
        "prod",
        {
            "prod/landing/wdi/same.parquet": fingerprint(same),
            "prod/landing/sdg/2023/changed.parquet": (fingerprint(changed)[0] + 1, fingerprint(changed)[1]),
        },
    )

    discovery = discover_raw_files(raw, baseline=baseline)

    assert discovery.unchanged == ("prod/landing/wdi/same.parquet",)
    assert relatives(discovery) == ["sdg/2023/changed.csv", "sdg/new.csv"]


def test_a_baseline_of_another_environment_matches_nothing(raw: Path) -> None:
    same = write(raw, "wdi/same.csv")

    discovery = discover_raw_files(raw, baseline=Baseline("dev", {"prod/landing/wdi/same.parquet": fingerprint(same)}))

    assert discovery.unchanged == ()
    assert relatives(discovery) == ["wdi/same.csv"]


def test_a_given_source_is_part_of_the_unchanged_landing_key(raw: Path) -> None:
    same = write(raw, "deep/same.csv")

    discovery = discover_raw_files(
        raw, source="wdi", baseline=Baseline("prod", {"prod/landing/wdi/deep/same.parquet": fingerprint(same)})
    )

    assert discovery.unchanged == ("prod/landing/wdi/deep/same.parquet",)
    assert discovery.files == ()


def test_files_clashing_on_a_landing_name_are_refused_even_when_one_matches_the_baseline(raw: Path) -> None:
    same = write(raw, "wdi/data.csv")
    write(raw, "wdi/data.txt")

    discovery = discover_raw_files(
        raw, pattern="**/*", baseline=Baseline("prod", {"prod/landing/wdi/data.parquet": fingerprint(same)})
    )

    assert discovery.unchanged == ()
    assert [refused.relative for refused in discovery.refused] == ["wdi/data.csv", "wdi/data.txt"]


def test_resolve_inside_accepts_a_path_inside_the_root(raw: Path) -> None:
    inside = write(raw, "wdi/data.csv")

    assert resolve_inside(raw, "wdi/../wdi/data.csv") == inside.resolve()


def test_resolve_inside_refuses_dot_dot_leading_out_of_the_root(raw: Path) -> None:
    with pytest.raises(IngestError, match="outside the raw root") as info:
        resolve_inside(raw, "wdi/../../etc/passwd")

    assert str(raw.resolve()) in str(info.value)
    assert info.value.category is ErrorCategory.PERMANENT


def test_resolve_inside_refuses_an_absolute_path_elsewhere(raw: Path) -> None:
    with pytest.raises(IngestError, match="outside the raw root"):
        resolve_inside(raw, "/etc/passwd")


def test_an_unreadable_directory_is_refused_and_the_rest_still_discovered(raw: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any directory")
    write(raw, "locked/data.csv")
    write(raw, "wdi/data.csv")
    (raw / "locked").chmod(0)
    try:
        discovery = discover_raw_files(raw)
    finally:
        (raw / "locked").chmod(0o755)

    assert relatives(discovery) == ["wdi/data.csv"]
    assert [refused.relative for refused in discovery.refused] == ["locked"]
