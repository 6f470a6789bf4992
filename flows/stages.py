"""The pipeline's Prefect tasks, one per stage of the stage table (qin/runs/pipeline.py), and what the flows
share.

Each task is a thin adapter: the run's params file, the data folder and the keys of the stages already run
in, one call to `qin.runs.store.run`, the stage's entry out ({"stage", "key", "dir", "how", "seconds"}; the
register stage's result for it). Prefect's own task cache is off: a stage's identity is its key, and the
store decides, under a lock per key, whether the key's outputs exist and verify ("Cached") or have to be
computed ("Completed"); two runs that need one key at once compute it once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

import flows  # noqa: F401  (offline settings, before anything else of Prefect's runs)
from flows.shutdown import termination_signal
from qin.registry.promotion import PromotionRefused
from qin.runs import pipeline, store
from qin.runs import records as runs
from qin.validate import ValidationError

P = ParamSpec("P")


def retry_on_io_only(task: Any, task_run: Any, state: State) -> bool:
    """Retry transient I/O failures, not bad data or bad settings: those fail the same way again, nor a
    termination signal that an import wrapped (flows/shutdown.py): the process is stopping."""
    exc = state.result(raise_on_failure=False)
    if termination_signal(exc) is not None:
        return False
    return not isinstance(exc, ValidationError | ValueError | KeyError | PromotionRefused)


def _run(
    name: str,
    params: str,
    data: str,
    upstream: dict[str, str],
    record: str,
    model_dir: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Stage `name` through the store (qin.runs.store.run): a content-addressed stage's entry, as a state
    named
    Cached or Completed; the result of one that is not (register)."""
    entry = store.run(name, params, data, upstream, record, model_dir=model_dir, extra=extra)
    if not pipeline.stage(name).content_addressed:
        return entry
    return Completed(name="Cached" if entry["how"] == "cached" else "Completed", data=entry)


def _stage_task(s: pipeline.Stage) -> Any:
    return task(  # type: ignore[call-overload]
        _run,
        name=s.name,
        description=f"Stage `{s.name}`: {s.help}.",
        cache_policy=NO_CACHE,
        # register talks to the registry (a server may restart); the others read and write files.
        retries=1 if s.content_addressed else 2,
        retry_delay_seconds=2 if s.content_addressed else 5,
        retry_condition_fn=retry_on_io_only,
    )


TASKS = {s.name: _stage_task(s) for s in pipeline.STAGES}


def _in_flow(body: Callable[Concatenate[str, P], Any]) -> Callable[Concatenate[str, P], Any]:
    def run_stage(name: str, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run stage `name`'s task in the current flow; its entry (raises if the task failed). `model_dir`
        and `extra`: the model package of a stage that reads one, and its registered identity."""
        return TASKS[name](name, *args, return_state=True, **kwargs).result()

    return run_stage


# run_stage(name, params, data, upstream, record, model_dir=None, extra=None), typed as `_run`.
run_stage = _in_flow(_run)


@task(name="params", cache_policy=NO_CACHE)
def start_run(
    record: str,
    params: str,
    flow: str,
    parameters: dict[str, Any],
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """The run's record, with its settings (params.yaml with model and overrides applied); their path."""
    from pathlib import Path

    return str(runs.start(Path(record), params, flow, parameters, model, overrides))


def record_dir() -> str:
    """This flow run's record folder, artifacts/runs/<flow run id>/."""
    from prefect.runtime import flow_run

    return str(runs.record_dir(str(flow_run.id)))


def task_runs(flow_run_id: Any) -> list[Any]:
    """The flow run's task runs, oldest first (read back from the Prefect API)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(found, key=lambda r: str(r.start_time or r.expected_start_time or ""))


def report_failure(flow: Any, flow_run: Any, state: State) -> None:
    """on_failure hook: the run's failure.md (the failed stage, the error, its inputs and outputs), logged."""
    from prefect.logging.loggers import flow_run_logger

    exc = state.result(raise_on_failure=False)
    error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(state.message)
    try:
        found = task_runs(flow_run.id)
        failed = [r.name.rsplit("-", 1)[0] for r in found if r.state is not None and r.state.is_failed()]
        finished = [r.name.rsplit("-", 1)[0] for r in found if r.state is not None and r.state.is_completed()]
    except Exception as lookup_error:  # the report still names the error without the API
        failed, finished = [], [f"unknown (could not read the task runs: {lookup_error})"]
    record = runs.record_dir(str(flow_run.id))
    text = runs.failure_report(record, failed, finished, error)
    flow_run_logger(flow_run, flow).error(f"failure summary in {record / runs.FAILURE}:\n{text}")
