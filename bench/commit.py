"""Commit benchmark: requests and client bytes of one commit of N staged objects, counted at a proxy.

For each N the transaction stages N objects of ``--size`` bytes on moto's S3 server through
the fault proxy (no faults), then the proxy's counters are reset and ``commit()`` runs. The
commit should cost N CopyObject requests plus a constant, whatever N, and send the server a
tiny fraction of the staged bytes (copies are server-side; only the protocol's small records
travel). Targets are in docs/performance.md.

Run: ``.venv/bin/python bench/commit.py [--sizes 10,50,200] [--size BYTES]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.faultproxy import FaultProxy  # noqa: E402
from support.s3server import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, MotoServer, s3_client_for  # noqa: E402

from sqlmesh_osaa.checkpoint import PipelineCheckpoint  # noqa: E402
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy  # noqa: E402
from sqlmesh_osaa.storage import S3Store  # noqa: E402
from sqlmesh_osaa.transaction_manager import TransactionManager  # noqa: E402


def one_commit(proxy: FaultProxy, bucket: str, workdir: Path, objects: int, size: int) -> dict[str, int]:
    store = S3Store(bucket, endpoint_url=proxy.url, addressing_style="path")
    handler = ErrorHandler(RetryPolicy(max_attempts=3, initial_delay=0, max_delay=0, jitter=False))
    with PipelineCheckpoint("bench", workdir / f"{objects}.duckdb") as checkpoint:
        txn = TransactionManager(store=store, checkpoint=checkpoint, error_handler=handler)
        txn.begin()
        for index in range(objects):
            path = workdir / f"{index}.bin"
            path.write_bytes(os.urandom(size))
            txn.upload_file(path, f"prod/bench/{objects}/{index:05d}.bin")
        proxy.reset_counts()
        txn.commit()
    counts = proxy.counts()
    return {
        "objects": objects,
        "copies": counts.get("CopyObject", 0),
        "other": sum(counts.values()) - counts.get("CopyObject", 0),
        "client_bytes": proxy.bytes_received,
        "staged_bytes": objects * size,
        **{f"op:{name}": n for name, n in sorted(counts.items()) if name != "CopyObject"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--size", type=int, default=256 * 1024)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.update(AWS_ACCESS_KEY_ID=FAKE_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=FAKE_SECRET_KEY,
                      AWS_DEFAULT_REGION="us-east-1")
    server = MotoServer().start()
    proxy = FaultProxy(server.endpoint_url).start()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        s3_client_for(server.endpoint_url).create_bucket(Bucket=bucket)
        rows = []
        with tempfile.TemporaryDirectory(prefix="osaa-bench-commit-") as workdir:
            for objects in (int(n) for n in args.sizes.split(",")):
                rows.append(one_commit(proxy, bucket, Path(workdir), objects, args.size))
    finally:
        proxy.stop()
        server.stop()
    print(f"| N objects ({args.size // 1024} KiB each) | CopyObject | other requests | client bytes | "
          "staged bytes | client / staged |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratio = row["client_bytes"] / row["staged_bytes"]
        print(f"| {row['objects']} | {row['copies']} | {row['other']} | {row['client_bytes']} | "
              f"{row['staged_bytes']} | {ratio:.4%} |")
    for row in rows:
        detail = ", ".join(f"{k[3:]}={v}" for k, v in row.items() if k.startswith("op:"))
        print(f"- N={row['objects']}: {detail}")


if __name__ == "__main__":
    main()
