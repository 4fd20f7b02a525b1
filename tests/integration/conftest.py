"""Fixtures of the SQLMesh integration tests; the project helpers live in ``sqlmesh_project.py``."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from support.pgserver import PostgresServer
from support.s3server import FAKE_ACCESS_KEY, FAKE_SECRET_KEY


@pytest.fixture(scope="module")
def s3_credentials_for_tests() -> Iterator[None]:
    """boto3 in the test process (reading the bucket) uses the same fake credentials as the subprocesses."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID=FAKE_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=FAKE_SECRET_KEY,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        yield
    finally:
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[name]
        os.environ.update(saved)




@pytest.fixture(scope="session")
def postgres_engine(pg_server: PostgresServer) -> PostgresServer:
    """The session's PostgreSQL server (tests/conftest.py) as SQLMesh's engine; one database per project.

    libpq (psycopg2 under SQLMesh, in the test process and in ``sqlmesh`` subprocesses) reads
    the password from the ``PGPASSFILE`` the server wrote: no project config holds it.
    """
    return pg_server
