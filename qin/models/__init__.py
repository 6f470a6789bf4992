"""Models by name; each model is one file built from named blocks and returns logits."""

from __future__ import annotations

import torch
from torch import nn

from qin.config import ModelConfig
from qin.models.blocks import Batch, FeatureSpec
from qin.models.dcnv3 import DCNv3
from qin.models.din import DIN
from qin.models.qin import QIN

MODELS: dict[str, type[nn.Module]] = {"qin": QIN, "din": DIN, "dcnv3": DCNv3, "sdcnv3": DCNv3}

__all__ = ["MODELS", "Batch", "FeatureSpec", "build_model"]


def build_model(
    cfg: ModelConfig, spec: FeatureSpec, item_tags: torch.Tensor, item_emb: torch.Tensor
) -> nn.Module:
    if cfg.name not in MODELS:
        raise ValueError(
            f"params key 'train.model.name': expected one of {sorted(MODELS)}, found {cfg.name!r}"
        )
    return MODELS[cfg.name](cfg, spec, item_tags, item_emb)
