"""The worker service: a process worker for the work pool `qin-pool` that stops cleanly on SIGTERM and SIGINT
(Ctrl-C), and `python -m qinstack worker`, which deploys the flows to the pool before it starts one.

    python -m qinstack worker                       # compose's worker: the pool, the deployments, a worker
    python -m qinstack.worker [--pool qin-pool]     # the worker alone: needs PREFECT_API_URL, the pool and
                                                    # the deployments (`make worker` does all three)

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
import os
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
from prefect import get_client
from prefect.states import Crashed

from flows.deploy_pool import POOL, deploy
from flows.deployment import share_cores
from flows.prefect_shim import ProcessWorkerApart
from flows.shutdown import GracefulStop, running, say, stop_processes
from qin.settings.params import load_params
from qinstack.health import http_status, wait_until
from qinstack.settings import Settings, StackError

CHILD_GRACE_S = 7.0  # from the signal to SIGKILL of the flow-run processes
STOP_BY_S = 8.0  # from the signal to stopping the worker (flows/shutdown.py exits at DEADLINE_S, 9 s)


class StoppableWorker(ProcessWorkerApart):
    """A process worker that takes no new flow run once `stopping` is set."""

    dispatch_key = "qin-stoppable-process"
    stopping = False

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


async def stop_flow_runs(grace_s: float) -> set[UUID]:
    """SIGTERM the flow-run processes (the worker's children), SIGKILL those still running after `grace_s`;
    returns their flow runs. In a thread: the worker's event loop reaps the children meanwhile (waiting for
    them here would reap them first, and the worker would report exit code 255 instead of the real one)."""
    children = psutil.Process().children()
    flow_runs = {flow_run for flow_run in map(flow_run_id, children) if flow_run is not None}
    await asyncio.to_thread(stop_processes, children, grace_s, what="flow-run process")
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
        self.signalled = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def _on_signal(self, signum: int) -> None:
        if self.loop is None:
            raise KeyboardInterrupt  # still starting up: no flow run to stop yet
        # A signal handler runs between two bytecodes of the loop's thread: hand the stop to the loop.
        self.loop.call_soon_threadsafe(self.signalled.set)

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        worker = StoppableWorker(work_pool_name=self.pool)
        work = asyncio.create_task(worker.start())
        signalled = asyncio.create_task(self.signalled.wait())
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


def ensure_pool(name: str) -> None:
    """The process work pool `name`, created unless it exists."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another worker created it since we looked
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
                print(f"worker: created the process work pool {name}", flush=True)


def run_worker(s: Settings) -> int:
    """The worker service: a worker on the process work pool QIN_POOL, after (re)deploying the pool's
    deployments (flows/deploy_pool.py) from the working directory (a checkout: flows/, params.yaml, data/),
    where their runs then start. Start as many as you like against the same servers: they share the stage
    store (artifacts/) and data/ when they share this folder (compose: the same volumes)."""
    s.require("worker", "PREFECT_API_AUTH_STRING")
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        raise StackError("PREFECT_API_URL is not set (the Prefect server's API)")
    wait_until(f"the Prefect API at {api}", lambda: http_status(api + "/health", s.prefect_auth) == 200)
    ensure_pool(s.pool)
    for deployment, deployment_id in deploy(s.pool, root=Path.cwd()).items():
        print(f"worker: deployed {deployment} ({deployment_id}) to {s.pool}", flush=True)
    # A process of its own, which `python -m qinstack health worker` finds by its command line.
    command = [sys.executable, "-m", "qinstack.worker", "--pool", s.pool]
    os.execv(command[0], command)
    return 1  # not reached


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
