"""A process worker for the work pool `qin-pool` that stops cleanly on SIGTERM and SIGINT (Ctrl-C).

    python -m qinstack.worker [--pool qin-pool]     # needs PREFECT_API_URL, the pool and the deployment
                                                 # (`make worker` does all three)

`prefect worker start` exits at once on SIGTERM and leaves its in-flight flow runs Running: it starts each
in a session of its own (so that a terminal's Ctrl-C does not reach it) and never tells it to stop. This
worker, on the first SIGTERM or SIGINT, takes no more flow runs, SIGTERMs the flow-run processes (their
engine marks the run Crashed: "Execution was aborted by a termination signal"), waits up to CHILD_GRACE_S
for them, SIGKILLs what is left, marks Crashed any of their runs that is still not final, lets the worker
finish its own reporting, and only then stops the worker. A second signal exits at once (flows/shutdown.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any
from uuid import UUID

import psutil
from prefect import get_client
from prefect.states import Crashed
from prefect.workers.process import ProcessWorker

from flows.deploy_pool import POOL
from flows.deployment import share_cores
from flows.shutdown import GracefulStop, say
from qin.settings.params import load_params

CHILD_GRACE_S = 7.0  # from the signal to SIGKILL of the flow-run processes
STOP_BY_S = 8.0  # from the signal to stopping the worker (flows/shutdown.py exits at DEADLINE_S, 9 s)


class StoppableWorker(ProcessWorker):
    """A process worker that takes no new flow run once `stopping` is set."""

    stopping = False

    @classmethod
    def __dispatch_key__(cls) -> str:
        # Workers are registered by type: under "process" this class would replace ProcessWorker (with a
        # warning). Its `type` stays "process", which the pool checks.
        return "qin-stoppable-process"

    async def get_and_submit_flow_runs(self) -> list[Any]:
        if self.stopping:
            return []
        return await super().get_and_submit_flow_runs()


def flow_run_id(process: psutil.Process) -> UUID | None:
    """The flow run a child of the worker runs: Prefect passes its id in the child's environment."""
    try:
        value = process.environ().get("PREFECT__FLOW_RUN_ID")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return UUID(value) if value else None


def running(process: psutil.Process) -> bool:
    """Alive and not yet a zombie. Polled rather than waited for: waiting reaps the child, which the worker's
    event loop then cannot, and it would report exit code 255 instead of the real one."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def stop_flow_runs(grace_s: float) -> set[UUID]:
    """SIGTERM the flow-run processes (the worker's children), SIGKILL those still running after `grace_s`;
    returns their flow runs."""
    children = psutil.Process().children()
    flow_runs = {flow_run for flow_run in map(flow_run_id, children) if flow_run is not None}
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    deadline = time.monotonic() + grace_s
    while (alive := [c for c in children if running(c)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for child in alive:
        say(f"flow-run process {child.pid} still running {grace_s:.0f} s after SIGTERM: killing it")
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in [*child.children(recursive=True), child]:
                process.kill()
    return flow_runs


async def settle(timeout_s: float) -> None:
    """Wait up to `timeout_s` for the processes the worker starts once a flow-run process has exited (one
    runs the flow's on_crashed hooks), so that stopping the worker does not kill them halfway."""
    deadline = time.monotonic() + timeout_s
    while any(map(running, psutil.Process().children())) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def crash_unfinished(flow_runs: set[UUID], message: str) -> None:
    """Mark Crashed each of `flow_runs` whose process ended without reporting a final state."""
    async with get_client() as client:
        for flow_run in flow_runs:
            state = (await client.read_flow_run(flow_run)).state
            if state is None or not state.is_final():
                await client.set_flow_run_state(flow_run, Crashed(message=message))
                say(f"flow run {flow_run} was {state.name if state else 'without a state'}: marked Crashed")


class WorkerProcess:
    """Runs a StoppableWorker until a signal, then stops its flow runs before the worker itself."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.graceful_stop = GracefulStop(self._on_signal)
        self._signalled = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_signal(self, signum: int) -> None:
        if self._loop is None:
            raise KeyboardInterrupt  # still starting up: no flow run to stop yet
        # A signal handler runs between two bytecodes of the loop's thread: hand the stop to the loop.
        self._loop.call_soon_threadsafe(self._signalled.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        worker = StoppableWorker(work_pool_name=self.pool)
        work = asyncio.create_task(worker.start())
        signalled = asyncio.create_task(self._signalled.wait())
        await asyncio.wait({work, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():  # the worker stopped by itself: an error, raised here
            signalled.cancel()
            work.result()
            return
        stop_started = time.monotonic()
        worker.stopping = True
        flow_runs = await stop_flow_runs(CHILD_GRACE_S)
        await crash_unfinished(flow_runs, "Execution was aborted: the worker was stopped by a signal.")
        await settle(STOP_BY_S - (time.monotonic() - stop_started))
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qinstack.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--pool", default=POOL, help=f"the process work pool (default: {POOL})")
    args = parser.parse_args(argv)
    share_cores(load_params().deploy)
    process = WorkerProcess(args.pool)
    process.graceful_stop.install()  # before asyncio.run, which otherwise takes SIGINT for itself
    with contextlib.suppress(KeyboardInterrupt):  # a signal before the worker had started
        asyncio.run(process.run())


if __name__ == "__main__":
    main()
