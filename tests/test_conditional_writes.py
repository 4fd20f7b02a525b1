"""The conditional-write primitives the commit protocol stands on, identical on both stores."""

from __future__ import annotations

import threading

import pytest

from sqlmesh_osaa.exceptions import ErrorCategory, PreconditionFailedError


def test_put_bytes_returns_the_etag_get_bytes_reads_back(store):
    etag = store.put_bytes("_osaa/x.json", b'{"a": 1}')
    assert store.get_bytes("_osaa/x.json") == (b'{"a": 1}', etag)


def test_get_bytes_of_a_missing_object_is_none(store):
    assert store.get_bytes("_osaa/missing.json") is None


def test_if_none_match_creates_once_and_then_refuses_without_writing(store):
    store.put_bytes("_osaa/log/1.json", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailedError) as refused:
        store.put_bytes("_osaa/log/1.json", b"second", if_none_match=True)
    assert refused.value.category is ErrorCategory.PERMANENT
    assert store.get_bytes("_osaa/log/1.json")[0] == b"first"


def test_if_match_writes_only_over_the_version_it_read(store):
    etag = store.put_bytes("_osaa/m.json", b"v1")
    newer = store.put_bytes("_osaa/m.json", b"v2", if_match=etag)
    with pytest.raises(PreconditionFailedError):
        store.put_bytes("_osaa/m.json", b"v3", if_match=etag)
    assert store.get_bytes("_osaa/m.json") == (b"v2", newer)


def test_if_match_on_a_missing_object_is_refused(store):
    with pytest.raises(PreconditionFailedError):
        store.put_bytes("_osaa/gone.json", b"v", if_match="0" * 32)
    assert store.get_bytes("_osaa/gone.json") is None


def test_of_many_threads_racing_for_one_key_exactly_one_creates_it(store):
    winners: list[int] = []
    start = threading.Barrier(8)

    def race(n: int) -> None:
        start.wait()
        try:
            store.put_bytes("_osaa/log/race.json", str(n).encode(), if_none_match=True)
        except PreconditionFailedError:
            return
        winners.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert store.get_bytes("_osaa/log/race.json")[0] == str(winners[0]).encode()


def test_put_bytes_objects_carry_their_md5_like_every_object(store):
    store.put_bytes("_osaa/x.json", b"abc")
    assert store.head("_osaa/x.json").md5 == "900150983cd24fb0d6963f7d28e17f72"
