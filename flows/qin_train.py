"""Prefect flow `qin-train`: params -> validate -> embed -> featurize -> train -> evaluate -> register.

The stages and their order come from the stage table (qin/runs/pipeline.py); each is a task (flows/stages.py)
that runs the stage through the content-addressed store (qin/runs/store.py) or finds its key's outputs there.
A run never reads another run's files by mistake: its settings are its own (the run's record,
artifacts/runs/<flow run id>/, holds params.yaml with `model` and `overrides` applied), and every stage
output lives in the folder of its key, which differs whenever the settings it reads differ. Runs that need
the same key at once compute it once. `register` is never cached: it registers a model hash once
(an already registered one is reported instead) and offers the version the `staging` alias through the
gate (qin/registry/promotion.py); `champion` (production) is moved only by `qin promote --to production`.

Parameters: `params` and `data` (paths), `model` (a registered name: qin, din, dcnv3, sdcnv3) and
`overrides` (dotted params keys to values, e.g. {"train.learning_rate": 0.001}).

A successful run publishes a Markdown artifact (metrics table, MLflow run link); a failed one writes
failure.md into its record (the failed stage, the error, the stage's inputs and outputs) and logs it.

    python -m flows.qin_train          # one run, in-process (ephemeral Prefect, no server needed)
    python -m flows.serve              # serve it as deployment qin-train/local (see `make serve`)
    python -m flows.deploy_pool        # deploy it to the process work pool as qin-train/pool (`make worker`)
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter model from the
# signature, and string annotations naming module-level aliases (ModelName) fail to resolve in served runs.
import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefect import flow

import flows  # noqa: F401  (offline settings, before prefect runs anything)
from flows.shutdown import signals_unwrapped
from flows.stages import record_dir, report_failure, run_stage, start_run
from qin.models import MODELS
from qin.registry.registration import Registration, registration_lines
from qin.runs import layout, pipeline
from qin.runs.io import hashing_spent, read_json
from qin.settings.params import load_params

# The registered model names (qin/models/__init__.py), so the flow's parameter form offers each of them.
if TYPE_CHECKING:
    ModelName = str
else:
    ModelName = Literal[tuple(MODELS)]


def summary_markdown(
    registration: Registration,
    link: str,
    stages: dict[str, str],
    keys: dict[str, str],
    record: str,
    parameters: dict[str, Any],
    metrics: dict[str, Any],
) -> str:
    """The run's summary artifact: the registration (`registration_lines`), the stages, the metrics."""
    rows = "\n".join(
        f"| {k} | {v:.5f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())
    )
    registered = "".join(f"- {line}\n" for line in registration_lines(registration, link))
    used = ", ".join(f"{name} {how} (`{keys[name]}`)" for name, how in stages.items())
    return (
        f"# qin-train: {registration.model_name} version {registration.version}\n\n"
        f"{registered}"
        f"- stages: {used}\n"
        f"- parameters: `{parameters}`; record: `{record}`\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n"
    )


@flow(name="qin-train", log_prints=True, on_failure=[report_failure])
def qin_train(
    params: str = str(layout.PARAMS),
    data: str = str(layout.DATA),
    model: ModelName | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict:
    with signals_unwrapped():  # a signal during an import still crashes (or cancels) the run
        from prefect.artifacts import create_markdown_artifact

        from flows.tracking import run_link, ui_hint

        record = record_dir()
        parameters = {"params": params, "data": data, "model": model, "overrides": overrides}
        settings = start_run(record, params, "qin-train", parameters, model, overrides)
        keys: dict[str, str] = {}
        how: dict[str, str] = {}
        dirs: dict[str, str] = {}
        for s in pipeline.flow_stages(pipeline.TRAIN_FLOW):
            if s.content_addressed:
                entry = run_stage(s.name, settings, data, dict(keys), record)
                keys[s.name], how[s.name], dirs[s.name] = entry["key"], entry["how"], entry["dir"]
        registration: Registration = run_stage("register", settings, data, keys, record)
        link = run_link(load_params(settings).register, registration.run_id)

        print("stages: " + ", ".join(f"{name} {h} ({keys[name]})" for name, h in how.items()))
        spent = hashing_spent()  # the data's and outputs' content hashes, this process
        read = f"{spent['files']} files, {spent['bytes'] / 1e6:.1f} MB read"
        print(f"hashing: {spent['seconds']:.2f} s ({read}; {spent['memo']} hashes from the memo)")
        for line in registration_lines(registration, link):
            print(line)
        if hint := ui_hint(load_params(settings).register):
            print(hint)

        metrics = read_json(Path(dirs["evaluate"]) / "evaluate.json")
        create_markdown_artifact(
            markdown=summary_markdown(registration, link, how, keys, record, parameters, metrics),
            key="qin-train-summary",
            description=f"{registration.model_name} version {registration.version}: metrics and MLflow run",
        )
        # The run's result: register.json's fields, what the stages did, the record and the run's page.
        return {
            **registration.to_json(),
            "stages": how,
            "stage_keys": keys,
            "record": record,
            "mlflow_run_link": link,
            "hashing": spent,
        }


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="Run the qin-train flow once, in-process")
    cli.add_argument("--params", default=str(layout.PARAMS))
    cli.add_argument("--data", default=str(layout.DATA))
    cli.add_argument("--model", choices=list(MODELS))
    cli.add_argument("--overrides", type=json.loads, help="JSON, e.g. '{\"train.epochs\": 2}'")
    args = cli.parse_args()
    qin_train(params=args.params, data=args.data, model=args.model, overrides=args.overrides)
