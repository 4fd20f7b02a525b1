"""The floor of issue 11's four-writer ratio on this machine: four processes against one, without the package.

Each "mark" here is the least a durable PostgreSQL mark can be: one bare one-row INSERT in
autocommit through psycopg, one commit and its WAL flush, nothing of the package. The same
harness as ``bench/checkpoints.py``'s runner phase (same server defaults, same window, same
CPU accounting) runs it and then the package's single marks, ``--rounds`` times each on fresh
databases. No mark of the package can be cheaper than the bare INSERT on either side of the
connection, so where the bare INSERT's ratio is below 2.5 the machine, not the package,
sets the bound (docs/performance.md, "Four PostgreSQL writers: what they wait on").

Run: ``.venv/bin/python bench/runners_floor.py [--rounds 3] [--pairs 2000]``
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from checkpoints import RUNNER, bench_runners  # noqa: E402
from support.pgserver import PostgresServer  # noqa: E402

# The protocol of checkpoints.RUNNER (ready + backend pid, go, window and CPU, stay), with a
# bare INSERT for each of its 2 x pairs marks.
BARE_INSERT = textwrap.dedent(
    """
    import sys, time, psycopg
    dsn, name, pairs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS floor_probe (runner text, n integer)")
        (backend,) = connection.execute("SELECT pg_backend_pid()").fetchone()
        print("ready", backend, flush=True)
        sys.stdin.readline()
        began, cpu = time.monotonic(), time.process_time()
        for i in range(2 * pairs):
            connection.execute("INSERT INTO floor_probe VALUES (%s, %s)", (name, i))
        print(began, time.monotonic(), time.process_time() - cpu, flush=True)
        sys.stdin.readline()
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=2000)
    args = parser.parse_args()
    server = PostgresServer(durable=True).start()
    os.environ["PGPASSFILE"] = str(server.passfile)
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        for name, runner in (("bare INSERT", BARE_INSERT), ("package marks", RUNNER)):
            for round_ in range(1, args.rounds + 1):
                figures = bench_runners(server.create_database(), args.pairs, runner)
                shown = ", ".join(f"{key} {value:.3f}" for key, value in figures.items())
                print(f"{name}, round {round_}: {shown}", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
