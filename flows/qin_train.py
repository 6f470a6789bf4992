"""Prefect flow `qin-train`: validate -> featurize -> train -> evaluate -> register.

Each task is a thin adapter: paths in, one call into `qin`, a small record out. Stages are cached across
processes by content: the key hashes the input files, the params section the stage reads and the library
code, and results persist under .prefect/results. A cached result records the content hash of what the
stage wrote; if those outputs were deleted or changed since, the stage runs again instead of trusting them.
`register` is never cached (it talks to MLflow, and is idempotent on its own).

    python -m flows.qin_train          # one run, in-process (ephemeral Prefect, no server needed)
    python -m flows.serve              # serve it as deployment qin-train/local (see `make serve`)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.states import State

import flows  # noqa: F401  (offline and cache settings, before prefect is imported)
from qin import layout
from qin.config import load_params, section_hash
from qin.io import tree_hash
from qin.register import code_hash
from qin.validate import ValidationError


def content_key(inputs: tuple[str, ...], section: str) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """Cache key from the content of the `inputs` parameters, one params section and the code."""

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        h = hashlib.sha256()
        h.update(context.task.name.encode())
        h.update(code_hash().encode())
        h.update(section_hash(getattr(load_params(parameters["params"]), section)).encode())
        for name in inputs:
            h.update(tree_hash([parameters[name]]).encode())
        rest = {k: v for k, v in parameters.items() if k not in inputs}
        h.update(repr(sorted(rest.items())).encode())
        return h.hexdigest()

    return key


def retry_on_io_only(task: Any, task_run: Any, state: State) -> bool:
    """Retry transient I/O failures, not bad data or bad settings: those fail the same way again."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, ValidationError | ValueError | KeyError)


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
    features: str, model: str, out: str, plots: str, train_metrics: str, params: str
) -> dict[str, str | None]:
    from qin.evaluate import evaluate as run

    run(features, model, out, load_params(params).evaluate, plots, train_metrics)
    return _written(out, reports=(plots,))


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def register(
    model: str, train_metrics: str, metrics: str, validation: str, plots: str, out: str, params: str
) -> dict:
    from qin.register import register as run

    return run(model, train_metrics, metrics, validation, out, load_params(params), plots)


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


@flow(name="qin-train", log_prints=True)
def qin_train(params: str = str(layout.PARAMS), data: str = str(layout.DATA)) -> dict:
    validation, features, model = str(layout.VALIDATION), str(layout.FEATURES), str(layout.MODEL)
    train_metrics, metrics = str(layout.TRAIN_METRICS), str(layout.EVAL_METRICS)

    stages = {
        "validate": run_cached(validate, data=data, out=validation, params=params),
        "featurize": run_cached(featurize, data=data, validation=validation, out=features, params=params),
        "train": run_cached(train, features=features, out=model, metrics=train_metrics, params=params),
        "evaluate": run_cached(
            evaluate,
            features=features,
            model=model,
            out=metrics,
            plots=str(layout.PLOTS),
            train_metrics=train_metrics,
            params=params,
        ),
    }
    result = register(
        model, train_metrics, metrics, validation, str(layout.PLOTS), str(layout.REGISTRATION), params
    )

    print("stages: " + ", ".join(f"{name} {how}" for name, how in stages.items()))
    print(f"MLflow run id: {result['run_id']}")
    print(
        f"registered: {result['model_name']} version {result['version']}"
        f"{'' if result['newly_registered'] else ' (unchanged model, already registered)'}"
    )
    print(f"{result['alias']}: {'yes' if result['has_alias'] else 'no'} ({result['reason']})")
    return {**result, "stages": stages}


if __name__ == "__main__":
    qin_train()
