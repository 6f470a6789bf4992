"""Benchmark (prints, asserts nothing): two model servers compared under the same machine noise.

Starts qinstack/scoring_app.py twice, each from its own checkout and with its own MLflow model directory (e.g.
the commit before a change and after it), and sends the same requests to both, alternating between them
request by request from one client, so that a busy machine slows both alike; then prints p50, p99 and
rows/s of each at 1 and 64 rows per request. `bench/serving.py` measures one server at a time, which on a
shared machine can differ by more than a change's effect between two runs.

    python bench/serving_ab.py --a OLD_CHECKOUT OLD_MODEL_DIR --b . NEW_MODEL_DIR --data data
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(repo: Path, model: Path) -> tuple[int, subprocess.Popen]:
    port = _port()
    cmd = [sys.executable, "-m", "qinstack.scoring_app", "--model", str(model.resolve()), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(repo.resolve())}
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            conn.getresponse().read()
            return port, proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"{repo}: the model server did not answer /ping")


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--a", nargs=2, type=Path, required=True, metavar=("CHECKOUT", "MODEL"))
    p.add_argument("--b", nargs=2, type=Path, required=True, metavar=("CHECKOUT", "MODEL"))
    p.add_argument("--data", type=Path, default=Path("data"), help="a data folder with test.parquet")
    p.add_argument("--requests", type=int, default=3000, help="per server and request size")
    args = p.parse_args()
    rows = pd.read_parquet(args.data / "test.parquet").head(64)
    history = next(c for c in rows.columns if rows[c].dtype == object)
    rows[history] = rows[history].map(lambda a: [int(x) for x in a])
    servers = {"a": _start(*args.a), "b": _start(*args.b)}
    try:
        conns = {n: http.client.HTTPConnection("127.0.0.1", port) for n, (port, _) in servers.items()}
        for size in (1, 64):
            frame = json.loads(rows.head(size).to_json(orient="split", index=False))
            body = json.dumps({"dataframe_split": frame})
            seconds: dict[str, list[float]] = {n: [] for n in conns}
            for i in range(args.requests + 300):
                for n in ("a", "b") if i % 2 else ("b", "a"):
                    started = time.perf_counter()
                    conns[n].request("POST", "/invocations", body, {"Content-Type": "application/json"})
                    answer = conns[n].getresponse()
                    answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"server {n}: {answer.status}")
                    if i >= 300:  # after a warm-up
                        seconds[n].append(time.perf_counter() - started)
            for n, v in seconds.items():
                ms = np.array(v) * 1e3
                p50, p99, rate = np.percentile(ms, 50), np.percentile(ms, 99), size * len(v) / sum(v)
                print(f"{size:>2} rows, server {n}: p50 {p50:.2f} ms  p99 {p99:.2f} ms  {rate:,.0f} rows/s")
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
