"""moto's S3 server in a subprocess on 127.0.0.1, reached over real HTTP like any S3 endpoint."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

from sqlmesh_osaa.storage import make_s3_client
from support import processes

ATOMIC_SERVER = Path(__file__).with_name("moto_atomic.py")
# Fake credentials: moto accepts any, and a real endpoint would reject these.
FAKE_ACCESS_KEY = "testing"
FAKE_SECRET_KEY = "testing"


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MotoServer:
    """Start/stop moto's S3 server (with atomic conditional writes: ``moto_atomic.py``).

    Its output goes to a log file shown when it fails to start.
    """

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkstemp(prefix="moto-server-", suffix=".log")[1])

    def start(self) -> MotoServer:
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, str(ATOMIC_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        processes.long_lived(self._process)
        self._wait_until_answering()
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            processes.kill_group(self._process)
            self._process.wait()
        processes.forget(self._process)
        self._process = None
        self._log.unlink(missing_ok=True)

    def _wait_until_answering(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.1)
        output = self._log.read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"moto server did not start on {self.endpoint_url}:\n{output}")


def s3_client_for(endpoint_url: str) -> Any:
    """A plain path-style client (one request per call) for setting up and inspecting buckets."""
    return make_s3_client(endpoint_url, addressing_style="path")
