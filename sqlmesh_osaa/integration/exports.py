"""What an environment publishes, kept on the PIPELINE item of the plan/run that published it.

``@osaa_after_all()`` calls :func:`published` after a publication: for every export the
environment's publication wrote, its size, MD5, whether this run wrote it, and the staged
evaluation it came from (``<model>/<table version>/<interval>``). The PIPELINE item's
completion carries it (one durable write for both, instead of a metadata update first). Metrics
(last success per export, bytes and objects published) and the HTML report read it back from
the checkpoint, so they need neither SQLMesh state nor the object store.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlmesh_osaa.integration import runtime

_log = logging.getLogger(__name__)


def evaluation_of(staged_key: str | None, staging_prefix: str) -> str | None:
    """``<model>/<version>/<start>-<end>`` of a staged output key (``<staging>/exports/...``)."""
    if not staged_key:
        return None
    parts = staged_key.split("/")
    head = staging_prefix.strip("/").split("/") + ["exports"]
    if parts[: len(head)] != head or len(parts) < len(head) + 3:
        return None
    return "/".join(parts[len(head) : len(head) + 3])


def _listed(rt: runtime.Runtime, prefix: str) -> dict[str, Any]:
    """Every object under the environment's prefix: one listing (a page per 1000 keys), not a HEAD per key."""

    def listing() -> dict[str, Any]:
        return {info.key: info for info in rt.store.list_prefix(f"{prefix}/" if prefix else "")}

    return rt.error_handler.execute(listing, operation="ListObjectsV2")


def published(rt: runtime.Runtime, publication: Any) -> dict[str, Any]:
    """What ``publication`` wrote to its environment, per key; empty when it wrote nothing. Never raises."""
    keys = list(publication.written)
    if not keys:
        return {}
    try:
        listed = _listed(rt, publication.prefix)
        exports = {}
        for key in keys:
            info = listed.get(key)
            exports[key] = {
                "bytes": info.size if info else None,
                "md5": info.md5 if info else None,
                "written": True,
                "evaluation": evaluation_of(publication.sources.get(key), rt.settings.storage.staging_prefix),
            }
        return exports
    except Exception:
        _log.exception("sqlmesh-osaa could not list what %s published", publication.environment)
        return {}
