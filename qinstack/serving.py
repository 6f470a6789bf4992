"""Model serving that follows the registry's aliases: the champion (params register.production_alias), else
the staging version (register.alias), restarted on the new version whenever the alias moves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from flows import OFFLINE_ENV
from flows.shutdown import stop_processes
from qinstack.health import status_file, write_serving_status
from qinstack.process import STOP_GRACE_S, Stop, tool
from qinstack.settings import ROOT, Settings


def serving_command(s: Settings, uri: str) -> list[str]:
    """The model server for `uri` on STACK_BIND:SERVING_PORT: qinstack/scoring_app.py (SERVING_APP=asgi) or
    `mlflow models serve` (mlflow). Both load the same pyfunc and answer the same /invocations JSON."""
    if s.serving_app == "asgi":
        return [sys.executable, "-m", "qinstack.scoring_app", "--model", uri, "--host", s.bind,
                "--port", str(s.serving_port), "--workers", str(s.serving_workers)]  # fmt: skip
    return [tool("mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
            "-h", s.bind, "-p", str(s.serving_port), "-w", str(s.serving_workers)]  # fmt: skip


def _alias_holder(registry: object, name: str, aliases: tuple[str, ...]) -> tuple[str, str] | None:
    """(alias, version) of the first alias some version of `name` holds; None when none does."""
    for alias in aliases:
        holder = registry.alias_holder(name, alias)  # type: ignore[attr-defined]
        if holder is not None:
            return alias, str(holder.version)
    return None


class _ModelServer:
    """The model server of `run_serving`: one child in a process group of its own, started on a models:/
    URI and stopped with SIGTERM, then SIGKILL after STOP_GRACE_S (flows/shutdown.py)."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        # `mlflow models serve` runs `uvicorn` from PATH: this environment's, also when it is not activated.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        # qinstack.scoring_app imports from this checkout whatever the working directory.
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, **OFFLINE_ENV, "PATH": path, "PYTHONPATH": pythonpath}
        self.child: subprocess.Popen[bytes] | None = None

    def start(self, uri: str) -> None:
        self.child = subprocess.Popen(serving_command(self.s, uri), env=self.env, start_new_session=True)

    def exited(self) -> bool:
        return self.child is not None and self.child.poll() is not None

    def stop(self) -> None:
        if self.child is not None and self.child.poll() is None:
            stop_processes([psutil.Process(self.child.pid)], STOP_GRACE_S, group=True, what="model server")
            self.child.wait()
        self.child = None

    def kill(self) -> None:
        if self.child is not None:
            os.killpg(self.child.pid, signal.SIGKILL)


def run_serving(s: Settings) -> int:
    """Serve the registry's champion, else its staging version, on STACK_BIND:SERVING_PORT with the model
    server SERVING_APP names. Until a version holds either alias it waits (healthy: nothing to serve yet);
    when the alias moves it restarts the model server on the new version (the registry is read every
    SERVING_POLL_S, 10 s). The model server runs in a process group of its own, stopped with this process."""
    from flows.tracking import MlflowRegistry
    from qin.settings.params import load_params

    register = load_params("params.yaml").register
    poll_s = float(os.environ.get("SERVING_POLL_S", "10"))
    aliases = (register.production_alias, register.alias)
    registry, server = MlflowRegistry(register), _ModelServer(s)
    serving: tuple[str, str] | None = None
    stop = Stop(on_second=server.kill)
    write_serving_status(s.serving_port, state="waiting", aliases=",".join(aliases))
    print(
        f"serving: waiting for a version of {register.model_name} with alias {' or '.join(aliases)}",
        flush=True,
    )
    try:
        while not stop.requested:
            holder = _holder_or(serving, registry, register.model_name, aliases)
            if holder != serving or server.exited():
                server.stop()
                serving = holder
                _serve(s, server, register.model_name, holder, aliases)
            stop.sleep(poll_s)
    finally:
        server.stop()
        status_file(s.serving_port).unlink(missing_ok=True)  # stopped: not healthy, whatever it was
    return 0


def _holder_or(
    serving: tuple[str, str] | None, registry: object, name: str, aliases: tuple[str, ...]
) -> tuple[str, str] | None:
    """The alias holder now; what is served when the registry cannot be read (the server is away)."""
    from mlflow.exceptions import MlflowException

    from qin.registry.protocol import RegistryError

    try:
        return _alias_holder(registry, name, aliases)
    except (RegistryError, MlflowException, OSError) as exc:
        print(f"serving: cannot read the registry ({exc}); keeping {serving}", flush=True)
        return serving


def _serve(
    s: Settings, server: _ModelServer, name: str, holder: tuple[str, str] | None, aliases: tuple[str, ...]
) -> None:
    """Start the model server on `holder` (alias, version) and say so in the status file; None: wait."""
    if holder is None:
        write_serving_status(s.serving_port, state="waiting", aliases=",".join(aliases))
        return
    uri = f"models:/{name}/{holder[1]}"
    print(f"serving: {uri} ('{holder[0]}') on {s.bind}:{s.serving_port}", flush=True)
    server.start(uri)
    write_serving_status(s.serving_port, state="serving", alias=holder[0], version=holder[1], uri=uri)
