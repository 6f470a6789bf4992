"""Prefect flow `qin-ablation`: the paper's ablation set and the baselines, compared under one MLflow run.

validate -> embed -> featurize -> for each model: its settings (the run's params with that model), then the
same train and evaluate stages as qin-train (flows/stages.py), cached by their keys -> `compare` (Markdown and
CSV table, bar plot, in the run's record) -> one parent MLflow run holding a nested run per model and the
comparison. A variant whose settings equal a qin-train run's reuses that run's model, and the other way round.

    python -m flows.qin_ablation                                  # all nine models (about an hour on 2 cores)
    python -m flows.qin_ablation --epochs 2 --only QIN "w/o ASTA" DIN
"""

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

import flows  # noqa: F401  (offline settings, before prefect runs anything)
from flows.shutdown import signals_unwrapped
from flows.stages import record_dir, report_failure, run_stage, start_run
from qin.runs import layout
from qin.settings.params import load_params


@task(name="variant-params", cache_policy=NO_CACHE)
def variant_params(params: str, out: str, name: str, epochs: int | None, din_challenge: bool) -> str:
    from qin.training.ablation import write_variant_params

    return str(write_variant_params(params, out, name, epochs, din_challenge))


@task(name="compare", cache_policy=NO_CACHE)
def compare(
    done: list[dict[str, str]], out: str, data: str, title: str = "QIN ablations and baselines"
) -> list[dict[str, Any]]:
    from qin.training.ablation import compare as run
    from qin.training.ablation import no_history_bound, stage_row

    rows = [stage_row(d["model"], d["train"], d["evaluate"]) for d in done]
    run(rows, out, no_history_bound(data), title)
    return rows


@task(name="log-ablation", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def log(rows: list[dict[str, Any]], done: list[dict[str, str]], comparison: str, params: str) -> str:
    from flows.tracking import log_ablation

    return log_ablation(load_params(params).register, rows, done, Path(comparison))


def train_and_evaluate(name: str, own: str, data: str, keys: dict[str, str], record: str) -> dict[str, str]:
    """One model of a comparison: the train and evaluate stages on settings `own` over the upstream `keys`;
    its entry for `compare` and `log`."""
    trained = run_stage("train", own, data, keys, record)
    evaluated = run_stage("evaluate", own, data, {**keys, "train": trained["key"]}, record)
    print(f"{name}: train {trained['how']} ({trained['key']}), evaluate {evaluated['how']}")
    return {"model": name, "params": own, "train": trained["dir"], "evaluate": evaluated["dir"]}


def conclude(
    done: list[dict[str, str]], record: str, data: str, settings: str, logged: Any, title: str
) -> dict[str, Any]:
    """A comparison's end: the table and plot in the run's record, logged to MLflow by task `logged`."""
    from qin.training.ablation import table_markdown

    comparison = f"{record}/comparison"
    rows = compare(done, comparison, data, title)
    run_id = logged(rows, done, comparison, settings)
    print(table_markdown(rows))
    print(f"MLflow parent run id: {run_id}")
    return {"run_id": run_id, "rows": rows, "variants": done, "comparison": comparison, "record": record}


@flow(name="qin-ablation", log_prints=True, on_failure=[report_failure])
def qin_ablation(
    params: str = str(layout.PARAMS),
    data: str = str(layout.DATA),
    epochs: int | None = None,
    only: list[str] | None = None,
    din_challenge: bool = False,
) -> dict[str, Any]:
    with signals_unwrapped():  # a signal during an import still crashes (or cancels) the run
        from qin.training.ablation import select, slug, variants

        record = record_dir()
        parameters = {
            "params": params,
            "data": data,
            "epochs": epochs,
            "only": only,
            "din_challenge": din_challenge,
        }
        settings = start_run(record, params, "qin-ablation", parameters)
        keys: dict[str, str] = {}
        for name in ("validate", "embed", "featurize"):
            keys[name] = run_stage(name, settings, data, keys, record)["key"]

        done = []
        for name in select(variants(load_params(settings).train.model, din_challenge), only):
            own_file = f"{record}/variants/{slug(name)}.yaml"
            own = variant_params(settings, own_file, name, epochs, din_challenge)
            done.append(train_and_evaluate(name, own, data, keys, record))
        return conclude(done, record, data, settings, log, "QIN ablations and baselines")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the qin-ablation flow in-process")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--din-challenge", action="store_true")
    args = parser.parse_args()
    qin_ablation(epochs=args.epochs, only=args.only, din_challenge=args.din_challenge)
