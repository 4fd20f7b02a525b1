"""Transactions as their own process, for tests that kill them or race two of them.

Usage: python txn_job.py STORE DB [--put KEY=TEXT ...] [--rounds N --tag T --barrier DIR] [--id ID]

``STORE`` is ``local:<root>:<bucket>`` or ``s3:<endpoint>:<bucket>``. One transaction puts
each ``KEY`` with content ``TEXT``. With ``--rounds`` it commits N transactions, one per
round, putting ``r<round>/<KEY>``; before committing each round it waits at a file barrier in
``DIR`` for the other process named in ``--peer``, so both decide at the same moment. Prints
one JSON line per transaction: committed, or the conflict (key and winner).
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from sqlmesh_osaa.checkpoint import PipelineCheckpoint
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy
from sqlmesh_osaa.exceptions import TransactionConflictError
from sqlmesh_osaa.storage import LocalStore, S3Store
from sqlmesh_osaa.transaction_manager import TransactionManager

logging.basicConfig(level=logging.WARNING)
HANDLER = ErrorHandler(RetryPolicy(max_attempts=2, initial_delay=0, max_delay=0, jitter=False))


def store_of(spec: str):
    kind, _, rest = spec.partition(":")
    location, _, bucket = rest.rpartition(":")
    if kind == "local":
        return LocalStore(location, bucket)
    return S3Store(bucket, endpoint_url=location, addressing_style="path")


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"barrier {path} never appeared")
        time.sleep(0.002)


def one(store, checkpoint, workdir: Path, puts: dict[str, str], barrier=None, transaction_id=None) -> dict:
    txn = TransactionManager(store=store, checkpoint=checkpoint, error_handler=HANDLER, transaction_id=transaction_id)
    txn.begin()
    for index, (key, text) in enumerate(puts.items()):
        path = workdir / f"{index}.txt"
        path.write_text(text)
        txn.upload_file(path, key)
    if barrier is not None:
        barrier()
    try:
        txn.commit()
    except TransactionConflictError as conflict:
        return {"result": "conflict", "key": conflict.context.get("key"), "winner": conflict.context.get("winner"),
                "id": txn.transaction_id}
    return {"result": "committed", "id": txn.transaction_id}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("db")
    parser.add_argument("--put", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--tag", default="a")
    parser.add_argument("--peer", default="b")
    parser.add_argument("--barrier")
    parser.add_argument("--id")
    args = parser.parse_args()
    store = store_of(args.store)
    puts = dict(item.split("=", 1) for item in args.put)
    workdir = Path(args.db).parent / f"work-{args.tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    with PipelineCheckpoint("transactions", Path(args.db)) as checkpoint:
        if not args.rounds:
            print(json.dumps(one(store, checkpoint, workdir, puts, transaction_id=args.id)), flush=True)
            return
        barrier_dir = Path(args.barrier)
        for round_ in range(args.rounds):
            def barrier(round_=round_):
                (barrier_dir / f"{args.tag}-{round_}").touch()
                wait_for(barrier_dir / f"{args.peer}-{round_}")

            keyed = {f"r{round_}/{key}": text for key, text in puts.items()}
            outcome = one(store, checkpoint, workdir, keyed, barrier)
            print(json.dumps({"round": round_, **outcome}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
