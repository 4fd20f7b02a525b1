"""The runner lease: one small object in the bucket saying which runner may write the synced files.

Ephemeral runners (a CI job in a fresh container) keep their checkpoint file in object
storage (:mod:`.sync`). Two runners working on copies of one file would each push their own
and lose the other's marks, so a runner first takes the lease: a JSON object written with a
conditional put (``if_none_match`` when there is none, ``if_match`` on the ETag of an expired
or released one). The object names the holder (runner name, host, pid, CI job id when a CI
variable is set), when it was acquired, its last heartbeat and when it expires. A holder
renews it (a conditional put on the ETag it wrote) every third of the timeout; a runner that
was SIGKILLed stops renewing, so its lease expires and the next runner takes over.

Expiry compares the holder's ``expires_at`` with the reader's clock: runners need clocks
within a small fraction of ``lease_timeout_seconds`` of each other (NTP does that).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlmesh_osaa.exceptions import (
    ErrorCategory,
    LeaseHeldError,
    LeaseLostError,
    PipelineBaseError,
    PreconditionFailedError,
)
from sqlmesh_osaa.storage import ObjectStore

logger = logging.getLogger(__name__)

# CI variables naming the job a runner is (the first one set is shown in the lease).
CI_JOB_VARIABLES = ("CI_JOB_ID", "GITHUB_RUN_ID", "BUILD_ID", "BUILDKITE_JOB_ID", "CIRCLE_WORKFLOW_JOB_ID", "JOB_ID")
LEASE_FORMAT = 1


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def ci_job() -> str | None:
    """``NAME=value`` of the first CI job variable set, or None outside CI."""
    for name in CI_JOB_VARIABLES:
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return None


def default_runner_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as operators and other runners see it."""

    runner: str
    host: str
    pid: int
    ci_job: str | None = None
    command: str | None = None

    @classmethod
    def this_process(cls, runner: str | None, command: str | None) -> Holder:
        return cls(runner or default_runner_name(), socket.gethostname(), os.getpid(), ci_job(), command)

    def describe(self) -> str:
        parts = [f"host {self.host}", f"pid {self.pid}"]
        if self.ci_job:
            parts.append(self.ci_job)
        if self.command:
            parts.append(f"command {self.command!r}")
        return f"runner {self.runner!r} ({', '.join(parts)})"


@dataclass(frozen=True)
class LeaseRecord:
    """The content of the lease object."""

    holder: Holder
    token: str
    acquired_at: str
    heartbeat_at: str
    expires_at: str
    timeout_seconds: float
    released: bool = False
    format: int = LEASE_FORMAT

    def live(self, now: datetime | None = None) -> bool:
        return not self.released and _parse(self.expires_at) > (now or _now())

    def state(self, now: datetime | None = None) -> str:
        """``live``, ``expired`` or ``released``."""
        if self.released:
            return "released"
        return "live" if self.live(now) else "expired"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, key: str) -> LeaseRecord:
        try:
            document = json.loads(data)
            holder = Holder(**document.pop("holder"))
            return cls(holder=holder, **document)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise LeaseLostError(
                f"The lease object {key!r} is not a lease this version understands ({error}); inspect it, "
                "then remove it with `osaa-recover lease break --force`",
                key=key,
            ) from None

    def as_report(self, now: datetime | None = None) -> dict[str, Any]:
        return {**asdict(self), "state": self.state(now)}


def read_lease(store: ObjectStore, key: str) -> tuple[LeaseRecord | None, str | None]:
    """The lease object and its ETag, or (None, None) when no runner ever took one."""
    found = store.get_bytes(key)
    if found is None:
        return None, None
    data, etag = found
    return LeaseRecord.from_json(data, key), etag


def held_error(record: LeaseRecord, key: str, location: str) -> LeaseHeldError:
    return LeaseHeldError(
        f"Another runner holds the checkpoint lease {location}: {record.holder.describe()}, since "
        f"{record.acquired_at} (last heartbeat {record.heartbeat_at}, expires {record.expires_at} unless "
        "renewed). Wait for it to finish; if it is dead, wait for the lease to expire or run "
        "`osaa-recover lease break`",
        key=key,
    )


class RunnerLease:
    """This runner's hold on the lease object at ``key``: acquire, renew (heartbeat), release."""

    def __init__(self, store: ObjectStore, key: str, timeout_seconds: float, holder: Holder, location: str) -> None:
        self.store = store
        self.key = key
        self.timeout = timedelta(seconds=timeout_seconds)
        self.holder = holder
        self.location = location
        self.record: LeaseRecord | None = None
        self._etag: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.lost: LeaseLostError | None = None

    def acquire(self) -> LeaseRecord | None:
        """Take the lease; returns the expired or released lease taken over (None when there was none)."""
        current, etag = read_lease(self.store, self.key)
        now = _now()
        if current is not None and current.live(now):
            raise held_error(current, self.key, self.location)
        stamp = _stamp(now)
        record = LeaseRecord(
            holder=self.holder,
            token=uuid.uuid4().hex,
            acquired_at=stamp,
            heartbeat_at=stamp,
            expires_at=_stamp(now + self.timeout),
            timeout_seconds=self.timeout.total_seconds(),
        )
        try:
            if etag is None:
                new_etag = self.store.put_bytes(self.key, record.to_json(), if_none_match=True)
            else:
                new_etag = self.store.put_bytes(self.key, record.to_json(), if_match=etag)
        except PreconditionFailedError:
            # Another runner took it between our read and our write: say who.
            winner, _ = read_lease(self.store, self.key)
            if winner is None:
                raise
            raise held_error(winner, self.key, self.location) from None
        with self._lock:
            self.record, self._etag = record, new_etag
        if current is not None and not current.released:
            logger.warning(
                "Took over the expired checkpoint lease of %s (acquired %s, expired %s)",
                current.holder.describe(),
                current.acquired_at,
                current.expires_at,
            )
        logger.info("Holding the checkpoint lease %s as %s", self.location, self.holder.describe())
        return current

    def renew(self) -> None:
        """Push the expiry one timeout ahead; raises :class:`LeaseLostError` when another runner owns it now."""
        with self._lock:
            if self.lost is not None:
                raise self.lost
            if self.record is None:
                raise LeaseLostError("This runner does not hold the checkpoint lease", key=self.key)
            now = _now()
            if not self.record.live(now):
                self._lose(f"it expired at {self.record.expires_at} before it was renewed")
            renewed = replace(self.record, heartbeat_at=_stamp(now), expires_at=_stamp(now + self.timeout))
            try:
                self._etag = self.store.put_bytes(self.key, renewed.to_json(), if_match=self._etag)
            except PreconditionFailedError as error:
                if error.category is ErrorCategory.TRANSIENT:
                    raise
                now_held, _ = read_lease(self.store, self.key)
                by = now_held.holder.describe() if now_held else "nobody (it was removed)"
                self._lose(f"it was broken or taken over; it is now held by {by}")
            self.record = renewed

    def _lose(self, why: str) -> None:
        self.lost = LeaseLostError(
            f"This runner lost the checkpoint lease {self.location}: {why}. Its checkpoints since the "
            "last push are not pushed (another runner may have newer ones)",
            key=self.key,
        )
        raise self.lost

    def start_heartbeat(self) -> None:
        """Renew every third of the timeout in a daemon thread, until :meth:`release`."""
        interval = self.timeout.total_seconds() / 3

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    self.renew()
                except LeaseLostError as error:
                    logger.error("%s", error)
                    return
                except PipelineBaseError as error:
                    logger.warning("Could not renew the checkpoint lease (will try again): %s", error)

        self._heartbeat = threading.Thread(target=beat, name="osaa-lease-heartbeat", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released, so the next runner need not wait for expiry."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with self._lock:
            if self.record is None or self.lost is not None:
                return
            released = replace(self.record, released=True, heartbeat_at=_stamp(_now()))
            try:
                self.store.put_bytes(self.key, released.to_json(), if_match=self._etag)
            except PreconditionFailedError:
                logger.warning("The checkpoint lease %s was no longer this runner's when it ended", self.location)
            self.record = None


def break_lease(store: ObjectStore, key: str, *, force: bool) -> tuple[LeaseRecord | None, bool]:
    """Mark the lease released so another runner can take it; a live lease only with ``force``.

    Returns the lease found and whether it was broken. A live holder that is in fact alive
    finds out at its next heartbeat or push, which then fail (its etag no longer matches).
    """
    record, etag = read_lease(store, key)
    if record is None or record.released:
        return record, False
    if record.live() and not force:
        return record, False
    broken = replace(record, released=True)
    store.put_bytes(key, broken.to_json(), if_match=etag)
    logger.warning("Broke the checkpoint lease of %s (acquired %s)", record.holder.describe(), record.acquired_at)
    return record, True

