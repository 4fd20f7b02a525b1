"""Run moto's S3 server with its conditional writes atomic, as S3's are.

moto 5 checks ``If-None-Match``/``If-Match`` and then stores the object as two steps of a
threaded server, so two writers racing for one key can both pass the check; S3 serializes
them (exactly one wins). The suite's commit protocol stands on that promise, and under load
the race showed up as two commits of one round in
``test_two_processes_committing_overlapping_sets_at_once_exactly_one_wins_every_round``.
Here every object write, copy, multipart completion and delete runs under one lock, after
moto has read the request's body; reads stay concurrent. A moto that renamed a wrapped
handler makes this script fail at start, before any test trusts it.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable

from moto import server
from moto.s3.responses import S3Response

# The handlers that check a condition and then change the bucket (moto 5.x).
WRITES = ("_key_response_put", "_key_response_post", "_key_response_delete")

_lock = threading.Lock()


def _serialized(handler: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            return handler(*args, **kwargs)

    return run


def install() -> None:
    """Put every write handler of moto's S3 responses under the one lock."""
    for name in WRITES:
        handler = getattr(S3Response, name, None)
        if handler is None:
            raise SystemExit(f"moto's S3Response has no {name}: update tests/support/moto_atomic.py for this moto")
        setattr(S3Response, name, _serialized(handler))


if __name__ == "__main__":
    install()
    server.main()
