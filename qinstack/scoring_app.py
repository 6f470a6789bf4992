"""A thin ASGI scoring server for the QIN pyfunc: the same model, routes and JSON as `mlflow models serve`,
without its per-request overhead.

    python -m qinstack.scoring_app --model models:/qin-ctr@staging [--host 127.0.0.1] [--port 5001]
    [--workers 1]
    python -m qinstack.scoring_app --model path/to/mlflow-model-dir --threads 1

It loads the registered pyfunc with `mlflow.pyfunc.load_model` (a `models:/` URI reads MLFLOW_TRACKING_URI)
and answers:
    GET  /ping, /health   200 once the model is loaded
    GET  /version         {"mlflow_version", "model", "model_uuid", "server"}
    POST /invocations     application/json with one of `dataframe_split` ({"columns": [...], "data":
                          [[...]]}), `dataframe_records` ([{column: value}]) or `inputs` ({column: [values]}
                          or records);
                          answered {"predictions": [p, ...]}, as MLflow's server answers.
A request the model refuses (qin/serving/request.py: the row, the column, what was expected and what was
found), malformed JSON, an unknown top-level key or a body that is not a table is answered 400 with
{"error_code": "BAD_REQUEST", "message": ...}; another content type 415, a body over MAX_BODY_BYTES 413.
Neither echoes the request or carries a traceback. Any other failure is answered 500 with a generic message
and logged here with its traceback; the server keeps serving.

Where MLflow's server spends its time (bench/serving.py measures it): parsing the JSON with pandas and the
signature (`infer_and_parse_data`), then `PyFuncModel.predict` enforcing the signature one cell at a time
(a pandas Series per history list), in a thread hop per request. Its enforcement also *converts* before our
check sees the row: 3.5 and "3" become item 3 and are scored. So for a model whose python model declares
`checks_requests = True` (flows/pyfunc_model.py: every row is checked, more strictly than the signature),
this server calls the python model's `predict` directly on a frame built from the parsed JSON; any other
pyfunc goes through `PyFuncModel.predict` and MLflow's schema enforcement as usual. The scores are the
pyfunc's own: equal, to the bit, to `Scorer.predict_frame` in process.

Scoring runs on the event loop (it is CPU-bound: a thread hop only adds latency); torch uses --threads
intra-op threads per worker (1 by default: small batches gain nothing from more, and several workers or
concurrent clients then do not fight over the cores). Settings reach uvicorn's worker processes through
the environment (QIN_SCORING_*), so `--workers N` loads the model once in each.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import orjson
import pandas as pd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

try:  # the C parser when installed (requirements.lock pins it): about 1 ms less a 64-row request
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as HttpProtocol
except ImportError:  # pragma: no cover - uvicorn's pure-Python parser
    from uvicorn.protocols.http.h11_impl import H11Protocol as HttpProtocol  # type: ignore[assignment]

log = logging.getLogger("qin.scoring")

MAX_BODY_BYTES = 64 * 1024 * 1024
INPUT_KEYS = ("dataframe_split", "dataframe_records", "inputs")
ENV_MODEL, ENV_THREADS = "QIN_SCORING_MODEL", "QIN_SCORING_THREADS"
JSON = "application/json"
FAILED = "the model failed to score this request (the server's log has the details)"


class RequestError(Exception):
    """A request this server answers with `status` and `message` (no traceback, no echo of the request)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def _error(status: int, code: str, message: str) -> Response:
    return Response(orjson.dumps({"error_code": code, "message": message}), status, media_type=JSON)


def _columns(table: dict[str, Any], key: str) -> pd.DataFrame:
    """{column: [values]} with one length for all -> a frame."""
    lengths = {len(v) for v in table.values() if isinstance(v, list)}
    if not all(isinstance(v, list) for v in table.values()) or len(lengths) > 1:
        raise RequestError(f"'{key}': expected a list of values per column, all of one length")
    return pd.DataFrame(table)


def _records(records: list[Any], key: str) -> pd.DataFrame:
    """[{column: value}] -> a frame; a column a record lacks is null there (and named by the check)."""
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            found = type(r).__name__
            raise RequestError(f"'{key}' row {i}: expected an object of column: value, found {found}")
    names = dict.fromkeys(c for r in records for c in r)
    return pd.DataFrame({c: [r.get(c) for r in records] for c in names})


def _split(split: Any) -> pd.DataFrame:
    """{"columns": [...], "data": [[row values]]} (pandas' orient="split"; "index" is ignored) -> a frame."""
    if not isinstance(split, dict) or not isinstance(split.get("columns"), list):
        raise RequestError("'dataframe_split': expected an object with 'columns' (a list) and 'data'")
    columns, data = split["columns"], split.get("data", [])
    if not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
        raise RequestError(f"'dataframe_split' columns: expected distinct column names, found {columns[:8]}")
    if not isinstance(data, list):
        raise RequestError("'dataframe_split' data: expected a list of rows")
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            found = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise RequestError(
                f"'dataframe_split' data row {i}: expected a list of {len(columns)} values "
                f"(one per column), found {found}"
            )
    # Column-wise: a list per column builds the frame faster than pandas' row parsing.
    if not data:
        return pd.DataFrame({c: [] for c in columns})
    return pd.DataFrame({c: list(v) for c, v in zip(columns, zip(*data, strict=True), strict=True)})


def parse_request(body: bytes) -> pd.DataFrame:
    """An /invocations JSON body -> the frame of rows it carries; RequestError when it is not one."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON: {exc}") from None
    keys = [k for k in INPUT_KEYS if isinstance(payload, dict) and k in payload]
    if not isinstance(payload, dict) or len(keys) != 1 or len(payload) != 1:
        found = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise RequestError(
            f"expected a JSON object with exactly one key of {list(INPUT_KEYS)}, found {found}"
        )
    key = keys[0]
    value = payload[key]
    if key == "dataframe_split":
        return _split(value)
    if isinstance(value, list):
        return _records(value, key)
    if key == "inputs" and isinstance(value, dict):
        return _columns(value, key)
    raise RequestError(f"'{key}': expected a list of records, found {type(value).__name__}")


def _jsonable(predictions: Any) -> Any:
    if isinstance(predictions, pd.DataFrame):
        return predictions.to_dict(orient="records")
    # float32 scores as the doubles they are exactly (tolist), so a client reads back the very same numbers.
    return predictions.tolist() if hasattr(predictions, "tolist") else predictions


def predictor(model: Any) -> Callable[[pd.DataFrame], Any]:
    """The pyfunc's predict: its python model's own when that model checks every request itself
    (`checks_requests`), else PyFuncModel.predict with MLflow's schema enforcement."""
    try:
        python_model = model.unwrap_python_model()
    except Exception:  # another flavour than a python model: MLflow's path
        python_model = None
    if getattr(python_model, "checks_requests", False):
        return lambda frame: python_model.predict(None, frame)  # QinModel.predict reads no context
    return model.predict  # type: ignore[no-any-return]


def create_app(model: Any, model_uri: str) -> Starlette:
    """The ASGI app serving the loaded pyfunc `model` (an mlflow.pyfunc.PyFuncModel)."""
    from mlflow.exceptions import MlflowException
    from mlflow.version import VERSION

    predict = predictor(model)
    uuid = model.metadata.model_uuid
    version = orjson.dumps(
        {"mlflow_version": VERSION, "model": model_uri, "model_uuid": uuid, "server": "qin"}
    )

    async def ping(request: Request) -> Response:
        return Response(b"\n", media_type=JSON)

    async def get_version(request: Request) -> Response:
        return Response(version, media_type=JSON)

    async def invocations(request: Request) -> Response:
        mime, _, charset = request.headers.get("content-type", "").partition(";")
        if mime.strip().lower() != JSON or charset.strip().lower() not in ("", "charset=utf-8"):
            return _error(415, "BAD_REQUEST", f"expected content type {JSON} (UTF-8)")
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            return _error(413, "BAD_REQUEST", f"request body over {MAX_BODY_BYTES} bytes")
        try:
            frame = parse_request(await request.body())
            predictions = predict(frame)
        except RequestError as exc:
            return _error(exc.status, "BAD_REQUEST", exc.message)
        except MlflowException as exc:
            if exc.get_http_status_code() == 400:  # the model's refusal (qin/serving/request.py), or MLflow's
                return _error(400, "BAD_REQUEST", exc.message)
            log.exception("scoring failed")
            return _error(500, "INTERNAL_ERROR", FAILED)
        except Exception:
            log.exception("scoring failed")
            return _error(500, "INTERNAL_ERROR", FAILED)
        return Response(orjson.dumps({"predictions": _jsonable(predictions)}), media_type=JSON)

    return Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/health", ping, methods=["GET"]),
            Route("/version", get_version, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
        ]
    )


class NoDelayProtocol(HttpProtocol):
    """uvicorn's HTTP protocol (httptools, else h11) with TCP_NODELAY on each connection. With --workers N
    uvicorn binds the listening socket itself without naming TCP, so asyncio leaves Nagle's algorithm on for
    the connections it accepts: each response's body then waits for the client's delayed ACK, about 40 ms a
    request (measured with h11: /ping 44 ms with 2 workers, 0.3 ms with 1; `mlflow models serve -w 2` ran
    into the same)."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def app_from_env() -> Starlette:
    """uvicorn's factory (in each worker process): the model named by QIN_SCORING_MODEL, loaded once."""
    import mlflow
    import torch

    torch.set_num_threads(int(os.environ.get(ENV_THREADS, "1")))
    uri = os.environ[ENV_MODEL]
    return create_app(mlflow.pyfunc.load_model(uri), uri)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a model dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--workers", type=int, default=1, help="processes, each with the model loaded")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per worker")
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs latency)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        p.error(f"--workers and --threads: expected at least 1, found {args.workers} and {args.threads}")
    import uvicorn

    os.environ.update({ENV_MODEL: args.model, ENV_THREADS: str(args.threads)})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    uvicorn.run(
        "qinstack.scoring_app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=args.access_log,
        lifespan="off",
        http="qinstack.scoring_app:NoDelayProtocol",  # by name: uvicorn's workers import it
        log_level="info",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
