"""Shared fixtures: a real S3 endpoint (moto server over HTTP), a fault proxy in front of it, and stores.

The test process is a child subreaper: a process orphaned by a killed parent (a ``sqlmesh
plan`` whose test timed out) is re-parented to pytest instead of init, so the autouse check
below sees it and fails the test that left it.
"""

from __future__ import annotations

import ctypes
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
from support import processes
from support.faultproxy import FaultProxy
from support.s3server import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, MotoServer, s3_client_for

from sqlmesh_osaa.storage import LocalStore, ObjectStore, S3Store

_PR_SET_CHILD_SUBREAPER = 36
_LEFTOVER_GRACE_SECONDS = 5


def pytest_configure(config: pytest.Config) -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Fail the test that leaves a child process running (after killing it, so the next test starts clean)."""
    yield
    leftovers = processes.leftover_descendants()
    if not leftovers:
        return
    _, alive = psutil.wait_procs(leftovers, timeout=_LEFTOVER_GRACE_SECONDS)
    described = []
    for process in alive:
        try:
            described.append(f"{process.pid}: {' '.join(process.cmdline())}")
            process.kill()
        except psutil.NoSuchProcess:
            continue
    if described:
        pytest.fail("the test left processes running (start them with support.processes):\n" + "\n".join(described))

@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server running in a subprocess for the whole session."""
    server = MotoServer().start()
    try:
        yield server.endpoint_url
    finally:
        server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region only: nothing from the developer's AWS setup leaks in."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_client(s3_server: str, s3_env: None) -> Any:
    """boto3 client talking to the moto server directly (not through any proxy)."""
    return s3_client_for(s3_server)


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh, uniquely named bucket on the moto server."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def fault_proxy(s3_server: str) -> Iterator[FaultProxy]:
    """A started FaultProxy in front of the moto server; point clients at ``fault_proxy.url``."""
    proxy = FaultProxy(s3_server).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same contract, two backends: a LocalStore directory and an S3Store on a fresh moto bucket."""
    if request.param == "local":
        return LocalStore(tmp_path / "storage", "test-bucket")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, endpoint_url=request.getfixturevalue("s3_server"), addressing_style="path")
