"""The suite's S3 endpoint keeps S3's promise for conditional writes: of writers racing for
one key, exactly one wins (tests/support/moto_atomic.py)."""

from __future__ import annotations

import threading
from typing import Any

import botocore.exceptions

from support.s3server import s3_client_for

WRITERS = 8
KEYS = 40


def race(client_for: Any, bucket: str, key: str, **condition: str) -> list[int]:
    """Every writer puts `key` under `condition` at the same moment; the status of each."""
    barrier = threading.Barrier(WRITERS)
    statuses: list[int] = []

    def write(writer: int) -> None:
        client = client_for()
        barrier.wait()
        try:
            client.put_object(Bucket=bucket, Key=key, Body=f"writer {writer}".encode(), **condition)
            statuses.append(200)
        except botocore.exceptions.ClientError as error:
            statuses.append(int(error.response["ResponseMetadata"]["HTTPStatusCode"]))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_of_writers_racing_to_create_one_key_exactly_one_wins(s3_server, s3_client, s3_bucket):
    for n in range(KEYS):
        statuses = race(lambda: s3_client_for(s3_server), s3_bucket, f"k{n}", IfNoneMatch="*")
        assert sorted(statuses) == [200] + [412] * (WRITERS - 1), (n, statuses)


def test_of_writers_racing_to_replace_one_version_exactly_one_wins(s3_server, s3_client, s3_bucket):
    for n in range(KEYS):
        etag = s3_client.put_object(Bucket=s3_bucket, Key=f"v{n}", Body=b"first")["ETag"]
        statuses = race(lambda: s3_client_for(s3_server), s3_bucket, f"v{n}", IfMatch=etag)
        assert sorted(statuses) == [200] + [412] * (WRITERS - 1), (n, statuses)
