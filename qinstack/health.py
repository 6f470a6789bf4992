"""Whether a service is healthy (`python -m qinstack health SERVICE`: compose's health checks), and waiting
until something is ready.

Standard library at the top; psycopg2 only to ask PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from qin.runs.io import read_json, write_json
from qinstack.settings import DATABASES, Settings, StackError

SERVICES = ("postgres", "mlflow", "prefect", "serving", "worker")


def http_status(url: str, auth: str | None = None, timeout: float = 5.0) -> int:
    """The HTTP status of GET `url` (0 when nothing answers)."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def postgres_ready(s: Settings, database: str = "postgres") -> bool:
    import psycopg2

    try:
        psycopg2.connect(
            host=s.pg_host,
            port=s.pg_port,
            user=s.pg_user,
            password=s.pg_password,
            dbname=database,
            connect_timeout=3,
        ).close()
    except psycopg2.OperationalError:
        return False
    return True


def healthy(service: str, s: Settings) -> bool:
    if service == "postgres":  # up, and its databases made
        return all(postgres_ready(s, name) for name in DATABASES)
    if service == "mlflow":
        return http_status(s.url("mlflow") + "/health") == 200
    if service == "prefect":
        return http_status(s.url("prefect") + "/api/health", s.prefect_auth) == 200
    if service == "serving":
        status = serving_status(s.serving_port)
        if status.get("state") == "serving":
            return http_status(s.url("serving") + "/ping") == 200
        return status.get("state") == "waiting"  # no version holds the aliases yet: serving nothing is right
    if service == "worker":  # its worker process runs (started once the deployments exist), its API answers
        api = os.environ.get("PREFECT_API_URL", s.url("prefect") + "/api")
        return running("qinstack.worker") and http_status(api + "/health", s.prefect_auth) == 200
    raise StackError(f"health: expected one of {', '.join(SERVICES)}, found {service!r}")


def running(module: str) -> bool:
    """Whether a `python -m <module>` process runs on this machine (in a container: in this container)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if b"-m" in argv and module.encode() in argv:
                return True
    return False


def wait_until(
    what: str, ready: Callable[[], bool], timeout: float = 180.0, alive: Callable[[], bool] = lambda: True
) -> None:
    """Poll `ready()` until it is true; StackError naming `what` after `timeout` s or once `alive()` fails."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise StackError(f"{what}: a process exited before it was ready")
        if time.monotonic() > deadline:
            raise StackError(f"{what} was not ready after {timeout:.0f} s")
        time.sleep(1.0)


def status_file(port: int) -> Path:
    """What `serving` on `port` is doing, for its health check: one file per port, so that two serving
    processes on one machine never read each other's."""
    return Path(tempfile.gettempdir()) / f"qin-serving-{port}.json"


def serving_status(port: int) -> dict[str, str]:
    try:
        return dict(read_json(status_file(port)))
    except (OSError, ValueError):
        return {}


def write_serving_status(port: int, **status: str) -> None:
    write_json(status_file(port), status)
