"""An ingest run as its own process, so crash tests can SIGKILL it at a named fault point.

Usage: python ingest_job.py RAW_ROOT STORAGE_ROOT CHECKPOINT_DB [STORE [MAX_ATTEMPTS]]
``STORE`` (as in txn_job.py) replaces the LocalStore ``osaa`` under STORAGE_ROOT.
Prints ``started`` once its imports are done and ``done`` when the run returned.
"""

import logging
import sys
from pathlib import Path

from sqlmesh_osaa.checkpoint import PipelineCheckpoint
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy
from sqlmesh_osaa.ingest import IngestRequest, run_ingest
from sqlmesh_osaa.settings import load_settings
from sqlmesh_osaa.storage import LocalStore, S3Store

logging.basicConfig(level=logging.WARNING)
raw_root, storage_root, db_path = sys.argv[1:4]
settings = load_settings(environ={})
store = LocalStore(storage_root, "osaa")
if len(sys.argv) > 4:
    endpoint, _, bucket = sys.argv[4].partition(":")[2].rpartition(":")
    store = S3Store(bucket, endpoint_url=endpoint, addressing_style="path")
attempts = int(sys.argv[5]) if len(sys.argv) > 5 else 2
print("started", flush=True)  # imports done: kill times are drawn from here
with PipelineCheckpoint("ingest", Path(db_path)) as checkpoint:
    result = run_ingest(
        IngestRequest(Path(raw_root), "prod"),
        checkpoint=checkpoint,
        store=store,
        settings=settings,
        error_handler=ErrorHandler(RetryPolicy(max_attempts=attempts, initial_delay=0, max_delay=0, jitter=False)),
    )
print("done" if result.ok else "failed", flush=True)
