"""The documented, stable JSON output of every command, and its exit codes.

``docs/cli.md`` is generated from these and the click definitions (``reference.py``), and
the tests check real output against them, so code, documentation and output cannot drift.

Notation: a type name (``string``, ``integer``, ``number``, ``boolean``, ``datetime`` for
ISO 8601 in UTC, ``object`` for a free-form mapping), ``T|null`` when it may be null, ``[S]``
for a list of S, ``{"name": S}`` for an object with exactly these keys, and
``{"<what>": S}`` for a mapping from any key to S.
"""

from __future__ import annotations

from typing import Any

ITEM: dict[str, Any] = {
    "pipeline": "string",
    "scope": "string",
    "key": "string",
    "status": "string",
    "interrupted": "boolean",
    "file_path": "string|null",
    "attempt": "integer",
    "error_message": "string|null",
    "error_category": "string|null",
    "started_at": "datetime|null",
    "updated_at": "datetime",
    "completed_at": "datetime|null",
    "metadata": "object",
}

EVENT: dict[str, Any] = {
    "seq": "integer",
    "pipeline": "string",
    "scope": "string",
    "key": "string",
    "file_path": "string|null",
    "from_status": "string",
    "to_status": "string",
    "at": "datetime",
    "attempt": "integer",
    "run_id": "string",
    "pid": "integer",
    "host": "string",
    "error_message": "string|null",
    "error_category": "string|null",
}

PIPELINE_STATS: dict[str, Any] = {
    "total": "integer",
    "by_status": {"<status>": "integer"},
    "by_scope": {"<scope>": {"<status>": "integer"}},
    "interrupted": "integer",
    "failure_rate_percent": "number",
    "retries": {
        "total": "integer",
        "after_failure": "integer",
        "after_interruption": "integer",
        "reruns": "integer",
        "max_attempt": "integer",
        "per_item": "number",
    },
    "time_to_recovery": {
        "recovered": "integer",
        "unrecovered": "integer",
        "mean_seconds": "number|null",
        "median_seconds": "number|null",
        "max_seconds": "number|null",
    },
    "most_common_errors": [{"error_message": "string|null", "error_category": "string|null", "count": "integer"}],
    "circuit_breaker_openings": "integer",
    "circuit_breaker_rejections": "integer",
    "circuit_breakers": {"<breaker>": {"openings": "integer", "open_seconds": "number", "open": "boolean"}},
    "consistently_failing": [
        {"scope": "string", "key": "string", "file_path": "string|null", "attempt": "integer", "error_message": "string|null"}
    ],
    "last_success_at": "datetime|null",
    "exports": {
        "<published key>": {
            "environment": "string",
            "last_success_at": "datetime|null",
            "bytes": "integer|null",
            "md5": "string|null",
            "evaluation": "string|null",
            "run": "string",
        }
    },
    "published": {"<environment>": {"objects": "integer", "bytes": "integer"}},
}

# The runner lease of ephemeral runners (checkpoint.sync); state: live | expired | released.
LEASE: dict[str, Any] = {
    "holder": {"runner": "string", "host": "string", "pid": "integer", "ci_job": "string|null", "command": "string|null"},
    "token": "string",
    "acquired_at": "datetime",
    "heartbeat_at": "datetime",
    "expires_at": "datetime",
    "timeout_seconds": "number",
    "released": "boolean",
    "format": "integer",
    "state": "string",
}

ERROR: dict[str, Any] = {"error": {"message": "string", "exit_code": "integer", "db_path": "string|null"}}

SHAPES: dict[str, dict[str, Any]] = {
    "osaa-recover list-failed": {
        "db_path": "string",
        "pipelines": ["string"],
        "count": "integer",
        "items": [{**ITEM, "failing_since": "datetime|null"}],
        "recovered": [
            {
                "pipeline": "string",
                "scope": "string",
                "key": "string",
                "resolved_by": "string",
                "failed_at": "datetime|null",
                "recovered_at": "datetime|null",
                "time_to_recovery_seconds": "number|null",
            }
        ],
    },
    "osaa-recover retry": {
        "db_path": "string",
        "count": "integer",
        "recovered": "integer",
        "failed": "integer",
        "items": [
            {"pipeline": "string", "scope": "string", "key": "string", "action": "string", "outcome": "string", "message": "string|null"}
        ],
    },
    "osaa-recover clear": {
        "db_path": "string",
        "confirmed": "boolean",
        "count": "integer",
        "cleared": "integer",
        "items": [ITEM],
    },
    "osaa-recover stats": {
        "db_path": "string",
        "pipelines": {"<pipeline>": PIPELINE_STATS},
        "totals": {"items": "integer", "failed": "integer", "interrupted": "integer", "failure_rate_percent": "number"},
        "generated_at": "datetime",
    },
    "osaa-recover report": {
        "db_path": "string",
        "html": "string",
        "pipelines": ["string"],
        "open_failures": "integer",
        "bytes": "integer",
    },
    "osaa-recover verify": {
        "db_path": "string",
        "bucket": "string",
        "checked": "integer",
        "problems": "integer",
        "items": [
            {
                "pipeline": "string",
                "key": "string",
                "file_path": "string|null",
                "ok": "boolean",
                "findings": ["string"],
                "recorded_checksum": "string|null",
                "local_checksum": "string|null",
                "object": {"exists": "boolean", "size": "integer|null", "md5": "string|null"},
                "expected": {"size": "integer|null", "md5": "string|null", "transaction_id": "string|null"},
                "object_error": "string|null",
            }
        ],
    },
    "osaa-recover transactions": {
        "db_path": "string",
        "bucket": "string",
        "needs_reconcile": "boolean",
        "transactions": [
            {
                "pipeline": "string",
                "transaction_id": "string",
                "phase": "string|null",
                "status": "string",
                "interrupted": "boolean",
                "operation": "string|null",
                "owner_pid": "integer",
                "owner_host": "string",
                "started_at": "datetime|null",
                "updated_at": "datetime",
                "staging": "string|null",
                "puts": "integer|null",
                "deletes": "integer|null",
                "error_message": "string|null",
            }
        ],
        "staging": [
            {
                "prefix": "string",
                "kind": "string",
                "transaction_id": "string|null",
                "objects": "integer",
                "bytes": "integer",
                "state": "string",
            }
        ],
        "decisions": [
            {
                "position": "integer",
                "kind": "string",
                "transaction_id": "string",
                "at": "string",
                "puts": "integer",
                "deletes": "integer",
                "superseded": ["string"],
                "state": "string",
            }
        ],
    },
    "osaa-recover reconcile": {
        "db_path": "string",
        "ok": "boolean",
        "transactions": {
            "rolled_back": ["string"],
            "rolled_forward": ["string"],
            "cleaned_staging": ["string"],
            "superseded": {"<transaction id>": ["string"]},
            "failed": {"<transaction id>": "string"},
        },
        "sqlmesh": {
            "project": "string",
            "interrupted_closed": ["string"],
            "discarded": {"<staged output prefix>": "string"},
            "kept": ["string"],
            "published": [
                {"environment": "string", "prefix": "string", "written": ["string"], "deleted": ["string"], "unchanged": ["string"]}
            ],
        },
    },
    "osaa-recover history": {"db_path": "string", "key": "string", "keys": ["string"], "count": "integer", "events": [EVENT]},
    "osaa-recover prune": {
        "db_path": "string",
        "older_than_seconds": "number",
        "cutoff": "datetime",
        "pruned": {"<pipeline>": "integer"},
        "total": "integer",
    },
    "osaa-recover lease show": {"url": "string", "lease": LEASE},
    "osaa-recover lease break": {"url": "string", "lease": LEASE, "broken": "boolean"},
    "osaa-ingest": {
        "db_path": "string",
        "pipeline": "string",
        "raw_root": "string",
        "env_prefix": "string",
        "transaction_id": "string|null",
        "landed": ["string"],
        "skipped": ["string"],
        "failures": [{"item": "string", "error_type": "string", "category": "string", "message": "string"}],
    },
    "osaa-promote": {
        "db_path": "string",
        "pipeline": "string",
        "from": "string",
        "to": "string",
        "dry_run": "boolean",
        "transaction_id": "string|null",
        "copied": ["string"],
        "unchanged": ["string"],
        "deleted": ["string"],
    },
}

# Top-level objects that may be null instead (objects have no "|null" spelling), and when.
NULLABLE_OBJECTS = {
    ("osaa-recover reconcile", "sqlmesh"): "outside a SQLMesh project",
    ("osaa-recover lease show", "lease"): "when no runner has synced there yet",
    ("osaa-recover lease break", "lease"): "when no runner has synced there yet",
}
LEASE_COULD_NOT_LOOK = "usage or configuration error (checkpoint.sync.url not set), or the bucket could not be read"

COULD_NOT_LOOK = "usage or configuration error, or the checkpoint database is missing or locked by another process"

EXIT_CODES: dict[str, dict[int, str]] = {
    "osaa-recover list-failed": {0: "no failed or interrupted item", 1: "failed or interrupted items listed", 2: COULD_NOT_LOOK},
    "osaa-recover retry": {
        0: "every selected item recovered (or there was nothing to retry)",
        1: "an item is still failing, cannot be retried, or needs the printed plan (--apply runs it)",
        2: COULD_NOT_LOOK + "; or --key matches no item",
    },
    "osaa-recover clear": {0: "listed (and, with --confirm, deleted)", 2: COULD_NOT_LOOK},
    "osaa-recover stats": {0: "no failed or interrupted item", 1: "some item is failed or interrupted", 2: COULD_NOT_LOOK},
    "osaa-recover report": {0: "the report was written (open failures are listed in it)", 2: COULD_NOT_LOOK + "; or FILE cannot be written"},
    "osaa-recover verify": {0: "every checked file and object matches", 1: "a source changed, an object is missing, differs or is unreadable", 2: COULD_NOT_LOOK},
    "osaa-recover transactions": {0: "nothing awaits recovery", 1: "a transaction or staged output awaits `reconcile`", 2: COULD_NOT_LOOK},
    "osaa-recover reconcile": {0: "everything was recovered", 1: "a transaction could not be recovered", 2: COULD_NOT_LOOK + "; or SQLMesh state could not be read"},
    "osaa-recover history": {0: "events shown", 2: COULD_NOT_LOOK + "; or --key names no item"},
    "osaa-recover prune": {0: "pruned", 2: COULD_NOT_LOOK},
    "osaa-recover lease show": {0: "no runner holds the lease (none yet, released or expired)", 1: "a runner holds a live lease", 2: LEASE_COULD_NOT_LOOK},
    "osaa-recover lease break": {
        0: "the lease was broken, or there was none to break (released or absent)",
        1: "the lease is live and --force was not given: nothing changed",
        2: LEASE_COULD_NOT_LOOK,
    },
    "osaa-ingest": {0: "every file landed or was unchanged", 1: "a file failed (the others landed)", 2: COULD_NOT_LOOK + "; or RAW_DIR is missing"},
    "osaa-promote": {0: "promoted (or, with --dry-run, planned)", 1: "the promotion failed; --to is unchanged, or rolled forward by `reconcile`", 2: COULD_NOT_LOOK + "; or the prefixes overlap, or --from is empty"},
}
