"""Benchmark (prints, asserts nothing): online scoring through /invocations, beside the in-process scorer.

Starts the model server as a subprocess (qinstack/scoring_app.py, `mlflow models serve`, or one after the
other), waits for /ping, and measures from this process over keep-alive connections, with realistic rows
(--data: test.parquet, else valid.parquet):
    1 row and 64 rows per request, one client: latency p50/p95/p99 and rows/s
    --clients (8) concurrent clients sending 64-row requests: threads of this process, each with its own
        http.client connection (the GIL is released while a thread waits on its socket), p50/p95/p99, rows/s
Beside them, the in-process figures for the same pyfunc's scorer (measured first, with no server running):
Scorer.predict on large batches, and Scorer.predict_frame (the request check included) at 1 and 64 rows;
with --predict-data, `qin predict` on that folder's test.parquet (the full-size synthetic split: `qin data
synth --preset full`), wall time from process start to the written submission. The server and this client
share the machine's cores.

    python bench/serving.py --model models:/qin-ctr@staging --data data     # MLFLOW_TRACKING_URI set
    python bench/serving.py --model path/to/mlflow-model-dir --data data --server both --workers 2
    python bench/serving.py --model models:/qin-ctr@staging --data data --predict-data data-full

Targets (issue 13; 2 cores, the cpu preset's model, request checks on): one client, 1-row p99 <= 5 ms and
64-row p99 <= 10 ms; 8 clients sending 64-row requests >= 20,000 rows/s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from flows import OFFLINE_ENV
from flows.shutdown import stop_processes

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["likes_level", "views_level", "item_id", "item_seq"]


def load_rows(data: Path, n: int) -> pd.DataFrame:
    """The first `n` rows of the data folder's test split (else valid), as a request carries them."""
    path = next((data / f for f in ("test.parquet", "valid.parquet") if (data / f).exists()), None)
    if path is None:
        sys.exit(f"{data}: expected test.parquet or valid.parquet")
    import pyarrow.parquet as pq

    frame = pq.read_table(path, columns=COLUMNS).slice(0, n).to_pandas()
    frame["item_seq"] = frame["item_seq"].map(lambda s: [int(x) for x in s])
    return frame


def bodies(frame: pd.DataFrame, rows: int, count: int = 64) -> list[bytes]:
    """`count` distinct `dataframe_split` request bodies of `rows` rows each, cycling through `frame`."""
    import orjson

    records = frame[COLUMNS].to_dict(orient="split")["data"]
    out = []
    for k in range(count):
        start = (k * rows) % max(1, len(records) - rows)
        chunk = [[int(a), int(b), int(c), list(s)] for a, b, c, s in records[start : start + rows]]
        out.append(orjson.dumps({"dataframe_split": {"columns": COLUMNS, "data": chunk}}))
    return out


# --- the server --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(kind: str, model: str, port: int, workers: int, threads: int) -> subprocess.Popen[bytes]:
    if kind == "asgi":
        cmd = [sys.executable, "-m", "qinstack.scoring_app", "--model", model, "--port", str(port),
               "--workers", str(workers), "--threads", str(threads)]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    # `mlflow models serve` runs `uvicorn` from PATH: this environment's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            sys.exit(f"{kind} server exited with {proc.returncode}:\n{err[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.25)
    stop_server(proc)
    sys.exit(f"{kind} server: no answer on /ping within 180 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        stop_processes([psutil.Process(proc.pid)], grace_s=30, what="model server")
    proc.wait()


# --- the clients -------------------------------------------------------------------------------------------


def client(port: int, payloads: list[bytes], n: int, out: list[float], errors: list[int]) -> None:
    """`n` requests over one keep-alive connection; each latency (s) appended to `out`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    for i in range(n):
        body = payloads[i % len(payloads)]
        t = time.perf_counter()
        conn.request("POST", "/invocations", body, headers)
        response = conn.getresponse()
        response.read()
        out.append(time.perf_counter() - t)
        if response.status != 200:
            errors.append(response.status)
    conn.close()


def load_test(
    port: int, payloads: list[bytes], rows: int, clients: int, n: int, warmup: int
) -> dict[str, Any]:
    """`clients` threads each sending `n` requests of `rows` rows (after `warmup` untimed ones)."""
    client(port, payloads, warmup, [], [])
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[int] = []
    threads = [
        threading.Thread(target=client, args=(port, payloads, n, latencies[k], errors))
        for k in range(clients)
    ]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return summary(np.concatenate(latencies), rows, clients * n / wall, errors=len(errors))


def summary(latencies: np.ndarray, rows: int, requests_per_s: float, errors: int = 0) -> dict[str, Any]:
    ms = latencies * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "rows_s": rows * requests_per_s,
        "n": len(ms),
        "errors": errors,
    }


# --- in process --------------------------------------------------------------------------------------------


def in_process(model: str, frame: pd.DataFrame, threads: int, n: int) -> list[tuple[str, dict[str, Any]]]:
    """The pyfunc's own scorer in this process: large batches, and predict_frame at 1 and 64 rows."""
    import mlflow
    import torch

    from qin.serving.request import request_arrays

    scorer = mlflow.pyfunc.load_model(model).unwrap_python_model().scorer
    default_threads = torch.get_num_threads()
    out = []
    arrays = request_arrays(frame, scorer.spec, scorer.max_len)
    scorer.predict(arrays)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        scorer.predict(arrays, batch_size=8192)
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    out.append((f"Scorer.predict, batches of 8192 ({default_threads} thr)", {"rows_s": len(frame) / median}))
    torch.set_num_threads(threads)
    for rows in (1, 64):
        chunk = frame.head(rows).reset_index(drop=True)
        for _ in range(50):
            scorer.predict_frame(chunk)
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            scorer.predict_frame(chunk)
            lat.append(time.perf_counter() - t)
        out.append(
            (f"predict_frame, {rows} row(s) ({threads} thr)", summary(np.array(lat), rows, n / sum(lat)))
        )
    torch.set_num_threads(default_threads)
    return out


def predict_stage(data: Path | None, model: str) -> dict[str, Any] | None:
    """`qin predict` (a fresh process, as a user runs it) on `data`/test.parquet with the same model: the
    wall time from start to the written submission, the gate included, and the stage's own breakdown."""
    if data is None:
        return None
    import mlflow

    from qin.registry.resolve import package_in_mlflow_model

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(model)
        if not local.exists():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=f"{tmp}/model"))
        package = package_in_mlflow_model(local) if (local / "MLmodel").exists() else local
        out = Path(tmp) / "predict"
        cmd = [sys.executable, "-m", "qin", "predict", "--model", str(package), "--data", str(data)]
        t = time.perf_counter()
        subprocess.run([*cmd, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        manifest = json.loads((out / "manifest.json").read_text())
    seconds = manifest["seconds"]
    print(
        f"qin predict: {manifest['rows']:,} rows in {wall:.1f} s wall (process start to submission.zip); "
        f"in the stage: load + gate {seconds['validate']:.1f} s, scoring {seconds['score']:.1f} s "
        f"({manifest['rows_per_s']:,.0f} rows/s), files {seconds['write']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return {"rows_s": manifest["rows"] / wall}


# --- the table ---------------------------------------------------------------------------------------------


def print_table(results: list[tuple[str, str, dict[str, Any]]]) -> None:
    print(f"{'what':<9} {'case':<44} {'requests':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'rows/s':>9}")
    for what, case, r in results:
        lat = f"{r['p50']:7.2f} {r['p95']:7.2f} {r['p99']:7.2f}" if "p50" in r else f"{'':>7} {'':>7} {'':>7}"
        n = f"{r['n']:>8}" if "n" in r else f"{'':>8}"
        err = f"  ({r['errors']} not 200)" if r.get("errors") else ""
        print(f"{what:<9} {case:<44} {n} {lat} {r['rows_s']:9,.0f}{err}")


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS (MLFLOW_TRACKING_URI set) or a model dir"
    )
    p.add_argument(
        "--data", type=Path, default=Path("data"), help="a data folder: test.parquet or valid.parquet"
    )
    p.add_argument("--server", choices=["asgi", "mlflow", "both"], default="asgi")
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (asgi; in-process small)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=2000, help="timed requests per single-client case")
    p.add_argument(
        "--concurrent-requests", type=int, default=400, help="timed requests per concurrent client"
    )
    p.add_argument(
        "--rows", type=int, default=20_000, help="rows read from --data (in-process large batches)"
    )
    p.add_argument(
        "--predict-data",
        type=Path,
        default=None,
        help="a data folder (e.g. the full-size synthetic data) for `qin predict`",
    )
    args = p.parse_args()
    for key, value in OFFLINE_ENV.items():  # this process and the servers it starts
        os.environ.setdefault(key, value)

    frame = load_rows(args.data, args.rows)
    one, many = bodies(frame, 1), bodies(frame, 64)
    results: list[tuple[str, str, dict[str, Any]]] = []
    for case, r in in_process(args.model, frame, args.threads, args.requests):
        results.append(("process", case, r))
    stage = predict_stage(args.predict_data, args.model)
    if stage is not None:
        results.append(("stage", "qin predict, wall time, gate included", stage))
    for kind in ["asgi", "mlflow"] if args.server == "both" else [args.server]:
        port = free_port()
        proc = start_server(kind, args.model, port, args.workers, args.threads)
        try:
            label = f"{kind} w{args.workers}"
            results.append((label, "1 row, 1 client", load_test(port, one, 1, 1, args.requests, 200)))
            results.append((label, "64 rows, 1 client", load_test(port, many, 64, 1, args.requests, 200)))
            results.append(
                (
                    label,
                    f"64 rows, {args.clients} clients (threads)",
                    load_test(port, many, 64, args.clients, args.concurrent_requests, 100),
                )
            )
        finally:
            stop_server(proc)
        print(f"measured {kind}", file=sys.stderr, flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
