"""Prefect flow `qin-score`: a model -> the challenge's submission for test.parquet.

params -> model (the registered version by alias or number, downloaded once per content hash, or a package
path; qin/registry/resolve.py `resolve_model`) -> predict (the gate on test.parquet, then scoring; cached by
the
model's content hash, the data and the `validate`/`predict` settings) -> the manifest attached to the model
version's MLflow run (`predictions/<first 12 of test.parquet's md5>.json`). The run's record,
artifacts/runs/<flow run id>/, holds its settings and a copy of the manifest with the alias the model was
found by.

Parameters: `params` and `data` (paths), `model` ("auto": the production alias, else staging; an alias; a
version number; or a package path; default: params.yaml `predict.model`).

    python -m flows.qin_score                    # one run, in-process (ephemeral Prefect)
    prefect deployment run qin-score/local       # served by `make serve`
    prefect deployment run qin-score/pool        # deployed by `make worker`
"""

# No `from __future__ import annotations`: Prefect builds the flow's parameter model from the signature.
import argparse
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

import flows  # noqa: F401  (offline settings, before prefect runs anything)
from flows.shutdown import signals_unwrapped
from flows.stages import record_dir, report_failure, retry_on_io_only, run_stage, start_run
from qin.predict import MANIFEST
from qin.registry.resolve import ModelRef, resolve_model
from qin.runs import layout, pipeline
from qin.runs import records as runs
from qin.runs.io import read_json, write_json
from qin.settings.params import load_params


@task(
    name="model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_io_only
)
def find_model(params: str, spec: str) -> dict[str, Any]:
    """The model package to score with (downloaded into artifacts/models/<hash>/ if registered)."""
    ref = resolve_model(spec, load_params(params).register)
    print(f"scoring with {ref.describe()}")
    return {**ref.identity(), "path": str(ref.path), "alias": ref.alias}


@task(
    name="log-manifest",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_io_only,
)
def log_manifest(params: str, model: dict[str, Any], manifest: str) -> str | None:
    """Attach the manifest to the version's MLflow run; None for a package that is not registered."""
    if model["model_name"] is None:
        return None
    from qin.registry.protocol import load_registry

    name = read_json(manifest)["data"]["md5"][:12]  # one file per test split scored
    load_registry(load_params(params).register).log_scoring(
        model["model_name"], model["version"], Path(manifest), name
    )
    return f"predictions/{name}.json"


def summary_markdown(model: dict[str, Any], manifest: dict[str, Any], folder: str, how: str) -> str:
    ref = ModelRef(
        Path(model["path"]), model["model_hash"], model["model_name"], model["version"], model["alias"]
    )
    s = manifest["seconds"]
    return (
        f"# qin-score: {manifest['rows']} rows\n\n"
        f"- model: {ref.describe()}\n"
        f"- submission: `{folder}/submission.zip` ({how})\n"
        f"- data: `{manifest['data']['file']}` (md5 {manifest['data']['md5']})\n"
        f"- seconds: gate {s['validate']}, scoring {s['score']}, files {s['write']}, total {s['total']} "
        f"({manifest['rows_per_s']} rows/s)\n"
    )


@flow(name="qin-score", log_prints=True, on_failure=[report_failure])
def qin_score(
    params: str = str(layout.PARAMS), data: str = str(layout.DATA), model: str | None = None
) -> dict:
    with signals_unwrapped():  # a signal during an import still crashes (or cancels) the run
        from prefect.artifacts import create_markdown_artifact

        record = record_dir()
        parameters = {"params": params, "data": data, "model": model}
        overrides = {"predict.model": model} if model is not None else None
        settings = start_run(record, params, "qin-score", parameters, overrides=overrides)
        found = find_model(settings, load_params(settings).predict.model)
        runs.update(Path(record), model_dir=found["path"])
        (s,) = pipeline.flow_stages(pipeline.SCORE_FLOW)
        identity = {k: found[k] for k in ("model_name", "version", "model_hash")}
        entry = run_stage(s.name, settings, data, {}, record, model_dir=found["path"], extra=identity)
        folder = str(Path(entry["dir"]) / s.outputs[0].name)
        manifest = read_json(Path(folder) / MANIFEST)
        # The run's own copy, with what only this run knows: the alias the model was found by.
        write_json(Path(record) / MANIFEST, {**manifest, "alias": found["alias"], "key": entry["key"]})
        logged = log_manifest(settings, found, str(Path(record) / MANIFEST))
        print(f"predict {entry['how']} ({entry['key']}): {folder}/submission.zip, {manifest['rows']} rows")
        create_markdown_artifact(
            markdown=summary_markdown(found, manifest, folder, entry["how"]),
            key="qin-score-summary",
            description=f"submission of {manifest['rows']} rows",
        )
        return {
            "model": found,
            "key": entry["key"],
            "how": entry["how"],
            "submission": f"{folder}/submission.zip",
            "manifest": manifest,
            "record": record,
            "mlflow_artifact": logged,
        }


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="Run the qin-score flow once, in-process")
    cli.add_argument("--params", default=str(layout.PARAMS))
    cli.add_argument("--data", default=str(layout.DATA))
    cli.add_argument("--model", help="auto | an alias | a version number | a package path")
    args = cli.parse_args()
    qin_score(params=args.params, data=args.data, model=args.model)
