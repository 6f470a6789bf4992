"""The `qin-score` flow: the registry's champion, else its staging version, scored into a submission that a
second run reuses; the manifest on the version's MLflow run; a package path scored as itself."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from qin.cli import main
from qin.predict import MANIFEST, read_submission

pytestmark = pytest.mark.slow


def test_qin_score_takes_champion_else_staging_caches_and_logs_the_manifest(
    project: Path, prefect_harness
) -> None:
    from mlflow import MlflowClient

    from flows.qin_score import qin_score
    from flows.qin_train import qin_train

    trained = qin_train()
    rows = pq.ParquetFile(project / "data" / "test.parquet").metadata.num_rows

    first = qin_score()
    assert (first["model"]["alias"], first["model"]["version"], first["how"]) == ("staging", "1", "ran")
    assert len(read_submission(first["submission"])) == rows
    assert first["manifest"]["model"] == {
        "model_name": "qin-ctr",
        "version": "1",
        "model_hash": trained["model_hash"],
        "kind": "qin",
    }
    record = json.loads((Path(first["record"]) / MANIFEST).read_text())
    assert (record["alias"], record["key"]) == ("staging", first["key"])

    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    logged = [a.path for a in client.list_artifacts(trained["run_id"], "predictions")]
    assert logged == [first["mlflow_artifact"]]
    copy = json.loads(Path(client.download_artifacts(trained["run_id"], logged[0], str(project))).read_text())
    assert copy["rows"] == rows and copy["alias"] == "staging"

    second = qin_score()
    assert (second["how"], second["key"], second["submission"]) == (
        "cached",
        first["key"],
        first["submission"],
    )

    assert main(["promote", "--to", "production"]) == 0
    third = qin_score()
    assert (third["model"]["alias"], third["how"]) == ("champion", "cached")  # the same version: reused

    # The package by path: the same content, but not looked up in the registry, so a manifest of its own.
    package = first["model"]["path"]
    by_path = qin_score(model=package)
    assert by_path["model"]["model_name"] is None and by_path["mlflow_artifact"] is None
    assert by_path["how"] == "ran" and by_path["key"] != first["key"]
    assert by_path["manifest"]["model"]["model_hash"] == first["manifest"]["model"]["model_hash"]
