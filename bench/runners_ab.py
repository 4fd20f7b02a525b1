"""Interleaved A/B of the runner phase of ``bench/checkpoints.py``, with what the runners wait on.

Each round runs, for every variant in an order that alternates between rounds, one runner
and then RUNNERS runners on a fresh database of one durable PostgreSQL server (PostgreSQL's
defaults, as in ``bench/checkpoints.py``), each runner a fresh process making ``--marks``
single FILE marks. A variant is ``NAME=PATH``, a directory holding a ``sqlmesh_osaa`` package
put first on ``PYTHONPATH`` (``git archive main sqlmesh_osaa | tar -x -C /tmp/main``).

Printed per phase: marks per second, CPU per mark of the runners and of their backends,
voluntary / involuntary context switches per mark of both (``/proc/<pid>/status``), the
share of the window the machine's CPUs were idle (``/proc/stat``), and WAL records, bytes
and syncs per mark (``pg_stat_wal``, read once the runners' backends have exited: a backend
reports its WAL figures at most once a second, and at exit). With ``--sample`` a thread also samples the backends'
wait events from ``pg_stat_activity`` every 5 ms (it costs a little CPU: leave it off for
the A/B figures). On a shared machine read the CPU per mark, the ratios and the load.

Run: ``.venv/bin/python bench/runners_ab.py --rounds 3 main=/tmp/main this=.``
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from checkpoints import RUNNER, RUNNERS  # noqa: E402
from support.pgserver import PostgresServer  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")
_WAL_SQL = "SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal"
_WAITS_SQL = (
    "SELECT coalesce(wait_event_type || ':' || wait_event, state) FROM pg_stat_activity "
    "WHERE application_name = 'sqlmesh-osaa' AND pid <> pg_backend_pid()"
)


def process_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds process ``pid`` (a runner or a server backend) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of ``pid`` so far."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.endswith("ctxt_switches", 0, line.find(":")):
            name, value = line.split(":")
            found[name] = int(value)
    return found["voluntary_ctxt_switches"], found["nonvoluntary_ctxt_switches"]


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) jiffies of all CPUs so far; iowait counts as idle."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle, idle


class WaitSampler(threading.Thread):
    """Counts of the runners' backends' wait events (or states), sampled every 5 ms."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        import psycopg

        self._connection = psycopg.connect(dsn, autocommit=True, application_name="osaa-sampler")
        self.counts: collections.Counter[str] = collections.Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            for (event,) in self._connection.execute(_WAITS_SQL).fetchall():
                self.counts[event] += 1
        self._connection.close()


def wal(dsn: str) -> tuple[int, ...]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        return tuple(int(v) for v in connection.execute(_WAL_SQL).fetchone())


def phase(variant: str, dsn: str, count: int, pairs: int, sample: bool) -> dict[str, Any]:
    """``count`` runners of ``variant`` marking at once; the figures of the window."""
    name, _, where = variant.partition("=")
    package = Path(where).resolve()
    env = {**os.environ, "PYTHONPATH": str(package)}
    command = [sys.executable, "-c", RUNNER, dsn, "", str(pairs), str(package / "sqlmesh_osaa")]
    processes = []
    try:
        for i in range(count):
            command[4] = f"{name}-{count}-{i}-{time.monotonic_ns()}"
            processes.append(
                subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
            )
        backends = []
        for process in processes:
            word, backend = process.stdout.readline().split()
            assert word == "ready", word
            backends.append(int(backend))
        pids = [p.pid for p in processes] + backends
        sampler = WaitSampler(dsn) if sample else None
        wal_before, cpu_before = wal(dsn), machine_cpu()
        served = [process_cpu(pid) for pid in pids]
        switched = [switches(pid) for pid in pids]
        if sampler:
            sampler.start()
        began = time.perf_counter()
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        windows = [[float(v) for v in process.stdout.readline().split()] for process in processes]
        elapsed = time.perf_counter() - began
        served = [tuple(a - b for a, b in zip(process_cpu(pid), before)) for pid, before in zip(pids, served)]
        switched = [tuple(a - b for a, b in zip(switches(pid), before)) for pid, before in zip(pids, switched)]
        busy, idle = (a - b for a, b in zip(machine_cpu(), cpu_before))
        if sampler:
            sampler.stop.set()
            sampler.join()
        # A backend adds its WAL figures to pg_stat_wal at most once a second, and when it exits:
        # the runners close their sessions, and the figures are read once every backend is gone.
        for process in processes:
            process.stdin.write("end\n")
            process.stdin.flush()
            process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{b}").exists() for b in backends) and time.monotonic() < deadline:
            time.sleep(0.01)
        wal_after = wal(dsn)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    marks = 2 * pairs * count
    runners, servers = switched[:count], switched[count:]
    records, size, writes, syncs = (a - b for a, b in zip(wal_after, wal_before))
    figures = {
        "marks/s": marks / elapsed,
        "client CPU ms/mark": 1000 * sum(w[2] for w in windows) / marks,
        "backend CPU ms/mark": 1000 * sum(sum(cpu) for cpu in served[count:]) / marks,
        "system share client / backend": "%.2f / %.2f"
        % tuple(sum(c[1] for c in side) / max(sum(sum(c) for c in side), 1e-9) for side in (served[:count], served[count:])),
        "client vol/invol switches per mark": "%.2f / %.2f" % tuple(sum(s[i] for s in runners) / marks for i in (0, 1)),
        "backend vol/invol switches per mark": "%.2f / %.2f" % tuple(sum(s[i] for s in servers) / marks for i in (0, 1)),
        "machine idle share": idle / (busy + idle),
        "WAL records / bytes / syncs per mark": f"{records / marks:.2f} / {size / marks:.0f} / {syncs / marks:.3f}",
        "WAL writes per mark": writes / marks,
    }
    if sampler:
        total = sum(sampler.counts.values())
        figures["waits"] = f"{total} samples: " + ", ".join(f"{event} {n / total:.1%}" for event, n in sampler.counts.most_common())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="NAME=PATH: a directory holding a sqlmesh_osaa package")
    parser.add_argument("--marks", type=int, default=2000, help="marks each runner makes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample", action="store_true", help="sample wait events (costs CPU)")
    parser.add_argument(
        "--client-only",
        action="store_true",
        help="one runner per variant on a server without flushes (fsync off): the code's own CPU per mark, many rounds",
    )
    args = parser.parse_args()
    names = [variant.partition("=")[0] for variant in args.variants]
    ratios: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    server = PostgresServer(durable=not args.client_only, settings={"track_wal_io_timing": "on"}).start()
    os.environ["PGPASSFILE"] = str(server.passfile)
    try:
        for round_ in range(args.rounds):
            order = args.variants if round_ % 2 == 0 else args.variants[::-1]
            for variant in order:
                name = variant.partition("=")[0]
                load = os.getloadavg()[0]
                if args.client_only:
                    alone = phase(variant, server.create_database(), 1, args.marks // 2, False)
                    cpu[name].append((alone["client CPU ms/mark"], alone["backend CPU ms/mark"]))
                    continue
                one = phase(variant, server.create_database(), 1, args.marks // 2, args.sample)
                four = phase(variant, server.create_database(), RUNNERS, args.marks // 2, args.sample)
                ratio = four["marks/s"] / one["marks/s"]
                ratios[name].append(ratio)
                cpu[name].append((one["client CPU ms/mark"] + one["backend CPU ms/mark"], four["client CPU ms/mark"] + four["backend CPU ms/mark"]))
                print(f"\nround {round_ + 1}, {name}, load {load:.2f}: ratio {ratio:.2f}", flush=True)
                for label, figures in (("one", one), (str(RUNNERS), four)):
                    print(f"  {label}: " + "; ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    finally:
        server.stop()
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.client_only:
        first = names[0]
        for name in names:
            client, backend = (statistics.median(sample[i] for sample in cpu[name]) for i in (0, 1))
            ratios_ = [a[0] / b[0] for a, b in zip(cpu[name], cpu[first])]
            print(
                f"{name}: CPU ms/mark, medians of {len(cpu[name])}: client {client:.3f}, backend {backend:.3f}; "
                f"client / {first}'s, round by round: {', '.join(f'{r:.2f}' for r in ratios_)}"
            )
        return
    for name in names:
        print(
            f"{name}: ratios {', '.join(f'{r:.2f}' for r in ratios[name])} (median {statistics.median(ratios[name]):.2f}); "
            f"CPU per mark both sides, one / {RUNNERS}: " + ", ".join(f"{a:.3f} / {b:.3f}" for a, b in cpu[name])
        )


if __name__ == "__main__":
    main()
