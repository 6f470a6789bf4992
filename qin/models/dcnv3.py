"""DCNv3 and SDCNv3 (later renamed FCN): explicit feature crossing without a DNN.

Shape legend: B batch, E embedding_dim, I item vector width, R row features' width, D = R + 2I input width.

Input: concat(row features, target item, mean of the history items): the same feature pipeline as QIN, with
the history mean-pooled (these models have no sequence module).
- A cross layer computes c = W x + b (W: D -> D/2), H = [c, c ⊙ ReLU(LayerNorm(c))] (the self-mask), so
  H has width D again.
- Exponential Cross Network (ECN, deep): x <- x ⊙ H + x; the interaction order doubles each layer.
- Linear Cross Network (LCN, shallow): x <- x0 ⊙ H + x; the order grows by one each layer.
DCNv3 is the ECN alone. SDCNv3 runs both and averages their logits; it is trained with Tri-BCE
(qin/training/losses.py), for which `side_logits` returns the fused, deep and shallow logits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from qin.data.features import FeatureSpec
from qin.models.blocks import Batch, FeatureEncoder, init_weights, masked_mean
from qin.models.settings import DCNv3Config  # its settings (torch-free), also importable from here


class CrossLayer(nn.Module):
    def __init__(self, dim: int, layer_norm: bool) -> None:
        super().__init__()
        assert dim % 2 == 0, "the cross layer halves the width"
        self.linear = nn.Linear(dim, dim // 2)
        self.norm = nn.LayerNorm(dim // 2) if layer_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        c = self.linear(x)  # (B, D/2)
        return torch.cat([c, c * torch.relu(self.norm(c))], dim=-1)  # (B, D)


class CrossNetwork(nn.Module):
    """exponential=True: ECN (x ⊙ H + x); False: LCN (x0 ⊙ H + x). Returns a logit."""

    def __init__(
        self, dim: int, num_layers: int, dropout: float, layer_norm: bool, exponential: bool
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CrossLayer(dim, layer_norm) for _ in range(num_layers))
        self.dropouts = nn.ModuleList(nn.Dropout(dropout) for _ in range(num_layers))
        self.exponential = exponential
        self.head = nn.Linear(dim, 1)

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer, dropout in zip(self.layers, self.dropouts, strict=True):
            x = dropout((x if self.exponential else x0) * layer(x) + x)
        return self.head(x).squeeze(-1)


class DCNv3(nn.Module):
    def __init__(self, cfg: DCNv3Config, spec: FeatureSpec, items: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.features = FeatureEncoder(spec, cfg.embedding_dim, items)
        width = self.features.width
        self.deep = CrossNetwork(
            width, cfg.num_deep_layers, cfg.deep_dropout, cfg.layer_norm, exponential=True
        )
        self.shallow = (
            CrossNetwork(
                width, cfg.num_shallow_layers, cfg.shallow_dropout, cfg.layer_norm, exponential=False
            )
            if cfg.name == "sdcnv3"
            else None
        )
        init_weights(self)

    def _inputs(self, batch: Batch) -> Tensor:
        row, target, history, mask = self.features(batch)
        return torch.cat([row, target, masked_mean(history, mask)], dim=-1)  # (B, D)

    def side_logits(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """(fused, deep, shallow) logits, for the Tri-BCE loss (SDCNv3 only)."""
        assert self.shallow is not None, "side logits exist only for sdcnv3"
        x0 = self._inputs(batch)
        deep, shallow = self.deep(x0), self.shallow(x0)
        return (deep + shallow) / 2, deep, shallow

    def forward(self, batch: Batch) -> Tensor:
        if self.shallow is None:
            return self.deep(self._inputs(batch))
        return self.side_logits(batch)[0]
