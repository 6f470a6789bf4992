"""QIN: Quadratic Interest Network (Adaptive Sparse Target Attention + Quadratic Neural Network).

Shape legend:
    B  batch size
    L  history length (most recent last, 0 = padding)
    E  embedding_dim
    I  item vector width: the item features' vectors (qin/data/features.py); the default table's
       concat(item id emb, mean tag emb, projected item_emb_d128) = 3E
    R  the row features' vectors (the default table's likes and views embeddings: 2E)
    A  attention dim (the authors: 2I)
    D  QNN width = R + 2I: concat(row features, target item, attention output)
    M  num_row, the rows of each QNN layer

forward reads in four stages: encode features -> attend over the history -> quadratic layers -> logit.
The model returns logits; sigmoid and the loss live in the training and inference code. The paper's
ablations are switches in QINConfig (use_qnn, history_pooling, attention_activation, qnn_activation,
attention_dropout), each replacing the one module it names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from qin.data.features import FeatureSpec
from qin.models.blocks import MLP, Batch, FeatureEncoder, MeanPooling, init_weights
from qin.models.settings import QINConfig  # its settings (torch-free), also importable from here


class TargetAttention(nn.Module):
    """Adaptive Sparse Target Attention: ReLU(mask * QK^T / sqrt(A)) V, projected back, plus the target.

    order="fused" computes the same function in a cheaper order: q.k_s = (W_q t)^T W_k x_s
    = (W_k^T W_q t)^T x_s, so the query is mapped into item space once instead of projecting all L keys; and
    sum_s w_s W_v x_s = W_v (sum_s w_s x_s), so the history is pooled before the value projection.
    activation="softmax" and dropout > 0 are the paper's "ASTA w/ SoftMax" and "ASTA w/ Dropout".
    """

    def __init__(
        self,
        item_dim: int,
        attn_dim: int,
        order: str = "fused",
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.W_q = nn.Linear(item_dim, attn_dim, bias=False)
        self.W_k = nn.Linear(item_dim, attn_dim, bias=False)
        self.W_v = nn.Linear(item_dim, attn_dim, bias=False)
        self.W_o = nn.Linear(attn_dim, item_dim, bias=False)
        self.scale = 1.0 / math.sqrt(attn_dim)
        self.order = order
        self.activation = activation
        self.dropout = nn.Dropout(dropout)

    def weights(self, scores: Tensor, mask: Tensor) -> Tensor:
        if self.activation == "softmax":
            w = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            w = torch.nan_to_num(w, nan=0.0)  # an all-padding history attends to nothing
        else:
            w = torch.relu(scores * mask.to(scores.dtype))  # sparse and unnormalised
        return self.dropout(w)

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        # target (B, I), history (B, L, I), mask (B, L) bool: True where the history has an item
        q = self.W_q(target)  # (B, A)
        if self.order == "reference":
            scores = torch.einsum("bla,ba->bl", self.W_k(history), q) * self.scale
            pooled = torch.einsum("bl,bla->ba", self.weights(scores, mask), self.W_v(history))  # (B, A)
        else:
            q_items = q @ self.W_k.weight  # (B, I)
            scores = torch.einsum("bli,bi->bl", history, q_items) * self.scale
            pooled = self.W_v(torch.einsum("bl,bli->bi", self.weights(scores, mask), history))  # (B, A)
        return self.W_o(pooled) + target  # (B, I)


class QuadraticLayer(nn.Module):
    """x' = act(BN(x ⊙ Σ_rows Dropout(W x))) → Dropout, plus the residual x; W maps D -> M·D."""

    def __init__(
        self,
        dim: int,
        num_row: int,
        linear_dropout: float,
        net_dropout: float,
        batch_norm: bool,
        activation: str = "prelu",
    ) -> None:
        super().__init__()
        self.num_row = num_row
        self.linear = nn.Linear(dim, num_row * dim)
        self.linear_dropout = nn.Dropout(linear_dropout)
        self.norm = nn.BatchNorm1d(dim) if batch_norm else nn.Identity()
        self.act = nn.PReLU() if activation == "prelu" else nn.ReLU()
        self.dropout = nn.Dropout(net_dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear_dropout(self.linear(x)).view(x.shape[0], self.num_row, -1).sum(1)  # (B, D)
        return self.dropout(self.act(self.norm(x * h))) + x


class QIN(nn.Module):
    def __init__(self, cfg: QINConfig, spec: FeatureSpec, items: Mapping[str, Tensor]) -> None:
        super().__init__()
        e = cfg.embedding_dim
        self.features = FeatureEncoder(spec, e, items)
        item_dim, width = self.features.item_dim, self.features.width
        self.attention: nn.Module = (
            TargetAttention(
                item_dim,
                cfg.attention_dim or 2 * item_dim,
                cfg.attention_order,
                cfg.attention_activation,
                cfg.attention_dropout,
            )
            if cfg.history_pooling == "attention"
            else MeanPooling()
        )
        if cfg.use_qnn:
            self.interaction: nn.Module = nn.Sequential(
                *[
                    QuadraticLayer(
                        width,
                        cfg.num_row,
                        cfg.linear_dropout,
                        cfg.net_dropout,
                        cfg.batch_norm,
                        cfg.qnn_activation,
                    )
                    for _ in range(cfg.num_layers)
                ]
            )
            out_dim = width
        else:
            self.interaction = MLP(width, cfg.mlp_units, cfg.net_dropout, cfg.batch_norm)
            out_dim = self.interaction.out_dim
        self.head = nn.Linear(out_dim, 1)
        init_weights(self)

    def forward(self, batch: Batch) -> Tensor:
        row, target, history, mask = self.features(batch)
        interest = self.attention(target, history, mask)  # (B, I)
        x = torch.cat([row, target, interest], dim=-1)  # (B, D)
        return self.head(self.interaction(x)).squeeze(-1)  # (B,) logits
