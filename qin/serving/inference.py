"""A trained model as a self-contained package, and scoring with it (no training code needed).

A package directory holds:
    weights.pt      the model's state_dict
    model.json      model config, feature spec (the feature table and its vocabularies), history length,
                    provenance
    items.<name>.npy   the item table the model looks items up in: one array per item feature
Packages written before the feature table (item_tags.npy, item_emb.npy and fixed inputs) load as the default
table (`_legacy`).
`load_package` rebuilds the model from these alone; `Scorer` turns raw challenge columns into
probabilities. Evaluation, MLflow's pyfunc wrapper and (later) batch and online serving all score
through this one path.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from qin.data import schema
from qin.data.features import LEGACY_ITEM_FILES, FeatureSpec
from qin.data.schema import most_recent
from qin.models import build_model, model_config
from qin.models.blocks import Batch, ItemEncoder
from qin.models.settings import ModelConfig
from qin.runs.io import atomic_dir, read_json, tree_hash, write_json
from qin.serving.request import request_arrays
from qin.training import runtime

WEIGHTS, CONFIG = "weights.pt", "model.json"
# The one precision every score is computed in: evaluate, predict, serving, the valid scores that drive early
# stopping, and bench/throughput.py's scoring figures. bf16 would be taken only if the valid AUC it gives
# stayed within 1e-4 of fp32's; bench/scoring_precision.py measures that on the small data
# (docs/performance.md).
SCORING_PRECISION = "fp32"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(name)


def save_package(
    out_dir: str | Path,
    model: nn.Module,
    model_cfg: ModelConfig,
    spec: FeatureSpec,
    max_len: int,
    items: dict[str, np.ndarray],
    meta: dict[str, Any],
) -> str:
    """Write the package atomically; return its content hash. `items`: each item feature's values per
    item id (featurize's `items.<name>` arrays)."""
    with atomic_dir(out_dir) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        for name, values in items.items():
            np.save(tmp / f"items.{name}.npy", np.asarray(values))
        write_json(
            tmp / CONFIG,
            {
                "model": model_cfg.model_dump(),
                "features": spec.plain(),
                "max_len": max_len,
                "meta": meta,
            },
        )
    return tree_hash([out_dir])


class Scorer:
    def __init__(
        self,
        model: nn.Module,
        max_len: int,
        spec: FeatureSpec,
        device: torch.device,
        frozen: bool = False,
        precision: str = SCORING_PRECISION,
    ) -> None:
        """`frozen`: the weights never change (a loaded package, not a model in training): its item table
        is encoded once (ItemEncoder.freeze). `precision`: SCORING_PRECISION, but for a comparison of
        precisions (bench/scoring_precision.py)."""
        self.model = model.to(device)
        self.max_len = max_len
        self.spec = spec  # the inputs a row carries (its table) and their vocabularies
        self.n_items = spec.n_items  # valid item ids: 0 (padding) .. n_items - 1
        self.device = device
        self.dtype = runtime.resolve_precision(precision, device)
        if frozen:
            self.model.eval()
            for module in self.model.modules():
                if isinstance(module, ItemEncoder):
                    module.freeze()

    @torch.inference_mode()
    def predict(self, cols: dict[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
        """Click probabilities for the arrays of the spec's row columns: the history (N, L), the target
        item (N,) and the row features (N,) or (N, dim).

        Only the last max_len history items are used, as in training.
        """
        self.model.eval()
        history, columns = self.spec.history, self.spec.table.columns
        cols = {**cols, history: most_recent(cols[history], self.max_len)}
        n = len(cols[history])
        out = np.empty(n, dtype=np.float32)
        cpu = self.device.type == "cpu"
        reuse = runtime.reuse_freed_memory() if cpu and n > batch_size else contextlib.nullcontext()
        with reuse, runtime.autocast(self.device, self.dtype):
            for start in range(0, n, batch_size):
                sl = slice(start, start + batch_size)
                rows = {c: torch.from_numpy(np.array(cols[c][sl])) for c in columns}
                if not cpu:  # pinned, so that the copy to the GPU is asynchronous
                    rows = {c: t.pin_memory() for c, t in rows.items()}
                batch = Batch(**rows).to(self.device, non_blocking=not cpu)
                out[sl] = torch.sigmoid(self.model(batch).float()).cpu().numpy()
        return out

    def predict_frame(self, frame: pd.DataFrame, batch_size: int = 8192) -> np.ndarray:
        """Score raw rows: the history as a list per row (any length: the most recent max_len items are
        used), the rest as the feature table declares them. A bad row raises qin.serving.request.BadRequest
        naming
        it."""
        return self.predict(request_arrays(frame, self.spec, self.max_len), batch_size)


def load_package(path: str | Path, device: str = "cpu", precision: str = SCORING_PRECISION) -> Scorer:
    """The package's scorer (its item table frozen); `precision`: SCORING_PRECISION, but for a comparison
    of precisions (bench/scoring_precision.py, bench/gpu_check.py)."""
    path = Path(path)
    if not (path / CONFIG).exists():
        raise FileNotFoundError(f"{path}: not a model package (no {CONFIG})")
    cfg = read_json(path / CONFIG)
    model_cfg = model_config(cfg["model"])
    spec = FeatureSpec.read(cfg["features"])
    weights = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    if "table" in cfg["features"]:
        items = {
            f.name: torch.from_numpy(np.load(path / f"items.{f.name}.npy"))
            for f in spec.table.item
            if not f.is_key
        }
    else:
        items, weights = _legacy(path, spec, weights)
    model = build_model(model_cfg, spec, items)
    model.load_state_dict(weights)
    return Scorer(model, int(cfg["max_len"]), spec, resolve_device(device), True, precision)


# Packages written before the feature table: the default table's layers under their names of then (the same
# tensors, in the same order); its item arrays are qin.data.features.LEGACY_ITEM_FILES.
_LEGACY_LAYERS = {
    "features.items.id_emb.": f"features.items.embed.{schema.TARGET}.",
    "features.items.tag_emb.": f"features.items.embed.{schema.TAGS}.",
    "features.items.mm_proj.": f"features.items.embed.{schema.ITEM_EMB}.",
    "features.likes.": f"features.rows.{schema.LEVELS[0]}.",
    "features.views.": f"features.rows.{schema.LEVELS[1]}.",
}


def _legacy(path: Path, spec: FeatureSpec, weights: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The item table and the weights of a package written before the feature table, under the default
    table's names."""
    items = {name: torch.from_numpy(np.load(path / file)) for name, file in LEGACY_ITEM_FILES.items()}
    return items, {legacy_name(key): value for key, value in weights.items()}


def legacy_name(key: str) -> str:
    """A weight's name in a package written before the feature table, as the default table names it."""
    old = next((o for o in _LEGACY_LAYERS if key.startswith(o)), None)
    return key if old is None else _LEGACY_LAYERS[old] + key.removeprefix(old)
