"""`make serve` and `make worker` run their command through flows/with_server.py: the Prefect server it uses,
the command's exit status, and signals reaching the command as SIGTERM only (a terminal's Ctrl-C too), a
second one as a second SIGTERM. The server start itself is the Makefile's path: these use a server that
answers already, or PREFECT_API_URL."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import free_ports

# Writes each signal it gets to its file; exits 0 on the `stop_on`-th SIGTERM. Ready once the file exists.
COMMAND = """
import os, signal, sys, time
path, stop_on = sys.argv[1], int(sys.argv[2])
got = []
def handle(signum, frame):
    got.append(signal.Signals(signum).name)
    with open(path, "a") as f:
        f.write(got[-1] + "\\n")
    if got.count("SIGTERM") >= stop_on:
        sys.exit(0)
signal.signal(signal.SIGTERM, handle)
signal.signal(signal.SIGINT, handle)
open(path, "a").close()
while True:
    time.sleep(0.05)
"""


def _with_server(*command: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`python -m flows.with_server -- command`, in a process group of its own (as make in a terminal)."""
    return subprocess.Popen(
        [sys.executable, "-m", "flows.with_server", "--", *command],
        cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip


def _started(proc: subprocess.Popen[str], path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)


@pytest.fixture
def api_env() -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}


def test_the_command_gets_the_server_and_its_exit_status_is_kept(api_env: dict[str, str]) -> None:
    code = "import os, sys; print('command sees', os.environ['PREFECT_API_URL']); sys.exit(3)"
    proc = _with_server(sys.executable, "-c", code, env=api_env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, out
    assert "using the Prefect server at http://127.0.0.1:9/api" in out
    assert "command sees http://127.0.0.1:9/api" in out


def test_a_server_that_answers_on_the_port_is_used(api_env: dict[str, str]) -> None:
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    (port,) = free_ports(1)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in api_env.items() if k != "PREFECT_API_URL"}
    try:
        code = "import os; print('command sees', os.environ['PREFECT_API_URL'])"
        command = [sys.executable, "-c", code]
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.with_server", "--port", str(port), "--", *command],
            cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, _ = proc.communicate(timeout=60)
    finally:
        server.shutdown()
    assert proc.returncode == 0, out
    assert f"command sees http://127.0.0.1:{port}/api" in out
    assert "waiting for the Prefect server" not in out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_signal_reaches_the_command_as_sigterm_only(
    api_env: dict[str, str], tmp_path: Path, signum: int
) -> None:
    got = tmp_path / "signals"
    proc = _with_server(sys.executable, "-c", COMMAND, str(got), "1", env=api_env)
    _started(proc, got)
    os.killpg(proc.pid, signum)  # the whole foreground group, as a terminal sends Ctrl-C
    assert proc.wait(30) == 128 + signum
    assert got.read_text().split() == ["SIGTERM"]


def test_a_second_signal_is_forwarded_as_a_second_sigterm(api_env: dict[str, str], tmp_path: Path) -> None:
    got = tmp_path / "signals"
    proc = _with_server(sys.executable, "-c", COMMAND, str(got), "2", env=api_env)
    _started(proc, got)
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while not got.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert got.read_text().split() == ["SIGTERM", "SIGTERM"]
