"""Prefect flow `qin-ablation`: the paper's ablation set and the baselines, compared under one MLflow run.

validate -> featurize (the same cached stages as qin-train) -> one `variant` task per model (train and
evaluate, cached by the features' content, the train and evaluate sections and the variant) -> `compare`
(Markdown and CSV table, bar plot) -> one parent MLflow run holding a nested run per model and the comparison.

    python -m flows.qin_ablation                                  # all nine models (about an hour on 2 cores)
    python -m flows.qin_ablation --epochs 2 --only QIN "w/o ASTA" DIN
"""

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

import flows  # noqa: F401  (offline and cache settings, before prefect is imported)
from flows.qin_train import content_key, featurize, retry_on_io_only, run_cached, validate
from qin import layout
from qin.config import load_params
from qin.io import read_json, tree_hash


@task(
    name="variant",
    cache_key_fn=content_key(("features",), "train", "evaluate"),
    persist_result=True,
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_io_only,
)
def variant(
    name: str, features: str, out: str, params: str, epochs: int | None, din_challenge: bool
) -> dict[str, str | None]:
    from qin.ablation import run_variant, variants

    p = load_params(params)
    cfg = p.train if epochs is None else dataclasses.replace(p.train, epochs=epochs)
    run_variant(name, features, out, cfg, variants(cfg.model, din_challenge)[name], p.evaluate)
    return {f"{out}/model": tree_hash([f"{out}/model"]), f"{out}/row.json": None}


@task(name="compare", cache_policy=NO_CACHE)
def compare(rows: list[dict[str, Any]], out: str, data: str) -> str:
    from qin.ablation import compare as run
    from qin.ablation import no_history_bound

    return str(run(rows, out, no_history_bound(data)))


@task(name="log-ablation", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def log(rows: list[dict[str, Any]], variant_dirs: list[str], comparison: str, params: str) -> str:
    from flows.tracking import log_ablation

    return log_ablation(load_params(params).register, rows, [Path(d) for d in variant_dirs], Path(comparison))


@flow(name="qin-ablation", log_prints=True)
def qin_ablation(
    params: str = str(layout.PARAMS),
    data: str = str(layout.DATA),
    epochs: int | None = None,
    only: list[str] | None = None,
    din_challenge: bool = False,
) -> dict[str, Any]:
    from qin.ablation import select, slug, table_markdown, variants

    validation, features = str(layout.VALIDATION), str(layout.FEATURES)
    run_cached(validate, data=data, out=validation, params=params)
    run_cached(featurize, data=data, validation=validation, out=features, params=params)

    todo = select(variants(load_params(params).train.model, din_challenge), only)
    dirs = [str(layout.ABLATION / slug(name)) for name in todo]
    rows = []
    for name, out in zip(todo, dirs, strict=True):
        how = run_cached(
            variant,
            name=name,
            features=features,
            out=out,
            params=params,
            epochs=epochs,
            din_challenge=din_challenge,
        )
        rows.append(read_json(Path(out) / "row.json"))
        print(f"{name}: valid AUC {rows[-1]['valid_auc']:.4f} ({how})")
    comparison = compare(rows, str(layout.ABLATION / "comparison"), data)
    run_id = log(rows, dirs, comparison, params)
    print(table_markdown(rows))
    print(f"MLflow parent run id: {run_id}")
    return {"run_id": run_id, "rows": rows, "comparison": comparison}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the qin-ablation flow in-process")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--din-challenge", action="store_true")
    args = parser.parse_args()
    qin_ablation(epochs=args.epochs, only=args.only, din_challenge=args.din_challenge)
