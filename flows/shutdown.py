"""Stopping a long-running process (flows.serve, qinstack.worker) on SIGTERM as on Ctrl-C, and stopping
another process: `stop_processes`, the one SIGTERM, grace period, SIGKILL sequence of the project.

A supervisor (make, systemd, docker, Kubernetes) stops a process with SIGTERM, a terminal with SIGINT. Both
begin the same graceful stop, which ends the in-flight flow runs with a final state (Cancelled or Crashed)
before the process exits. A second signal, or a stop still going after DEADLINE_S, kills the flow-run
processes and exits at once, so that the process is gone within 10 s (docker's grace before SIGKILL) even
when the API does not answer.

A flow-run process stops by Prefect's own handler, which raises TerminationSignal wherever the run is; the
engine then ends the run Crashed (Cancelled when serve cancelled it). `signals_unwrapped` keeps it so when
the signal lands inside an import.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from prefect.exceptions import TerminationSignal

DEADLINE_S = 9.0


def say(message: str) -> None:
    """One line on stderr; safe in a signal handler, which may interrupt a `print` or a logging call."""
    os.write(2, f"{message}\n".encode())


def kill_children() -> None:
    """SIGKILL every process below this one."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def running(process: psutil.Process) -> bool:
    """Alive and not yet a zombie. Polled rather than waited for: waiting reaps a child, which its parent's
    own code (a Popen, an event loop's child watcher) must do to learn its real exit code."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _send(process: psutil.Process, signum: int, group: bool) -> None:
    """`signum` to `process`'s group, else to `process` (SIGKILL: also to every process below it)."""
    with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
        if group:
            if process.is_running():  # its pid not reused since (psutil compares start times)
                os.killpg(process.pid, signum)
            return
        below = process.children(recursive=True) if signum == signal.SIGKILL else []
        for each in [*below, process]:
            with contextlib.suppress(psutil.NoSuchProcess):
                each.send_signal(signum)


def stop_processes(
    processes: Iterable[psutil.Process], grace_s: float, *, group: bool = False, what: str = "process"
) -> list[psutil.Process]:
    """SIGTERM each of `processes` (with `group`: its process group), wait up to `grace_s` for them to exit,
    then SIGKILL those still running (their group, else them and every process below them). Returns those
    killed. Blocking: from an event loop, run it in a thread (`asyncio.to_thread`)."""
    processes = list(processes)
    for process in processes:
        _send(process, signal.SIGTERM, group)
    deadline = time.monotonic() + grace_s
    while (alive := [p for p in processes if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in alive:
        say(f"{what} {process.pid} still running {grace_s:.0f} s after SIGTERM: killing it")
        _send(process, signal.SIGKILL, group)
    return alive


def exit_now(code: int) -> None:
    kill_children()
    os._exit(code)


class GracefulStop:
    """The SIGTERM and SIGINT handler: the first signal calls `begin(signum)`; a second one, or DEADLINE_S
    after the first, kills this process's children and exits with 128 + the signal number."""

    def __init__(self, begin: Callable[[int], None], deadline_s: float = DEADLINE_S) -> None:
        self.begin = begin
        self.deadline_s = deadline_s
        self.signum: int | None = None

    def install(self) -> None:
        """Handle SIGTERM and SIGINT. Call it before `asyncio.run`, which otherwise takes SIGINT itself."""
        signal.signal(signal.SIGTERM, self.handle)
        # A process started with SIGINT ignored (a shell's background job, as in `make serve`) keeps it
        # ignored: its supervisor forwards SIGTERM, and the terminal's Ctrl-C, which reaches the whole group,
        # must not count as the second signal.
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            say(f"{name} again: killing the flow-run processes and exiting now")
            exit_now(128 + signum)
        self.signum = signum
        say(f"{name}: stopping (again to exit at once)")
        deadline = threading.Timer(self.deadline_s, self._overrun, args=(signum,))
        deadline.daemon = True
        deadline.start()
        self.begin(signum)

    def _overrun(self, signum: int) -> None:
        say(f"still stopping {self.deadline_s:.0f} s after the signal: killing what is left and exiting")
        exit_now(128 + signum)


def termination_signal(exc: BaseException | None) -> TerminationSignal | None:
    """The TerminationSignal that `exc` is, or was raised from or during; None if there is none."""
    from prefect.exceptions import TerminationSignal  # here: stopping a process needs no Prefect

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TerminationSignal):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def signals_unwrapped() -> Iterator[None]:
    """Re-raise a termination signal that came back wrapped in another error, as itself.

    Python 3.11 wraps an error raised while a class is created (in `__set_name__`, which
    functools.cached_property has) in RuntimeError("Error calling __set_name__ ..."). A signal that lands
    during an import (mlflow, torch, great_expectations: the first seconds of every run) would otherwise end
    the run Failed by an error nobody made, and a stage task would retry it."""
    try:
        yield
    except Exception as exc:
        signal_raised = termination_signal(exc)
        if signal_raised is None:
            raise
        raise signal_raised from None
