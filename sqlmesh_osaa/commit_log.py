"""The commit protocol's records in the object store: commit log, transaction markers, owners.

Everything a machine needs to finish or undo another machine's transaction lives in the
bucket, beside the data, under ``_osaa/`` (docs/recovery.md draws the layout):

- ``_osaa/log/<position>.json.gz`` — the **commit log**: numbered entries written with
  If-None-Match, so exactly one writer takes each position. An entry is a transaction's
  decision (its full manifest, the snapshot it leaves, its owner) or an abort that fences a
  dead transaction out of the log. Entries are immutable.
- ``_osaa/head.json`` — the **pointer** to the latest entry, a hint swapped after each commit
  (readers and writers probe forward from it, so a stale pointer costs one GET, never a
  wrong answer).
- ``_osaa/transactions/<id>.json`` — a **marker** per transaction in flight: owner (host,
  pid, process start), heartbeat and lease, the log position it began at and, once decided,
  its position. Updated with If-Match; deleted when the transaction ends.
- ``_osaa/versions/<id>/<key>`` — the **immutable versions** a transaction uploads; the
  snapshot of each entry maps stable keys to them.

This module reads and writes those records; :mod:`sqlmesh_osaa.commit_protocol` uses them.
Every request goes through an :class:`ErrorHandler` (retries, circuit breaker).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.exceptions import PreconditionFailedError
from sqlmesh_osaa.storage import ObjectInfo, ObjectStore

_log = logging.getLogger(__name__)

PROTOCOL_ROOT = "_osaa/"
LOG_PREFIX = f"{PROTOCOL_ROOT}log/"
HEAD_KEY = f"{PROTOCOL_ROOT}head.json"
MARKER_PREFIX = f"{PROTOCOL_ROOT}transactions/"
VERSIONS_PREFIX = f"{PROTOCOL_ROOT}versions/"
TOMBSTONE_PREFIX = f"{PROTOCOL_ROOT}tombstones/"
# Under an attempt's versions root, the files it stages, named before their upload (key and
# source path, a batch an object): the attempt's FILE checkpoints are written at its end, so
# recovery reads them here when it rolls the attempt back. No staged key is under it: a
# transaction refuses keys under PROTOCOL_ROOT.
STAGED_FILES = f"{PROTOCOL_ROOT}files/"
FORMAT = 1
# How long a marker's heartbeat vouches for an owner another host cannot check directly.
DEFAULT_LEASE_SECONDS = 300.0
# Versions replaced by a commit stay readable for this many further commits (snapshot readers).
SNAPSHOT_RETENTION = 2

_HOST = socket.gethostname()
_PROCESS_TOKEN = uuid.uuid4().hex
# Transactions this process is working on; a marker of this process naming another is abandoned.
_ACTIVE: set[str] = set()


def log_key(position: int) -> str:
    return f"{LOG_PREFIX}{position:020d}.json.gz"


def marker_key(transaction_id: str) -> str:
    return f"{MARKER_PREFIX}{transaction_id}.json"


def new_versions_root(transaction_id: str) -> str:
    """Where one attempt of a transaction uploads; unique, so a late write of an earlier attempt never lands in it."""
    return f"{VERSIONS_PREFIX}{transaction_id}.{uuid.uuid4().hex[:12]}/"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): tells a reused PID apart."""
    try:
        stat = open(f"/proc/{pid}/stat", encoding="ascii", errors="replace").read()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def pid_running(pid: int) -> bool:
    """Whether a process with this PID exists on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """Who works on a transaction: enough for this host to check, and for others to wait a lease."""

    host: str
    pid: int
    started: str | None
    token: str

    @classmethod
    def this_process(cls) -> Owner:
        pid = os.getpid()
        return cls(_HOST, pid, _process_start(pid), _PROCESS_TOKEN)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Owner:
        return cls(str(data.get("host")), int(data.get("pid") or 0), data.get("started"), str(data.get("token")))


@dataclass(frozen=True)
class Marker:
    """A transaction in flight, as its marker object says."""

    transaction_id: str
    owner: Owner
    heartbeat_at: float
    lease_seconds: float
    begin: int
    versions: str
    position: int | None = None
    pipeline: str | None = None
    etag: str | None = field(default=None, compare=False)

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data.pop("etag")
        data["format"] = FORMAT
        return json.dumps(data, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes, etag: str) -> Marker:
        data = json.loads(raw)
        return cls(
            transaction_id=data["transaction_id"],
            owner=Owner.from_json(data["owner"]),
            heartbeat_at=float(data["heartbeat_at"]),
            lease_seconds=float(data["lease_seconds"]),
            begin=int(data["begin"]),
            versions=str(data["versions"]),
            position=data.get("position"),
            pipeline=data.get("pipeline"),
            etag=etag,
        )

    def owner_alive(self) -> bool:
        """Whether the owner may still work on it; never true for a process that is gone.

        On this host the owner's PID and start time decide at once (and this process knows
        which transactions it still works on); another host's owner is alive while its lease
        runs, so a fresh machine waits at most one lease.
        """
        owner = self.owner
        if owner.host != _HOST:
            return time.time() < self.heartbeat_at + self.lease_seconds
        if owner.token == _PROCESS_TOKEN and owner.pid == os.getpid():
            return self.transaction_id in _ACTIVE
        return pid_running(owner.pid) and (owner.started is None or _process_start(owner.pid) == owner.started)


@dataclass(frozen=True)
class Entry:
    """One position of the commit log: a decision (``commit``) or a fence (``abort``)."""

    position: int
    kind: str
    transaction_id: str
    puts: Sequence[Mapping[str, Any]]
    deletes: list[str]
    snapshot: dict[str, dict[str, Any]]
    replaced: list[str]
    owner: dict[str, Any]
    at: str

    @property
    def touched(self) -> set[str]:
        """Keys this entry changes (unchanged puts included: they assert the current content)."""
        if self.kind != "commit":
            return set()
        return {put["key"] for put in self.puts} | set(self.deletes)

    def to_bytes(self) -> bytes:
        """gzip'd JSON: an entry carries the whole snapshot, and keys and versions compress well.

        The text is ``json.dumps(..., sort_keys=True)`` of the entry, streamed into the compressor
        a put and a snapshot reference at a time: the whole text of a manifest of every file is
        never held (nor its UTF-8 copy).
        """
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as stream:
            write = stream.write
            values = {"format": FORMAT, **{name: getattr(self, name) for name in self.__dataclass_fields__}}
            for index, name in enumerate(sorted(values)):
                write(f"{', ' if index else '{'}{_dumps(name)}: ".encode())
                _write_value(write, values[name])
            write(b"}")
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Entry:
        data = json.loads(gzip.decompress(raw))
        data.pop("format", None)
        return cls(**data)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _write_value(write: Callable[[bytes], Any], value: Any) -> None:
    """``json.dumps(value, sort_keys=True)`` into ``write``, a list element or dict item at a time."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        for index, item in enumerate(value):
            write(f"{', ' if index else '['}{_dumps(item)}".encode())
        write(b"]" if value else b"[]")
    elif isinstance(value, dict) and value:
        for index, name in enumerate(sorted(value)):
            write(f"{', ' if index else '{'}{_dumps(name)}: {_dumps(value[name])}".encode())
        write(b"}")
    else:
        write(_dumps(value).encode())


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class CommitLog:
    """Reads and conditional writes of the protocol's records in one store, retried by ``handler``."""

    def __init__(self, store: ObjectStore, handler: ErrorHandler) -> None:
        self.store = store
        self.handler = handler
        self._entries: dict[int, Entry] = {}

    def _call(self, func: Callable[..., Any], *args: Any, operation: str, **kwargs: Any) -> Any:
        return self.handler.execute(func, *args, operation=operation, **kwargs)

    # -- the log ------------------------------------------------------------------------

    def entry(self, position: int) -> Entry | None:
        """The entry at ``position`` (cached: entries never change), or None when it is free."""
        if position <= 0:
            return None
        if position not in self._entries:
            found = self._call(self.store.get_bytes, log_key(position), operation="GetObject")
            if found is None:
                return None
            self._entries[position] = Entry.from_bytes(found[0])
        return self._entries[position]

    def head(self) -> int:
        """The latest taken position (0 for an empty log): the pointer, then probing past it."""
        found = self._call(self.store.get_bytes, HEAD_KEY, operation="GetObject")
        position = int(json.loads(found[0])["position"]) if found else 0
        while self.entry(position + 1) is not None:
            position += 1
        return position

    def snapshot(self, position: int) -> dict[str, dict[str, Any]]:
        entry = self.entry(position)
        return dict(entry.snapshot) if entry is not None else {}

    def entries_after(self, position: int) -> Iterator[Entry]:
        """Entries after ``position`` up to the current end of the log."""
        while (entry := self.entry(position + 1)) is not None:
            yield entry
            position += 1

    def try_append(self, entry: Entry) -> Entry | None:
        """Write ``entry`` at its position; None when we wrote it, else the entry that holds it.

        A retried request whose first attempt landed finds our own entry: that is a win.
        """
        try:
            self._call(self.store.put_bytes, log_key(entry.position), entry.to_bytes(), if_none_match=True,
                       operation="PutObject")
        except PreconditionFailedError:
            holder = self.entry(entry.position)
            if holder is None:
                raise
            mine = holder.transaction_id == entry.transaction_id and holder.kind == entry.kind
            return None if mine else holder
        self._entries[entry.position] = entry
        return None

    def move_head(self, position: int) -> None:
        """Point readers at ``position``; a hint, so a lost race or a failure only costs probes."""
        try:
            self._call(self.store.put_bytes, HEAD_KEY, json.dumps({"position": position}).encode(),
                       operation="PutObject")
        except Exception as exc:
            _log.warning("Could not move the commit log pointer to %d: %s", position, exc)

    def find_decision(self, transaction_id: str, after: int) -> Entry | None:
        """The entry ``transaction_id`` wrote after ``after``, if any, scanning to the end of the log."""
        return next((e for e in self.entries_after(after) if e.transaction_id == transaction_id), None)

    def later_keys(self, position: int) -> set[str]:
        """Keys committed by entries after ``position``: a decision there is superseded for them."""
        keys: set[str] = set()
        for entry in self.entries_after(position):
            keys |= entry.touched
        return keys

    # -- markers ------------------------------------------------------------------------

    def create_marker(self, marker: Marker) -> Marker:
        data = marker.to_bytes()
        try:
            etag = self._call(self.store.put_bytes, marker_key(marker.transaction_id), data, if_none_match=True,
                              operation="PutObject")
        except PreconditionFailedError:
            current = self.marker(marker.transaction_id)
            if current is None or current.owner != marker.owner:
                raise
            return current
        return replace(marker, etag=etag)

    def update_marker(self, marker: Marker, **changes: Any) -> Marker:
        """Rewrite ``marker`` if nobody changed it since we read it (raises PreconditionFailedError)."""
        updated = replace(marker, **changes)
        data = updated.to_bytes()
        try:
            etag = self._call(self.store.put_bytes, marker_key(marker.transaction_id), data, if_match=marker.etag,
                              operation="PutObject")
        except PreconditionFailedError:
            current = self.marker(marker.transaction_id)
            if current is None or current.to_bytes() != data:
                raise
            return current
        return replace(updated, etag=etag)

    def marker(self, transaction_id: str) -> Marker | None:
        found = self._call(self.store.get_bytes, marker_key(transaction_id), operation="GetObject")
        return Marker.from_bytes(*found) if found else None

    def markers(self, *, besides: str | None = None) -> list[Marker]:
        """Every transaction in flight in this store (but ``besides``, whose marker is not read)."""
        ids = [info.key[len(MARKER_PREFIX) : -len(".json")] for info in self.list(MARKER_PREFIX)
               if info.key.endswith(".json")]
        return [m for m in (self.marker(i) for i in ids if i != besides) if m is not None]

    def delete_marker(self, transaction_id: str) -> None:
        self._call(self.store.delete_many, [marker_key(transaction_id)], operation="DeleteObjects")

    # -- versions -----------------------------------------------------------------------

    def delete_versions(self, root: str) -> int:
        """Delete every object under a versions root; returns how many there were."""
        keys = [info.key for info in self.list(root)]
        if keys:
            self._call(self.store.delete_many, keys, operation="DeleteObjects")
        return len(keys)

    def record_staged_files(self, root: str, number: int, files: Sequence[tuple[str, str]]) -> None:
        """Name batch ``number`` of the files the attempt at ``root`` is about to stage: (key, source path).

        Not flushed on its own (staged versions are not either, until a decision names them):
        a power cut may lose it, and then the next ingest lands those files, as no completed
        FILE row records them.
        """
        data = json.dumps([list(item) for item in files]).encode()
        key = f"{root}{STAGED_FILES}{number:06d}.json"
        self._call(self.store.put_bytes, key, data, durable=False, operation="PutObject")

    def staged_files(self, root: str) -> list[tuple[str, str]]:
        """Every (key, source path) the attempt at ``root`` named before staging, in the order named."""
        files: list[tuple[str, str]] = []
        for info in self.list(root + STAGED_FILES):
            found = self._call(self.store.get_bytes, info.key, operation="GetObject")
            if found is not None:
                files.extend((key, path) for key, path in json.loads(found[0]))
        return files

    def forget_staged_files(self, root: str) -> None:
        """Delete the names of the files an attempt staged, once its FILE checkpoints hold its outcome."""
        keys = [info.key for info in self.list(root + STAGED_FILES)]
        if keys:
            self._call(self.store.delete_many, keys, operation="DeleteObjects")

    def bury(self, root: str) -> None:
        """Remember a dead attempt's versions root, so recovery removes writes that land there late."""
        self._call(self.store.put_bytes, TOMBSTONE_PREFIX + root[len(VERSIONS_PREFIX) :].rstrip("/"), b"{}",
                   operation="PutObject")

    def tombstones(self) -> list[tuple[str, float]]:
        """(versions root, age in seconds) of every buried attempt."""
        now = time.time()
        return [
            (VERSIONS_PREFIX + info.key[len(TOMBSTONE_PREFIX) :] + "/",
             now - info.last_modified.timestamp() if info.last_modified else 0.0)
            for info in self.list(TOMBSTONE_PREFIX)
        ]

    def forget_tombstone(self, root: str) -> None:
        key = TOMBSTONE_PREFIX + root[len(VERSIONS_PREFIX) :].rstrip("/")
        self._call(self.store.delete_many, [key], operation="DeleteObjects")

    def store_delete(self, keys: list[str]) -> None:
        self._call(self.store.delete_many, keys, operation="DeleteObjects")

    def list_versions(self) -> list[str]:
        return [info.key for info in self.list(VERSIONS_PREFIX)]

    def collect_replaced(self, position: int) -> None:
        """Delete the versions entry ``position - SNAPSHOT_RETENTION`` replaced: no retained snapshot names them."""
        old = self.entry(position - SNAPSHOT_RETENTION)
        if old is None or not old.replaced:
            return
        try:
            self._call(self.store.delete_many, old.replaced, operation="DeleteObjects")
        except Exception as exc:
            _log.warning("Could not delete %d replaced version(s): %s", len(old.replaced), exc)

    def retained_versions(self) -> set[str]:
        """Version keys a retained snapshot (the latest SNAPSHOT_RETENTION + 1) still names."""
        head = self.head()
        names: set[str] = set()
        for position in range(max(1, head - SNAPSHOT_RETENTION), head + 1):
            names |= {ref["version"] for ref in self.snapshot(position).values()}
        return names

    def list(self, prefix: str) -> list[ObjectInfo]:
        """The objects under ``prefix``, the listing retried as a whole."""
        return self._call(lambda: list(self.store.list_prefix(prefix)), operation="ListObjectsV2")


def new_entry(
    position: int,
    transaction_id: str,
    base: Mapping[str, dict[str, Any]],
    puts: Sequence[Mapping[str, Any]],
    deletes: list[str],
    *,
    kind: str = "commit",
) -> Entry:
    """The decision at ``position`` on top of snapshot ``base``: the snapshot it leaves and what it replaces."""
    snapshot = dict(base)
    replaced: list[str] = []
    if kind == "commit":
        for put in puts:
            previous = snapshot.get(put["key"])
            if put.get("staged_key") is None and previous is not None:
                continue
            ref = {"version": put["version"], "md5": put["md5"], "size": put["size"]}
            if previous is not None and previous["version"] != ref["version"]:
                replaced.append(previous["version"])
            snapshot[put["key"]] = ref
        for key in deletes:
            previous = snapshot.pop(key, None)
            if previous is not None:
                replaced.append(previous["version"])
    owner = asdict(Owner.this_process())
    return Entry(position, kind, transaction_id, puts, deletes, snapshot, replaced, owner, _now_iso())


@dataclass(frozen=True)
class SnapshotObject:
    """One object of a snapshot: its stable key, the immutable version that holds it, and where to read it."""

    key: str
    version: str
    uri: str
    md5: str
    size: int


@dataclass(frozen=True)
class Snapshot:
    """The committed set at one log position: never a mix of two commits."""

    position: int
    objects: dict[str, SnapshotObject]

    def uris(self) -> list[str]:
        return [obj.uri for obj in self.objects.values()]


def resolve_snapshot(
    store: ObjectStore, prefix: str = "", *, handler: ErrorHandler | None = None, log: CommitLog | None = None
) -> Snapshot:
    """The current snapshot of the objects under ``prefix``: read these URIs for a consistent set.

    Its versions stay readable for ``SNAPSHOT_RETENTION`` further commits, so resolve again
    for each new read (docs/recovery.md, "Consistent reads"). A reader that polls passes one
    ``log``: entries never change, so each is fetched once.
    """
    log = log or CommitLog(store, handler or ErrorHandler.from_settings(name="object-storage"))
    position = log.head()
    objects = {
        key: SnapshotObject(key, ref["version"], store.uri(ref["version"]), ref["md5"], ref["size"])
        for key, ref in sorted(log.snapshot(position).items())
        if key.startswith(prefix)
    }
    return Snapshot(position, objects)
