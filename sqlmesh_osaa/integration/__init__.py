"""sqlmesh-osaa inside SQLMesh: checkpoints, osaa model kinds, audited publication.

Importing the package installs three wrappers on SQLMesh classes: ``Scheduler.evaluate``
(MODEL checkpoints), the plan evaluator (the PIPELINE checkpoint of a failed plan) and
``Context.plan`` (reconciliation before every plan). The first two pass straight through
until ``@osaa_before_all()`` enables the integration, the third unless the project's
``before_all`` calls it, so a project that does not use the extension runs exactly as
stock SQLMesh. A fourth, on SQLMesh's DuckDB cursor initialiser, gives DuckDB models S3
access when the project's storage is S3 (``duckdb_connections.py``).
"""

from sqlmesh_osaa.integration import duckdb_connections, model_checkpoints, pipeline_runs, plan_start

model_checkpoints.install()
pipeline_runs.install()
plan_start.install()
duckdb_connections.install()
