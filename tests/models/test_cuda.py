"""The CUDA path, on a GPU only (skipped elsewhere): bench/gpu_check.sh runs these first on a lent machine.

Every gpu-marked test lives in this file, and its fixtures need neither great-expectations nor Prefect,
MLflow or DVC (the GPU image has none of them): the data is the generator's, featurized with the gate left
out (qin.validate.skip_gate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qin.featurize import Features, featurize
from qin.models import build_model
from qin.models.dcnv3 import DCNv3Config
from qin.models.din import DINConfig
from qin.models.qin import QINConfig
from qin.models.settings import ModelConfig
from qin.serving.inference import load_package
from qin.settings.params import TrainConfig, load_params, preset
from qin.settings.sections import FeaturizeConfig, replace
from qin.train import Trainer, gather, load_columns, train
from qin.training import runtime
from qin.validate import skip_gate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
MODELS: dict[str, ModelConfig] = {
    "qin": QINConfig(embedding_dim=8),
    "din": DINConfig(embedding_dim=8, attention_units=(16, 8)),
    "dcnv3": DCNv3Config(embedding_dim=8),
    "sdcnv3": DCNv3Config(name="sdcnv3", embedding_dim=8),
}
PARAMS = """
featurize: {max_len: 16}
train:
  model: {name: qin, embedding_dim: 8}
  batch_size: 64
  epochs: 2
  patience: 5
  seed: 3
  device: cuda
  precision: fp32
  checkpoint_every: 5
  checkpoint_seconds: 0
"""


@pytest.fixture(scope="module")
def features(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cuda")
    skip_gate(tiny_data, root / "v", "tests/models/test_cuda.py: the GPU image has no great-expectations")
    featurize(tiny_data, root / "v", root / "f", FeaturizeConfig(max_len=16))
    return root / "f"


def _cfg(root: Path, **overrides: object) -> TrainConfig:
    (root / "params.yaml").write_text(PARAMS)
    return replace(load_params(root / "params.yaml").train, **overrides)


def test_on_cuda_the_rows_move_to_the_gpu_and_training_runs_in_native_bf16(
    features: Path, tmp_path: Path
) -> None:
    cols = load_columns(Features(features), "train", CUDA)
    assert all(c.is_cuda for c in cols.values())
    s = train(features, tmp_path / "m", tmp_path / "m.json", _cfg(tmp_path, precision="auto"))
    assert s.device.startswith("cuda")
    assert s.precision == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32")
    assert s.best_valid_auc > 0.5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_a_training_step_never_waits_for_the_gpu(name: str, precision: str, features: Path) -> None:
    feats = Features(features)
    items = {k: torch.from_numpy(v) for k, v in feats.items().items()}
    model = build_model(MODELS[name], feats.spec, items).to(CUDA)
    cfg = replace(preset("cpu"), model=MODELS[name], precision=precision, device="cuda")
    trainer = Trainer(model, cfg, CUDA)
    cols = load_columns(feats, "train", CUDA)
    order = torch.randperm(len(cols["item_id"]), device=CUDA)
    losses = []
    with runtime.SyncDebug("error", CUDA):  # raises at the first operation that makes the host wait
        for step in range(4):
            losses.append(trainer.step(gather(cols, order[step * 64 : (step + 1) * 64], CUDA)))
    assert torch.isfinite(torch.stack(losses)).all().item()


def test_rows_pinned_on_the_host_one_batch_ahead_train_what_resident_rows_train(
    features: Path, tmp_path: Path
) -> None:
    assert all(not c.is_cuda for c in load_columns(Features(features), "train", CUDA, "host").values())
    resident = train(features, tmp_path / "a", tmp_path / "a.json", _cfg(tmp_path, sync_debug="error"))
    pinned = train(features, tmp_path / "b", tmp_path / "b.json", _cfg(tmp_path, data_placement="host"))
    # The same batches in the same order; CUDA's atomic sums make the two runs differ by float rounding.
    for x, y in zip(resident.history, pinned.history, strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-3)
        assert y["valid_auc"] == pytest.approx(x["valid_auc"], abs=5e-3)


def test_a_package_scores_on_the_gpu_what_it_scores_on_the_cpu(features: Path, tmp_path: Path) -> None:
    train(features, tmp_path / "m", tmp_path / "m.json", _cfg(tmp_path, epochs=1))
    valid = {k: np.asarray(v) for k, v in Features(features).split("valid").items()}
    on_gpu, on_cpu = load_package(tmp_path / "m", device="cuda"), load_package(tmp_path / "m", device="cpu")
    assert on_gpu.device.type == "cuda" and on_gpu.model.features.items.frozen.is_cuda
    np.testing.assert_allclose(on_gpu.predict(valid), on_cpu.predict(valid), rtol=1e-4, atol=1e-5)
