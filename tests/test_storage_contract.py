"""One storage contract, two backends: a local directory and an S3 bucket behave the same.

The parametrized ``store`` fixture runs every contract test against LocalStore and against
S3Store on the moto server. Backend-specific guarantees (atomic renames on disk, Content-MD5
and server-side copies on S3) follow, each asserted on what can be observed: files on disk,
objects in the bucket, requests counted at the fault proxy.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import pytest
from support import processes
from support.faultproxy import FaultProxy
from support.s3server import FAKE_ACCESS_KEY, FAKE_SECRET_KEY

from sqlmesh_osaa.exceptions import (
    ErrorCategory,
    S3ConfigurationError,
    S3OperationError,
)
from sqlmesh_osaa.settings import StorageSettings
from sqlmesh_osaa.storage import (
    MD5_METADATA_KEY,
    TEMP_MARKER,
    LocalStore,
    ObjectInfo,
    ObjectStore,
    S3Store,
    crc32_combine,
    encode_metadata_value,
    make_store,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 1024**2


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def read_object(store: ObjectStore, key: str, directory: Path) -> bytes:
    target = directory / f"download-{md5_of(key.encode())}"
    store.get_file(key, target)
    return target.read_bytes()


def populate(store: ObjectStore, keys: Iterable[str], directory: Path) -> None:
    """Many small objects, uploaded concurrently to keep the suite fast."""
    source = write(directory, "tiny", b"x")
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda key: store.put_file(source, key), keys))


def listed_keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return [info.key for info in store.list_prefix(prefix)]


# --- the contract -------------------------------------------------------------------------


def test_head_reports_size_md5_and_metadata_of_a_put(store: ObjectStore, tmp_path: Path) -> None:
    source = write(tmp_path, "data.csv", b"a,b\n1,2\n")

    store.put_file(source, "raw/data.csv", metadata={"source": "unit-test"})
    info = store.head("raw/data.csv")

    assert info is not None
    assert (info.key, info.size, info.md5) == ("raw/data.csv", 8, md5_of(b"a,b\n1,2\n"))
    assert info.metadata == {"source": "unit-test", MD5_METADATA_KEY: md5_of(b"a,b\n1,2\n")}
    assert info.last_modified is not None


def test_objects_written_with_deferred_durability_are_complete_at_once_and_copy_verified(
    store: ObjectStore, tmp_path: Path
) -> None:
    source = write(tmp_path, "data.csv", b"a,b\n1,2\n")

    with store.deferred_durability():
        store.put_file(source, "staged/data.csv")
        store.copy("staged/data.csv", "prod/data.csv")
        seen = store.head("prod/data.csv")
    store.sync()

    assert seen is not None and seen.md5 == md5_of(b"a,b\n1,2\n")
    assert store.get_bytes("prod/data.csv") == (b"a,b\n1,2\n", md5_of(b"a,b\n1,2\n"))


def test_put_returns_what_head_then_reports(store: ObjectStore, tmp_path: Path) -> None:
    put = store.put_file(write(tmp_path, "f", b"content"), "k", metadata={"run": "1"})

    head = store.head("k")

    assert head is not None
    assert (put.key, put.size, put.md5, dict(put.metadata)) == (head.key, head.size, head.md5, dict(head.metadata))


def test_get_file_returns_the_content_that_was_put(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    store.put_file(write(tmp_path, "blob", data), "bin/blob")

    assert read_object(store, "bin/blob", tmp_path) == data


def test_a_given_md5_is_stored_as_the_objects_md5(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file(write(tmp_path, "f", b"known"), "k", md5=md5_of(b"known").upper())

    info = store.head("k")

    assert info is not None and info.md5 == md5_of(b"known")


def test_head_of_a_missing_key_is_none(store: ObjectStore) -> None:
    assert store.head("no/such/key") is None
    assert store.exists("no/such/key") is False


def test_exists_after_put(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file(write(tmp_path, "f", b"x"), "here")

    assert store.exists("here") is True


def test_put_over_an_existing_object_replaces_content_and_md5(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file(write(tmp_path, "v1", b"version one"), "k", metadata={"v": "1"})
    store.put_file(write(tmp_path, "v2", b"v2"), "k")

    info = store.head("k")

    assert info is not None
    assert (info.size, info.md5, dict(info.metadata)) == (2, md5_of(b"v2"), {MD5_METADATA_KEY: md5_of(b"v2")})
    assert read_object(store, "k", tmp_path) == b"v2"


def test_get_file_of_a_missing_key_raises_a_permanent_error_and_writes_nothing(
    store: ObjectStore, tmp_path: Path
) -> None:
    target = tmp_path / "out" / "never.bin"

    with pytest.raises(S3OperationError) as excinfo:
        store.get_file("missing/key.bin", target)

    assert excinfo.value.category is ErrorCategory.PERMANENT
    assert "missing/key.bin" in str(excinfo.value)
    assert not target.exists()
    assert not list(tmp_path.rglob(f"{TEMP_MARKER}*"))


def test_get_file_replaces_an_existing_local_file_without_leaving_temp_files(
    store: ObjectStore, tmp_path: Path
) -> None:
    store.put_file(write(tmp_path, "src", b"new content"), "k")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    target = write(downloads, "target.bin", b"stale content that is longer")

    store.get_file("k", target)

    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in downloads.iterdir()) == ["target.bin"]


def test_copy_keeps_content_and_metadata(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    store.put_file(write(tmp_path, "src", data), "staging/t1/file.parquet", metadata={"txn": "t1"})

    copied = store.copy("staging/t1/file.parquet", "prod/file.parquet")

    assert (copied.key, copied.size, copied.md5) == ("prod/file.parquet", len(data), md5_of(data))
    assert copied.metadata == {"txn": "t1", MD5_METADATA_KEY: md5_of(data)}
    assert store.head("prod/file.parquet") == copied
    assert read_object(store, "prod/file.parquet", tmp_path) == data


def test_copy_onto_itself_changes_nothing(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file(write(tmp_path, "f", b"same"), "k", metadata={"a": "b"})
    before = store.head("k")

    assert store.copy("k", "k") == before
    assert store.head("k") == before


def test_copy_over_an_existing_object_replaces_it(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file(write(tmp_path, "old", b"old"), "prod/x")
    store.put_file(write(tmp_path, "new", b"brand new"), "staging/x")

    store.copy("staging/x", "prod/x")

    assert read_object(store, "prod/x", tmp_path) == b"brand new"


def test_copy_of_a_missing_source_raises_a_permanent_error_naming_the_key(store: ObjectStore) -> None:
    with pytest.raises(S3OperationError) as excinfo:
        store.copy("staging/gone.parquet", "prod/gone.parquet")

    assert excinfo.value.category is ErrorCategory.PERMANENT
    assert "staging/gone.parquet" in str(excinfo.value)
    assert store.head("prod/gone.parquet") is None


def test_delete_many_of_1500_keys_deletes_in_every_s3_batch(store: ObjectStore, tmp_path: Path) -> None:
    keys = [f"batch/{i:04d}" for i in range(1500)]
    # Objects at both batch boundaries (S3 deletes 1000 keys per request) and spread over both
    # batches; the other keys do not exist, which must not matter either.
    existing = sorted({keys[i] for i in (0, 998, 999, 1000, 1001, 1499, *range(0, 1500, 25))})
    populate(store, existing, tmp_path)

    store.delete_many(keys)

    assert listed_keys(store, "batch/") == []


def test_delete_many_of_missing_keys_is_not_an_error(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file(write(tmp_path, "f", b"x"), "keep")
    store.put_file(write(tmp_path, "g", b"y"), "drop")

    store.delete_many(["drop", "never/existed", "drop"])
    store.delete_many([])

    assert listed_keys(store) == ["keep"]


def test_list_prefix_returns_only_keys_under_the_prefix_in_key_order(store: ObjectStore, tmp_path: Path) -> None:
    populate(store, ["data/b", "data/a/2", "data/a/10", "data-x", "date", "other/data/c"], tmp_path)

    assert listed_keys(store, "data/") == ["data/a/10", "data/a/2", "data/b"]
    assert listed_keys(store, "dat") == ["data-x", "data/a/10", "data/a/2", "data/b", "date"]
    assert listed_keys(store, "data/a/1") == ["data/a/10"]
    assert listed_keys(store, "nothing/") == []


def test_list_prefix_reports_size_and_md5_of_each_object(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file(write(tmp_path, "f", b"12345"), "p/one")

    [info] = store.list_prefix("p/")

    assert (info.key, info.size, info.md5) == ("p/one", 5, md5_of(b"12345"))


def test_list_prefix_returns_every_object_beyond_one_page(store: ObjectStore, tmp_path: Path) -> None:
    keys = [f"many/{i:04d}" for i in range(1001)]
    populate(store, keys, tmp_path)

    assert listed_keys(store, "many/") == keys


@pytest.mark.parametrize(
    "key",
    ["dir with spaces/naïve café.parquet", "quotes/it's \"quoted\".csv", "unicode/日本語/データ #1 & 2%.csv"],
)
def test_keys_with_unicode_spaces_and_quotes_work_for_every_operation(
    store: ObjectStore, tmp_path: Path, key: str
) -> None:
    store.put_file(write(tmp_path, "f", b"odd key"), key, metadata={"kind": "odd"})
    copy_key = f"copy/{key}"

    store.copy(key, copy_key)

    assert read_object(store, copy_key, tmp_path) == b"odd key"
    assert store.head(copy_key).metadata["kind"] == "odd"  # type: ignore[union-attr]
    assert listed_keys(store) == sorted([key, copy_key])
    store.delete_many([key, copy_key])
    assert listed_keys(store) == []


@pytest.mark.parametrize("key", ["", "/absolute", "a/../b", "a//b", "a/./b", "trailing/", f"a/{TEMP_MARKER}x"])
def test_invalid_keys_are_rejected_as_permanent_errors_naming_the_key(
    store: ObjectStore, tmp_path: Path, key: str
) -> None:
    with pytest.raises(S3OperationError) as excinfo:
        store.put_file(write(tmp_path, "f", b"x"), key)

    assert excinfo.value.category is ErrorCategory.PERMANENT
    assert repr(key) in str(excinfo.value)
    assert listed_keys(store) == []


def crc32_of(data: bytes) -> str:
    return f"CRC32:{base64.b64encode(zlib.crc32(data).to_bytes(4, 'big')).decode()}"


def test_put_records_a_checksum_computed_from_the_bytes(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(70_000)

    put = store.put_file(write(tmp_path, "f", data), "k")

    assert put.checksum == crc32_of(data)
    assert store.head("k").checksum == crc32_of(data)  # type: ignore[union-attr]


def test_a_copy_carries_the_checksum_of_the_bytes_it_copied(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(70_000)
    store.put_file(write(tmp_path, "f", data), "staging/k")

    copied = store.copy("staging/k", "prod/k", store.head("staging/k"))

    assert copied.checksum == crc32_of(data)
    assert store.head("prod/k").checksum == crc32_of(data)  # type: ignore[union-attr]


def record_wrong_checksum(store: ObjectStore, key: str, actual: bytes, recorded: bytes, tmp_path: Path) -> None:
    """Leave ``key`` holding ``actual`` while its store's record says ``recorded`` (same size):
    what a silent corruption or a write racing the recording looks like to a copy."""
    assert len(actual) == len(recorded)
    if isinstance(store, LocalStore):
        store.put_file(write(tmp_path, "recorded", recorded), key)
        path = Path(store.uri(key))
        before = path.stat()
        with open(path, "r+b") as handle:  # same inode, size and mtime: the sidecar still matches
            handle.write(actual)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        assert isinstance(store, S3Store)
        store._client.put_object(  # moto keeps a checksum it is given without checking it
            Bucket=store.bucket,
            Key=key,
            Body=actual,
            ChecksumAlgorithm="CRC32",
            ChecksumCRC32=crc32_of(recorded).partition(":")[2],
            Metadata={MD5_METADATA_KEY: md5_of(recorded)},
        )


def test_a_copy_whose_bytes_differ_from_the_sources_recorded_checksum_is_refused_and_removed(
    store: ObjectStore, tmp_path: Path
) -> None:
    record_wrong_checksum(store, "staging/t1/x.parquet", b"B" * 1000, b"A" * 1000, tmp_path)

    with pytest.raises(S3OperationError) as excinfo:
        store.copy("staging/t1/x.parquet", "prod/x.parquet")

    assert excinfo.value.category is ErrorCategory.TRANSIENT
    assert "staging/t1/x.parquet" in str(excinfo.value) and "does not match" in str(excinfo.value)
    assert store.head("prod/x.parquet") is None


def test_a_copy_refuses_a_source_that_is_not_what_the_caller_expects(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file(write(tmp_path, "f", b"B" * 1000), "staging/t1/x.parquet")
    store.put_file(write(tmp_path, "old", b"old"), "prod/x.parquet")
    staged = store.head("staging/t1/x.parquet")
    assert staged is not None
    manifest_says = replace(staged, md5=md5_of(b"A" * 1000), checksum=crc32_of(b"A" * 1000))

    with pytest.raises(S3OperationError, match="does not match"):
        store.copy("staging/t1/x.parquet", "prod/x.parquet", manifest_says)

    assert store.head("prod/x.parquet") is None or read_object(store, "prod/x.parquet", tmp_path) == b"old"


@pytest.mark.parametrize(
    "value",
    ["wdi/données été.csv", "日本語/データ #1.csv", "=?UTF-8?B?bm90IGVuY29kZWQ=?=", " padded ", "line\nbreak", ""],
)
def test_metadata_values_in_any_utf8_round_trip(store: ObjectStore, tmp_path: Path, value: str) -> None:
    store.put_file(write(tmp_path, "f", b"x"), "k", metadata={"source-file": value})
    store.copy("k", "copy/k")

    assert store.head("k").metadata["source-file"] == value  # type: ignore[union-attr]
    assert store.head("copy/k").metadata["source-file"] == value  # type: ignore[union-attr]


def test_a_metadata_name_that_is_not_an_http_token_is_refused_naming_it(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(S3OperationError) as excinfo:
        store.put_file(write(tmp_path, "f", b"x"), "k", metadata={"quelle-café": "x"})

    assert excinfo.value.category is ErrorCategory.PERMANENT
    assert "quelle-café" in str(excinfo.value)
    assert store.head("k") is None


def test_remove_incomplete_with_nothing_left_behind_removes_nothing(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file(write(tmp_path, "f", b"x"), "staging/t1/a")

    assert store.remove_incomplete("staging/") == 0
    assert listed_keys(store) == ["staging/t1/a"]


# --- LocalStore: atomic writes on disk ----------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "storage", "bkt")


def test_a_local_copy_shares_the_source_file_and_outlives_its_deletion(local: LocalStore, tmp_path: Path) -> None:
    local.put_file(write(tmp_path, "f", b"version bytes"), "_osaa/versions/t1/prod/x.parquet", {"source-file": "x.csv"})

    copied = local.copy("_osaa/versions/t1/prod/x.parquet", "prod/x.parquet")
    shared = os.stat(local.uri("prod/x.parquet")).st_ino == os.stat(local.uri("_osaa/versions/t1/prod/x.parquet")).st_ino
    local.delete_many(["_osaa/versions/t1/prod/x.parquet"])

    assert shared
    assert local.head("prod/x.parquet") == replace(copied, last_modified=local.head("prod/x.parquet").last_modified)  # type: ignore[union-attr]
    assert copied.metadata["source-file"] == "x.csv" and copied.md5 == md5_of(b"version bytes")
    assert read_object(local, "prod/x.parquet", tmp_path) == b"version bytes"
    assert not list((local.root / "bkt" / "prod").glob(f"{TEMP_MARKER}*"))


def test_a_local_copy_of_an_object_whose_record_is_lost_writes_new_bytes_and_records_them(
    local: LocalStore, tmp_path: Path
) -> None:
    local.put_file(write(tmp_path, "f", b"payload"), "staging/x")
    local._sidecar_path("staging/x").unlink()

    copied = local.copy("staging/x", "prod/x")

    assert os.stat(local.uri("prod/x")).st_ino != os.stat(local.uri("staging/x")).st_ino
    assert copied.md5 == md5_of(b"payload") and copied.checksum == crc32_of(b"payload")
    assert local.head("prod/x").md5 == md5_of(b"payload")  # type: ignore[union-attr]


def test_a_local_put_with_move_renames_a_scratch_file_into_place(local: LocalStore, tmp_path: Path) -> None:
    scratch_file = write(local.scratch_directory(), "converted.parquet", b"parquet bytes")
    inode = scratch_file.stat().st_ino

    put = local.put_file(scratch_file, "_osaa/versions/t1/x.parquet", {"source-file": "x.csv"}, md5_of(b"parquet bytes"), move=True)

    assert not scratch_file.exists()
    assert os.stat(local.uri("_osaa/versions/t1/x.parquet")).st_ino == inode
    assert local.head("_osaa/versions/t1/x.parquet") == replace(put, last_modified=local.head("_osaa/versions/t1/x.parquet").last_modified)  # type: ignore[union-attr]
    assert (put.md5, put.checksum, put.metadata["source-file"]) == (md5_of(b"parquet bytes"), crc32_of(b"parquet bytes"), "x.csv")


def test_a_local_put_with_move_and_a_wrong_md5_moves_nothing(local: LocalStore, tmp_path: Path) -> None:
    scratch_file = write(local.scratch_directory(), "converted.parquet", b"parquet bytes")

    with pytest.raises(S3OperationError, match="BadDigest"):
        local.put_file(scratch_file, "_osaa/versions/t1/x.parquet", md5=md5_of(b"other"), move=True)

    assert scratch_file.read_bytes() == b"parquet bytes"
    assert local.head("_osaa/versions/t1/x.parquet") is None


def test_put_with_move_stores_the_bytes_on_every_store(store: ObjectStore, tmp_path: Path) -> None:
    scratch = store.scratch_directory() or tmp_path
    store.put_file(write(scratch, "f", b"moved or uploaded"), "k", move=True)

    assert read_object(store, "k", tmp_path) == b"moved or uploaded"
    assert store.head("k").md5 == md5_of(b"moved or uploaded")  # type: ignore[union-attr]


KILLED_PUT = """
import sys
from sqlmesh_osaa.storage import LocalStore
LocalStore(sys.argv[1], "bkt").put_file(sys.argv[2], "data/file.bin")
"""


def kill_during_a_put(local: LocalStore, tmp_path: Path) -> None:
    """SIGKILL a process while it writes data/file.bin: its partial temp file stays behind."""
    fifo = tmp_path / "source.fifo"
    os.mkfifo(fifo)
    command = [sys.executable, "-c", KILLED_PUT, str(local.root), str(fifo)]
    with processes.spawn(command, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}) as child:
        with open_fifo_for_writing(fifo, child) as feed:
            feed.write(b"n" * (MiB + MiB // 2))  # the child copies 1 MiB, then waits for more
            feed.flush()
            wait_for_partial_temp_file(local.root / "bkt" / "data", MiB)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)


def test_local_sigkill_during_a_put_leaves_the_previous_object_intact(local: LocalStore, tmp_path: Path) -> None:
    local.put_file(write(tmp_path, "old", b"old content"), "data/file.bin")

    kill_during_a_put(local, tmp_path)

    assert read_object(local, "data/file.bin", tmp_path) == b"old content"
    assert local.head("data/file.bin").md5 == md5_of(b"old content")  # type: ignore[union-attr]
    assert listed_keys(local) == ["data/file.bin"]


def test_local_remove_incomplete_removes_the_temp_file_of_a_killed_write(local: LocalStore, tmp_path: Path) -> None:
    local.put_file(write(tmp_path, "old", b"old content"), "data/file.bin")
    local.put_file(write(tmp_path, "other", b"other"), "database/keep.bin")
    kill_during_a_put(local, tmp_path)
    write(local.root / "bkt" / "database", f"{TEMP_MARKER}of-another-prefix", b"partial")

    removed = local.remove_incomplete("data/")

    assert removed == 1
    assert not list((local.root / "bkt" / "data").glob(f"{TEMP_MARKER}*"))
    assert (local.root / "bkt" / "database" / f"{TEMP_MARKER}of-another-prefix").exists()
    assert read_object(local, "data/file.bin", tmp_path) == b"old content"
    assert listed_keys(local) == ["data/file.bin", "database/keep.bin"]


def open_fifo_for_writing(fifo: Path, reader: subprocess.Popen[bytes]) -> Any:
    """Open once the reader has opened its end; fail instead of blocking forever if it died."""
    deadline = time.monotonic() + 20
    while reader.poll() is None and time.monotonic() < deadline:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.02)
            continue
        os.set_blocking(fd, True)
        return os.fdopen(fd, "wb")
    raise AssertionError(f"the child never opened {fifo} (exit code {reader.poll()})")


def wait_for_partial_temp_file(directory: Path, size: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(p.stat().st_size >= size for p in directory.glob(f"{TEMP_MARKER}*")):
            return
        time.sleep(0.02)
    raise AssertionError(f"no partial temp file of {size} bytes appeared in {directory}")


def test_local_put_failing_mid_write_leaves_no_object_and_no_temp_file(local: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)

    with pytest.raises(S3OperationError) as excinfo:
        local.put_file(write(tmp_path, "f", data), "data/file.bin", md5=md5_of(b"something else"))

    assert "BadDigest" in str(excinfo.value)
    assert local.head("data/file.bin") is None
    assert [p for p in (local.root / "bkt").rglob("*") if p.is_file()] == []


def test_local_objects_are_plain_files_at_bucket_and_key(local: LocalStore, tmp_path: Path) -> None:
    local.put_file(write(tmp_path, "f", b"parquet bytes"), "prod/out.parquet")

    uri = local.uri("prod/out.parquet")

    assert uri == str(tmp_path.resolve() / "storage" / "bkt" / "prod" / "out.parquet")
    assert Path(uri).read_bytes() == b"parquet bytes"


def test_local_listing_never_shows_temp_files_or_metadata_sidecars(local: LocalStore, tmp_path: Path) -> None:
    local.put_file(write(tmp_path, "f", b"x"), "d/real")
    write(local.root / "bkt" / "d", f"{TEMP_MARKER}leftover-of-a-crash", b"partial")

    assert listed_keys(local) == ["d/real"]
    assert not (local.root / "bkt" / ".osaa-meta").exists()


def test_local_object_replaced_behind_the_stores_back_has_unknown_not_wrong_md5(
    local: LocalStore, tmp_path: Path
) -> None:
    local.put_file(write(tmp_path, "f", b"original"), "k")
    os.replace(write(tmp_path, "other", b"swapped in"), local.uri("k"))

    info = local.head("k")

    assert info is not None and (info.size, info.md5) == (len(b"swapped in"), None)


def test_local_deleting_the_last_object_under_a_prefix_frees_the_name(local: LocalStore, tmp_path: Path) -> None:
    local.put_file(write(tmp_path, "f", b"x"), "a/b/c")
    local.delete_many(["a/b/c"])

    local.put_file(write(tmp_path, "g", b"y"), "a")

    assert listed_keys(local) == ["a"]


# --- S3Store: checksums, server-side copies, one request per call -------------------------


@pytest.fixture
def s3_via_proxy(fault_proxy: FaultProxy, s3_bucket: str) -> S3Store:
    return S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")


def s3_store(fault_proxy: FaultProxy, bucket: str, **options: Any) -> S3Store:
    return S3Store(bucket, endpoint_url=fault_proxy.url, addressing_style="path", **options)


@pytest.mark.s3
def test_s3_put_sends_the_content_md5(s3_via_proxy: S3Store, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    s3_via_proxy.put_file(write(tmp_path, "f", b"checked in transit"), "k")

    [put] = fault_proxy.requests("PutObject")

    expected = base64.b64encode(hashlib.md5(b"checked in transit").digest()).decode()
    assert put.headers["content-md5"] == expected
    assert put.headers[f"x-amz-meta-{MD5_METADATA_KEY}"] == md5_of(b"checked in transit")


@pytest.mark.s3
def test_s3_put_above_the_threshold_is_a_multipart_upload_keeping_the_md5(
    fault_proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    store = s3_store(fault_proxy, s3_bucket, multipart_threshold=5 * MiB)
    data = os.urandom(6 * MiB)

    store.put_file(write(tmp_path, "big", data), "big.bin")

    info = store.head("big.bin")
    assert fault_proxy.count("PutObject") == 0
    assert fault_proxy.count("CreateMultipartUpload") == fault_proxy.count("CompleteMultipartUpload") == 1
    assert fault_proxy.count("UploadPart") >= 1
    assert info is not None and info.md5 == md5_of(data) and info.etag and "-" in info.etag
    assert info.checksum == crc32_of(data)  # full-object, so a copy's checksum can be compared with it


@pytest.mark.s3
def test_s3_copy_is_one_server_side_copy_object(
    s3_via_proxy: S3Store, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    s3_via_proxy.put_file(write(tmp_path, "f", os.urandom(100_000)), "src")
    fault_proxy.reset_counts()

    s3_via_proxy.copy("src", "dst")

    assert fault_proxy.count("CopyObject") == 1
    assert fault_proxy.count("GetObject") == fault_proxy.count("PutObject") == 0
    assert fault_proxy.bytes_received == 0


@pytest.mark.s3
def test_s3_copy_above_the_threshold_is_a_multipart_copy_keeping_metadata(
    fault_proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    store = s3_store(fault_proxy, s3_bucket, copy_multipart_threshold=5 * MiB)
    data = os.urandom(5 * MiB + 1)
    store.put_file(write(tmp_path, "big", data), "staging/big.parquet", metadata={"txn": "t9"})
    fault_proxy.reset_counts()

    copied = store.copy("staging/big.parquet", "prod/big.parquet")

    assert fault_proxy.count("UploadPartCopy") == 2
    assert fault_proxy.count("CopyObject") == fault_proxy.count("GetObject") == 0
    assert fault_proxy.bytes_received < 10_000
    assert copied.metadata == {"txn": "t9", MD5_METADATA_KEY: md5_of(data)}
    assert copied.md5 == md5_of(data) and copied.size == len(data)
    assert read_object(store, "prod/big.parquet", tmp_path) == data


@pytest.mark.s3
def test_s3_multipart_copy_keeps_user_and_system_metadata_when_the_caller_knows_only_size_and_md5(
    fault_proxy: FaultProxy, s3_bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    store = s3_store(fault_proxy, s3_bucket, copy_multipart_threshold=5 * MiB)
    data = os.urandom(5 * MiB + 1)
    s3_client.put_object(
        Bucket=s3_bucket,
        Key="staging/t1/big.parquet",
        Body=data,
        ContentType="application/vnd.apache.parquet",
        CacheControl="no-cache",
        ContentDisposition='attachment; filename="big.parquet"',
        Metadata={"txn": "t1", MD5_METADATA_KEY: md5_of(data), "source-file": encode_metadata_value("données.csv")},
    )
    manifest_entry = ObjectInfo("staging/t1/big.parquet", len(data), md5_of(data), None)

    copied = store.copy("staging/t1/big.parquet", "prod/big.parquet", manifest_entry)

    head = s3_client.head_object(Bucket=s3_bucket, Key="prod/big.parquet")
    assert fault_proxy.count("UploadPartCopy") == 2 and fault_proxy.count("CopyObject") == 0
    assert head["ContentType"] == "application/vnd.apache.parquet"
    assert head["CacheControl"] == "no-cache"
    assert head["ContentDisposition"] == 'attachment; filename="big.parquet"'
    assert copied.metadata == {"txn": "t1", MD5_METADATA_KEY: md5_of(data), "source-file": "données.csv"}
    assert store.head("prod/big.parquet") == copied
    assert read_object(store, "prod/big.parquet", tmp_path) == data


@pytest.mark.s3
def test_s3_multipart_copy_refuses_a_source_that_is_not_what_the_caller_expects_before_copying(
    fault_proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    store = s3_store(fault_proxy, s3_bucket, copy_multipart_threshold=5 * MiB)
    data = os.urandom(5 * MiB + 1)
    staged = store.put_file(write(tmp_path, "big", data), "staging/t1/big.parquet")
    fault_proxy.reset_counts()

    with pytest.raises(S3OperationError, match="does not match"):
        store.copy("staging/t1/big.parquet", "prod/big.parquet", replace(staged, md5=md5_of(b"manifest")))

    assert fault_proxy.count("CreateMultipartUpload") == fault_proxy.count("UploadPartCopy") == 0
    assert store.head("prod/big.parquet") is None


@pytest.mark.s3
def test_s3_listing_heads_only_the_objects_whose_etag_is_not_their_md5(
    fault_proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    store = s3_store(fault_proxy, s3_bucket, multipart_threshold=5 * MiB)
    big = os.urandom(6 * MiB)
    store.put_file(write(tmp_path, "big", big), "p/big")
    populate(store, ["p/small-1", "p/small-2"], tmp_path)
    fault_proxy.reset_counts()

    listed = {info.key: info for info in store.list_prefix("p/")}

    assert listed["p/big"].md5 == md5_of(big) and listed["p/big"].metadata == {}
    assert listed["p/small-1"].md5 == md5_of(b"x")
    assert fault_proxy.count("ListObjectsV2") == 1
    assert fault_proxy.count("HeadObject") == 1


KILLED_MULTIPART_PUT = """
import sys
from sqlmesh_osaa.storage import S3Store
store = S3Store(sys.argv[1], endpoint_url=sys.argv[2], addressing_style="path", multipart_threshold=5 * 1024**2)
store.put_file(sys.argv[3], "staging/t1/big.parquet")
"""


@pytest.mark.s3
def test_s3_remove_incomplete_aborts_the_multipart_upload_of_a_killed_process(
    fault_proxy: FaultProxy, s3_bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    source = write(tmp_path, "big", os.urandom(11 * MiB))
    s3_client.create_multipart_upload(Bucket=s3_bucket, Key="other/live.parquet")
    fault_proxy.delay_next(100, 5.0, operations=["UploadPart"])
    command = [sys.executable, "-c", KILLED_MULTIPART_PUT, s3_bucket, fault_proxy.url, str(source)]
    with processes.spawn(command, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}) as child:
        deadline = time.monotonic() + 30
        while fault_proxy.count("UploadPart") == 0 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fault_proxy.count("UploadPart") > 0, "the child never started uploading parts"
    fault_proxy.clear()
    store = S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")

    removed = store.remove_incomplete("staging/")

    uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert removed == 1
    assert [upload["Key"] for upload in uploads] == ["other/live.parquet"]
    assert store.head("staging/t1/big.parquet") is None


@pytest.mark.s3
def test_s3_a_transient_failure_costs_one_request_and_is_reported_as_transient(
    s3_via_proxy: S3Store, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    fault_proxy.fail_next(1, status=503, code="SlowDown")

    with pytest.raises(S3OperationError) as excinfo:
        s3_via_proxy.put_file(write(tmp_path, "f", b"x"), "k")

    assert excinfo.value.category is ErrorCategory.TRANSIENT
    assert excinfo.value.context["operation"] == "PutObject"
    assert fault_proxy.count("PutObject") == 1


@pytest.mark.s3
def test_s3_a_connection_reset_is_transient(s3_via_proxy: S3Store, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    fault_proxy.reset_next(1, operations=["HeadObject"])

    with pytest.raises(S3OperationError) as excinfo:
        s3_via_proxy.head("k")

    assert excinfo.value.category is ErrorCategory.TRANSIENT
    assert fault_proxy.count("HeadObject") == 1


@pytest.mark.s3
def test_s3_access_denied_is_permanent(s3_via_proxy: S3Store, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    fault_proxy.fail_always(403, "AccessDenied")

    with pytest.raises(S3OperationError) as excinfo:
        s3_via_proxy.put_file(write(tmp_path, "f", b"x"), "k")

    assert excinfo.value.category is ErrorCategory.PERMANENT
    assert isinstance(excinfo.value.__cause__, Exception)


@pytest.mark.s3
def test_s3_delete_many_sends_one_request_per_1000_keys(s3_via_proxy: S3Store, fault_proxy: FaultProxy) -> None:
    s3_via_proxy.delete_many(f"k/{i}" for i in range(2001))

    assert fault_proxy.count("DeleteObjects") == 3


@pytest.mark.s3
def test_s3_list_prefix_follows_every_page(fault_proxy: FaultProxy, s3_bucket: str, tmp_path: Path) -> None:
    store = s3_store(fault_proxy, s3_bucket, list_page_size=2)
    populate(store, [f"p/{i}" for i in range(5)], tmp_path)

    assert listed_keys(store, "p/") == [f"p/{i}" for i in range(5)]
    assert fault_proxy.count("ListObjectsV2") == 3


@pytest.mark.s3
def test_s3_get_file_rejects_content_that_does_not_match_its_md5(
    s3_client: Any, s3_bucket: str, s3_server: str, tmp_path: Path
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"real", Metadata={MD5_METADATA_KEY: md5_of(b"other")})
    store = S3Store(s3_bucket, endpoint_url=s3_server, addressing_style="path")
    target = tmp_path / "out.bin"

    with pytest.raises(S3OperationError) as excinfo:
        store.get_file("k", target)

    assert excinfo.value.category is ErrorCategory.TRANSIENT
    assert not target.exists()


@pytest.mark.s3
@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_s3_endpoint_comes_from_the_aws_environment_when_not_given(
    fault_proxy: FaultProxy, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    monkeypatch.setenv(variable, fault_proxy.url)
    store = S3Store(s3_bucket, addressing_style="path")

    store.put_file(write(tmp_path, "f", b"x"), "k")

    assert store.endpoint_url == fault_proxy.url
    assert fault_proxy.count("PutObject") == 1


@pytest.mark.s3
def test_s3_missing_bucket_is_a_configuration_error_naming_bucket_and_endpoint(
    s3_server: str, s3_env: None, tmp_path: Path
) -> None:
    store = S3Store("no-such-bucket-here", endpoint_url=s3_server, addressing_style="path")

    with pytest.raises(S3ConfigurationError) as excinfo:
        store.put_file(write(tmp_path, "f", b"x"), "k")

    message = str(excinfo.value)
    assert "no-such-bucket-here" in message and s3_server in message
    assert excinfo.value.category is ErrorCategory.PERMANENT
    assert FAKE_SECRET_KEY not in message and FAKE_ACCESS_KEY not in message


@pytest.mark.s3
def test_s3_copy_in_a_missing_bucket_is_a_configuration_error(s3_server: str, s3_env: None) -> None:
    store = S3Store("no-such-bucket-here", endpoint_url=s3_server, addressing_style="path")

    with pytest.raises(S3ConfigurationError, match="no-such-bucket-here"):
        store.copy("a", "b")


# --- checksums ------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [(0, 0), (1, 0), (0, 1), (5 * MiB, 1), (3, 5 * MiB + 7), (1000, 999)])
def test_crc32_combine_gives_the_crc32_of_the_concatenation(first: int, second: int) -> None:
    a, b = os.urandom(first), os.urandom(second)

    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


# --- make_store ------------------------------------------------------------------------------


def test_make_store_builds_a_local_store_from_settings(tmp_path: Path) -> None:
    store = make_store(StorageSettings(backend="local", root=tmp_path / "objects", bucket="lake"))
    store.put_file(write(tmp_path, "f", b"x"), "k")

    assert isinstance(store, LocalStore)
    assert Path(store.uri("k")) == (tmp_path / "objects" / "lake" / "k").resolve()


@pytest.mark.s3
def test_make_store_builds_an_s3_store_and_bucket_overrides_settings(
    s3_server: str, s3_bucket: str, tmp_path: Path
) -> None:
    settings = StorageSettings(backend="s3", bucket="configured", endpoint_url=s3_server, addressing_style="path")

    store = make_store(settings, bucket=s3_bucket)
    store.put_file(write(tmp_path, "f", b"x"), "k")

    assert isinstance(store, S3Store)
    assert store.uri("k") == f"s3://{s3_bucket}/k"
    assert store.exists("k")


def test_the_stores_digests_are_the_standard_md5_and_sha256_whichever_module_computes_them() -> None:
    from sqlmesh_osaa import storage

    assert storage._new_md5(b"osaa").hexdigest() == hashlib.md5(b"osaa").hexdigest()
    assert storage._new_sha256(b"osaa").hexdigest() == hashlib.sha256(b"osaa").hexdigest()
    assert storage._builtin_hash("md5", "_no_such_module") is hashlib.md5


def test_a_local_put_never_loads_openssls_hashes(tmp_path: Path) -> None:
    """A local ingest hashes every raw file; CPython's own MD5 keeps libcrypto out of its memory."""
    (tmp_path / "file.bin").write_bytes(b"x" * 100)
    script = (
        "import sys\nfrom sqlmesh_osaa.storage import LocalStore\n"
        f"LocalStore({str(tmp_path / 'bucket')!r}, 'bkt').put_file({str(tmp_path / 'file.bin')!r}, 'data/file.bin')\n"
        "print('_hashlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
