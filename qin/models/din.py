"""DIN: Deep Interest Network, as the MM-CTR challenge baseline ran it.

Shape legend: B batch, L history length, E embedding_dim, I item vector width, R row features' width.

An attention MLP scores each history item from [target, item, target - item, target * item]; the scores
weight the items without softmax (attention dropout 0.1); the pooled interest joins the other features in a
ReLU MLP with batch norm.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from qin.data.features import FeatureSpec
from qin.models.blocks import MLP, Batch, FeatureEncoder, init_weights
from qin.models.settings import DINConfig  # its settings (torch-free), also importable from here


class ActivationUnit(nn.Module):
    """DIN's local activation unit: (B, I), (B, L, I), (B, L) -> (B, I)."""

    def __init__(self, item_dim: int, units: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.mlp = MLP(4 * item_dim, units, dropout, batch_norm=False)
        self.score = nn.Linear(self.mlp.out_dim, 1)

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        q = target.unsqueeze(1).expand_as(history)  # (B, L, I)
        pair = torch.cat([q, history, q - history, q * history], dim=-1)  # (B, L, 4I)
        b, length, width = pair.shape
        scores = self.score(self.mlp(pair.reshape(b * length, width))).view(b, length)
        weights = scores * mask.to(scores.dtype)  # no softmax: weights keep the interest's intensity
        return torch.einsum("bl,bli->bi", weights, history)


class DIN(nn.Module):
    def __init__(self, cfg: DINConfig, spec: FeatureSpec, items: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.features = FeatureEncoder(spec, cfg.embedding_dim, items)
        self.attention = ActivationUnit(self.features.item_dim, cfg.attention_units, cfg.attention_dropout)
        self.dnn = MLP(self.features.width, cfg.dnn_units, cfg.net_dropout, cfg.batch_norm)
        self.head = nn.Linear(self.dnn.out_dim, 1)
        init_weights(self)

    def forward(self, batch: Batch) -> Tensor:
        row, target, history, mask = self.features(batch)
        interest = self.attention(target, history, mask)  # (B, I)
        x = torch.cat([row, target, interest], dim=-1)  # (B, R + 2I)
        return self.head(self.dnn(x)).squeeze(-1)  # (B,) logits
