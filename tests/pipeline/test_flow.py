"""End to end under Prefect's test harness, with the real MLflow store: a run registers a model that
MLflow can load and score with; a second run reuses every stage by its key and registers nothing new; a run
with overrides of one params section reruns only the stages that read it; a failed run leaves a report in
its own record."""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

STAGES = ["validate", "embed", "featurize", "train", "evaluate"]


def _run(**parameters: Any) -> tuple[dict, dict[str, str]]:
    """One flow run: its result and its task runs' state names, read back from the Prefect API."""
    from flows.qin_train import qin_train
    from flows.stages import task_runs

    state = qin_train(**parameters, return_state=True)
    result = state.result()
    tasks = {r.name.rsplit("-", 1)[0]: r.state.name for r in task_runs(state.state_details.flow_run_id)}
    return result, tasks


def test_flow_registers_a_loadable_model_and_caches_a_rerun(
    project: Path, prefect_harness, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow
    from prefect.artifacts import Artifact

    from qin.serving.inference import load_package

    first, tasks = _run()
    assert first["stages"] == dict.fromkeys(STAGES, "ran")
    assert tasks == {"params": "Completed", **dict.fromkeys(STAGES, "Completed"), "register": "Completed"}
    assert first["newly_registered"] and first["version"] == "1" and first["has_alias"]
    assert (project / "mlruns" / "mlflow.db").exists()
    summary = Artifact.get("qin-train-summary")
    assert summary is not None and "| valid_auc |" in str(summary.data)
    assert f"[{first['run_id']}]({first['mlflow_run_link']})" in str(summary.data)
    assert first["mlflow_run_link"].startswith("http://127.0.0.1:5000/#/experiments/")
    stages = project / "artifacts" / "stages"
    evaluated = stages / "evaluate" / first["stage_keys"]["evaluate"]
    assert (evaluated / "plot_data" / "roc.csv").read_text().startswith("fpr,tpr\n0.000000,0.000000")
    # Nothing run-specific at a fixed path: the DVC workspace paths stay untouched by flow runs.
    assert not (project / "artifacts" / "model").exists() and not (project / "metrics").exists()
    record = Path(first["record"])
    assert record.resolve().parent == (project / "artifacts" / "runs").resolve()
    assert "epochs: 2" in (record / "params.yaml").read_text()
    entries = json.loads((record / "run.json").read_text())["stages"]
    assert [e["key"] for e in entries] == [first["stage_keys"][s] for s in STAGES]
    assert json.loads((record / "register.json").read_text())["version"] == "1"

    second, tasks = _run()
    assert second["stages"] == dict.fromkeys(STAGES, "cached")
    assert tasks == {"params": "Completed", **dict.fromkeys(STAGES, "Cached"), "register": "Completed"}
    assert (second["run_id"], second["version"], second["newly_registered"]) == (first["run_id"], "1", False)
    assert second["stage_keys"] == first["stage_keys"] and second["record"] != first["record"]

    # A key's outputs that were deleted or changed on disk are computed again, not trusted.
    featurized = stages / "featurize" / first["stage_keys"]["featurize"]
    (featurized / "features" / "valid_item_id.npy").write_bytes(b"corrupted")
    shutil.rmtree(evaluated)
    third, _ = _run()
    assert third["stages"] == {
        "validate": "cached",
        "embed": "cached",
        "featurize": "ran",
        "train": "cached",
        "evaluate": "ran",
    }
    assert third["stage_keys"] == first["stage_keys"]

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/qin-ctr@staging")
    rows = pd.read_parquet(project / "data" / "valid.parquet").head(64)
    rows["item_seq"] = rows["item_seq"].map(list)
    preds = np.asarray(model.predict(rows[["likes_level", "views_level", "item_id", "item_seq"]]))
    assert preds.shape == (64,) and np.all((preds > 0) & (preds < 1))
    expected = load_package(stages / "train" / first["stage_keys"]["train"] / "model").predict_frame(rows)
    np.testing.assert_allclose(preds, expected, rtol=1e-5)

    run = mlflow.get_run(first["run_id"])
    assert run.data.metrics["valid_auc"] == pytest.approx(first["valid_auc"])
    assert {"data_hash", "params_hash", "git_commit", "model_hash"} <= set(run.data.tags)
    assert run.data.params["train.model.embedding_dim"] == "8"
    assert run.data.params["register.min_delta"] == "0.001"
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics)  # system metrics
    client = mlflow.MlflowClient()
    # The training process's own CPU and memory, one step per epoch (MLflow's system metrics cover register).
    for key in ("epoch_cpu_percent", "epoch_peak_rss_mb"):
        steps = client.get_metric_history(first["run_id"], key)
        assert len(steps) == 2 and all(m.value > 0 for m in steps), key
    experiment = mlflow.get_experiment(run.info.experiment_id).name
    assert experiment == f"qin-test/data-{run.data.tags['data_hash'][:8]}"
    card = client.download_artifacts(first["run_id"], "model_card.md", str(project))
    text = Path(card).read_text()
    assert "version 1" in text and run.data.tags["data_hash"] in text and "## Limitations" in text
    config = client.download_artifacts(first["run_id"], "config/params.yaml", str(project))
    assert "embedding_dim: 8" in Path(config).read_text()
    reports = {a.path for a in mlflow.MlflowClient().list_artifacts(first["run_id"], "reports")}
    assert {"reports/report.md", "reports/summary.json", "reports/data_docs", "reports/evaluate"} <= reports
    docs = {a.path for a in mlflow.MlflowClient().list_artifacts(first["run_id"], "reports/data_docs")}
    assert "reports/data_docs/index.html" in docs

    # Overriding one params section reruns only the stages that read it (keys hash the sections a stage
    # reads, not the path of the run's params file); a speed-only setting changes no key at all.
    fourth, tasks = _run(overrides={"evaluate.batch_size": 2048, "train.threads": 1})
    assert fourth["stages"] == {**dict.fromkeys(STAGES[:4], "cached"), "evaluate": "ran"}
    assert (fourth["version"], fourth["newly_registered"]) == ("1", False)
    assert "batch_size: 2048" in (Path(fourth["record"]) / "params.yaml").read_text()

    fifth, tasks = _run(model="din", overrides={"train.epochs": 1})
    assert fifth["stages"] == {**dict.fromkeys(STAGES[:3], "cached"), "train": "ran", "evaluate": "ran"}
    assert (fifth["version"], fifth["newly_registered"]) == ("2", True)
    assert mlflow.get_run(fifth["run_id"]).data.params["train.model.name"] == "din"

    # `qin gc` keeps what the registered versions came from (their stage_keys tags) and everything upstream;
    # with no recent run kept, only the fourth run's evaluate key (batch 2048, registered by nobody) goes.
    from qin.cli import main

    for version, run in (("1", first), ("2", fifth)):
        tags = client.get_model_version("qin-ctr", version).tags
        assert json.loads(tags["stage_keys"]) == run["stage_keys"]
    capsys.readouterr()
    assert main(["gc", "--keep", "0", "--dry-run"]) == 0
    said = capsys.readouterr().out
    orphan = f"artifacts/stages/evaluate/{fourth['stage_keys']['evaluate']}"
    assert [line.split()[2] for line in said.splitlines()[:-1]] == [orphan, f"{orphan}.lock"]
    assert "would free" in said and (stages / "evaluate" / fourth["stage_keys"]["evaluate"]).exists()
    assert main(["gc", "--keep", "0"]) == 0
    assert not (stages / "evaluate" / fourth["stage_keys"]["evaluate"]).exists()
    assert all((stages / s / k).exists() for run in (first, fifth) for s, k in run["stage_keys"].items())


def test_flow_fails_on_bad_data_with_the_validation_message(project: Path, prefect_harness) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows.qin_train import qin_train

    path = project / "data" / "train.parquet"
    table = pq.read_table(path)
    labels = table["label"].to_numpy().copy()
    labels[0] = 3.0
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)), path)

    state = qin_train(return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"train\.parquet: column 'label': expect_column_values_to_be_in_set"):
        state.result()
    (record,) = (project / "artifacts" / "runs").iterdir()
    report = (record / "failure.md").read_text()
    assert "failed stage: **validate**" in report
    assert "ValidationError: " in report and "train.parquet: column 'label'" in report
    assert "inputs:\n- `data` (the raw data)" in report and "nothing published" in report
    # Nothing is published; the validation report stays in the key's partial folder, which the error names.
    validate = project / "artifacts" / "stages" / "validate"
    assert [p.name for p in (project / "artifacts" / "stages").iterdir()] == ["validate"]
    (partial,) = validate.glob("*.partial")
    assert sorted(p.name for p in validate.iterdir()) == sorted([partial.name, partial.stem + ".lock"])
    assert (partial / "validation" / "report.md").exists()
    assert f"{partial.name}/validation/report.md" in report
    assert not (project / "mlruns").exists()


@pytest.mark.processes
def test_flow_trains_under_torchrun_with_train_processes(project: Path, prefect_harness) -> None:
    # `train.processes: 2` from a flow run: the train task starts torchrun (through pipeline.call, as
    # `qin train` and dvc repro do); its MLflow run is the two processes' model, under a train key of its own.
    import mlflow

    one, _ = _run(overrides={"train.epochs": 1})
    two, tasks = _run(overrides={"train.epochs": 1, "train.processes": 2})
    assert two["stages"] == {**dict.fromkeys(STAGES[:3], "cached"), "train": "ran", "evaluate": "ran"}
    assert tasks["train"] == "Completed" and two["stage_keys"]["train"] != one["stage_keys"]["train"]
    trained = project / "artifacts" / "stages" / "train" / two["stage_keys"]["train"]
    metrics = json.loads((trained / "train.json").read_text())
    assert metrics["processes"] == 2 and len(metrics["history"]) == 1
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    assert mlflow.get_run(two["run_id"]).data.params["train.processes"] == "2"
