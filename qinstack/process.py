"""What the stack's service processes share: this environment's console scripts, a server's environment,
and stopping on SIGTERM as on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from flows import OFFLINE_ENV
from qinstack.settings import StackError

STOP_GRACE_S = 15.0  # what a service gets between SIGTERM and SIGKILL (supervisord's stopwaitsecs too)


def tool(name: str) -> str:
    """A console script of this environment (beside the running Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name}: not found beside {sys.executable} nor on PATH (run `make install`)")
    return found


def server_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A server's environment: telemetry off, and none of the client settings that would point the server
    at itself (or at another stack)."""
    env = {**os.environ, **OFFLINE_ENV, **extra}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        env.pop(key, None)
    return env


class Stop:
    """SIGTERM and SIGINT set `requested` (and call `on_stop`) instead of raising: the caller stops its
    children in order. A second signal calls `on_second`, which should stop at once."""

    def __init__(
        self, on_stop: Callable[[], None] = lambda: None, on_second: Callable[[], None] = lambda: None
    ) -> None:
        self.requested = False
        self.on_stop, self.on_second = on_stop, on_second
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            self.on_second()
            return
        self.requested = True
        # os.write, not print: a handler may interrupt a print, which is not reentrant (flows/shutdown.py)
        os.write(2, f"qinstack: {signal.Signals(signum).name}: stopping\n".encode())
        self.on_stop()

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(0.2, seconds))
