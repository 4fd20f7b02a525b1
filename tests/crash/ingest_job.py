"""An ingest run as its own process, so crash tests can SIGKILL it at a named fault point.

Usage: python ingest_job.py RAW_ROOT STORAGE_ROOT CHECKPOINT_DB
Prints ``done`` when the run returned.
"""

import logging
import sys
from pathlib import Path

from sqlmesh_osaa.checkpoint import PipelineCheckpoint
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy
from sqlmesh_osaa.ingest import IngestRequest, run_ingest
from sqlmesh_osaa.settings import load_settings
from sqlmesh_osaa.storage import LocalStore

logging.basicConfig(level=logging.WARNING)
raw_root, storage_root, db_path = sys.argv[1:4]
settings = load_settings(environ={})
with PipelineCheckpoint("ingest", Path(db_path)) as checkpoint:
    result = run_ingest(
        IngestRequest(Path(raw_root), "prod"),
        checkpoint=checkpoint,
        store=LocalStore(storage_root, "osaa"),
        settings=settings,
        error_handler=ErrorHandler(RetryPolicy(max_attempts=2, initial_delay=0, max_delay=0, jitter=False)),
    )
print("done" if result.ok else "failed", flush=True)
