"""Shared fixtures: tiny synthetic data, a scratch project directory, Prefect's test harness."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows import OFFLINE_ENV

# Offline (flows/__init__.py's settings, whatever the shell set), before prefect is imported.
os.environ.update({**OFFLINE_ENV, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"})
os.environ.pop("MLFLOW_TRACKING_URI", None)
# The tests' own md5 memo (qin/runs/io.py HashMemo), not the user's; their subprocesses inherit it.
os.environ.setdefault("QIN_HASH_MEMO", os.path.join(tempfile.mkdtemp(prefix="qin-test-memo-"), "md5.sqlite"))

REPO = Path(__file__).resolve().parents[1]

TINY_PARAMS = """
data: {preset: tiny, seed: 7}
validate: {positive_rate_min: 0.02, positive_rate_max: 0.8}
embed: {method: given}
featurize: {max_len: 16}
train:
  model: {name: qin, embedding_dim: 8, num_layers: 2, num_row: 2}
  batch_size: 256
  epochs: 2
  seed: 1
  device: cpu
evaluate: {batch_size: 1024}
register:
  model_name: qin-ctr
  alias: staging
  experiment: qin-test
  tracking_uri: sqlite:///mlruns/mlflow.db
  artifact_root: mlruns/artifacts
predict: {model: auto, batch_size: 4096, device: cpu}
features: params/features/default.yaml
"""


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qin.data.synth import synthesize
    from qin.settings.sections import DataConfig

    out = tmp_path_factory.mktemp("tiny") / "data"
    synthesize(out, DataConfig(preset="tiny", seed=7))
    return out


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """mlflow.set_tracking_uri() writes MLFLOW_TRACKING_URI into the environment: a test's subprocesses
    would otherwise inherit the store an earlier test used, as if the user had set it."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def _restore_sys_path() -> Iterator[None]:
    """Loading an MLflow model puts its code copy (code/qin/) first on sys.path; a later test's spawned
    processes would import that copy, not the project's."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture
def project(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch project root (params.yaml + data/) as the working directory."""
    (tmp_path / "params.yaml").write_text(TINY_PARAMS)
    shutil.copytree(tiny_data, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
