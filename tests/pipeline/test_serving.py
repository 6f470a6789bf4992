"""Online scoring through qinstack/scoring_app.py, started as a real server process on a tiny trained model:
each kind of bad request is refused (400) with its own message naming the row and the column, without a
traceback, and the server answers a good request after it; empty and long histories score; the served
scores equal the in-process scores of the same rows; SIGTERM stops it cleanly."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, TINY_PARAMS
from tests.helpers import free_ports

COLUMNS = ["likes_level", "views_level", "item_id", "item_seq"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A tiny QIN trained on the tiny data, saved as a local MLflow pyfunc model directory."""
    from flows.tracking import save_pyfunc
    from qin.featurize import featurize
    from qin.settings.params import load_params
    from qin.train import train
    from qin.validate import validate

    work = tmp_path_factory.mktemp("serving")
    (work / "params.yaml").write_text(TINY_PARAMS)
    params = load_params(work / "params.yaml")
    validate(tiny_data, work / "validate", params.validate)
    featurize(tiny_data, work / "validate", work / "features", params.featurize)
    train(work / "features", work / "package", work / "train.json", params.train)
    return save_pyfunc(work / "package", work / "pyfunc")


@pytest.fixture(scope="module")
def server(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, subprocess.Popen]]:
    (port,) = free_ports(1)
    log = tmp_path_factory.mktemp("serving-log") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qinstack.scoring_app", "--model", str(model_dir), "--port", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while _get(port, "/ping")[0] != 200:
        assert proc.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "the server did not answer /ping within 120 s"
        time.sleep(0.2)
    proc.log = log  # type: ignore[attr-defined]
    yield port, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    except OSError:
        return 0, b""


def _post(port: int, body: bytes | dict, content_type: str = "application/json") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", "/invocations", data, {"Content-Type": content_type})
    r = conn.getresponse()
    raw = r.read()
    assert b"Traceback" not in raw
    return r.status, json.loads(raw)


@pytest.fixture(scope="module")
def rows(tiny_data: Path) -> pd.DataFrame:
    frame = pd.read_parquet(tiny_data / "valid.parquet", columns=COLUMNS).head(64)
    frame["item_seq"] = frame["item_seq"].map(lambda s: [int(x) for x in s])
    return frame


def _split(rows: list[list[Any]], columns: list[str] = COLUMNS) -> dict:
    return {"dataframe_split": {"columns": columns, "data": rows}}


GOOD = [[3, 2, 1, [1, 2, 3, 4]], [5, 6, 2, [2, 3]]]


def _second(**change: Any) -> dict:
    """Two rows, the second changed."""
    row = dict(zip(COLUMNS, GOOD[1], strict=True)) | change
    return _split([GOOD[0], [row[c] for c in COLUMNS]])


BAD = {  # the tiny data's items: ids 0 (padding) .. 400
    "unknown item_id": (
        _second(item_id=401),
        "row 1, column 'item_id': expected an item id in 1..400, found 401",
    ),
    "negative item_id": (
        _second(item_id=-3),
        "row 1, column 'item_id': expected an item id in 1..400, found -3",
    ),
    "negative history id": (
        _second(item_seq=[2, -1]),
        "row 1, column 'item_seq': expected item ids in 0..400, found -1",
    ),
    "unknown history id": (
        _second(item_seq=[2, 999]),
        "row 1, column 'item_seq': expected item ids in 0..400, found 999",
    ),
    "level outside 0..10": (
        _second(likes_level=11),
        "row 1, column 'likes_level': expected an integer in 0..10, found 11",
    ),
    "item_id 3.5 (not rounded)": (
        _second(item_id=3.5),
        "row 1, column 'item_id': expected an item id in 1..400, found 3.5",
    ),
    "non-list history": (
        _second(item_seq=7),
        "row 1, column 'item_seq': expected a list of item ids, found 7",
    ),
    "null id": (_second(item_id=None), "row 1, column 'item_id': expected an item id in 1..400, found null"),
    "string level": (
        _second(views_level="3"),
        "row 1, column 'views_level': expected an integer in 0..10, found '3'",
    ),
    "missing column": (
        _split([r[:3] for r in GOOD], COLUMNS[:3]),
        "missing column ['item_seq']: expected columns ['likes_level', 'views_level', 'item_id', 'item_seq']",
    ),
    "malformed JSON": (b'{"dataframe_split": {"columns": [', "malformed JSON"),
    "unknown top-level key": ({"rows": GOOD}, "expected a JSON object with exactly one key of"),
    "ragged row": (
        _split([GOOD[0], GOOD[1][:3]]),
        "'dataframe_split' data row 1: expected a list of 4 values",
    ),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_each_bad_request_is_refused_by_name_and_the_server_goes_on(
    server: tuple[int, Any], kind: str
) -> None:
    port, _ = server
    body, message = BAD[kind]
    status, answer = _post(port, body)
    assert status == 400
    assert answer["error_code"] == "BAD_REQUEST" and message in answer["message"]
    assert "[1, 2, 3, 4]" not in answer["message"], "the request is echoed"
    status, good = _post(port, _split(GOOD))
    assert status == 200 and len(good["predictions"]) == 2


def test_other_content_types_and_routes(server: tuple[int, Any]) -> None:
    port, _ = server
    status, answer = _post(port, b"1,2,3", content_type="text/csv")
    assert status == 415 and "application/json" in answer["message"]
    assert _get(port, "/ping")[0] == _get(port, "/health")[0] == 200
    status, version = _get(port, "/version")
    assert status == 200 and json.loads(version)["mlflow_version"].startswith("3.")
    assert _get(port, "/nowhere")[0] == 404


def test_empty_history_scores_and_a_long_one_keeps_its_most_recent_items(server: tuple[int, Any]) -> None:
    port, _ = server
    max_len = 16  # TINY_PARAMS featurize.max_len
    recent = [(7 * i) % 400 + 1 for i in range(max_len)]
    long = [(3 * i) % 400 + 1 for i in range(40)] + recent
    status, answer = _post(port, _split([[3, 2, 5, []], [3, 2, 5, long], [3, 2, 5, recent]]))
    assert status == 200
    empty, long_p, recent_p = answer["predictions"]
    assert 0 < empty < 1
    assert long_p == pytest.approx(recent_p, abs=1e-6)  # the same row content, scored side by side


def test_served_scores_equal_the_in_process_scores(
    server: tuple[int, Any], model_dir: Path, rows: pd.DataFrame
) -> None:
    from qin.serving.inference import load_package

    port, _ = server
    expected = load_package(model_dir / "artifacts" / "package").predict_frame(rows)
    records = rows.to_dict(orient="records")
    for body in (
        _split(rows.to_dict(orient="split")["data"]),
        {"dataframe_records": records},
        {"inputs": records},
        {"inputs": rows.to_dict(orient="list")},
    ):
        status, answer = _post(port, body)
        assert status == 200
        served = np.asarray(answer["predictions"])
        # Sent as the float32 scores' exact doubles: equal to the bit, not only to float32 rounding.
        assert served.dtype == np.float64 and np.array_equal(served, expected.astype(np.float64))


def test_stops_cleanly_on_sigterm(server: tuple[int, Any]) -> None:
    """Last in this module: it stops the shared server."""
    port, proc = server
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -SIGTERM).
    assert proc.wait(30) in (0, -signal.SIGTERM)
    log = proc.log.read_text()
    assert "Finished server process" in log and "Traceback" not in log
    assert _get(port, "/ping")[0] == 0


def test_parse_request_builds_frames_and_names_what_is_wrong() -> None:
    from qinstack.scoring_app import RequestError, parse_request

    frame = parse_request(b'{"dataframe_records": [{"item_id": 3, "item_seq": [1]}, {"item_id": 4}]}')
    assert list(frame.columns) == ["item_id", "item_seq"] and frame["item_seq"].iloc[1] is None
    empty = parse_request(json.dumps(_split([])).encode())
    assert list(empty.columns) == COLUMNS and len(empty) == 0
    for body, message in [
        (b"[1, 2]", "expected a JSON object with exactly one key"),
        (b'{"dataframe_split": [1]}', "expected an object with 'columns'"),
        (b'{"dataframe_split": {"columns": ["a", "a"], "data": []}}', "expected distinct column names"),
        (b'{"dataframe_records": [1]}', "'dataframe_records' row 0: expected an object"),
        (b'{"inputs": {"a": [1, 2], "b": [1]}}', "all of one length"),
        (b'{"dataframe_split": {"columns": ["a"]}, "params": {}}', "found ['dataframe_split', 'params']"),
    ]:
        with pytest.raises(RequestError, match=".*" + message.replace("[", r"\[")):
            parse_request(body)
