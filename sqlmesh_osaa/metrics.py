"""The monitoring figures as Prometheus metrics: OpenMetrics text, and a node-exporter textfile.

``osaa-recover stats --format openmetrics`` prints :func:`render` of the same report that
``stats --json`` prints, so the numbers are equal by construction. With
``monitoring.textfile_directory`` set (node-exporter's ``--collector.textfile.directory``),
every plan/run/ingest ends by writing its pipeline's metrics in the Prometheus text format to
``osaa_<pipeline>.prom`` there, atomically: a temp file in the same directory, fsynced, then
renamed over the old one, so the collector never reads half a file. One file per pipeline,
so the ingest job and ``sqlmesh run`` never overwrite each other's figures.

Names follow Prometheus conventions: the ``osaa_`` prefix, base units (seconds, bytes),
``_total`` for counters, ratios from 0 to 1, timestamps as ``_timestamp_seconds``; the
pipeline, scope, status, breaker, environment and key are labels. The text is written here
rather than with prometheus_client: it is a few dozen lines, and the core gains no
dependency (the tests parse it with prometheus_client's parsers).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from sqlmesh_osaa.checkpoint import PipelineCheckpoint
from sqlmesh_osaa.monitoring import database_stats

_log = logging.getLogger(__name__)

OPENMETRICS = "openmetrics"
PROMETHEUS = "prometheus"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Labels = Mapping[str, str]


@dataclass
class Family:
    """One metric family: its samples are (suffix, labels, value)."""

    name: str
    kind: str
    help: str
    unit: str = ""
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, labels: Labels, value: float | int | None, suffix: str = "") -> None:
        if value is not None:
            self.samples.append((suffix, labels, float(value)))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(str(value))}"' for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _families(report: Mapping[str, Any]) -> list[Family]:
    f = {
        name: Family(name, kind, text, unit)
        for name, kind, text, unit in (
            ("osaa_checkpoint_items", "gauge", "Checkpoint items by scope and status.", ""),
            ("osaa_checkpoint_interrupted_items", "gauge", "In-progress items left by a run that ended.", ""),
            ("osaa_failure_ratio", "gauge", "Failed items over all items (0 to 1).", "ratio"),
            ("osaa_retries", "counter", "Restarts of items, by cause.", ""),
            ("osaa_recoveries", "counter", "Failures later completed (recovered).", ""),
            ("osaa_unrecovered_failures", "gauge", "Failure episodes not recovered yet.", ""),
            ("osaa_time_to_recovery_seconds", "summary", "Seconds from an item's first failure to its completion.", "seconds"),
            ("osaa_time_to_recovery_max_seconds", "gauge", "Longest time to recovery.", "seconds"),
            ("osaa_circuit_breaker_openings", "counter", "Times a circuit breaker opened.", ""),
            ("osaa_circuit_breaker_open_seconds", "counter", "Seconds circuit breakers stayed open (closed spells).", "seconds"),
            ("osaa_circuit_breaker_open", "gauge", "1 while the circuit breaker is open.", ""),
            ("osaa_circuit_breaker_rejections", "counter", "Calls refused by an open circuit.", ""),
            ("osaa_last_success_timestamp_seconds", "gauge", "When the pipeline last completed a plan/run (or item).", "seconds"),
            ("osaa_export_last_success_timestamp_seconds", "gauge", "When a plan/run last published the export.", "seconds"),
            ("osaa_export_size_bytes", "gauge", "Size of the export as last published.", "bytes"),
            ("osaa_published_objects", "counter", "Objects written to an environment's prefix.", ""),
            ("osaa_published_bytes", "counter", "Bytes written to an environment's prefix.", "bytes"),
        )
    }
    for pipeline, stats in report["pipelines"].items():
        p = {"pipeline": pipeline}
        for scope, statuses in sorted(stats["by_scope"].items()):
            for status, count in sorted(statuses.items()):
                f["osaa_checkpoint_items"].add({**p, "scope": scope, "status": status}, count)
        f["osaa_checkpoint_interrupted_items"].add(p, stats["interrupted"])
        f["osaa_failure_ratio"].add(p, stats["failure_rate_percent"] / 100)
        for cause in ("after_failure", "after_interruption", "reruns"):
            f["osaa_retries"].add({**p, "cause": cause}, stats["retries"][cause], "_total")
        recovery = stats["time_to_recovery"]
        f["osaa_recoveries"].add(p, recovery["recovered"], "_total")
        f["osaa_unrecovered_failures"].add(p, recovery["unrecovered"])
        ttr = f["osaa_time_to_recovery_seconds"]
        ttr.add({**p, "quantile": "0.5"}, recovery["median_seconds"])
        ttr.add(p, (recovery["mean_seconds"] or 0.0) * recovery["recovered"], "_sum")
        ttr.add(p, recovery["recovered"], "_count")
        f["osaa_time_to_recovery_max_seconds"].add(p, recovery["max_seconds"])
        for breaker, state in sorted(stats["circuit_breakers"].items()):
            b = {**p, "breaker": breaker}
            f["osaa_circuit_breaker_openings"].add(b, state["openings"], "_total")
            f["osaa_circuit_breaker_open_seconds"].add(b, state["open_seconds"], "_total")
            f["osaa_circuit_breaker_open"].add(b, int(state["open"]))
        f["osaa_circuit_breaker_rejections"].add(p, stats["circuit_breaker_rejections"], "_total")
        f["osaa_last_success_timestamp_seconds"].add(p, _timestamp(stats["last_success_at"]))
        for key, export in sorted(stats["exports"].items()):
            e = {**p, "environment": export["environment"], "key": key}
            f["osaa_export_last_success_timestamp_seconds"].add(e, _timestamp(export["last_success_at"]))
            f["osaa_export_size_bytes"].add(e, export["bytes"])
        for environment, totals in sorted(stats["published"].items()):
            e = {**p, "environment": environment}
            f["osaa_published_objects"].add(e, totals["objects"], "_total")
            f["osaa_published_bytes"].add(e, totals["bytes"], "_total")
    return list(f.values())


def render(report: Mapping[str, Any], flavour: str = OPENMETRICS) -> str:
    """The report (``monitoring.database_stats``) as OpenMetrics text, or Prometheus text for node-exporter."""
    lines = []
    for family in _families(report):
        if not family.samples:
            continue
        counter_in_text = flavour == PROMETHEUS and family.kind == "counter"
        declared = f"{family.name}_total" if counter_in_text else family.name
        lines.append(f"# HELP {declared} {family.help}")
        lines.append(f"# TYPE {declared} {family.kind}")
        if family.unit and flavour == OPENMETRICS:
            lines.append(f"# UNIT {declared} {family.unit}")
        lines.extend(f"{family.name}{suffix}{_labels(labels)} {_number(value)}" for suffix, labels, value in family.samples)
    if flavour == OPENMETRICS:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def textfile_path(directory: Path, pipeline: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in pipeline)
    return Path(directory).expanduser() / f"osaa_{safe}.prom"


def write_textfile(directory: Path | None, checkpoint: PipelineCheckpoint) -> Path | None:
    """Write ``checkpoint``'s pipeline metrics for node-exporter, when a directory is set.

    A failure is logged, never raised: monitoring must not fail the run it reports on.
    """
    if directory is None:
        return None
    path = textfile_path(directory, checkpoint.pipeline_name)
    try:
        write_atomically(path, render(database_stats([checkpoint]), PROMETHEUS))
    except Exception:
        _log.exception("sqlmesh-osaa could not write the metrics textfile %s", path)
        return None
    _log.info("Wrote metrics to %s", path)
    return path
