"""The commit protocol between processes: exclusion, supersession, recovery from the store alone.

Every scenario runs real processes (tests/crash/txn_job.py) against a LocalStore directory
and the moto S3 server; checkpoint databases are per process, as on separate machines.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import pytest
from support import jobs
from support.jobs import NOTHING_UNFINISHED, unfinished_work

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus, PipelineCheckpoint
from sqlmesh_osaa.commit_log import (
    CommitLog,
    Marker,
    Owner,
    new_versions_root,
    resolve_snapshot,
)
from sqlmesh_osaa.commit_protocol import journal_key
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy
from sqlmesh_osaa.exceptions import TransactionConflictError, TransactionError
from sqlmesh_osaa.fault_points import AFTER_COMMIT_DECISION, AFTER_STAGING
from sqlmesh_osaa.transaction_manager import TransactionManager, recover_transactions

FAST = ErrorHandler(RetryPolicy(max_attempts=3, initial_delay=0, max_delay=0, jitter=False))


def content(store, key: str) -> str | None:
    found = store.get_bytes(key)
    return None if found is None else found[0].decode()


def outcomes(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def recover(store, db: Path, **kwargs):
    with PipelineCheckpoint("transactions", db) as checkpoint:
        return recover_transactions(checkpoint, store, error_handler=FAST, **kwargs)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_stale_decision_never_lands_over_a_later_commit_of_its_key(store, tmp_path):
    killed = jobs.txn_job(store, tmp_path / "1.duckdb", "--put", "k=v1", "--put", "j=v1", "--id", "t1",
                               fault=AFTER_COMMIT_DECISION)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The second process commits k=v2 without recovering t1 (as when its recovery gave up on 503s).
    second = TransactionManager(store=store, checkpoint=PipelineCheckpoint("transactions", tmp_path / "2.duckdb"),
                                error_handler=FAST, recover=False, transaction_id="t2")
    with second:
        second.upload_file(write(tmp_path / "k.txt", "v2"), "k")

    third = jobs.run([str(jobs.CRASH_DIR / "recover_job.py"), jobs.store_spec(store),
                           str(tmp_path / "3.duckdb")])

    report = json.loads(third.stdout)
    assert report["rolled_forward"] == ["t1"]
    assert report["superseded"] == {"t1": ["k"]}
    assert content(store, "k") == "v2"
    assert content(store, "j") == "v1"
    assert unfinished_work(store) == NOTHING_UNFINISHED


def test_transactions_command_reports_the_stale_decision_superseded(store, tmp_path):
    jobs.txn_job(store, tmp_path / "1.duckdb", "--put", "k=v1", "--id", "t1", fault=AFTER_COMMIT_DECISION)
    jobs.txn_job(store, tmp_path / "2.duckdb", "--put", "k=v2", "--id", "t2")
    recover(store, tmp_path / "3.duckdb")
    from sqlmesh_osaa.commit_protocol import decision_history

    history = {row["transaction_id"]: row for row in decision_history(CommitLog(store, FAST))}
    assert history["t1"]["state"] == "superseded" and history["t1"]["superseded"] == ["k"]
    assert history["t2"]["state"] == "applied"
    assert content(store, "k") == "v2"


@pytest.mark.slow
def test_two_processes_committing_overlapping_sets_at_once_exactly_one_wins_every_round(store, tmp_path):
    rounds = 100
    barrier = tmp_path / "barrier"
    barrier.mkdir()

    def racer(tag: str, peer: str):
        own = [arg for key in "abc" for arg in ("--put", f"{key}={tag.upper()}{key}")]
        return jobs.start([str(jobs.CRASH_DIR / "txn_job.py"), jobs.store_spec(store),
                                str(tmp_path / f"{tag}.duckdb"), *own, "--rounds", str(rounds), "--tag", tag,
                                "--peer", peer, "--barrier", str(barrier)])

    first, second = racer("x", "y"), racer("y", "x")
    results = {tag: outcomes(jobs.finish(proc, timeout=600)) for tag, proc in (("x", first), ("y", second))}

    for round_ in range(rounds):
        x, y = results["x"][round_], results["y"][round_]
        assert sorted((x["result"], y["result"])) == ["committed", "conflict"], (round_, x, y)
        winner, loser = (x, y) if x["result"] == "committed" else (y, x)
        letter = "X" if winner is x else "Y"
        assert {k: content(store, f"r{round_}/{k}") for k in "abc"} == {k: letter + k for k in "abc"}
        assert loser["winner"] == winner["id"] and loser["key"].startswith(f"r{round_}/")
    assert unfinished_work(store) == NOTHING_UNFINISHED


def test_two_processes_committing_disjoint_sets_at_once_both_commit(store, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        jobs.start([str(jobs.CRASH_DIR / "txn_job.py"), jobs.store_spec(store),
                         str(tmp_path / f"{tag}.duckdb"), "--put", f"{tag}={tag}", "--rounds", "10", "--tag", tag,
                         "--peer", peer, "--barrier", str(barrier)])
        for tag, peer in (("x", "y"), ("y", "x"))
    ]
    results = [outcomes(jobs.finish(proc, timeout=300)) for proc in procs]
    assert all(outcome["result"] == "committed" for result in results for outcome in result)
    assert all(content(store, f"r{r}/{tag}") == tag for r in range(10) for tag in "xy")


def test_overlapping_transactions_of_one_process_conflict_even_with_forced_file_checkpoints(store, tmp_path):
    with PipelineCheckpoint("transactions", tmp_path / "c.duckdb") as checkpoint:
        first = TransactionManager(store=store, checkpoint=checkpoint, error_handler=FAST)
        second = TransactionManager(store=store, checkpoint=checkpoint, error_handler=FAST)
        first.upload_file(write(tmp_path / "1.txt", "one"), "prod/k", source_path=tmp_path / "1.txt")
        second.upload_file(write(tmp_path / "2.txt", "two"), "prod/k", source_path=tmp_path / "2.txt")
        first.commit()
        with pytest.raises(TransactionConflictError) as conflict:
            second.commit()
    assert conflict.value.context["key"] == "prod/k"
    assert conflict.value.context["winner"] == first.transaction_id
    assert content(store, "prod/k") == "one"
    assert list(store.list_prefix(second.staging_root)) == []


def test_a_fresh_machine_rolls_a_decided_transaction_forward_from_the_store_alone(store, tmp_path):
    killed = jobs.txn_job(store, tmp_path / "gone.duckdb", "--put", "prod/a=1", "--put", "prod/b=2",
                               "--id", "t", fault=AFTER_COMMIT_DECISION)
    assert killed.returncode == -signal.SIGKILL
    (tmp_path / "gone.duckdb").unlink()
    report = recover(store, tmp_path / "fresh.duckdb")
    assert report.rolled_forward == ["t"]
    assert (content(store, "prod/a"), content(store, "prod/b")) == ("1", "2")
    assert unfinished_work(store) == NOTHING_UNFINISHED


def test_begin_without_recovery_says_interrupted_for_a_dead_owner(store, tmp_path):
    jobs.txn_job(store, tmp_path / "1.duckdb", "--put", "k=v", "--id", "t", fault=AFTER_STAGING)
    with PipelineCheckpoint("transactions", tmp_path / "2.duckdb") as checkpoint:
        again = TransactionManager(store=store, checkpoint=checkpoint, transaction_id="t", recover=False,
                                   error_handler=FAST)
        with pytest.raises(TransactionError, match="interrupted"):
            again.begin()


def test_a_corrupted_staged_version_is_refused_by_roll_forward(store, tmp_path):
    jobs.txn_job(store, tmp_path / "1.duckdb", "--put", "prod/a=good", "--id", "t", fault=AFTER_COMMIT_DECISION)
    [marker] = CommitLog(store, FAST).markers()
    store.put_file(write(tmp_path / "evil.txt", "evil"), f"{marker.versions}prod/a")
    report = recover(store, tmp_path / "2.duckdb")
    assert "does not match the decision's manifest" in report.failed["t"]
    assert store.head("prod/a") is None


def test_a_late_staged_write_of_a_rolled_back_transaction_is_removed_by_the_next_recovery(store, tmp_path):
    jobs.txn_job(store, tmp_path / "1.duckdb", "--put", "prod/a=1", "--id", "t", fault=AFTER_STAGING)
    [marker] = CommitLog(store, FAST).markers()
    assert recover(store, tmp_path / "2.duckdb").rolled_back == ["t"]
    store.put_file(write(tmp_path / "late.txt", "1"), f"{marker.versions}prod/b")  # the delayed PUT lands
    report = recover(store, tmp_path / "2.duckdb")
    assert report.cleaned_staging == [marker.versions]
    assert list(store.list_prefix(marker.versions)) == []


def test_another_hosts_owner_is_dead_only_once_its_lease_ran_out(store, tmp_path):
    log = CommitLog(store, FAST)
    for name, heartbeat in (("expired", time.time() - 120), ("leased", time.time())):
        root = new_versions_root(name)
        log.create_marker(Marker(name, Owner("another-host", 1, None, "token"), heartbeat, 60, 0, root))
        store.put_file(write(tmp_path / f"{name}.txt", name), f"{root}prod/{name}")
    report = recover(store, tmp_path / "c.duckdb")
    assert report.rolled_back == ["expired"]
    assert [m.transaction_id for m in log.markers()] == ["leased"]


def test_an_abandoned_decided_commit_of_this_process_is_rolled_forward_by_its_next_recovery(fault_proxy, s3_bucket, tmp_path):
    from sqlmesh_osaa.storage import S3Store

    store = S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")
    with PipelineCheckpoint("transactions", tmp_path / "c.duckdb") as checkpoint:
        t = TransactionManager(store=store, checkpoint=checkpoint, error_handler=FAST)
        t.upload_file(write(tmp_path / "a.txt", "a"), "prod/a")
        fault_proxy.fail_always(503, operations={"CopyObject"})
        with pytest.raises(TransactionError, match="rolls it forward"):
            t.commit()
        fault_proxy.clear()
        report = recover_transactions(checkpoint, store, error_handler=FAST)
        row = checkpoint.get(CheckpointScope.OPERATION, journal_key(t.transaction_id))
    assert report.rolled_forward == [t.transaction_id]
    assert row["status"] == CheckpointStatus.COMPLETED.value
    assert content(store, "prod/a") == "a"


def test_recovery_retries_its_own_listings_and_deletes(fault_proxy, s3_bucket, tmp_path, s3_server):
    from sqlmesh_osaa.storage import S3Store

    direct = S3Store(s3_bucket, endpoint_url=s3_server, addressing_style="path")
    jobs.txn_job(direct, tmp_path / "1.duckdb", "--put", "prod/a=1", "--id", "t", fault=AFTER_STAGING)
    store = S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")
    fault_proxy.fail_next(1, operations={"ListObjectsV2"})
    fault_proxy.fail_next(1, operations={"DeleteObjects"})
    report = recover(store, tmp_path / "2.duckdb")
    assert report.rolled_back == ["t"] and report.failed == {}
    assert fault_proxy.count("ListObjectsV2") > 1
    assert unfinished_work(store) == NOTHING_UNFINISHED


@pytest.mark.slow
def test_a_snapshot_reader_polling_during_a_50_object_commit_never_sees_a_mixed_set(store, tmp_path):
    keys = [f"prod/set/{n:02d}" for n in range(50)]
    jobs.txn_job(store, tmp_path / "1.duckdb", *[a for k in keys for a in ("--put", f"{k}=v1")])
    writer = jobs.start([str(jobs.CRASH_DIR / "txn_job.py"), jobs.store_spec(store),
                              str(tmp_path / "2.duckdb"), *[a for k in keys for a in ("--put", f"{k}=v2")]])
    seen: list[str] = []
    log = CommitLog(store, FAST)
    try:
        while len(seen) < 1000 or writer.poll() is None:
            snapshot = resolve_snapshot(store, "prod/set/", log=log)
            assert sorted(snapshot.objects) == keys
            assert len({obj.md5 for obj in snapshot.objects.values()}) == 1, "mixed snapshot"
            # Every object's content is read across the polls, one per poll.
            seen.append(content(store, snapshot.objects[keys[len(seen) % 50]].version))
            assert hashlib.md5(seen[-1].encode()).hexdigest() == next(iter(snapshot.objects.values())).md5
    finally:
        jobs.finish(writer)
    assert seen[0] == "v1" and seen[-1] == "v2"
    assert seen.index("v2") > 0 and "v1" not in seen[seen.index("v2"):], "the snapshot flips once"


def test_the_documented_duckdb_example_reads_the_current_snapshot(tmp_path):
    import duckdb

    from sqlmesh_osaa.storage import LocalStore

    store = LocalStore(tmp_path / "storage", "osaa")
    with PipelineCheckpoint("transactions", tmp_path / "c.duckdb") as checkpoint:
        for rows in (2, 3):
            parquet = tmp_path / f"{rows}.parquet"
            duckdb.execute(f"COPY (SELECT range AS n FROM range({rows})) TO '{parquet}' (FORMAT parquet)")
            with TransactionManager(store=store, checkpoint=checkpoint, error_handler=FAST) as txn:
                txn.upload_file(parquet, "prod/landing/sdg/SDG_DATA_NATIONAL.parquet")

    # docs/transactions.md, "Reading the current snapshot"
    from sqlmesh_osaa.transaction_manager import resolve_snapshot

    snapshot = resolve_snapshot(store, "prod/landing/sdg/")
    count = duckdb.execute("SELECT count(*) FROM read_parquet(?)", [snapshot.uris()]).fetchone()[0]

    assert snapshot.position == 2 and count == 3


@pytest.mark.s3
def test_a_later_commit_waits_for_a_live_earlier_commit_of_its_keys_to_finish_applying(fault_proxy, s3_bucket, tmp_path):
    import threading

    from sqlmesh_osaa.storage import S3Store

    store = S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")
    log = CommitLog(store, FAST)
    with PipelineCheckpoint("transactions", tmp_path / "c.duckdb") as checkpoint:
        slow = TransactionManager(store=store, checkpoint=checkpoint, error_handler=FAST)
        slow.upload_file(write(tmp_path / "1.txt", "old"), "prod/k")
        fault_proxy.delay_next(1, 2.0, operations={"CopyObject"})
        applying = threading.Thread(target=slow.commit)
        applying.start()
        while log.head() < 1:  # the slow commit is decided; its copy is held at the proxy
            time.sleep(0.01)
        later = TransactionManager(store=store, checkpoint=checkpoint, error_handler=FAST, recover=False)
        later.upload_file(write(tmp_path / "2.txt", "new"), "prod/k")
        later.commit()
        applying.join()
    assert content(store, "prod/k") == "new"


def test_a_log_entry_is_stored_as_the_gzipped_sorted_json_of_its_fields() -> None:
    """Streamed into the compressor piece by piece, the text is still exactly one ``json.dumps``."""
    import gzip

    from sqlmesh_osaa.commit_log import FORMAT, Entry

    fingerprint = {"size": 12, "mtime_ns": 34, "checksum": None}
    puts = [
        {"key": f"prod/é/{i}.parquet", "staged_key": None if i % 3 == 0 else f"v/{i}", "md5": "ab" * 16, "size": i,
         "source_path": f"raw/{i}.csv", "version": f"v/{i}", "fingerprint": fingerprint}
        for i in range(30)
    ]
    snapshot = {put["key"]: {"version": put["version"], "md5": put["md5"], "size": put["size"]} for put in puts}
    for entry in (
        Entry(3, "commit", "txn", puts, ["prod/old.parquet"], snapshot, ["v/0"], {"host": "h", "pid": 1}, "now"),
        Entry(4, "abort", "txn2", [], [], {}, [], {}, "now"),
    ):
        fields = {name: getattr(entry, name) for name in entry.__dataclass_fields__}
        expected = json.dumps({"format": FORMAT, **fields}, sort_keys=True, ensure_ascii=False)
        assert gzip.decompress(entry.to_bytes()).decode("utf-8") == expected
        assert Entry.from_bytes(entry.to_bytes()) == entry


def test_a_decision_built_from_the_staged_puts_stores_the_bytes_of_their_records() -> None:
    """The decision reads each put's record when it writes it: the bytes are those of the records as a list."""
    import gzip

    from sqlmesh_osaa.checkpoint import Fingerprint
    from sqlmesh_osaa.commit_log import Entry, new_entry
    from sqlmesh_osaa.commit_protocol import PutRecords, StagedPut

    staged = [
        StagedPut(f"prod/{i}.parquet", f"v/{i}", "cd" * 16, i, f"raw/{i}.csv", f"v/{i}", Fingerprint("ab" * 16, i, 7))
        for i in range(5)
    ]
    records = [put.to_json() for put in staged]
    lazy = new_entry(2, "txn", {}, PutRecords(staged), [])
    eager = Entry(**{**{name: getattr(lazy, name) for name in lazy.__dataclass_fields__}, "puts": records})

    assert lazy.to_bytes() == eager.to_bytes()
    assert Entry.from_bytes(lazy.to_bytes()) == lazy
    assert lazy.snapshot == new_entry(2, "txn", {}, records, []).snapshot
    empty = new_entry(3, "txn", {}, PutRecords([]), ["prod/0.parquet"])
    assert json.loads(gzip.decompress(empty.to_bytes()))["puts"] == []
