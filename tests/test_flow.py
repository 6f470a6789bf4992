"""End to end under Prefect's test harness, with the real MLflow store: a run registers a model that
MLflow can load and score with; a second run reuses every cached stage and registers nothing new."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_flow_registers_a_loadable_model_and_caches_a_rerun(project: Path, prefect_harness) -> None:
    import mlflow

    from flows.qin_train import qin_train
    from qin.inference import load_package

    first = qin_train()
    assert first["stages"] == dict.fromkeys(["validate", "featurize", "train", "evaluate"], "ran")
    assert first["newly_registered"] and first["version"] == "1" and first["has_alias"]
    assert (project / "mlruns" / "mlflow.db").exists()

    second = qin_train()
    assert second["stages"] == dict.fromkeys(["validate", "featurize", "train", "evaluate"], "cached")
    assert (second["run_id"], second["version"], second["newly_registered"]) == (first["run_id"], "1", False)

    # A stage whose outputs were deleted runs again even though its cache entry exists.
    import shutil

    shutil.rmtree(project / "artifacts" / "features")
    third = qin_train()
    assert third["stages"]["featurize"] == "ran" and third["stages"]["validate"] == "cached"

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/qin-ctr@staging")
    rows = pd.read_parquet(project / "data" / "valid.parquet").head(64)
    rows["item_seq"] = rows["item_seq"].map(list)
    preds = np.asarray(model.predict(rows[["likes_level", "views_level", "item_id", "item_seq"]]))
    assert preds.shape == (64,) and np.all((preds > 0) & (preds < 1))
    expected = load_package(project / "artifacts" / "model").predict_frame(rows)
    np.testing.assert_allclose(preds, expected, rtol=1e-5)

    run = mlflow.get_run(first["run_id"])
    assert run.data.metrics["valid_auc"] == pytest.approx(first["valid_auc"])
    assert {"data_hash", "params_hash", "git_commit", "model_hash"} <= set(run.data.tags)
    assert run.data.params["train.model.embedding_dim"] == "8"
    reports = {a.path for a in mlflow.MlflowClient().list_artifacts(first["run_id"], "reports")}
    assert {"reports/report.md", "reports/summary.json", "reports/data_docs"} <= reports
    docs = {a.path for a in mlflow.MlflowClient().list_artifacts(first["run_id"], "reports/data_docs")}
    assert "reports/data_docs/index.html" in docs


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
    assert (project / "artifacts" / "validate" / "report.md").exists()
    for later in ("features", "model"):
        assert not (project / "artifacts" / later).exists()
    assert not (project / "mlruns").exists()
