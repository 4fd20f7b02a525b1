"""sqlmesh-osaa inside SQLMesh: checkpoints, osaa model kinds, audited publication.

Importing the package installs the wrappers of ``sqlmesh_patches`` on SQLMesh classes
(``Scheduler.evaluate``, ``Context.plan``, ``Context.run``). They pass straight through
until ``@osaa_before_all()`` enables the integration, or unless the project's ``before_all``
calls it, so a project that does not use the extension runs exactly as stock SQLMesh.
"""

from sqlmesh_osaa.integration import sqlmesh_patches

sqlmesh_patches.install()
