"""The macros that enable sqlmesh-osaa from a project's ``config.yaml``.

In the project's ``macros/__init__.py``::

    import importlib
    import sqlmesh_osaa.macros as _osaa_macros
    importlib.reload(_osaa_macros)  # re-register for every SQLMesh Context of the process
    from sqlmesh_osaa.macros import *  # noqa: F401,F403

and in ``config.yaml``::

    before_all: ["@osaa_before_all()"]
    after_all: ["@osaa_after_all()"]

``@osaa_model_start()`` / ``@osaa_model_end()`` were once needed in ``model_defaults`` pre/post
statements to split a MODEL checkpoint's time into evaluation and audit; the evaluation
wrapper measures that now (``integration/sqlmesh_patches.py``), so they do nothing. They stay
registered, metadata-only, so projects that list them keep working; removing them triggers
no backfill and saves SQLMesh rendering two statements per evaluation. Each returns None. ``@osaa_landing(source,
name)`` is for model queries: it becomes the current environment's landing object.
"""

from __future__ import annotations

from typing import Any

from sqlmesh import macro

from sqlglot import exp

from sqlmesh_osaa.integration import hooks, landing

__all__ = ["osaa_after_all", "osaa_before_all", "osaa_landing", "osaa_model_end", "osaa_model_start"]


@macro()
def osaa_before_all(evaluator: Any) -> None:
    """Open the plan/run: PIPELINE checkpoint, recovery of a crashed run's leftovers."""
    hooks.before_all(evaluator)


@macro()
def osaa_after_all(evaluator: Any) -> None:
    """Publish the environment's audited outputs and close the PIPELINE checkpoint."""
    hooks.after_all(evaluator)


@macro(metadata_only=True)
def osaa_model_start(evaluator: Any) -> None:
    """Kept for projects that list it; the evaluation wrapper times the model's SQL now."""


@macro(metadata_only=True)
def osaa_model_end(evaluator: Any) -> None:
    """Kept for projects that list it; the evaluation wrapper times the model's SQL now."""


@macro()
def osaa_landing(evaluator: Any, source: Any, name: Any = None) -> exp.Literal:
    """The current environment's landing object of ``source``/``name`` (all of the source's without a name).

    ``SELECT * FROM read_parquet(@osaa_landing('sdg', 'SDG_DATA_NATIONAL'))`` reads
    ``<env prefix>/landing/sdg/SDG_DATA_NATIONAL.parquet`` from the bucket (or the local store).
    """
    uri = landing.landing_uri(
        landing.current_settings(), landing.current_environment(), _text(source), None if name is None else _text(name)
    )
    return exp.Literal.string(uri)


def _text(value: Any) -> Any:
    """A macro argument as Python: string literals arrive as sqlglot expressions."""
    return value.this if isinstance(value, exp.Literal) and value.is_string else value
