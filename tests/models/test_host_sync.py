"""No host sync in a training step: every operator the forward and backward pass dispatch is recorded and none
may have a data-dependent output size or read a tensor's value into Python. On a GPU each of those makes the
host wait for the device at every step.

The step is traced on the "meta" device, on a CPU-only machine: the models take the same branches there as
on CUDA in float32 (they test a device only for "cpu", and for "meta", which has no autocast: checked
below), and the same operators are dispatched, backward included. On the CPU itself the distinct items of
a batch are found with `nonzero`, which costs nothing there (no device runs ahead of the host).
bench/gpu_check.sh runs a full-size epoch on a GPU under torch.cuda.set_sync_debug_mode("error") as well,
which also sees inside the kernels."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qin.data.features import default_spec
from qin.models import build_model
from qin.models.blocks import Batch
from qin.models.dcnv3 import DCNv3Config
from qin.models.din import DINConfig
from qin.models.qin import QINConfig
from qin.models.settings import ModelConfig
from qin.settings.params import preset
from qin.train import TrainingLoss
from qin.training.losses import model_loss

# Operators whose output size depends on the values (their size must reach the host) or that copy a value
# to the host: nonzero, unique, masked_select, .item() / int(t) / bool(t) (_local_scalar_dense), ...
SYNCING = {
    "nonzero",
    "nonzero_numpy",
    "argwhere",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "unique_dim_consecutive",
    "masked_select",
    "masked_scatter",
    "_local_scalar_dense",
    "item",
    "is_nonzero",
    "equal",
    "repeat_interleave",
    "bincount",
    "histc",
}
INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}  # syncing only with a boolean mask

SPEC = default_spec(n_items=300, n_tags=40)
N_TAGS = 40
MODELS: dict[str, ModelConfig] = {
    "qin": QINConfig(embedding_dim=8, num_layers=2, num_row=2, net_dropout=0.1),
    "din": DINConfig(embedding_dim=8, attention_units=(16, 8), dnn_units=(32, 16)),
    "dcnv3": DCNv3Config(embedding_dim=8),
    "sdcnv3": DCNv3Config(name="sdcnv3", embedding_dim=8),
}


class Recorder(TorchDispatchMode):
    """Every operator dispatched inside the block (the backward pass's too), with whether one of its
    arguments is a boolean index."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        indices = args[1] if len(args) > 1 and isinstance(args[1], list | tuple) else ()
        bool_index = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
        self.calls.append((name, bool_index))
        return func(*args, **(kwargs or {}))

    def syncing(self) -> list[str]:
        return sorted(
            {name for name, bool_index in self.calls if name in SYNCING or (name in INDEXING and bool_index)}
        )


def _batch(b: int = 48, length: int = 20) -> Batch:
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(1, SPEC.n_items, (b, length), generator=g, dtype=torch.int32)
    lengths = torch.randint(0, length + 1, (b, 1), generator=g)
    seq[torch.arange(length).expand(b, -1) < length - lengths] = 0  # left padding, some rows all padding
    return Batch(
        item_seq=seq,
        likes_level=torch.randint(0, 11, (b,), generator=g, dtype=torch.int32),
        views_level=torch.randint(0, 11, (b,), generator=g, dtype=torch.int32),
        item_id=torch.randint(1, SPEC.n_items, (b,), generator=g, dtype=torch.int32),
        label=(torch.rand(b, generator=g) < 0.3).float(),
    )


def _training_loss(cfg: ModelConfig, device: str = "meta") -> TrainingLoss:
    torch.manual_seed(0)
    tags = torch.randint(0, N_TAGS, (SPEC.n_items, 5))
    tags[0] = 0
    emb = torch.randn(SPEC.n_items, 128)
    emb[0] = 0
    model = build_model(cfg, SPEC, {"item_tags": tags, "item_emb_d128": emb}).train().to(device)
    return TrainingLoss(model, model_loss(cfg.name), embedding_l2=1e-4, net_l2=1e-5)


def _ops_of_one_step(loss_module: TrainingLoss, batch: Batch) -> Recorder:
    """The operators of one forward and backward pass; a data-dependent one also raises on "meta", after
    the recorder has seen it."""
    recorder = Recorder()
    with recorder, contextlib.suppress(NotImplementedError, RuntimeError):
        data, penalty = loss_module(batch)
        (data + penalty).backward()
    return recorder


def _on(batch: Batch, device: str) -> Batch:
    return batch.to(device)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_training_step_has_no_operator_that_waits_for_the_device(name: str) -> None:
    loss_module = _training_loss(MODELS[name])
    recorder = _ops_of_one_step(loss_module, _on(_batch(), "meta"))
    assert recorder.syncing() == [], f"{name}: host syncs in the training step: {recorder.syncing()}"
    assert {"embedding_dense_backward", "mm"} <= {n for n, _ in recorder.calls}  # backward included
    assert all(p.grad is not None for p in loss_module.model.parameters())  # and it ran to the end


def test_the_paper_preset_too() -> None:
    loss_module = _training_loss(preset("paper").model)
    assert _ops_of_one_step(loss_module, _on(_batch(b=8, length=64), "meta")).syncing() == []


def test_on_the_cpu_the_distinct_items_are_counted_exactly() -> None:
    """The one data-dependent operator of the CPU's step, where it costs nothing: a GPU never runs it."""
    recorder = _ops_of_one_step(_training_loss(MODELS["qin"], "cpu"), _batch())
    assert recorder.syncing() == ["nonzero"]


def test_the_models_branch_on_the_cpu_alone_so_meta_traces_the_gpus_step() -> None:
    root = Path(__file__).resolve().parents[2] / "qin"
    for path in [*(root / "models").glob("*.py"), root / "training" / "losses.py"]:
        assert '"cuda"' not in path.read_text(), path


def test_the_recorder_finds_a_host_sync() -> None:
    """The check can fail: the operators of a data-dependent step are caught, backward included."""
    x = torch.randn(6, requires_grad=True)
    with Recorder() as recorder:
        kept = x[x > 0]  # a boolean mask: the size of the result depends on the values
        (kept.sum() * float(x.detach().sum())).backward()
    assert {"index", "_local_scalar_dense"} <= set(recorder.syncing())
    with Recorder() as recorder:
        torch.unique(x.detach()), x.detach().nonzero()
    assert {"_unique2", "nonzero"} <= set(recorder.syncing())
    meta = torch.ones(4, device="meta")
    with Recorder() as recorder, contextlib.suppress(NotImplementedError, RuntimeError):
        meta.nonzero()  # raises on "meta" (its size is unknown there), after the recorder saw it
    assert recorder.syncing() == ["nonzero"]
