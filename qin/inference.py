"""A trained model as a self-contained package, and scoring with it (no training code needed).

A package directory holds:
    weights.pt      the model's state_dict
    model.json      model config, feature vocabularies, history length, provenance
    item_tags.npy, item_emb.npy   the item table the model looks items up in
`load_package` rebuilds the model from these alone; `Scorer` turns raw challenge columns into
probabilities. Evaluation, MLflow's pyfunc wrapper and (later) batch and online serving all score
through this one path.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from qin import runtime
from qin.data.schema import HISTORY, MODEL_INPUTS, TARGET, most_recent
from qin.io import atomic_dir, read_json, tree_hash, write_json
from qin.models import build_model, model_config
from qin.models.blocks import Batch, FeatureSpec, ItemEncoder
from qin.models.settings import ModelConfig
from qin.request import request_arrays

WEIGHTS, CONFIG = "weights.pt", "model.json"
# The one precision every score is computed in: evaluate, predict, serving, the valid scores that drive early
# stopping, and bench/throughput.py's scoring figures. bf16 would be taken only if the valid AUC it gives
# stayed within 1e-4 of fp32's; bench/scoring_precision.py measures that on the small data (README, Speed).
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
    item_tags: np.ndarray,
    item_emb: np.ndarray,
    meta: dict[str, Any],
) -> str:
    """Write the package atomically; return its content hash."""
    with atomic_dir(out_dir) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        np.save(tmp / "item_tags.npy", np.asarray(item_tags))
        np.save(tmp / "item_emb.npy", np.asarray(item_emb))
        write_json(
            tmp / CONFIG,
            {
                "model": model_cfg.model_dump(),
                "features": dataclasses.asdict(spec),
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
        n_items: int,
        device: torch.device,
        frozen: bool = False,
        precision: str = SCORING_PRECISION,
    ) -> None:
        """`frozen`: the weights never change (a loaded package, not a model in training): its item table
        is encoded once (ItemEncoder.freeze). `precision`: SCORING_PRECISION, but for a comparison of
        precisions (bench/scoring_precision.py)."""
        self.model = model.to(device)
        self.max_len = max_len
        self.n_items = n_items  # valid item ids: 0 (padding) .. n_items - 1
        self.device = device
        self.dtype = runtime.resolve_precision(precision, device)
        if frozen:
            self.model.eval()
            for module in self.model.modules():
                if isinstance(module, ItemEncoder):
                    module.freeze()

    @torch.inference_mode()
    def predict(self, cols: dict[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
        """Click probabilities for arrays item_seq (N, L) and likes_level, views_level, item_id (N,).

        Only the last max_len history items are used, as in training.
        """
        self.model.eval()
        cols = {**cols, HISTORY: most_recent(cols[HISTORY], self.max_len)}
        n = len(cols[TARGET])
        out = np.empty(n, dtype=np.float32)
        cpu = self.device.type == "cpu"
        reuse = runtime.reuse_freed_memory() if cpu and n > batch_size else contextlib.nullcontext()
        with reuse, runtime.autocast(self.device, self.dtype):
            for start in range(0, n, batch_size):
                sl = slice(start, start + batch_size)
                rows = {c: torch.from_numpy(np.array(cols[c][sl])) for c in MODEL_INPUTS}
                if not cpu:  # pinned, so that the copy to the GPU is asynchronous
                    rows = {c: t.pin_memory() for c, t in rows.items()}
                batch = Batch(**rows).to(self.device, non_blocking=not cpu)
                out[sl] = torch.sigmoid(self.model(batch).float()).cpu().numpy()
        return out

    def predict_frame(self, frame: pd.DataFrame, batch_size: int = 8192) -> np.ndarray:
        """Score raw challenge rows: `item_seq` as a list per row (any length: the most recent max_len
        items are used), the rest as integers. A bad row raises qin.request.BadRequest naming it."""
        return self.predict(request_arrays(frame, self.n_items, self.max_len), batch_size)


def load_package(path: str | Path, device: str = "cpu", precision: str = SCORING_PRECISION) -> Scorer:
    """The package's scorer (its item table frozen); `precision`: SCORING_PRECISION, but for a comparison
    of precisions (bench/scoring_precision.py, bench/gpu_check.py)."""
    path = Path(path)
    if not (path / CONFIG).exists():
        raise FileNotFoundError(f"{path}: not a model package (no {CONFIG})")
    cfg = read_json(path / CONFIG)
    model_cfg = model_config(cfg["model"])
    spec = FeatureSpec(**cfg["features"])
    tags = torch.from_numpy(np.load(path / "item_tags.npy"))
    emb = torch.from_numpy(np.load(path / "item_emb.npy"))
    model = build_model(model_cfg, spec, tags, emb)
    model.load_state_dict(torch.load(path / WEIGHTS, map_location="cpu", weights_only=True))
    return Scorer(model, int(cfg["max_len"]), spec.n_items, resolve_device(device), True, precision)
