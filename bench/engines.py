"""Engine benchmark: the export of a large model on PostgreSQL against the DuckDB engine's, in one run.

Both engines hold the same rows (five columns shaped like ``osaa.indicators_export``), made
by SQLMesh's own engine adapters. Each measurement runs in a fresh Python process, so its
peak memory is its own:

(a) time of the export step (table on the engine -> sorted parquet on local disk): the
    DuckDB engine runs the kinds' native ``COPY``; PostgreSQL goes through ``engine_io``
    (``COPY ... TO STDOUT`` in the text format into a local file, then the same DuckDB ``COPY``). Wall
    time, the CPU time of the exporting process (user + system, all its threads) and, on
    PostgreSQL, of the server backend that ran the COPY. The parquet files must be
    byte-identical. With ``--baseline DIR`` (a directory holding another version's
    ``sqlmesh_osaa`` package, e.g. ``git archive main sqlmesh_osaa | tar -x -C DIR``) that
    version's PostgreSQL export runs too, interleaved round by round with the others, so
    an A/B comparison sees the same load;
(b) peak memory of the PostgreSQL export (VmHWM minus the RSS just before it) for several
    table sizes: on the COPY path (scalar columns) and on the batched-cursor path (the same
    rows plus a TIMESTAMPTZ column, which CSV does not carry exactly) at two batch sizes.

Run: ``.venv/bin/python bench/engines.py [--rows N] [--rounds K] [--baseline DIR] [--no-memory]``.
Figures are medians over K rounds, with the load average before and after; targets are in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.pgserver import ROLE, PostgresServer  # noqa: E402

COLUMNS = {"country_id": "VARCHAR", "indicator_id": "VARCHAR", "year": "INTEGER", "value": "DOUBLE", "source": "VARCHAR"}
TZ_COLUMNS = {**COLUMNS, "at": "TIMESTAMPTZ"}
# The same rows on both engines: i is 1..N.
_ROWS_SQL = (
    "SELECT 'C' || CAST(i % 250 AS VARCHAR) AS country_id, 'IND.' || CAST(i % 997 AS VARCHAR) AS indicator_id, "
    "CAST(1960 + i % 70 AS INTEGER) AS year, CAST(i AS DOUBLE) / 8 AS value, "
    "CASE WHEN i % 3 = 0 THEN 'wdi' WHEN i % 3 = 1 THEN 'sdg' ELSE 'opri' END AS source "
    "{extra}FROM generate_series(1, {rows}) AS s(i)"
)
_TZ_EXTRA = ", TIMESTAMPTZ '2024-01-01 00:00:00+00' + i * INTERVAL '1' SECOND AS at "


def _table(rows: int, shape: str = "scalar") -> str:
    return f"bench.{shape}_{rows}"


def _postgres_adapter(port: int, database: str) -> Any:
    from sqlmesh.core.config.connection import PostgresConnectionConfig

    return PostgresConnectionConfig(
        host="127.0.0.1", port=port, user=ROLE, password="", database=database
    ).create_engine_adapter()


def _duckdb_adapter(path: str) -> Any:
    from sqlmesh.core.config.connection import DuckDBConnectionConfig

    return DuckDBConnectionConfig(database=path).create_engine_adapter()


def _create(adapter: Any, rows: int, shape: str = "scalar") -> None:
    from sqlglot import exp

    adapter.create_schema("bench")
    extra = _TZ_EXTRA if shape == "tz" else " "
    query = exp.maybe_parse(_ROWS_SQL.format(rows=rows, extra=extra), dialect="duckdb")
    adapter.replace_query(_table(rows, shape), query)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU of another process (the PostgreSQL backend), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _as_in_an_evaluation(adapter: Any) -> None:
    """What the export kind's evaluation has run before its export step: SQLMesh's ``replace_query``.

    The kind writes the model's table with it and then exports, in the same process, so the
    modules it loads (pandas, pyarrow) are loaded when the export starts; a one-row table gives
    the child that state outside the timing, on both engines.
    """
    from sqlglot import exp

    adapter.create_schema("bench_warm")
    adapter.replace_query("bench_warm.one", exp.maybe_parse("SELECT 1 AS i", dialect="duckdb"))
    adapter.drop_table("bench_warm.one")


def bare_copy(args: argparse.Namespace) -> None:
    """The floor: the table's ``COPY ... TO STDOUT`` into /dev/null over a plain psycopg2 connection, no package.

    Any export through the engine's connection receives at least these bytes, and DuckDB's
    sort cannot write its first row before the last one has arrived: the DuckDB engine's
    export time plus this one is what a PostgreSQL export cannot go below on this machine.
    """
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=args.port, user=ROLE, dbname=args.database)
    cursor = connection.cursor()
    backend = _process_cpu_seconds_of(cursor)
    cpu, server = _cpu_seconds(), backend()
    started = time.perf_counter()
    with open(os.devnull, "wb", buffering=1 << 20) as sink:
        cursor.copy_expert(f"COPY {_table(args.rows)} TO STDOUT WITH (FORMAT text)", sink)
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "cpu": _cpu_seconds() - cpu, "server_cpu": backend() - server, "peak_mb": 0.0}
    connection.close()
    print(json.dumps({**result, "md5": None, "module": ""}))


def _process_cpu_seconds_of(cursor: Any) -> Any:
    cursor.execute("SELECT pg_backend_pid()")
    pid = cursor.fetchone()[0]
    return lambda: _process_cpu_seconds(pid)


def child(args: argparse.Namespace) -> None:
    """One export in this process; prints seconds, CPU, peak memory above the start and the file's MD5."""
    from sqlglot import exp

    from sqlmesh_osaa.integration import engine_io

    adapter = _postgres_adapter(args.port, args.database) if args.engine == "postgres" else _duckdb_adapter(args.database)
    backend = adapter.fetchone("SELECT pg_backend_pid()")[0] if args.engine == "postgres" else None
    _as_in_an_evaluation(adapter)
    server_cpu = (lambda: _process_cpu_seconds(backend)) if backend else (lambda: 0.0)
    columns = TZ_COLUMNS if args.shape == "tz" else COLUMNS
    types = {name: exp.DataType.build(dtype, dialect="duckdb") for name, dtype in columns.items()}
    with tempfile.TemporaryDirectory(prefix="osaa-bench-") as workdir:
        target = Path(workdir) / "export.parquet"
        before = _rss_kb("VmRSS")
        cpu, server = _cpu_seconds(), server_cpu()
        started = time.perf_counter()
        if args.engine == "postgres":
            engine_io.export_parquet(adapter, _table(args.rows, args.shape), types, target, batch_rows=args.batch_rows)
        else:
            adapter.execute(engine_io.sorted_parquet_copy(_table(args.rows, args.shape), target))
        seconds = time.perf_counter() - started
        cpu, server = _cpu_seconds() - cpu, server_cpu() - server
        peak = _rss_kb("VmHWM") - before
        md5 = hashlib.md5(target.read_bytes()).hexdigest()
    adapter.close()
    result = {"seconds": seconds, "cpu": cpu, "server_cpu": server, "peak_mb": peak / 1024, "md5": md5}
    print(json.dumps({**result, "module": engine_io.__file__}))


def _run_child(
    engine: str,
    database: str,
    rows: int,
    batch_rows: int,
    port: int,
    env: dict[str, str],
    shape: str = "scalar",
    baseline: Path | None = None,
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", engine, "--database", database, "--rows", str(rows),
               "--batch-rows", str(batch_rows), "--port", str(port), "--shape", shape]  # fmt: skip
    if baseline is not None:
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(baseline), env.get("PYTHONPATH", "")]))}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{engine} export of {rows} rows failed (exit {process.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    if baseline is not None and not Path(result["module"]).is_relative_to(baseline):
        raise RuntimeError(f"the baseline run imported {result['module']}, not the package under {baseline}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["duckdb", "postgres", "copy"])
    parser.add_argument("--database", default="")
    parser.add_argument("--batch-rows", type=int, default=50_000)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--shape", choices=["scalar", "tz"], default="scalar")
    parser.add_argument("--baseline", type=Path, help="a directory holding another version's sqlmesh_osaa package")
    parser.add_argument("--no-memory", action="store_true", help="skip (b), the peak-memory runs")
    args = parser.parse_args()
    if args.child:
        args.engine = args.child
        (bare_copy if args.child == "copy" else child)(args)
        return
    from sqlmesh_osaa.integration.engine_io import BATCH_ROWS

    baseline = args.baseline.resolve() if args.baseline else None
    small = args.rows // 4
    load_before = os.getloadavg()
    server = PostgresServer().start()
    env = {**os.environ, "PGPASSFILE": str(server.passfile)}
    os.environ["PGPASSFILE"] = str(server.passfile)
    memory: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="osaa-bench-engines-") as workdir:
            database = server.create_database().split("dbname=")[1].split()[0]
            duck_path = str(Path(workdir) / "engine.duckdb")
            postgres, duck = _postgres_adapter(server.port, database), _duckdb_adapter(duck_path)
            for rows in (small, args.rows):
                _create(postgres, rows)
                _create(duck, rows)
                _create(postgres, rows, "tz")
            postgres.execute("ANALYZE")
            postgres.close()
            duck.close()
            pg = {"database": database, "port": server.port, "env": env}
            runs: dict[str, list[dict[str, Any]]] = {"duckdb": [], "postgres": [], "baseline": [], "floor": []}
            for _ in range(args.rounds):
                runs["duckdb"].append(_run_child("duckdb", duck_path, args.rows, BATCH_ROWS, 0, env))
                runs["floor"].append(_run_child("copy", rows=args.rows, batch_rows=BATCH_ROWS, **pg))
                if baseline is not None:
                    runs["baseline"].append(_run_child("postgres", rows=args.rows, batch_rows=BATCH_ROWS, baseline=baseline, **pg))
                runs["postgres"].append(_run_child("postgres", rows=args.rows, batch_rows=BATCH_ROWS, **pg))
            if not args.no_memory:
                memory = {
                    f"COPY path, {small} rows": _run_child("postgres", rows=small, batch_rows=BATCH_ROWS, **pg),
                    f"COPY path, {args.rows} rows": runs["postgres"][0],
                    f"cursor path, {small} rows, batch {BATCH_ROWS}": _run_child(
                        "postgres", rows=small, batch_rows=BATCH_ROWS, shape="tz", **pg
                    ),
                    f"cursor path, {args.rows} rows, batch {BATCH_ROWS}": _run_child(
                        "postgres", rows=args.rows, batch_rows=BATCH_ROWS, shape="tz", **pg
                    ),
                    f"cursor path, {args.rows} rows, batch {BATCH_ROWS * 4}": _run_child(
                        "postgres", rows=args.rows, batch_rows=BATCH_ROWS * 4, shape="tz", **pg
                    ),
                }
    finally:
        server.stop()
    _report(args.rows, runs, memory, load_before)


def _median(results: list[dict[str, Any]], field: str) -> float:
    return statistics.median(result[field] for result in results)


def _report(rows: int, runs: dict[str, list[dict[str, Any]]], memory: dict[str, dict[str, Any]], load_before: tuple) -> None:
    duck_s, duck_cpu = _median(runs["duckdb"], "seconds"), _median(runs["duckdb"], "cpu")
    identical = {r["md5"] for label, results in runs.items() if label != "floor" for r in results}
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; {len(runs['duckdb'])} rounds")
    print(f"(a) export of {rows} rows: DuckDB engine {duck_s:.2f} s (CPU {duck_cpu:.2f} s); "
          f"byte-identical: {len(identical) == 1}")  # fmt: skip
    for label in ("baseline", "postgres"):
        if not runs[label]:
            continue
        seconds, cpu, server = (_median(runs[label], field) for field in ("seconds", "cpu", "server_cpu"))
        name = "PostgreSQL" if label == "postgres" else "PostgreSQL, baseline"
        print(f"    {name}: {seconds:.2f} s, ratio {seconds / duck_s:.2f}x (target <= 2x); CPU {cpu:.2f} s "
              f"({cpu / duck_cpu:.2f}x the DuckDB engine's) plus the server's {server:.2f} s")  # fmt: skip
    floors = [(duck["seconds"] + bare["seconds"]) / duck["seconds"] for duck, bare in zip(runs["duckdb"], runs["floor"])]
    print(f"    floor (no package): the bare COPY into /dev/null {_median(runs['floor'], 'seconds'):.2f} s "
          f"(CPU {_median(runs['floor'], 'cpu'):.2f} + server {_median(runs['floor'], 'server_cpu'):.2f} s); "
          f"DuckDB engine + bare COPY: {statistics.median(floors):.2f}x the DuckDB engine (per round, median)")  # fmt: skip
    for number, rounds in enumerate(zip(runs["duckdb"], runs["postgres"], runs["baseline"] or runs["postgres"], runs["floor"]), 1):
        duck, new, old, bare = rounds
        against = f"; baseline {old['seconds']:.2f} s, CPU {old['cpu']:.2f} + {old['server_cpu']:.2f} s" if runs["baseline"] else ""
        print(f"    round {number}: DuckDB engine {duck['seconds']:.2f} s, PostgreSQL {new['seconds']:.2f} s "
              f"({new['seconds'] / duck['seconds']:.2f}x), CPU {new['cpu']:.2f} + server {new['server_cpu']:.2f} s{against}; "
              f"bare COPY {bare['seconds']:.2f} s (floor {(duck['seconds'] + bare['seconds']) / duck['seconds']:.2f}x)")  # fmt: skip
    if runs["baseline"]:
        pairs = [new["seconds"] / old["seconds"] for new, old in zip(runs["postgres"], runs["baseline"])]
        cpu_pairs = [new["cpu"] / old["cpu"] for new, old in zip(runs["postgres"], runs["baseline"])]
        print(f"    this version / baseline, per round (median): wall {statistics.median(pairs):.3f}, "
              f"CPU {statistics.median(cpu_pairs):.3f}")  # fmt: skip
    for label, result in memory.items():
        print(f"(b) PostgreSQL export, {label}: peak {result['peak_mb']:.0f} MB above the start, "
              f"{result['seconds']:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
