"""Promotion: make one prefix an exact copy of another, in one transaction (``osaa-promote``).

Every source object is staged as a server-side copy (objects whose target already has the
same content are skipped), target objects absent from the source are staged for deletion,
and the transaction commits all of it or none (DESIGN section 7). The journal row records
the operation, so ``osaa-recover retry`` can re-apply a promotion that was rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import click

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.cli import output
from sqlmesh_osaa.cli.context import EXIT_OK, EXIT_PROBLEMS, CliError, command_run
from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.exceptions import PipelineBaseError
from sqlmesh_osaa.settings import OsaaSettings
from sqlmesh_osaa.storage import ObjectStore, make_store
from sqlmesh_osaa.transaction_manager import TransactionManager, journal_key

OPERATION = "promote"


@dataclass
class Promotion:
    """What a promotion did (or, in a dry run, would do)."""

    source: str
    target: str
    transaction_id: str | None = None
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def _prefix(value: str, staging_prefix: str, option: str) -> str:
    prefix = value.strip("/")
    if not prefix or ".." in prefix.split("/"):
        raise CliError(f"{option} must be a non-empty prefix without '..', got {value!r}")
    if (prefix + "/").startswith(staging_prefix.strip("/") + "/"):
        raise CliError(f"{option} {value!r} lies in the staging area {staging_prefix!r}, which transactions own")
    return prefix + "/"


def check_prefixes(source: str, target: str, staging_prefix: str) -> tuple[str, str]:
    """Normalised ``source/`` and ``target/``; refuses prefixes that overlap each other or staging."""
    source, target = _prefix(source, staging_prefix, "--from"), _prefix(target, staging_prefix, "--to")
    if source.startswith(target) or target.startswith(source):
        raise CliError(f"--from {source!r} and --to {target!r} overlap; promote between disjoint prefixes")
    return source, target


def promote_prefix(
    store: ObjectStore,
    checkpoint: PipelineCheckpoint,
    settings: OsaaSettings,
    source: str,
    target: str,
    *,
    transaction_id: str | None = None,
    dry_run: bool = False,
    allow_empty: bool = False,
) -> Promotion:
    """Copy ``source/`` onto ``target/`` and delete what the source lacks, all or nothing."""
    sources = {info.key[len(source) :]: info for info in store.list_prefix(source)}
    if not sources and not allow_empty:
        raise CliError(
            f"Source prefix {source!r} is empty in bucket {store.bucket!r}: promoting it would delete every object "
            f"under {target!r}. Check --from, or pass --allow-empty to do exactly that"
        )
    targets = {info.key[len(target) :]: info for info in store.list_prefix(target)}
    result = Promotion(source, target, transaction_id)
    if dry_run:
        for relative, info in sorted(sources.items()):
            same = relative in targets and info.md5 is not None and targets[relative].md5 == info.md5
            (result.unchanged if same else result.copied).append(target + relative)
        result.deleted = [target + relative for relative in sorted(set(targets) - set(sources))]
        return result
    txn = TransactionManager(
        store=store,
        checkpoint=checkpoint,
        settings=settings,
        transaction_id=transaction_id,
        error_handler=ErrorHandler.from_settings(settings, name="object-storage"),
    )
    txn.begin()
    result.transaction_id = txn.transaction_id
    checkpoint.update_metadata(
        CheckpointScope.OPERATION, journal_key(txn.transaction_id), {"operation": OPERATION, "from": source, "to": target}
    )
    with txn:
        for relative in sorted(sources):
            put = txn.stage_copy(source + relative, target + relative)
            (result.unchanged if put.unchanged else result.copied).append(put.key)
        for relative in sorted(set(targets) - set(sources)):
            txn.delete(target + relative)
            result.deleted.append(target + relative)
    return result


def _render(report: Mapping[str, Any]) -> None:
    verb = "Would promote" if report["dry_run"] else "Promoted"
    rows = [("copied", len(report["copied"])), ("unchanged", len(report["unchanged"])), ("deleted", len(report["deleted"]))]
    output.show(output.table(f"{verb} {report['from']} -> {report['to']}", ["Objects", "Count"], rows))
    if report["transaction_id"]:
        output.note(f"Transaction {report['transaction_id']} committed.")


def run(
    ctx: click.Context,
    source: str,
    target: str,
    dry_run: bool,
    allow_empty: bool,
    pipeline: str,
    db: Path | None,
    project: Path | None,
    as_json: bool,
) -> None:
    """The ``osaa-promote`` command once its options are parsed."""
    with command_run(ctx, as_json=as_json, db=db, project=project, create_db=True) as run:
        settings = run.target.settings
        source_prefix, target_prefix = check_prefixes(source, target, settings.storage.staging_prefix)
        try:
            result = promote_prefix(
                make_store(settings.storage),
                run.session.checkpoint(pipeline),
                settings,
                source_prefix,
                target_prefix,
                dry_run=dry_run,
                allow_empty=allow_empty,
            )
        except PipelineBaseError as error:
            raise CliError(f"Promotion of {source_prefix} to {target_prefix} failed: {error}", EXIT_PROBLEMS) from error
        report = {
            "pipeline": pipeline,
            "from": result.source,
            "to": result.target,
            "dry_run": dry_run,
            "transaction_id": result.transaction_id,
            "copied": result.copied,
            "unchanged": result.unchanged,
            "deleted": result.deleted,
        }
        run.finish(report, _render, EXIT_OK)

