"""Serve the `qin-train` and `qin-score` flows as deployments `qin-train/local` and `qin-score/local`
(needs PREFECT_API_URL; see `make serve`).

At most params.yaml `deploy.concurrency_limit` runs at once (the server holds the others back). SIGTERM and
SIGINT (Ctrl-C) stop it: the in-flight flow runs are cancelled (state Cancelled), then the process exits;
a second signal exits at once (flows/shutdown.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import anyio
from prefect.runner import Runner

from flows.deployment import concurrency_limit, require_api, share_cores
from flows.prefect_shim import cancel_flow_run, in_flight, runner_loop
from flows.qin_score import qin_score
from flows.qin_train import qin_train
from flows.shutdown import GracefulStop
from qin.settings.params import load_params

DEPLOYMENT = "local"


class StoppableRunner(Runner):
    """A Runner that stops on SIGTERM (Prefect's own handler does not: flows/prefect_shim.py). It hands
    `astop()` to the runner's loop: that cancels the in-flight runs (their processes are SIGTERMed, the runs
    marked Cancelled), then `start()` returns.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.graceful_stop = GracefulStop(self._begin_stop)
        self._stop_task: asyncio.Task[None] | None = None

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        # `start()` installs this for SIGTERM, over GracefulStop.install's handler.
        self.graceful_stop.handle(*args)

    def _begin_stop(self, signum: int) -> None:
        loop = runner_loop(self)
        if not self.started or loop is None:
            raise KeyboardInterrupt  # still starting up: no flow run to stop yet
        # A signal handler runs between two bytecodes of the loop's thread; call_soon_threadsafe also wakes
        # the loop if it is waiting in select().
        loop.call_soon_threadsafe(self._schedule_stop)

    def _schedule_stop(self) -> None:
        self._stop_task = asyncio.get_running_loop().create_task(self.astop())

    async def cancel_all(self) -> None:
        # Side by side: N runs stop in 3 s, not 3N (Prefect's own cancel_all: flows/prefect_shim.py).
        async with anyio.create_task_group() as group:
            for flow_run_id in in_flight(self):
                group.start_soon(cancel_flow_run, self, flow_run_id, "Runner is shutting down.")


def main() -> None:
    require_api("python -m flows.serve", "serve")
    # No schedule to pause on shutdown (Prefect's default pauses the deployment): that would only cost API
    # calls while the supervisor's clock runs.
    runner = StoppableRunner(name=DEPLOYMENT, pause_on_shutdown=False)
    deploy = load_params().deploy
    share_cores(deploy)
    for served in (qin_train, qin_score):
        runner.add_flow(served, name=DEPLOYMENT, concurrency_limit=concurrency_limit(deploy))
    runner.graceful_stop.install()
    names = [f"{served.name}/{DEPLOYMENT}" for served in (qin_train, qin_score)]
    print(
        f"serving {' and '.join(names)} (runs of each at once: {deploy.concurrency_limit or 'no limit'}, "
        f"then {deploy.collision_strategy}); run one with `prefect deployment run {names[0]}`",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):  # a signal before the runner had started
        asyncio.run(runner.start())


if __name__ == "__main__":
    main()
