"""Ingest as users run it: the installed ``osaa-ingest`` in fresh processes beside plain programs.

For raw trees of many small CSV files (and a few large ones) it measures, each variant a fresh
process (start-up and imports included), interleaved round by round in alternating order:

- **first ingest, local**: ``osaa-ingest`` into the local store vs a plain loop of DuckDB
  ``COPY ... TO parquet`` per file (``bench/ingest_baselines.py copy``);
- **first ingest, S3**: ``osaa-ingest`` into moto's S3 server on 127.0.0.1 vs the same loop
  plus one boto3 ``upload_file`` per file (``... upload``);
- **unchanged re-run, local**: ``osaa-ingest`` again over the same tree vs a scandir walk with
  a ``stat`` per file in a fresh Python process (``... walk``);
- **commit bytes** (``--commit-bytes N``): one more ``osaa-ingest`` of N files into S3 through the
  counting proxy (tests/support/faultproxy.py): the bytes the client sends besides the staged
  uploads (the commit: server-side copies, log entry, batched delete) against the staged bytes.

Per run: wall time, CPU time of the child (user + system, from its rusage) and its peak RSS.
Ratios are of medians over ``--rounds`` (odd). Defaults are small; ``--full`` runs the sizes of
issue 13 (100 / 1,000 / 10,000 local, 1,000 on S3, 20 x 50 MB). ``--svg`` writes a plot.

Run: ``.venv/bin/python bench/ingest_scale.py [--full] [--rounds K] [--svg docs/ingest_scale.svg]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

BASELINES = str(HERE / "ingest_baselines.py")
BIN = Path(sys.executable).parent
TIMEOUT = 3600.0


@dataclass(frozen=True)
class Sample:
    wall: float
    cpu: float
    rss_mb: float


def run_child(command: Sequence[str], env: dict[str, str], cwd: Path) -> Sample:
    """Run ``command`` in its own process group and reap it with wait4, which gives its own rusage."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        try:
            _, status, usage = _wait4(process, started + TIMEOUT)
        finally:
            _kill_group(process.pid)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            out.seek(0)
            err.seek(0)
            raise RuntimeError(
                f"{' '.join(command)} exited {process.returncode}:\n{out.read().decode()}\n{err.read().decode()}"
            )
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def _wait4(process: subprocess.Popen[bytes], deadline: float) -> tuple[int, int, object]:
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            return pid, status, usage
        if time.perf_counter() > deadline:
            _kill_group(process.pid)
            return os.wait4(process.pid, 0)
        time.sleep(0.005)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- raw trees ----------------------------------------------------------------------------------


def make_small_tree(root: Path, files: int, rows: int) -> Path:
    """``files`` CSVs of ``rows`` rows, 1,000 per directory under two sources (OSAA's shape)."""
    for index in range(files):
        source = ("wdi", "sdg")[index % 2]
        directory = root / source / f"part{index // 1000:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f"C{(index + r) % 200},IND{index},{1990 + r % 35},{r * 1.5}" for r in range(rows)]
        (directory / f"series_{index:05d}.csv").write_text("country,indicator,year,value\n" + "\n".join(lines) + "\n")
    return root


def make_large_tree(root: Path, files: int, megabytes: int) -> Path:
    line = "country,indicator,year,value\n"
    row_bytes = 40
    rows = megabytes * 1024 * 1024 // row_bytes
    directory = root / "wdi"
    directory.mkdir(parents=True)
    for index in range(files):
        with open(directory / f"big_{index:02d}.csv", "w") as handle:
            handle.write(line)
            for start in range(0, rows, 100_000):
                handle.write("".join(
                    f"C{r % 217:03d},IND{r % 1499:05d},{1960 + r % 64},{r * 0.37:.4f}\n"
                    for r in range(start, min(rows, start + 100_000))
                ))
    return root


# -- variants -------------------------------------------------------------------------------------


class Bench:
    """Environment and scratch space shared by every run; each run gets fresh outputs."""

    def __init__(self, scratch: Path, endpoint: str | None) -> None:
        self.scratch = scratch
        self.endpoint = endpoint
        home = scratch / "home"
        home.mkdir()
        self.env = {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "HOME": str(home),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "SQLMESH_OSAA_CLI": "0",
        }
        self.cwd = scratch / "cwd"
        self.cwd.mkdir()

    def fresh(self, name: str) -> Path:
        path = self.scratch / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def ours_env(self, work: Path, bucket: str | None = None) -> dict[str, str]:
        env = {**self.env, "OSAA_STORAGE__ROOT": str(work / "store"), "OSAA_CHECKPOINT__DB_PATH": str(work / "db.duckdb")}
        if bucket is not None:
            assert self.endpoint is not None
            env |= {
                "OSAA_STORAGE__BACKEND": "s3",
                "OSAA_STORAGE__BUCKET": bucket,
                "OSAA_STORAGE__ENDPOINT_URL": self.endpoint,
                "OSAA_STORAGE__ADDRESSING_STYLE": "path",
            }
        return env

    def ours(self, raw: Path, work: Path, bucket: str | None = None) -> Sample:
        return run_child([str(BIN / "osaa-ingest"), str(raw), "--json"], self.ours_env(work, bucket), self.cwd)

    def plain_copy(self, raw: Path) -> Sample:
        out = self.fresh("plain")
        try:
            return run_child([sys.executable, BASELINES, "copy", str(raw), str(out)], self.env, self.cwd)
        finally:
            shutil.rmtree(out)

    def plain_upload(self, raw: Path, bucket: str) -> Sample:
        assert self.endpoint is not None
        return run_child([sys.executable, BASELINES, "upload", str(raw), bucket, self.endpoint], self.env, self.cwd)

    def walk(self, raw: Path) -> Sample:
        return run_child([sys.executable, BASELINES, "walk", str(raw)], self.env, self.cwd)


@dataclass
class Pair:
    """Samples of our command and its baseline for one measurement."""

    what: str
    files: int
    ours: list[Sample]
    plain: list[Sample]

    def median(self, side: str, field: str) -> float:
        return statistics.median(getattr(sample, field) for sample in getattr(self, side))

    def ratio(self, field: str) -> float:
        return self.median("ours", field) / self.median("plain", field)

    def row(self) -> dict[str, float | int | str]:
        row: dict[str, float | int | str] = {"what": self.what, "files": self.files}
        for field in ("wall", "cpu", "rss_mb"):
            row[f"ours_{field}"] = self.median("ours", field)
            row[f"plain_{field}"] = self.median("plain", field)
            row[f"ratio_{field}"] = self.ratio(field)
        return row


def alternate(rounds: int) -> Iterator[bool]:
    """Whether ours goes first in each round: alternating, so drift in the machine's load hits both."""
    for round_ in range(rounds):
        yield round_ % 2 == 0


def bench_local(bench: Bench, raw: Path, files: int, rounds: int, what: str) -> tuple[Pair, Pair]:
    first, rerun = Pair(what, files, [], []), Pair(f"{what}, unchanged re-run", files, [], [])
    for ours_first in alternate(rounds):
        work = bench.fresh("ours")
        runs = [lambda: first.ours.append(bench.ours(raw, work)), lambda: first.plain.append(bench.plain_copy(raw))]
        for run in runs if ours_first else runs[::-1]:
            run()
        reruns = [lambda: rerun.ours.append(bench.ours(raw, work)), lambda: rerun.plain.append(bench.walk(raw))]
        for run in reruns if ours_first else reruns[::-1]:
            run()
        shutil.rmtree(work)
    return first, rerun


def bench_s3(bench: Bench, raw: Path, files: int, rounds: int, what: str) -> Pair:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=bench.endpoint, config=Config(s3={"addressing_style": "path"}))
    pair = Pair(what, files, [], [])
    for ours_first in alternate(rounds):
        work = bench.fresh("ours")
        ours_bucket, plain_bucket = f"ours-{uuid.uuid4().hex[:10]}", f"plain-{uuid.uuid4().hex[:10]}"
        client.create_bucket(Bucket=ours_bucket)
        client.create_bucket(Bucket=plain_bucket)
        runs = [
            lambda: pair.ours.append(bench.ours(raw, work, ours_bucket)),
            lambda: pair.plain.append(bench.plain_upload(raw, plain_bucket)),
        ]
        for run in runs if ours_first else runs[::-1]:
            run()
        shutil.rmtree(work)
    return pair


# -- report -----------------------------------------------------------------------------------------


def commit_bytes(bench: Bench, raw: Path) -> tuple[int, int]:
    """(bytes the client sent besides the PutObject bodies, PutObject body bytes) of one ingest into S3."""
    import boto3
    from botocore.config import Config
    from support.faultproxy import FaultProxy

    assert bench.endpoint is not None
    proxy = FaultProxy(bench.endpoint).start()
    try:
        bucket = f"bytes-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=bench.endpoint, config=Config(s3={"addressing_style": "path"})).create_bucket(
            Bucket=bucket
        )
        work = bench.fresh("bytes")
        env = {**bench.ours_env(work, bucket), "OSAA_STORAGE__ENDPOINT_URL": proxy.url}
        proxy.reset_counts()
        run_child([str(BIN / "osaa-ingest"), str(raw), "--json"], env, bench.cwd)
        staged = sum(request.body_bytes for request in proxy.requests("PutObject"))
        return proxy.bytes_received - staged, staged
    finally:
        proxy.stop()


def print_table(pairs: list[Pair], load: tuple[float, float]) -> None:
    print(f"load average {load[0]:.1f} before, {load[1]:.1f} after; medians; ratio = ours / plain")
    print("| What | Files | Wall ours / plain | CPU ours / plain | Peak RSS ours / plain | Ratios wall, CPU, RSS |")
    print("|---|---|---|---|---|---|")
    for pair in pairs:
        r = pair.row()
        print(
            f"| {pair.what} | {pair.files:,} | {r['ours_wall']:.2f} / {r['plain_wall']:.2f} s "
            f"| {r['ours_cpu']:.2f} / {r['plain_cpu']:.2f} s | {r['ours_rss_mb']:.0f} / {r['plain_rss_mb']:.0f} MB "
            f"| {r['ratio_wall']:.2f}, {r['ratio_cpu']:.2f}, {r['ratio_rss_mb']:.2f} |"
        )
    for pair in pairs:
        if "re-run" not in pair.what and pair.files >= 100:
            ours_ms = 1000 * pair.median("ours", "cpu") / pair.files
            plain_ms = 1000 * pair.median("plain", "cpu") / pair.files
            print(f"- {pair.what}, {pair.files:,} files: {ours_ms:.2f} ms CPU per file vs {plain_ms:.2f} ms (whole process)")


def write_svg(pairs: list[Pair], path: Path) -> None:
    """Two small panels: CPU and peak RSS ratio (ours / plain) against the file count, per measurement."""
    series: dict[str, list[tuple[int, float, float]]] = {}
    for pair in pairs:
        series.setdefault(pair.what, []).append((pair.files, pair.ratio("cpu"), pair.ratio("rss_mb")))
    width, height, margin = 360, 240, 48
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    counts = sorted({files for points in series.values() for files, _, _ in points})
    top = max(3.5, *(max(c, r) for points in series.values() for _, c, r in points)) * 1.1
    def x_of(files: int) -> float:
        low = math.log10(counts[0])
        high = math.log10(counts[-1]) if counts[-1] > counts[0] else low + 1
        return margin + (width - 2 * margin) * (math.log10(files) - low) / (high - low)

    def y_of(value: float) -> float:
        return height - margin - (height - 2 * margin) * value / top

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width}" height="{height + 40}" font-family="sans-serif" font-size="11">']
    for panel, (title, index) in enumerate((("CPU time, ours / plain", 1), ("Peak RSS, ours / plain", 2))):
        dx = panel * width
        parts.append(f'<text x="{dx + margin}" y="20" font-weight="bold">{title}</text>')
        parts.append(f'<line x1="{dx + margin}" y1="{y_of(0)}" x2="{dx + width - margin}" y2="{y_of(0)}" stroke="black"/>')
        parts.append(f'<line x1="{dx + margin}" y1="{y_of(0)}" x2="{dx + margin}" y2="{y_of(top)}" stroke="black"/>')
        for tick in range(0, int(top) + 1):
            parts.append(f'<text x="{dx + margin - 20}" y="{y_of(tick) + 4}">{tick}</text>')
        parts.append(f'<line x1="{dx + margin}" y1="{y_of(1)}" x2="{dx + width - margin}" y2="{y_of(1)}" stroke="#999" stroke-dasharray="4"/>')
        for files in counts:
            parts.append(f'<text x="{dx + x_of(files) - 12}" y="{height - margin + 16}">{files:,}</text>')
        parts.append(f'<text x="{dx + width / 2 - 20}" y="{height - margin + 32}">raw files</text>')
        for colour, (what, points) in zip(colours, series.items()):
            coords = " ".join(f"{dx + x_of(point[0]):.1f},{y_of(point[index]):.1f}" for point in points)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
            for point in points:
                parts.append(f'<circle cx="{dx + x_of(point[0]):.1f}" cy="{y_of(point[index]):.1f}" r="3" fill="{colour}"/>')
    for row, (colour, what) in enumerate(zip(colours, series)):
        parts.append(f'<text x="{margin + row * 170}" y="{height + 30}" fill="{colour}">&#9632; {what}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="issue 13's sizes: 100/1,000/10,000 local, 1,000 on S3, 20 x 50 MB")
    parser.add_argument("--files", type=int, nargs="+", help="small-file counts, local (default 100 1000)")
    parser.add_argument("--s3-files", type=int, nargs="*", help="small-file counts on S3 (default 100)")
    parser.add_argument("--rows", type=int, default=20, help="rows per small file")
    parser.add_argument("--large", type=int, help="number of large files (default 2; --full 20)")
    parser.add_argument("--large-mb", type=int, help="size of each large file in MB (default 10; --full 50)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commit-bytes", type=int, default=200, help="files of the commit-bytes measurement (0: skip)")
    parser.add_argument("--svg", type=Path, help="write a plot of the ratios here")
    parser.add_argument("--json", type=Path, help="write the medians here")
    args = parser.parse_args()
    sizes = args.files or ([100, 1000, 10000] if args.full else [100, 1000])
    s3_sizes = args.s3_files if args.s3_files is not None else ([1000] if args.full else [100])
    large = args.large if args.large is not None else (20 if args.full else 2)
    large_mb = args.large_mb or (50 if args.full else 10)

    from support.s3server import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, MotoServer

    os.environ.update(AWS_ACCESS_KEY_ID=FAKE_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=FAKE_SECRET_KEY, AWS_DEFAULT_REGION="us-east-1")
    load_before = os.getloadavg()[0]
    server = MotoServer().start() if s3_sizes or large or args.commit_bytes else None
    pairs: list[Pair] = []
    sent: tuple[int, int] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="osaa-bench-") as tmp:
            bench = Bench(Path(tmp), server.endpoint_url if server else None)
            for files in sorted(set(sizes) | set(s3_sizes)):
                raw = make_small_tree(bench.fresh("raw"), files, args.rows)
                if files in sizes:
                    pairs.extend(bench_local(bench, raw, files, args.rounds, "first ingest, local"))
                if files in s3_sizes:
                    pairs.append(bench_s3(bench, raw, files, args.rounds, "first ingest, S3"))
                shutil.rmtree(raw)
            if large:
                raw = make_large_tree(bench.fresh("large"), large, large_mb)
                first, _ = bench_local(bench, raw, large, args.rounds, f"first ingest of {large_mb} MB files, local")
                pairs.append(first)
                if server is not None:
                    pairs.append(bench_s3(bench, raw, large, args.rounds, f"first ingest of {large_mb} MB files, S3"))
            if args.commit_bytes and server is not None:
                raw = make_small_tree(bench.fresh("bytes-raw"), args.commit_bytes, 2000)
                sent = commit_bytes(bench, raw)
    finally:
        if server is not None:
            server.stop()
    print_table(pairs, (load_before, os.getloadavg()[0]))
    if sent is not None:
        print(f"- commit of {args.commit_bytes} files of 2,000 rows: the client sent {sent[0]:,} bytes besides "
              f"{sent[1]:,} staged bytes ({100 * sent[0] / sent[1]:.2f}%)")
    if args.json:
        args.json.write_text(json.dumps([pair.row() for pair in pairs], indent=2) + "\n")
    if args.svg:
        write_svg([pair for pair in pairs if "MB files" not in pair.what], args.svg)


if __name__ == "__main__":
    main()
