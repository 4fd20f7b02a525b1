"""Which key space a store is: the string a FILE checkpoint records of the store its key lives in.

Kept apart from ``storage`` so that a command can name the configured store without importing
object storage (the skip index of an unchanged re-run, ``sqlmesh_osaa.skip_index``).
"""

from __future__ import annotations

from pathlib import Path


def local_identity(root: Path, bucket: str) -> str:
    """A local store's identity; ``root`` resolved."""
    return f"local:{root}/{bucket}"


def s3_identity(endpoint_url: str, bucket: str) -> str:
    """An S3 store's identity: scheme, host and path of its endpoint (never credentials) and the bucket."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint_url)
    host = parts.netloc.rpartition("@")[2]
    return f"s3:{parts.scheme}://{host}{parts.path.rstrip('/')}/{bucket}"


def configured_identity(backend: str, root: Path, bucket: str, endpoint_url: str | None) -> str | None:
    """The identity of the store these settings describe, when settings alone determine it.

    An S3 store without an ``endpoint_url`` gets its endpoint from boto3's configuration chain
    (environment, config files): only a client knows it, so None.
    """
    if backend == "local":
        return local_identity(root.expanduser().resolve(), bucket)
    if endpoint_url is not None:
        return s3_identity(endpoint_url, bucket)
    return None
