"""What the PostgreSQL server does for one batch of completions: each statement's time, WAL and buffers.

Run: .venv/bin/python bench/checkpoint_statements.py [--files N] [--setting name=value ...]

Starts the same durable throwaway server as bench/checkpoints.py, with ``pg_stat_statements``
and ``auto_explain`` loaded, makes ``mark_started_many`` then ``mark_completed_many`` of N
FILE items (default 100000), and prints for the completion: the client's wall and CPU time,
the server backend's CPU time (from /proc), and per statement its calls, execution time, WAL
records / full-page images / bytes, and shared and temporary blocks written; then the plans
``auto_explain`` logged (``EXPLAIN (ANALYZE, BUFFERS, WAL)`` of every statement over 100 ms).
``--perf FILE`` records the backend during the completion (``perf report -i FILE``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from checkpoints import FILE, PipelineCheckpoint, make_files, open_warm  # noqa: E402
from support.pgserver import PostgresServer  # noqa: E402

PROFILE_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements,auto_explain",
    "pg_stat_statements.track": "all",
    "auto_explain.log_min_duration": "100ms",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_buffers": "on",
    "auto_explain.log_wal": "on",
    "auto_explain.log_nested_statements": "on",
    "auto_explain.log_parameter_max_length": "0",
}
STATEMENTS_SQL = """
    SELECT calls, total_exec_time, rows, wal_records, wal_fpi, wal_bytes, shared_blks_written,
           local_blks_written, temp_blks_written, left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
    FROM pg_stat_statements WHERE total_exec_time > 5 ORDER BY total_exec_time DESC
"""


def backend_cpu(pid: int) -> float:
    """User + system seconds of server process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_profile(admin: psycopg.Connection, log_path: Path, log_start: int, profile: cProfile.Profile | None) -> None:
    """The statements' figures, the client's profile (if taken) and the plans auto_explain logged."""
    print(f"{'calls':>5} {'ms':>8} {'rows':>7} {'wal rec':>8} {'fpi':>6} {'wal MB':>7} {'written':>7} {'local w':>7} {'temp':>6}  query")
    for calls, ms, rows, records, fpi, wal, written, local, temp, query in admin.execute(STATEMENTS_SQL):
        print(
            f"{calls:5d} {ms:8.1f} {rows:7d} {records:8d} {fpi:6d} {int(wal) / 1e6:7.1f} {written:7d} "
            f"{local:7d} {temp:6d}  {query}"
        )
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    with log_path.open("rb") as log:
        log.seek(log_start)
        text = log.read().decode(errors="replace")
    print("\nauto_explain:")
    print("\n".join(line[:300] for line in text.splitlines() if line.strip()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--setting", action="append", default=[], help="an extra server setting, name=value")
    parser.add_argument("--perf", type=Path, help="record the backend's completion with perf into this file")
    parser.add_argument("--plain", action="store_true", help="time only: no contrib module, no plans (for A/B runs)")
    parser.add_argument("--cprofile", action="store_true", help="profile the client's completion (slows it)")
    args = parser.parse_args()
    settings = {} if args.plain else dict(PROFILE_SETTINGS)
    settings.update(item.split("=", 1) for item in args.setting)
    code = Path(sys.modules[PipelineCheckpoint.__module__].__file__).parents[2]
    print(f"code {code}; load average {os.getloadavg()[0]:.2f}; server settings {settings}")
    server = PostgresServer(durable=True, settings=settings).start()
    os.environ["PGPASSFILE"] = str(server.passfile)
    try:
        admin = psycopg.connect(host=str(server.root), port=server.port, user="postgres", dbname="postgres", autocommit=True)
        if not args.plain:
            admin.execute("CREATE EXTENSION pg_stat_statements")
        with tempfile.TemporaryDirectory(prefix="osaa-bench-") as tmp:
            items = make_files(Path(tmp), args.files)
            with open_warm({"dsn": server.create_database()}) as store:
                store.mark_started_many(FILE, [(key, path) for key, path, _ in items])
                (backend,) = store.store.read("SELECT pg_backend_pid()")[0]
                log_start = (server.root / "server.log").stat().st_size
                if not args.plain:
                    admin.execute("SELECT pg_stat_statements_reset()")
                recorder = None
                if args.perf:
                    command = ["perf", "record", "-F", "1999", "-g", "-p", str(backend), "-o", str(args.perf)]
                    recorder = subprocess.Popen(command, stderr=subprocess.DEVNULL)
                    time.sleep(1)
                server_cpu, wall, cpu = backend_cpu(backend), time.perf_counter(), time.process_time()
                profile = cProfile.Profile() if args.cprofile else None
                if profile is not None:
                    profile.enable()
                store.mark_completed_many(FILE, items)
                if profile is not None:
                    profile.disable()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                server_cpu = backend_cpu(backend) - server_cpu
                if recorder is not None:
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait()
        print(f"\nmark_completed_many of {args.files}: wall {wall:.3f} s, client CPU {cpu:.3f} s, backend CPU {server_cpu:.3f} s")
        if not args.plain:
            print_profile(admin, server.root / "server.log", log_start, profile)
        admin.close()
    finally:
        server.stop()
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
