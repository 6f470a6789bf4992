"""Run a long-running command (`make serve`, `make worker`) with a Prefect server: the one PREFECT_API_URL
names (the team stack's: `make stack`, `make up`), else a local one on 127.0.0.1:PORT, used when one
already answers there, else started (log in .prefect/server.log) and stopped once the command has stopped.

    python -m flows.with_server [--port 4200] -- COMMAND [ARG...]

SIGTERM (to make, as a supervisor sends it) or Ctrl-C is forwarded to the command as SIGTERM, its graceful
stop (flows/shutdown.py), and this process waits for it to stop its flow runs before it stops the server
it started; a second signal is forwarded as a second SIGTERM, to both, which then exit at once. The command
runs in a process group of its own, so a terminal's Ctrl-C reaches it only as that SIGTERM; the server
runs in a session of its own: it must outlive the command, which reports its flow runs' final states to it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

import psutil

from flows.shutdown import say, stop_processes

SERVER_START_S = 300.0  # its first start migrates its database: tens of seconds on 2 busy cores
SERVER_GRACE_S = 15.0  # from SIGTERM to SIGKILL of the server this process started


class Interrupted(BaseException):
    """A signal before the command started: what was started is stopped, and this process exits."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def answers(api: str) -> bool:
    """Whether a Prefect API answers its health check at `api`."""
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=5) as response:
            return int(response.status) == 200
    except OSError:
        return False


def start_server(port: int, api: str) -> subprocess.Popen[bytes]:
    """`prefect server start` on 127.0.0.1:`port`, once it answers; exits with its log if it does not."""
    log_path = Path(".prefect") / "server.log"
    log_path.parent.mkdir(exist_ok=True)
    prefect = str(Path(sys.executable).with_name("prefect"))
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    print(f"waiting for the Prefect server (log: {log_path})", flush=True)
    deadline = time.monotonic() + SERVER_START_S
    try:
        while not answers(api):
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(
                    f"{log_path.read_text(errors='replace')}\nthe Prefect server did not start (log above)"
                )
            time.sleep(1)
    except BaseException:  # a signal, or it did not start: nothing of it is left behind
        stop_server(server)
        raise
    print(f"Prefect UI: http://127.0.0.1:{port}", flush=True)
    return server


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        stop_processes([psutil.Process(server.pid)], SERVER_GRACE_S, group=True, what="Prefect server")
    server.wait()


def run(command: list[str], server: subprocess.Popen[bytes] | None) -> int:
    """`command` until it exits, forwarding SIGTERM and SIGINT as SIGTERM; then the server stopped. Its exit
    status, or 128 + the first signal's number when one came."""
    signals: list[int] = []
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)
        if len(signals) > 1:
            say(f"{signal.Signals(signum).name} again: stopping at once")
        for target in started if len(signals) == 1 or server is None else [*started, server]:
            if target.poll() is None:
                target.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    try:
        started.append(subprocess.Popen(command, process_group=0))
        if signals:  # one came while it started
            started[0].send_signal(signal.SIGTERM)
        status = started[0].wait()
    finally:
        if server is not None:
            stop_server(server)
    return 128 + signals[0] if signals else status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.with_server", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=4200, help="the local server's port (default: 4200)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("expected a command after --, found none")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    server = None
    try:
        server = _server(args.port)
        return run(command, server)
    except Interrupted as exc:  # before `run` forwards signals
        if server is not None:
            stop_server(server)
        return 128 + exc.signum


def _server(port: int) -> subprocess.Popen[bytes] | None:
    """The server this process starts (None: PREFECT_API_URL's, or one already on `port`); PREFECT_API_URL
    set for the command."""
    if os.environ.get("PREFECT_API_URL"):
        print(f"using the Prefect server at {os.environ['PREFECT_API_URL']}", flush=True)
        return None
    api = f"http://127.0.0.1:{port}/api"
    server = None
    if answers(api):
        print(f"using the Prefect server at {api}", flush=True)
    else:
        server = start_server(port, api)
    os.environ["PREFECT_API_URL"] = api
    return server


if __name__ == "__main__":
    sys.exit(main())
