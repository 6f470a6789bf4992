"""Every use of a private Prefect API, in one place: Prefect is pinned in requirements.lock (3.8.8), and
tests/pipeline/test_prefect_shim.py checks that the installed Prefect still has each name below with the call
shape used here, so that an upgrade that changes one fails there, naming this module.

What each works around:
- `Runner.handle_sigterm` calls `self.stop()` from inside the event loop, where the async-dispatched `stop`
  returns an `astop()` coroutine that nobody awaits, and its `sys.exit(0)` is swallowed by the loop: the
  process ignores SIGTERM and its flow runs stay Running. flows/serve.py's StoppableRunner hands `astop()`
  to the runner's loop itself, from the signal handler's thread: `runner_loop` (`Runner._loop`).
- `Runner.cancel_all` cancels the in-flight runs one after the other, and each takes at least 3 s (it looks
  at a SIGTERMed process again only after max(grace / 10, 1) s). StoppableRunner cancels them side by side,
  with the runner's own cancellation (SIGTERM, on_cancellation hooks, state Cancelled): `in_flight` and
  `cancel_flow_run` (`Runner._process_manager.flow_run_ids()`, `Runner._client.read_flow_run`,
  `Runner._cancellation_manager.cancel(flow_run, state_msg=...)`, errors logged on `Runner._logger`).
- Workers are registered by their `type`: a subclass of ProcessWorker keeps `type = "process"` (the work
  pool checks it) and so would replace ProcessWorker in Prefect's registry, with a warning.
  `ProcessWorkerApart` registers under a key of its own (`__dispatch_key__`).
"""

from __future__ import annotations

import asyncio
from typing import ClassVar
from uuid import UUID

from prefect.runner import Runner
from prefect.workers.process import ProcessWorker


def runner_loop(runner: Runner) -> asyncio.AbstractEventLoop | None:
    """The event loop `runner.start()` runs in; None before it has started."""
    return runner._loop


def in_flight(runner: Runner) -> set[UUID]:
    """The flow runs whose processes `runner` runs now."""
    return set(runner._process_manager.flow_run_ids())


async def cancel_flow_run(runner: Runner, flow_run_id: UUID, message: str) -> None:
    """Cancel one of `runner`'s in-flight flow runs as its own shutdown does (its process SIGTERMed, its
    on_cancellation hooks run, its state Cancelled with `message`); an error is logged, not raised, so
    that the other runs still get cancelled."""
    try:
        flow_run = await runner._client.read_flow_run(flow_run_id)
        await runner._cancellation_manager.cancel(flow_run, state_msg=message)
    except Exception:
        runner._logger.exception("could not cancel flow run %s", flow_run_id)


class ProcessWorkerApart(ProcessWorker):
    """A ProcessWorker registered under `dispatch_key` (each subclass sets its own), not under "process"."""

    dispatch_key: ClassVar[str] = "qin-process-apart"

    @classmethod
    def __dispatch_key__(cls) -> str:
        return cls.dispatch_key
