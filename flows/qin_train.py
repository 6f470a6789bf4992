"""Prefect flow `qin-train`: validate -> featurize -> train -> evaluate -> register -> promote.

Each task is a thin adapter: paths in, one call into `qin`, a small record out. Stages are cached across
processes by content: the key hashes the input files, the params section the stage reads and the library
code, and results persist under .prefect/results. A cached result records the content hash of what the
stage wrote; if those outputs were deleted or changed since, the stage runs again instead of trusting them.
`register` and `promote` are never cached (they talk to MLflow, and are idempotent on their own); `promote`
offers the registered version the `staging` alias (qin/register.py `gate`); `champion` (production) is never
moved by the flow, only by `qin promote --to production`.

Parameters: `params` and `data` (paths), `model` (qin | din | dcnv3 | sdcnv3) and `overrides` (dotted params
keys to values, e.g. {"train.learning_rate": 0.001}). With a model or overrides, the flow writes the
resolved params to artifacts/params.resolved.yaml and the stages read that file; cache keys hash the params
section each stage reads, not the file's path, so an override of one section reruns only what reads it.

A successful run publishes a Markdown artifact (metrics table, MLflow run link); a failed one writes
artifacts/failure.md (the failed stage, the error, the stage's inputs and outputs) and logs it.

    python -m flows.qin_train          # one run, in-process (ephemeral Prefect, no server needed)
    python -m flows.serve              # serve it as deployment qin-train/local (see `make serve`)
    python -m flows.deploy_pool        # deploy it to the process work pool as qin-train/pool (`make worker`)
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter model from the
# signature, and string annotations naming module-level aliases (ModelName) fail to resolve in served runs.
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.states import State

import flows  # noqa: F401  (offline and cache settings, before prefect is imported)
from qin import layout
from qin.config import load_params, section_hash
from qin.io import atomic_file, read_json, tree_hash
from qin.register import PromotionRefused, code_hash
from qin.validate import ValidationError

ModelName = Literal["qin", "din", "dcnv3", "sdcnv3"]


def content_key(inputs: tuple[str, ...], *sections: str) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """Cache key from the content of the `inputs` parameters, the params sections the task reads and the code.

    The params file enters by the content of the sections the stage reads, not by its path, so a run with
    a resolved params file (model/overrides) reuses every stage whose sections did not change.
    """

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        h = hashlib.sha256()
        h.update(context.task.name.encode())
        h.update(code_hash().encode())
        params = load_params(parameters["params"])
        for section in sections:
            h.update(section_hash(getattr(params, section)).encode())
        for name in inputs:
            h.update(tree_hash([parameters[name]]).encode())
        rest = {k: v for k, v in parameters.items() if k not in (*inputs, "params")}
        h.update(repr(sorted(rest.items())).encode())
        return h.hexdigest()

    return key


def retry_on_io_only(task: Any, task_run: Any, state: State) -> bool:
    """Retry transient I/O failures, not bad data or bad settings: those fail the same way again."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, ValidationError | ValueError | KeyError | PromotionRefused)


def _stage(section: str, inputs: tuple[str, ...]) -> Callable:
    return task(
        name=section,
        cache_key_fn=content_key(inputs, section),
        persist_result=True,
        retries=1,  # these tasks read and write files; one retry covers a transient I/O error
        retry_delay_seconds=2,
        retry_condition_fn=retry_on_io_only,
    )


def _written(*outputs: str, reports: tuple[str, ...] = ()) -> dict[str, str | None]:
    """What a stage wrote, so that a cache hit can be checked against the disk: outputs by content hash,
    reports (which hold timings, so differ from run to run) by existence only."""
    return {**{p: tree_hash([p]) for p in outputs}, **dict.fromkeys(reports)}


@task(name="params", cache_policy=NO_CACHE)
def resolve_params(
    params: str, out: str, model: str | None = None, overrides: dict[str, Any] | None = None
) -> str:
    from qin.config import write_resolved_params

    return str(write_resolved_params(params, out, overrides, model))


@_stage("validate", inputs=("data",))
def validate(data: str, out: str, params: str) -> dict[str, str | None]:
    from qin.validate import validate as run

    run(data, out, load_params(params).validate)
    return _written(out)


@_stage("featurize", inputs=("data", "validation"))
def featurize(data: str, validation: str, out: str, params: str) -> dict[str, str | None]:
    from qin.featurize import featurize as run

    run(data, validation, out, load_params(params).featurize)
    return _written(out)


@_stage("train", inputs=("features",))
def train(features: str, out: str, metrics: str, params: str) -> dict[str, str | None]:
    from qin.train import train as run

    run(features, out, metrics, load_params(params).train)
    return _written(out, reports=(metrics,))


@_stage("evaluate", inputs=("features", "model"))
def evaluate(
    features: str, model: str, out: str, plots: str, train_metrics: str, plot_data: str, params: str
) -> dict[str, str | None]:
    from qin.evaluate import evaluate as run

    run(features, model, out, load_params(params).evaluate, plots, train_metrics, plot_data)
    return _written(out, reports=(plots, plot_data))


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def register(
    model: str, train_metrics: str, metrics: str, validation: str, plots: str, out: str, params: str
) -> dict:
    from qin.register import register as run

    return run(model, train_metrics, metrics, validation, out, load_params(params), plots, gate_staging=False)


@task(
    name="promote",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_io_only,
)
def promote(registration: str, params: str) -> dict:
    from qin.register import gate

    return gate(registration, load_params(params))


def run_cached(stage: Any, **kwargs: Any) -> str:
    """Run a cached stage; if its cached outputs are gone or differ on disk, run it again for real.

    Returns "cached" or "ran".
    """
    state = stage(**kwargs, return_state=True)
    written = state.result()
    if not state.is_completed() or state.name != "Cached":
        return "ran"
    if all(Path(p).exists() and (h is None or tree_hash([p]) == h) for p, h in written.items()):
        return "cached"
    stage.with_options(refresh_cache=True)(**kwargs)
    return "ran"


def stage_files(parameters: dict[str, Any]) -> dict[str, tuple[list[str], list[str]]]:
    """Each stage's (inputs, outputs), as the flow wires them: for the failure report."""
    data, params = str(parameters.get("data", layout.DATA)), str(parameters.get("params", layout.PARAMS))
    v, f, m = str(layout.VALIDATION), str(layout.FEATURES), str(layout.MODEL)
    tm, em, reg = str(layout.TRAIN_METRICS), str(layout.EVAL_METRICS), str(layout.REGISTRATION)
    store = "the MLflow store (params.yaml register.tracking_uri)"
    return {
        "params": ([params], [str(layout.RESOLVED_PARAMS)]),
        "validate": ([data], [v]),
        "featurize": ([data, v], [f]),
        "train": ([f], [m, tm]),
        "evaluate": ([f, m, tm], [em, str(layout.PLOTS), str(layout.PLOT_DATA)]),
        "register": ([m, tm, em, v, str(layout.PLOTS)], [reg, store]),
        "promote": ([reg, store], [reg, f"{store}: the staging alias and alias_history tags"]),
    }


def _task_runs(flow_run_id: Any) -> list[Any]:
    """The flow run's task runs, oldest first (read back from the Prefect API)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(runs, key=lambda r: str(r.start_time or r.expected_start_time or ""))


def failure_report(parameters: dict[str, Any], failed: list[str], finished: list[str], error: str) -> str:
    files = stage_files(parameters)
    stage = failed[-1] if failed else None
    lines = [
        "# qin-train failed",
        "",
        f"- failed stage: **{stage or 'none (the flow itself, before or between stages)'}**",
        f"- stages finished before it: {', '.join(finished) or 'none'}",
        f"- parameters: `{parameters}` (others at their defaults)",
        "",
        "## Error",
        "",
        "```text",
        error,
        "```",
    ]
    if stage in files:
        inputs, outputs = files[stage]
        lines += ["", f"## `{stage}`", "", "inputs:", *[f"- `{p}`" for p in inputs]]
        lines += ["", "outputs (not written, or left as the previous run wrote them):"]
        lines += [f"- `{p}`" for p in outputs]
    lines += [
        "",
        f"Fix the cause and run the flow again: stages that finished are reused from the cache. The stage's "
        f"own report, when it writes one, is among its outputs (e.g. {layout.VALIDATION}/report.md).",
        "",
    ]
    return "\n".join(lines)


def report_failure(flow: Any, flow_run: Any, state: State) -> None:
    """on_failure hook: write artifacts/failure.md (atomically) and log it."""
    from prefect.logging.loggers import flow_run_logger

    exc = state.result(raise_on_failure=False)
    error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(state.message)
    try:
        runs = _task_runs(flow_run.id)
        failed = [r.name.rsplit("-", 1)[0] for r in runs if r.state is not None and r.state.is_failed()]
        finished = [r.name.rsplit("-", 1)[0] for r in runs if r.state is not None and r.state.is_completed()]
    except Exception as lookup_error:  # the report still names the error without the API
        failed, finished = [], [f"unknown (could not read the task runs: {lookup_error})"]
    text = failure_report(dict(flow_run.parameters or {}), failed, finished, error)
    with atomic_file(layout.FAILURE) as tmp:
        tmp.write_text(text)
    flow_run_logger(flow_run, flow).error(f"failure summary in {layout.FAILURE}:\n{text}")


def summary_markdown(result: dict, metrics: dict[str, Any], link: str, parameters: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {k} | {v:.5f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())
    )
    stages = ", ".join(f"{name} {how}" for name, how in result["stages"].items())
    registered = "new" if result["newly_registered"] else "already registered, unchanged"
    return (
        f"# qin-train: {result['model_name']} version {result['version']}\n\n"
        f"- MLflow run: [{result['run_id']}]({link})\n"
        f"- version {result['version']} ({registered}); '{result['alias']}': "
        f"{'yes' if result['has_alias'] else 'no'} ({result['reason']})\n"
        f"- stages: {stages}\n"
        f"- parameters: `{parameters}`\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n"
    )


@flow(name="qin-train", log_prints=True, on_failure=[report_failure])
def qin_train(
    params: str = str(layout.PARAMS),
    data: str = str(layout.DATA),
    model: ModelName | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict:
    from prefect.artifacts import create_markdown_artifact

    from flows.tracking import run_link

    if model is not None or overrides:
        params = resolve_params(params, str(layout.RESOLVED_PARAMS), model, overrides)
        print(f"params: {params} (model={model}, overrides={overrides})")
    validation, features, trained = str(layout.VALIDATION), str(layout.FEATURES), str(layout.MODEL)
    train_metrics, metrics = str(layout.TRAIN_METRICS), str(layout.EVAL_METRICS)

    stages = {
        "validate": run_cached(validate, data=data, out=validation, params=params),
        "featurize": run_cached(featurize, data=data, validation=validation, out=features, params=params),
        "train": run_cached(train, features=features, out=trained, metrics=train_metrics, params=params),
        "evaluate": run_cached(
            evaluate,
            features=features,
            model=trained,
            out=metrics,
            plots=str(layout.PLOTS),
            train_metrics=train_metrics,
            plot_data=str(layout.PLOT_DATA),
            params=params,
        ),
    }
    registration = str(layout.REGISTRATION)
    register(trained, train_metrics, metrics, validation, str(layout.PLOTS), registration, params)
    result = {**promote(registration, params), "stages": stages}

    print("stages: " + ", ".join(f"{name} {how}" for name, how in stages.items()))
    print(f"MLflow run id: {result['run_id']}")
    print(
        f"registered: {result['model_name']} version {result['version']}"
        f"{'' if result['newly_registered'] else ' (unchanged model, already registered)'}"
    )
    print(f"{result['alias']}: {'yes' if result['has_alias'] else 'no'} ({result['reason']})")

    link = run_link(load_params(params).register, result["run_id"])
    create_markdown_artifact(
        markdown=summary_markdown(result, read_json(metrics), link, {"model": model, "overrides": overrides}),
        key="qin-train-summary",
        description=f"{result['model_name']} version {result['version']}: metrics and MLflow run",
    )
    layout.FAILURE.unlink(missing_ok=True)  # a failure report from an earlier run no longer applies
    return {**result, "mlflow_run_link": link}


if __name__ == "__main__":
    qin_train()
