"""The staging gate against the real MLflow registry: better models move the alias, worse ones do not,
and registering an unchanged package twice is idempotent. (The rule itself: tests/test_promote.py.)"""

import json
from pathlib import Path

import pytest

from qin import layout
from qin.config import load_params
from qin.evaluate import evaluate
from qin.featurize import featurize
from qin.register import register
from qin.train import train
from qin.validate import validate
from tests import helpers as ws
from tests.helpers import model_variant

pytestmark = pytest.mark.slow


def test_gate_moves_the_alias_only_for_a_better_model(project: Path) -> None:
    params = load_params("params.yaml")
    validate(layout.DATA, ws.VALIDATION, params.validate)
    featurize(layout.DATA, ws.VALIDATION, ws.FEATURES, params.featurize)
    train(ws.FEATURES, ws.MODEL, ws.TRAIN_METRICS, params.train)
    evaluate(ws.FEATURES, ws.MODEL, ws.EVAL_METRICS, params.evaluate)

    def reg(model: Path, metrics: Path) -> dict:
        return register(model, ws.TRAIN_METRICS, metrics, ws.VALIDATION, ws.REGISTRATION, params)

    first = reg(*model_variant(project, "a", 0.70))
    assert (first["version"], first["has_alias"]) == ("1", True)
    again = reg(project / "artifacts" / "a", project / "metrics" / "a.json")
    assert (again["version"], again["newly_registered"], again["run_id"]) == ("1", False, first["run_id"])

    worse = reg(*model_variant(project, "b", 0.60))
    assert (worse["version"], worse["has_alias"]) == ("2", False)
    assert "does not beat version 1" in worse["reason"]

    better = reg(*model_variant(project, "c", 0.80))
    assert (better["version"], better["has_alias"]) == ("3", True)

    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("qin-ctr", "staging").version) == "3"
    assert json.loads(ws.REGISTRATION.read_text())["version"] == "3"
