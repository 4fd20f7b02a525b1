"""A throwaway PostgreSQL server on 127.0.0.1 for tests and benches.

The server binaries come from the Debian ``postgresql`` package (``.ci/run`` installs it when
missing). ``initdb`` and ``postgres`` refuse to run as root, so as root the server runs as
the ``postgres`` system user, in a temporary directory it owns, with its Unix socket there
too. Clients reach it over TCP as the role ``osaa`` with a password that libpq reads from a
``.pgpass`` file named by ``PGPASSFILE``: nothing secret is ever in a DSN.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from support import processes

ROLE = "osaa"
_START_TIMEOUT = 60.0


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: apt-get install postgresql")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """``start()`` a server, ``create_database()`` per test, ``stop()`` at the end (the process group is reaped)."""

    def __init__(self, *, durable: bool = False, settings: dict[str, str] | None = None) -> None:
        self.durable = durable
        # Extra server settings (``-c name=value``), e.g. the contrib modules a profile loads.
        self.settings = dict(settings or {})
        self.port = _free_port()
        self.password = uuid.uuid4().hex
        self.root = Path(tempfile.mkdtemp(prefix="osaa-pg-"))
        self.data = self.root / "data"
        self.passfile = self.root / "pgpass"
        self._process: subprocess.Popen | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    def start(self) -> PostgresServer:
        bin_dir = _binaries()
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.passfile.write_text(f"127.0.0.1:{self.port}:*:{ROLE}:{self.password}\n")
        self.passfile.chmod(0o600)
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            user=self._user,
            cwd=self.root,
        )
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        options = ["-c", "max_connections=200"]
        if not self.durable:
            # Many test servers at once: half PostgreSQL's default buffers, and no flushes.
            options += ["-c", "shared_buffers=64MB", "-c", "fsync=off", "-c", "synchronous_commit=off"]
            options += ["-c", "full_page_writes=off"]
        for name, value in self.settings.items():
            options += ["-c", f"{name}={value}"]
        self._process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.root), *options],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "server.log", "wb"),  # noqa: SIM115 - closed with the process
            user=self._user,
            cwd=self.root,
            start_new_session=True,
        )  # fmt: skip
        processes.long_lived(self._process)
        self._wait_ready()
        self._psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{self.password}'")
        return self

    def dsn(self, dbname: str) -> str:
        """A DSN without any secret: the password comes from PGPASSFILE."""
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={ROLE}"

    def create_database(self) -> str:
        """A new, empty database owned by the test role; returns its DSN."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.dsn(name)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGINT)  # fast shutdown
                process.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            finally:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
                processes.forget(process)
        shutil.rmtree(self.root, ignore_errors=True)

    def _psql(self, sql: str) -> None:
        subprocess.run(
            [str(_binaries() / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
             "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
            check=True,
            capture_output=True,
            user=self._user,
        )  # fmt: skip

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited at start: {(self.root / 'server.log').read_text()[-2000:]}")
            ready = subprocess.run(
                [str(_binaries() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not start within {_START_TIMEOUT:g}s")
