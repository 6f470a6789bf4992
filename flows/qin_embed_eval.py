"""Prefect flow `qin-embed-eval`: the challenge's task-1 protocol, each embedding method judged by the CTR
models trained on it.

validate -> for each `embed.method` (given, pca, learned): embed -> featurize, then for each model (DIN at
the cpu preset's width, and QIN; one budget: the run's train settings, `epochs` when given) train and
evaluate, the same stages as qin-train (flows/stages.py), cached by their keys -> `compare` (Markdown and
CSV table, bar plot, in the run's record) -> one parent MLflow run (experiment `<experiment>-embed-eval`)
holding a nested run per method and model and the comparison. Nothing is registered.

    python -m flows.qin_embed_eval                                  # 3 methods x 2 models
    python -m flows.qin_embed_eval --methods given pca --models din --epochs 2
"""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_type_hints

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

import flows  # noqa: F401  (offline settings, before prefect runs anything)
from flows.qin_ablation import conclude, train_and_evaluate
from flows.shutdown import signals_unwrapped
from flows.stages import record_dir, report_failure, run_stage, start_run
from qin.models import MODELS
from qin.runs import layout
from qin.settings.params import load_params
from qin.settings.sections import EmbedConfig

if TYPE_CHECKING:
    Method = str
    ModelName = str
else:  # the choices, for the flow's parameter form
    Method = get_type_hints(EmbedConfig)["method"]
    ModelName = Literal[tuple(MODELS)]

METHODS: tuple[str, ...] = get_args(get_type_hints(EmbedConfig)["method"])
JUDGES = ("din", "qin")  # the challenge judged with DIN; QIN beside it
LABELS = {"qin": "QIN", "din": "DIN", "dcnv3": "DCNv3", "sdcnv3": "SDCNv3"}  # as the tables name them


@task(name="method-params", cache_policy=NO_CACHE)
def method_params(params: str, out: str, method: str, model: str, epochs: int | None) -> str:
    """The run's settings with `embed.method` and `train.model.name` (as the preset starts that model)."""
    from qin.settings.params import write_resolved_params

    overrides: dict[str, Any] = {"embed.method": method, **({"train.epochs": epochs} if epochs else {})}
    return str(write_resolved_params(params, out, overrides, model))


@task(name="log-embed-eval", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def log(rows: list[dict[str, Any]], done: list[dict[str, str]], comparison: str, params: str) -> str:
    from flows.tracking import log_ablation

    return log_ablation(load_params(params).register, rows, done, Path(comparison), kind="embed-eval")


@flow(name="qin-embed-eval", log_prints=True, on_failure=[report_failure])
def qin_embed_eval(
    params: str = str(layout.PARAMS),
    data: str = str(layout.DATA),
    methods: list[Method] | None = None,
    models: list[ModelName] | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    with signals_unwrapped():  # a signal during an import still crashes (or cancels) the run
        record = record_dir()
        parameters = {"params": params, "data": data, "methods": methods, "models": models, "epochs": epochs}
        settings = start_run(record, params, "qin-embed-eval", parameters)
        validated = {"validate": run_stage("validate", settings, data, {}, record)["key"]}
        done = []
        for method in methods or METHODS:
            for model in models or JUDGES:
                name = f"{LABELS.get(model, model)} / {method}"
                own_file = f"{record}/variants/{method}-{model}.yaml"
                own = method_params(settings, own_file, method, model, epochs)
                keys = {**validated, "embed": run_stage("embed", own, data, validated, record)["key"]}
                keys["featurize"] = run_stage("featurize", own, data, keys, record)["key"]
                done.append(train_and_evaluate(name, own, data, keys, record))
        return conclude(done, record, data, settings, log, "Item embeddings judged by CTR models (task 1)")


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="Run the qin-embed-eval flow in-process")
    cli.add_argument("--methods", nargs="*", choices=METHODS, default=None)
    cli.add_argument("--models", nargs="*", choices=list(MODELS), default=None)
    cli.add_argument("--epochs", type=int, default=None)
    args = cli.parse_args()
    qin_embed_eval(methods=args.methods, models=args.models, epochs=args.epochs)
