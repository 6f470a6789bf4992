"""The installed Prefect still has every private name flows/prefect_shim.py relies on, with the call shape it
uses: an upgrade that renames or reshapes one fails here, naming the shim, rather than in a served run's
shutdown."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from typing import Any

import prefect
import pytest

SHIM = "flows/prefect_shim.py"


def _relied_on(ok: bool, what: str) -> None:
    assert ok, (
        f"prefect {prefect.__version__}: {what} is not as {SHIM} relies on it; update the shim (its "
        "docstring names the upstream behaviour each use works around) and the pin in requirements.lock"
    )


def _get(owner: Any, dotted: str) -> Any:
    """`owner`'s attribute (a module's, when `owner` is a module name) at `dotted`, or a failure naming it."""
    try:
        value = importlib.import_module(owner) if isinstance(owner, str) else owner
        for name in dotted.split("."):
            value = getattr(value, name)
    except (ImportError, AttributeError):
        _relied_on(False, f"{owner if isinstance(owner, str) else type(owner).__name__}.{dotted}")
    return value


def _call_shape(owner: str, dotted: str, parameters: list[str], coroutine: bool) -> None:
    function = _get(owner, dotted)
    found = list(inspect.signature(function).parameters)[: len(parameters)]
    _relied_on(
        found == parameters and inspect.iscoroutinefunction(function) == coroutine,
        f"{dotted}({', '.join(parameters[1:])}) ({'async' if coroutine else 'sync'}; found {found})",
    )


def test_the_process_worker_is_registered_by_dispatch_key() -> None:
    from prefect.utilities.dispatch import get_dispatch_key, lookup_type
    from prefect.workers.base import BaseWorker
    from prefect.workers.process import ProcessWorker

    from flows.prefect_shim import ProcessWorkerApart

    class Apart(ProcessWorkerApart):
        dispatch_key = "qin-shim-check"

    _relied_on(get_dispatch_key(ProcessWorker) == "process", "ProcessWorker.__dispatch_key__")
    _relied_on(
        lookup_type(BaseWorker, "qin-shim-check") is Apart, "BaseWorker's registry by __dispatch_key__"
    )
    _relied_on(
        lookup_type(BaseWorker, "process") is ProcessWorker, "BaseWorker's registry by __dispatch_key__"
    )
    _relied_on(Apart.type == "process", "ProcessWorker.type")


def test_the_runner_internals_have_the_call_shape_the_shim_uses() -> None:
    from prefect.runner import Runner

    runner = Runner(name="qin-shim-check")
    _relied_on(_get(runner, "_loop") is None, "Runner._loop (None until the runner starts)")
    _relied_on(isinstance(_get(runner, "_logger"), logging.Logger), "Runner._logger")
    manager = _get("prefect.runner._process_manager", "ProcessManager")
    _relied_on(isinstance(_get(runner, "_process_manager"), manager), "Runner._process_manager")
    _call_shape("prefect.runner._process_manager", "ProcessManager.flow_run_ids", ["self"], coroutine=False)
    _call_shape(
        "prefect.runner._cancellation_manager",
        "CancellationManager.cancel",
        ["self", "flow_run", "state_msg"],
        coroutine=True,
    )
    _call_shape(
        "prefect.client.orchestration", "PrefectClient.read_flow_run", ["self", "flow_run_id"], coroutine=True
    )
    _call_shape("prefect.runner", "Runner.handle_sigterm", ["self", "args", "kwargs"], coroutine=False)


@pytest.mark.slow
def test_a_started_runner_has_what_the_shim_reads(prefect_harness: None) -> None:
    from prefect.client.orchestration import PrefectClient
    from prefect.runner import Runner

    from flows.prefect_shim import in_flight, runner_loop

    cancellation = _get("prefect.runner._cancellation_manager", "CancellationManager")

    async def entered() -> None:
        runner = Runner(name="qin-shim-check")
        async with runner:
            _relied_on(runner_loop(runner) is asyncio.get_running_loop(), "Runner._loop once entered")
            _relied_on(isinstance(_get(runner, "_client"), PrefectClient), "Runner._client once entered")
            _relied_on(
                isinstance(_get(runner, "_cancellation_manager"), cancellation),
                "Runner._cancellation_manager once entered",
            )
            _relied_on(in_flight(runner) == set(), "Runner._process_manager.flow_run_ids() once entered")

    asyncio.run(entered())
