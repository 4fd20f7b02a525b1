"""Recovery as its own process (a third machine): prints the RecoveryReport as JSON.

Usage: python recover_job.py STORE CHECKPOINT_DB
"""

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from txn_job import HANDLER, store_of

from sqlmesh_osaa.checkpoint import PipelineCheckpoint
from sqlmesh_osaa.transaction_manager import recover_transactions

logging.basicConfig(level=logging.WARNING)
with PipelineCheckpoint("transactions", Path(sys.argv[2])) as checkpoint:
    report = recover_transactions(checkpoint, store_of(sys.argv[1]), error_handler=HANDLER)
print(json.dumps(asdict(report)), flush=True)
