"""QIN: Quadratic Interest Network (Adaptive Sparse Target Attention + Quadratic Neural Network).

Shape legend:
    B  batch size
    L  history length (most recent last, 0 = padding)
    E  embedding_dim
    I  item vector width = 3E: concat(item id emb, mean tag emb, projected item_emb_d128)
    A  attention dim (the authors: 2I)
    D  QNN width = 2E + 2I: concat(likes emb, views emb, target item, attention output)
    M  num_row, the rows of each QNN layer

forward reads in four stages: encode items -> attend over the history -> quadratic layers -> logit.
The model returns logits; sigmoid and the loss live in the training and inference code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qin.config import ModelConfig
from qin.data.schema import NUM_LEVELS


@dataclass(frozen=True)
class FeatureSpec:
    """Vocabularies of the featurized data (from the featurize manifest)."""

    n_items: int  # item id vocabulary, including 0 = padding
    n_tags: int  # tag vocabulary, including 0 = padding
    tags_per_item: int = 5
    item_emb_dim: int = 128
    num_levels: int = NUM_LEVELS


@dataclass
class Batch:
    item_seq: Tensor  # (B, L) int
    likes_level: Tensor  # (B,) int
    views_level: Tensor  # (B,) int
    item_id: Tensor  # (B,) int
    label: Tensor | None = None  # (B,) float

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        label = None if self.label is None else self.label.to(device, non_blocking=non_blocking)
        return Batch(
            item_seq=self.item_seq.to(device, non_blocking=non_blocking),
            likes_level=self.likes_level.to(device, non_blocking=non_blocking),
            views_level=self.views_level.to(device, non_blocking=non_blocking),
            item_id=self.item_id.to(device, non_blocking=non_blocking),
            label=label,
        )


class ItemEncoder(nn.Module):
    """Item id -> (…, I): id embedding, mean of the non-padding tag embeddings, projected multimodal vector.

    The item table (tags, item_emb_d128) is a frozen input, held as non-persistent buffers so that one
    indexing operation gathers the features of the target and of the whole history.
    """

    item_tags: Tensor
    item_emb: Tensor

    def __init__(self, spec: FeatureSpec, dim: int, item_tags: Tensor, item_emb: Tensor) -> None:
        super().__init__()
        self.id_emb = nn.Embedding(spec.n_items, dim, padding_idx=0)
        self.tag_emb = nn.Embedding(spec.n_tags, dim, padding_idx=0)
        self.mm_proj = nn.Linear(spec.item_emb_dim, dim, bias=False)
        self.register_buffer("item_tags", item_tags.long(), persistent=False)  # (n_items, 5)
        self.register_buffer("item_emb", item_emb.float(), persistent=False)  # (n_items, 128)

    def forward(self, ids: Tensor) -> Tensor:
        ids = ids.long()
        tags = self.item_tags[ids]  # (…, 5)
        tag_mask = (tags != 0).unsqueeze(-1).to(self.tag_emb.weight.dtype)
        tag_vec = (self.tag_emb(tags) * tag_mask).sum(-2) / tag_mask.sum(-2).clamp(min=1.0)  # (…, E)
        return torch.cat([self.id_emb(ids), tag_vec, self.mm_proj(self.item_emb[ids])], dim=-1)


class TargetAttention(nn.Module):
    """Adaptive Sparse Target Attention: ReLU(mask * QK^T / sqrt(A)) V, projected back, plus the target.

    order="fused" computes the same function in a cheaper order: q.k_s = (W_q t)^T W_k x_s
    = (W_k^T W_q t)^T x_s, so the query is mapped into item space once instead of projecting all L keys; and
    sum_s w_s W_v x_s = W_v (sum_s w_s x_s), so the history is pooled before the value projection.
    """

    def __init__(self, item_dim: int, attn_dim: int, order: str = "fused") -> None:
        super().__init__()
        self.W_q = nn.Linear(item_dim, attn_dim, bias=False)
        self.W_k = nn.Linear(item_dim, attn_dim, bias=False)
        self.W_v = nn.Linear(item_dim, attn_dim, bias=False)
        self.W_o = nn.Linear(attn_dim, item_dim, bias=False)
        self.scale = 1.0 / math.sqrt(attn_dim)
        self.order = order

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        # target (B, I), history (B, L, I), mask (B, L) bool: True where the history has an item
        q = self.W_q(target)  # (B, A)
        if self.order == "reference":
            keys = self.W_k(history)  # (B, L, A)
            scores = torch.einsum("bla,ba->bl", keys, q)
        else:
            q_items = q @ self.W_k.weight  # (B, I)
            scores = torch.einsum("bli,bi->bl", history, q_items)
        weights = torch.relu(scores * self.scale * mask.to(scores.dtype))  # (B, L), sparse, unnormalised
        if self.order == "reference":
            pooled = torch.einsum("bl,bla->ba", weights, self.W_v(history))  # (B, A)
        else:
            pooled = self.W_v(torch.einsum("bl,bli->bi", weights, history))  # (B, A)
        return self.W_o(pooled) + target  # (B, I)


class QuadraticLayer(nn.Module):
    """x' = PReLU(BN(x ⊙ Σ_rows Dropout(W x))) → Dropout, plus the residual x; W maps D -> M·D."""

    def __init__(self, dim: int, num_row: int, linear_dropout: float, net_dropout: float, batch_norm: bool):
        super().__init__()
        self.num_row = num_row
        self.linear = nn.Linear(dim, num_row * dim)
        self.linear_dropout = nn.Dropout(linear_dropout)
        self.norm = nn.BatchNorm1d(dim) if batch_norm else nn.Identity()
        self.act = nn.PReLU()
        self.dropout = nn.Dropout(net_dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear_dropout(self.linear(x)).view(x.shape[0], self.num_row, -1).sum(1)  # (B, D)
        return self.dropout(self.act(self.norm(x * h))) + x


class QIN(nn.Module):
    def __init__(self, cfg: ModelConfig, spec: FeatureSpec, item_tags: Tensor, item_emb: Tensor) -> None:
        super().__init__()
        e = cfg.embedding_dim
        item_dim = 3 * e
        attn_dim = cfg.attention_dim or 2 * item_dim
        width = 2 * e + 2 * item_dim
        self.items = ItemEncoder(spec, e, item_tags, item_emb)
        self.likes = nn.Embedding(spec.num_levels, e)
        self.views = nn.Embedding(spec.num_levels, e)
        self.attention = TargetAttention(item_dim, attn_dim, cfg.attention_order)
        self.qnn = nn.Sequential(
            *[
                QuadraticLayer(width, cfg.num_row, cfg.linear_dropout, cfg.net_dropout, cfg.batch_norm)
                for _ in range(cfg.num_layers)
            ]
        )
        self.head = nn.Linear(width, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As the authors' framework: embeddings N(0, 1e-4), linear weights Xavier-normal, biases 0.
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=1e-4)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def embedding_tables(self) -> list[Tensor]:
        """The parameters that the embedding L2 penalty applies to."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]

    def forward(self, batch: Batch) -> Tensor:
        target = self.items(batch.item_id)  # (B, I)
        history = self.items(batch.item_seq)  # (B, L, I)
        interest = self.attention(target, history, batch.item_seq != 0)  # (B, I)
        x = torch.cat(
            [self.likes(batch.likes_level.long()), self.views(batch.views_level.long()), target, interest],
            dim=-1,
        )  # (B, D)
        return self.head(self.qnn(x)).squeeze(-1)  # (B,) logits
