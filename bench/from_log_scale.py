"""Benchmark (prints, asserts nothing): `qin data from-log` on a synthetic interaction log of N rows (user,
item, timestamp, label; written here in parquet, one million rows at a time): its wall time and the peak
RSS of its whole process tree (psutil, sampled every 0.2 s).

    python bench/from_log_scale.py --rows 20000000 --workdir /tmp/qin-from-log
Target (2 cores): 20 million interactions convert with a peak RSS of at most 6 GB (issue 24).

The log: users and items drawn with skewed popularity (Zipf-like), times over a year in no order, about
12% clicks. It is not a model of anything: it sizes the conversion.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 1_000_000


def write_log(path: Path, rows: int, users: int, items: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(
        path,
        pa.schema(
            [("user", pa.int64()), ("item", pa.int64()), ("timestamp", pa.int64()), ("label", pa.int8())]
        ),
    ) as w:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            user = (rng.pareto(1.2, n) * users / 20).astype(np.int64) % users
            item = (rng.pareto(1.1, n) * items / 50).astype(np.int64) % items
            when = rng.integers(1_700_000_000, 1_700_000_000 + 365 * 86_400, n)
            label = (rng.random(n) < 0.12).astype(np.int8)
            w.write_table(
                pa.table({"user": user * 7 + 3, "item": item * 11 + 5, "timestamp": when, "label": label})
            )


def peak_tree_rss(cmd: list[str]) -> tuple[int, float, float]:
    """Run `cmd`; (exit code, seconds, peak GB of the summed RSS of it and its children)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    return proc.returncode, time.perf_counter() - start, peak / 1024**3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/qin-from-log"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t = time.perf_counter()
    write_log(work / "log.parquet", args.rows, args.users, args.items, args.seed)
    size = (work / "log.parquet").stat().st_size / 1e6
    print(f"log: {args.rows:,} rows written in {time.perf_counter() - t:.1f} s ({size:.0f} MB)")
    cmd = [
        sys.executable,
        "-m",
        "qin",
        "--params",
        str(args.params),
        "data",
        "from-log",
        str(work / "log.parquet"),
    ]
    cmd += ["--user", "user", "--item", "item", "--out", str(work / "data"), "--no-dvc"]
    code, seconds, gb = peak_tree_rss(cmd)
    if code != 0:
        sys.exit(f"from-log failed (exit {code})")
    print(
        f"from-log: {args.rows:,} interactions in {seconds:.1f} s, peak RSS of the process tree {gb:.2f} GB"
    )


if __name__ == "__main__":
    main()
