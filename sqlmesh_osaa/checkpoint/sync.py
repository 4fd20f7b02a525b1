"""Ephemeral runners: the checkpoint file kept in object storage, pulled at start, pushed back.

With ``checkpoint.sync.url`` set, a command that writes checkpoints (``osaa-ingest``,
``osaa-promote``, the writing ``osaa-recover`` commands, ``sqlmesh plan``/``run``) first takes
the runner lease (:mod:`.lease`), then pulls the last pushed DuckDB checkpoint file (and, with
``sqlmesh_state_file``, the project's SQLMesh DuckDB file) over the local paths, and pushes
them back at each PIPELINE checkpoint and at the end. Reading commands pull without a lease.

Layout under the URL's prefix::

    lease.json                      the runner lease
    state.json                      which object holds each file now (the pointer)
    files/<name>/<generation>-<id>  immutable copies, one per push

A push uploads consistent copies (:func:`copy_consistent`) to new immutable keys, then swaps
``state.json`` with a conditional put on the ETag this runner last saw: a runner whose lease
was taken over, or that pulled an older state, can never replace a newer file. Copies no
longer named by ``state.json`` are removed after the swap (also those of a push killed before
its swap). A runner SIGKILLed mid-run loses at most the work since its last push.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlmesh_osaa.checkpoint.lease import Holder, RunnerLease, read_lease
from sqlmesh_osaa.exceptions import ConfigurationError, LeaseLostError, PipelineBaseError, PreconditionFailedError
from sqlmesh_osaa.sections import replace
from sqlmesh_osaa.settings import OsaaSettings
from sqlmesh_osaa.storage import LocalStore, ObjectStore, file_md5, make_store

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
SQLMESH_STATE = "sqlmesh-state"
LEASE_OBJECT = "lease.json"
STATE_OBJECT = "state.json"
FILES_PREFIX = "files/"
STATE_FORMAT = 1

# Makes a consistent copy of a local DuckDB file at the given path.
Copier = Callable[[Path, Path], None]


@dataclass(frozen=True)
class SyncLocation:
    """Where the synced files and the lease live: a store and a key prefix in it."""

    store: ObjectStore
    prefix: str
    url: str

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def lease_key(self) -> str:
        return self.key(LEASE_OBJECT)

    @property
    def state_key(self) -> str:
        return self.key(STATE_OBJECT)


def sync_location(settings: OsaaSettings) -> SyncLocation | None:
    """The location ``checkpoint.sync.url`` names, or None when runners keep their files locally."""
    url = settings.checkpoint.sync.url
    if url is None:
        return None
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        storage = replace(settings.storage, backend="s3")
        store = make_store(storage, bucket=bucket)
    else:
        directory = Path(url[len("file://") :] if url.startswith("file://") else url).expanduser().resolve()
        if not directory.name or directory.name.startswith("."):
            raise ConfigurationError(
                "checkpoint.sync.url must name a directory whose name does not start with '.'",
                setting="checkpoint.sync.url",
                value=url,
            )
        store, prefix = LocalStore(directory.parent, directory.name), ""
    prefix = prefix.strip("/")
    return SyncLocation(store, f"{prefix}/" if prefix else "", url)


def _open_in_this_process(path: Path) -> bool:
    """Whether this process has ``path`` open (Linux ``/proc``; elsewhere assumed not)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return False
    target = str(path.resolve())
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:
            continue
    return False


def _replace_local(path: Path, download: Callable[[Path], None]) -> None:
    """Put the pulled file at ``path``; a WAL left beside an older file would corrupt the new one."""
    if _open_in_this_process(path):
        raise ConfigurationError(
            f"{path} is already open in this process, so the pulled copy cannot replace it. Let the sync "
            "start before anything opens the file (for SQLMesh's file: the first @osaa_before_all())",
            setting="checkpoint.sync",
            value=str(path),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    download(path)
    Path(f"{path}.wal").unlink(missing_ok=True)


class RunnerSync:
    """One command's pull, pushes and lease on a :class:`SyncLocation`."""

    def __init__(
        self,
        location: SyncLocation,
        files: Mapping[str, Path],
        copiers: Mapping[str, Copier],
        *,
        lease_timeout: float,
        holder: Holder,
        pushed_at_checkpoints: frozenset[str] = frozenset({CHECKPOINTS}),
    ) -> None:
        self.location = location
        self.files = {name: Path(path).expanduser().resolve() for name, path in files.items()}
        self.copiers = dict(copiers)
        self.holder = holder
        self.lease = RunnerLease(location.store, location.lease_key, lease_timeout, holder, location.url)
        self.pushed_at_checkpoints = pushed_at_checkpoints
        self._state: dict[str, Any] | None = None
        self._state_etag: str | None = None
        self._lock = threading.RLock()
        self.writing = False

    # -- the command's life ------------------------------------------------------------

    def start(self, *, write: bool) -> None:
        """Take the lease (when ``write``) and pull the last pushed files over the local ones."""
        if write:
            self.lease.acquire()
            self.writing = True
        try:
            self.pull()
        except BaseException:
            self.end(push=False)
            raise
        if write:
            self.lease.start_heartbeat()

    def pull(self) -> None:
        with self._lock:
            found = self.location.store.get_bytes(self.location.state_key)
            if found is None:
                logger.info("No synced checkpoint state at %s yet: this is the first run there", self.location.url)
                self._state, self._state_etag = None, None
                return
            data, etag = found
            state = json.loads(data)
            for name, path in self.files.items():
                entry = state.get("files", {}).get(name)
                if entry is None:
                    continue
                _replace_local(path, lambda target, key=entry["key"]: self.location.store.get_file(key, target))
                logger.info("Pulled %s (pushed %s by %s) to %s", name, state.get("pushed_at"), state.get("pushed_by", {}).get("runner"), path)
            self._state, self._state_etag = state, etag

    def push(self, names: frozenset[str] | None = None) -> None:
        """Upload consistent copies of the files, then swap ``state.json`` on the ETag last seen."""
        with self._lock:
            if not self.writing:
                return
            self.lease.renew()
            previous = dict((self._state or {}).get("files", {}))
            files = dict(previous)
            generation = int((self._state or {}).get("generation", 0)) + 1
            with tempfile.TemporaryDirectory(prefix="osaa-sync-") as workdir:
                for name, path in self.files.items():
                    if (names is not None and name not in names) or not path.exists():
                        continue
                    copy = Path(workdir) / name
                    self.copiers[name](path, copy)
                    files[name] = self._upload(name, copy, generation, previous.get(name))
            state = {
                "format": STATE_FORMAT,
                "generation": generation,
                "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
                "pushed_by": asdict(self.holder),
                "files": files,
            }
            body = json.dumps(state, sort_keys=True).encode("utf-8")
            try:
                if self._state_etag is None:
                    etag = self.location.store.put_bytes(self.location.state_key, body, if_none_match=True)
                else:
                    etag = self.location.store.put_bytes(self.location.state_key, body, if_match=self._state_etag)
            except PreconditionFailedError as error:
                raise LeaseLostError(
                    f"Another runner pushed a newer checkpoint state to {self.location.url} since this runner "
                    "pulled it; this runner's checkpoints since its last push are not pushed",
                    key=self.location.state_key,
                ) from error
            self._state, self._state_etag = state, etag
            self._remove_unreferenced(files)
            logger.info("Pushed checkpoint state generation %d to %s", generation, self.location.url)

    def push_at_checkpoint(self) -> None:
        """A PIPELINE checkpoint was recorded: push, logging (not raising) what went wrong."""
        try:
            self.push(self.pushed_at_checkpoints)
        except PipelineBaseError as error:
            logger.warning("Could not push the checkpoint state at a PIPELINE checkpoint: %s", error)

    def end(self, *, push: bool = True) -> None:
        """Push (when writing) and release the lease; raises when the push was refused."""
        try:
            if push and self.writing:
                self.push()
        finally:
            if self.writing:
                self.writing = False
                self.lease.release()

    # -- internals ---------------------------------------------------------------------

    def _upload(self, name: str, copy: Path, generation: int, previous: Mapping[str, Any] | None) -> dict[str, Any]:
        md5 = file_md5(copy)
        if previous is not None and previous.get("md5") == md5:
            return dict(previous)
        key = self.location.key(f"{FILES_PREFIX}{name}/{generation:08d}-{uuid.uuid4().hex[:8]}.duckdb")
        info = self.location.store.put_file(copy, key, md5=md5)
        return {"key": key, "md5": md5, "size": info.size}

    def _remove_unreferenced(self, files: Mapping[str, Mapping[str, Any]]) -> None:
        referenced = {entry["key"] for entry in files.values()}
        try:
            stale = [
                info.key
                for info in self.location.store.list_prefix(self.location.key(FILES_PREFIX))
                if info.key not in referenced
            ]
            if stale:
                self.location.store.delete_many(stale)
        except PipelineBaseError as error:
            logger.warning("Could not remove superseded checkpoint copies under %s: %s", self.location.url, error)


def runner_sync(settings: OsaaSettings, *, command: str | None, project_dir: Path | None = None) -> RunnerSync | None:
    """The sync the settings ask for (None without ``checkpoint.sync.url``)."""
    location = sync_location(settings)
    if location is None:
        return None
    from sqlmesh_osaa.checkpoint.duckdb_store import copy_consistent

    sync_settings = settings.checkpoint.sync
    timeout = settings.checkpoint.lock_timeout_seconds

    def copier(source: Path, target: Path) -> None:
        copy_consistent(source, target, timeout)

    files = {CHECKPOINTS: Path(settings.checkpoint.db_path)}
    if sync_settings.sqlmesh_state_file is not None:
        state_file = Path(sync_settings.sqlmesh_state_file).expanduser()
        if not state_file.is_absolute() and project_dir is not None:
            state_file = project_dir / state_file
        files[SQLMESH_STATE] = state_file
    return RunnerSync(
        location,
        files,
        {name: copier for name in files},
        lease_timeout=sync_settings.lease_timeout_seconds,
        holder=Holder.this_process(sync_settings.runner_name, command),
    )


# -- the sync of this process ------------------------------------------------------------

_active: RunnerSync | None = None
_active_lock = threading.Lock()


def begin(settings: OsaaSettings, *, command: str | None, write: bool, project_dir: Path | None = None) -> RunnerSync | None:
    """Start the sync for a command: the lease (when ``write``) and the pull. None when not configured."""
    global _active
    sync = runner_sync(settings, command=command, project_dir=project_dir)
    if sync is None:
        return None
    sync.start(write=write)
    if write:
        with _active_lock:
            _active = sync
    return sync


def end(sync: RunnerSync | None, *, push: bool = True) -> None:
    """Finish what :func:`begin` started: the last push and the lease's release."""
    global _active
    if sync is None:
        return
    with _active_lock:
        if _active is sync:
            _active = None
    sync.end(push=push)


def pipeline_checkpoint_recorded() -> None:
    """Called when a PIPELINE item completed or failed: the active sync pushes."""
    sync = _active
    if sync is not None:
        sync.push_at_checkpoint()


def require_location(settings: OsaaSettings) -> SyncLocation:
    """The sync location, or a :class:`ConfigurationError` saying the sync is not configured."""
    location = sync_location(settings)
    if location is None:
        raise ConfigurationError(
            "No runner lease: checkpoint.sync.url is not set (runners keep their checkpoints locally)",
            setting="checkpoint.sync.url",
        )
    return location


def lease_report(location: SyncLocation) -> dict[str, Any] | None:
    """The lease object as ``osaa-recover lease show`` reports it (None when no runner took one)."""
    record, _ = read_lease(location.store, location.lease_key)
    return None if record is None else record.as_report()


def pull_for_reading(settings: OsaaSettings, directory: Path) -> Path | None:
    """Pull the last pushed checkpoint file into ``directory`` for a command that only reads.

    The local file is left alone (a writer on this host may have it open); None when
    nothing was pushed yet or the sync is not configured.
    """
    location = sync_location(settings)
    if location is None:
        return None
    target = Path(directory) / "checkpoints.duckdb"
    sync = RunnerSync(
        location,
        {CHECKPOINTS: target},
        {},
        lease_timeout=settings.checkpoint.sync.lease_timeout_seconds,
        holder=Holder.this_process(settings.checkpoint.sync.runner_name, None),
    )
    sync.pull()
    return target if target.exists() else None
