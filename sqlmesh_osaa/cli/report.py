"""``report --html``: one self-contained HTML page of what happened, for a person to look at.

Everything is inline (CSS and SVG charts, no script, no font, no image file, no network), so
the page opens from a CI artefact, an e-mail attachment or a bucket exactly as written. It
shows, from the checkpoint database alone:

- runs over time (every plan/run, its duration, failures marked in red);
- time to recovery: the figures per pipeline, and each recovered failure's time as a bar;
- the slowest model evaluations (evaluation and audit time);
- what each environment currently publishes and from which evaluation;
- what is still broken (the open failures ``list-failed`` shows).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from typing import Any, Iterable, Mapping, Sequence

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint, item_history

FAILED = "failed"
SLOWEST = 12
RECOVERIES = 20
_WIDTH, _ROW = 760, 22

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:980px;color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2.2rem;border-bottom:1px solid #dde1e8;padding-bottom:.3rem}
.muted{color:#667085}.ok{color:#137333}.bad{color:#b3261e}
.status{display:inline-block;padding:.15rem .6rem;border-radius:1rem;font-weight:600}
.status.ok{background:#e6f4ea}.status.bad{background:#fce8e6}
table{border-collapse:collapse;width:100%;margin:.6rem 0;font-size:13px}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eceff3;vertical-align:top}
th{background:#f6f7f9;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px;word-break:break-all}svg{display:block;margin:.6rem 0;max-width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:#344054}
"""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{escape(_text(v))}</td>' if i in numeric else f"<td>{escape(_text(v))}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(columns)}" class="muted">None.</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _svg(height: int, body: str, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(label)}" '
        f'viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" height="{height}">{body}</svg>'
    )


def runs_chart(runs: Sequence[Mapping[str, Any]]) -> str:
    """Each plan/run as a bar at its start time, as tall as it took; failed ones red with a cross."""
    if not runs:
        return '<p class="muted">No plan or run recorded yet.</p>'
    left, top, plot_w, plot_h = 60, 12, _WIDTH - 80, 160
    times = [run["started_at"].timestamp() for run in runs]
    first, last = min(times), max(times)
    span = (last - first) or 1.0
    longest = max((run["duration"] or 0.0) for run in runs) or 1.0
    bar = max(3.0, min(18.0, plot_w / (len(runs) * 1.6)))
    parts = [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#98a2b3"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#98a2b3"/>',
        f'<text x="{left - 6}" y="{top + 8}" text-anchor="end">{longest:.1f}s</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0s</text>',
        f'<text x="{left}" y="{top + plot_h + 16}">{escape(_text(runs[0]["started_at"]))}</text>',
        f'<text x="{left + plot_w}" y="{top + plot_h + 16}" text-anchor="end">{escape(_text(runs[-1]["started_at"]))}</text>',
    ]
    for run, at in zip(runs, times):
        x = left + (at - first) / span * (plot_w - bar) if len(runs) > 1 else left + plot_w / 2
        height = max(2.0, (run["duration"] or 0.0) / longest * (plot_h - 10))
        failed = run["status"] == FAILED
        colour = "#d93025" if failed else "#34a853"
        title = escape(f"{run['key']}: {run['status']}, {run['duration'] or 0:.1f}s" + (f" - {run['error']}" if failed else ""))
        parts.append(
            f'<rect class="run {run["status"]}" x="{x:.1f}" y="{top + plot_h - height:.1f}" width="{bar:.1f}" '
            f'height="{height:.1f}" fill="{colour}"><title>{title}</title></rect>'
        )
        if failed:
            cx, cy = x + bar / 2, top + plot_h - height - 8
            parts.append(
                f'<path class="failure-mark" d="M{cx - 4:.1f} {cy - 4:.1f}L{cx + 4:.1f} {cy + 4:.1f}M{cx + 4:.1f} {cy - 4:.1f}'
                f'L{cx - 4:.1f} {cy + 4:.1f}" stroke="#d93025" stroke-width="2"/>'
            )
    return _svg(top + plot_h + 24, "".join(parts), "Runs over time; failed runs in red")


def bar_chart(rows: Sequence[tuple[str, float]], unit: str, label: str, colour: str) -> str:
    """Horizontal bars, one per (name, value)."""
    if not rows:
        return '<p class="muted">Nothing to show yet.</p>'
    name_w, value_w = 330, 70
    plot_w = _WIDTH - name_w - value_w
    largest = max(value for _, value in rows) or 1.0
    parts = []
    for i, (name, value) in enumerate(rows):
        y = i * _ROW + 4
        width = max(1.0, value / largest * plot_w)
        shown = name if len(name) <= 52 else name[:49] + "..."
        parts.append(f'<text x="0" y="{y + 13}">{escape(shown)}<title>{escape(name)}</title></text>')
        parts.append(f'<rect class="bar" x="{name_w}" y="{y}" width="{width:.1f}" height="{_ROW - 6}" fill="{colour}"/>')
        parts.append(f'<text x="{name_w + width + 6:.1f}" y="{y + 13}">{value:.2f}{escape(unit)}</text>')
    return _svg(len(rows) * _ROW + 8, "".join(parts), label)


def _started(row: Mapping[str, Any]) -> datetime:
    """When the run began: the stamp in its key (``<command>|<env>|<UTC time>``); a resolution restarts the row."""
    try:
        return datetime.strptime(row["key"].rsplit("|", 1)[-1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return row["started_at"] or row["updated_at"]


def _outcome(row: Mapping[str, Any]) -> str:
    """How the run itself ended; a failure later superseded stays a failure here (``resolved_by`` says by what)."""
    return (row["metadata"] or {}).get("outcome") or row["status"]


def evaluation_label(evaluation: str | None) -> str:
    """``<model>/<version>/<start ms>-<end ms>`` as ``<model> v<version>, <start> to <end>``."""
    parts = (evaluation or "").split("/")
    if len(parts) != 3 or "-" not in parts[2]:
        return evaluation or ""
    try:
        start, end = (datetime.fromtimestamp(int(ms) / 1000, timezone.utc).strftime("%Y-%m-%d") for ms in parts[2].split("-", 1))
    except ValueError:
        return evaluation or ""
    return f"{parts[0]} v{parts[1]}, {start} to {end}"


def _error(row: Mapping[str, Any]) -> str | None:
    """The run's error; once superseded, the row keeps only the failed evaluations' (in its metadata)."""
    return row["error_message"] or "; ".join((row["metadata"] or {}).get("failed_evaluations") or []) or None


def _runs(checkpoint: PipelineCheckpoint) -> list[dict[str, Any]]:
    rows = checkpoint.list(scope=CheckpointScope.PIPELINE)
    runs = [
        {
            "pipeline": checkpoint.pipeline_name,
            "key": row["key"],
            "status": _outcome(row),
            "environment": (row["metadata"] or {}).get("environment"),
            "started_at": _started(row),
            "duration": (row["metadata"] or {}).get("duration_seconds"),
            "published": (row["metadata"] or {}).get("published_count", 0),
            "error": _error(row) if _outcome(row) == FAILED else None,
            "resolved_by": (row["metadata"] or {}).get("resolved_by"),
        }
        for row in rows
    ]
    return sorted(runs, key=lambda run: run["started_at"])


def _recoveries(checkpoints: Sequence[PipelineCheckpoint]) -> list[tuple[str, float]]:
    """(item, seconds) of the longest failures later completed, of items retried or superseded: one query."""
    if not checkpoints:
        return []
    pipelines = [checkpoint.pipeline_name for checkpoint in checkpoints]
    spells = item_history.recovery_spells(checkpoints[0].store, pipelines, retried_or_resolved=True, limit=RECOVERIES)
    return [(f"{spell['scope']} {spell['key']}", spell["seconds"]) for spell in spells]


def _slowest(checkpoints: Sequence[PipelineCheckpoint]) -> list[dict[str, Any]]:
    """The slowest MODEL evaluations, ordered and cut in the store (a year of daily runs is many rows)."""
    if not checkpoints:
        return []
    store = checkpoints[0].store
    duration = f"CAST({store.metadata_field('metadata', 'duration_seconds')} AS DOUBLE PRECISION)"
    pipelines = [checkpoint.pipeline_name for checkpoint in checkpoints]
    sql = f"""SELECT status, metadata, key FROM checkpoints
              WHERE pipeline IN ({", ".join("?" * len(pipelines))}) AND scope = ? AND {duration} IS NOT NULL
              ORDER BY {duration} DESC, pipeline, key LIMIT ?"""
    models = []
    for status, metadata_text, key in store.read(sql, [*pipelines, CheckpointScope.MODEL.value, SLOWEST]):
        metadata = json.loads(metadata_text)
        models.append(
            {
                "model": metadata.get("model") or key.split("|", 1)[0],
                "environment": metadata.get("environment"),
                "interval": f"{metadata.get('interval_start', '')} - {metadata.get('interval_end', '')}",
                "duration": float(metadata["duration_seconds"]),
                "evaluation": metadata.get("evaluation_seconds"),
                "audit": metadata.get("audit_seconds"),
                "status": status,
            }
        )
    return models


def render(stats: Mapping[str, Any], checkpoints: Sequence[PipelineCheckpoint], open_failures: Sequence[Mapping[str, Any]], db_path: str) -> str:
    """The page, from ``monitoring.database_stats`` output, the checkpoints and ``list-failed``'s items."""
    runs = [run for checkpoint in checkpoints for run in _runs(checkpoint)]
    runs.sort(key=lambda run: run["started_at"])
    recoveries = _recoveries(checkpoints)
    slowest = _slowest(checkpoints)
    broken = len(open_failures)
    status = (
        f'<span class="status bad">{broken} open failure(s)</span>' if broken else '<span class="status ok">Nothing is broken</span>'
    )
    ttr_rows = [
        (name, s["time_to_recovery"]["recovered"], s["time_to_recovery"]["unrecovered"], s["time_to_recovery"]["mean_seconds"],
         s["time_to_recovery"]["median_seconds"], s["time_to_recovery"]["max_seconds"], s["failure_rate_percent"], s["last_success_at"])
        for name, s in stats["pipelines"].items()
    ]
    exports = [
        (e["environment"], key, evaluation_label(e["evaluation"]), e["bytes"], (e["md5"] or "")[:8], e["last_success_at"])
        for s in stats["pipelines"].values()
        for key, e in sorted(s["exports"].items(), key=lambda item: (item[1]["environment"], item[0]))
    ]
    sections = [
        f"<h1>sqlmesh-osaa report</h1><p class=\"muted\">Checkpoint database <code>{escape(db_path)}</code>, "
        f"generated {escape(_text(stats['generated_at']))}.</p><p>{status}</p>",
        "<h2>Runs over time</h2>",
        '<p class="muted">Every <code>sqlmesh plan</code>/<code>run</code>: bar height is how long it took; failed runs are red and marked with a cross.</p>',
        runs_chart(runs),
        _table(
            ["Started", "Run", "Environment", "Outcome", "Seconds", "Published", "Error", "Recovered by"],
            [(r["started_at"], r["key"], r["environment"], r["status"], r["duration"], r["published"], r["error"], r["resolved_by"])
             for r in reversed(runs[-30:])],
            numeric=(4, 5),
        ),
        "<h2>Time to recovery</h2>",
        _table(["Pipeline", "Recovered", "Still failing", "Mean s", "Median s", "Max s", "Failure rate %", "Last success"], ttr_rows, (1, 2, 3, 4, 5, 6)),
        bar_chart(recoveries, "s", "Time to recovery per recovered failure", "#f29900"),
        "<h2>Slowest model evaluations</h2>",
        bar_chart([(f"{m['model']} ({m['environment']})", m["duration"]) for m in slowest], "s", "Slowest model evaluations", "#1a73e8"),
        _table(
            ["Model", "Environment", "Interval", "Total s", "Evaluation s", "Audits s", "Status"],
            [(m["model"], m["environment"], m["interval"], m["duration"], m["evaluation"], m["audit"], m["status"]) for m in slowest],
            numeric=(3, 4, 5),
        ),
        "<h2>What each environment publishes</h2>",
        '<p class="muted">Each object under an environment\'s prefix, the evaluation (model / table version / interval) it came from, and the plan/run that last published it.</p>',
        _table(["Environment", "Object", "From evaluation", "Bytes", "MD5", "Last published"], exports, (3,)),
        "<h2>Still broken</h2>",
        _table(
            ["Pipeline", "Scope", "Key", "Status", "Category", "Last error", "Since"],
            [(i["pipeline"], i["scope"], i["key"], "interrupted" if i["interrupted"] else i["status"], i["error_category"],
              i["error_message"], i["failing_since"]) for i in open_failures],
        ),
    ]
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>sqlmesh-osaa report</title><style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>\n"
    )
