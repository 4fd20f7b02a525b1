"""sqlmesh-osaa: idempotent, fault-tolerant SQLMesh pipelines on DuckDB and object storage.

The core modules (exceptions, settings, storage, checkpoint, error_handler,
transaction_manager, ingest) never import sqlmesh; import what you need from them.
"""

__version__ = "0.1.0"
