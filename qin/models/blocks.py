"""The feature pipeline every model shares, and small blocks.

Shape legend: B batch, L history length, E embedding_dim, I = 3E item vector width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
    item_seq: Tensor  # (B, L) int, 0 = padding, most recent last
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

    The item table (tags, item_emb_d128) is a frozen input, held as non-persistent buffers. Each distinct id
    of a call is encoded once (a batch's histories repeat items: the paper configuration's 8192 x 65 ids hold
    at most 91,718 distinct ones), then one `index_select` gathers the vectors of every position; the result
    is the same function as encoding every position, in fewer operations. On the CPU the distinct ids are
    exactly those of the call; on a GPU they fill a table of min(positions, items) slots, a size that the
    shapes alone decide, so that no step waits for the GPU (tests/models/test_host_sync.py).
    """

    item_tags: Tensor
    item_emb: Tensor
    # False: encode every position (the textbook order), for comparisons; set on the class or an instance.
    distinct: bool = True
    # The whole item table encoded once, for scoring with fixed weights (`freeze`); None while training.
    frozen: Tensor | None = None

    def __init__(self, spec: FeatureSpec, dim: int, item_tags: Tensor, item_emb: Tensor) -> None:
        super().__init__()
        self.id_emb = nn.Embedding(spec.n_items, dim, padding_idx=0)
        self.tag_emb = nn.Embedding(spec.n_tags, dim, padding_idx=0)
        self.mm_proj = nn.Linear(spec.item_emb_dim, dim, bias=False)
        self.register_buffer("item_tags", item_tags.long(), persistent=False)  # (n_items, 5)
        self.register_buffer("item_emb", item_emb.float(), persistent=False)  # (n_items, 128)

    def encode(self, ids: Tensor) -> Tensor:
        """(…) int64 -> (…, I), position by position."""
        tags = self.item_tags[ids]  # (…, 5)
        tag_mask = (tags != 0).unsqueeze(-1).to(self.tag_emb.weight.dtype)
        tag_vec = (self.tag_emb(tags) * tag_mask).sum(-2) / tag_mask.sum(-2).clamp(min=1.0)  # (…, E)
        return torch.cat([self.id_emb(ids), tag_vec, self.mm_proj(self.item_emb[ids])], dim=-1)

    def freeze(self) -> None:
        """Scoring with fixed weights: encode every item once, so that a call only gathers rows of the
        result (at 64 rows a request, 2.4x faster on 2 CPU cores: encoding a request's items costs more than
        the rest of the model). The same vectors as encoding the call's items (tests/models/test_models.py
        checks the scores to the bit on CPU); the weights must not change afterwards (the trainer never
        freezes). Used outside autocast and autograd only."""
        with torch.inference_mode():
            self.frozen = self.encode(torch.arange(self.item_tags.shape[0], device=self.item_tags.device))

    def table(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """The vectors of the distinct ids in `ids`, (U, I), and the row of each position in them (frozen:
        the whole encoded table, and the ids themselves)."""
        if self.frozen is not None and not torch.is_grad_enabled() and _autocast_dtype(ids.device) is None:
            if ids.numel() and int(ids.max()) >= self.frozen.shape[0]:
                raise IndexError(f"item id {int(ids.max())} is out of range for {self.frozen.shape[0]} items")
            return self.frozen, ids.long()
        flat = ids.reshape(-1).long()
        if not self.distinct:
            return self.encode(flat), torch.arange(flat.numel(), device=ids.device).view(ids.shape)
        n = self.item_tags.shape[0]
        seen = torch.zeros(n, dtype=torch.bool, device=ids.device)
        seen.index_fill_(0, flat, True)  # an id outside the vocabulary raises here, as a lookup would
        row = seen.cumsum(0) - 1  # (n,) the row of each seen id among the distinct ones, in increasing order
        if ids.device.type == "cpu":  # the distinct ids, exactly: a size the values decide costs nothing here
            return self.encode(seen.nonzero().squeeze(1)), row[flat].view(ids.shape)
        # On an accelerator every shape follows from the shapes of `ids` and of the item table, never from
        # their values, so the step needs no host sync (a data-dependent size, as `nonzero` or `unique` give,
        # makes the host wait for the device): the distinct ids fill the first of `capacity` slots, the rest
        # hold the padding item 0, encoded and never read.
        capacity = min(flat.numel(), n)
        slot = torch.where(seen, row, capacity)  # unseen ids all go to one spare slot, dropped below
        distinct = torch.zeros(capacity + 1, dtype=torch.long, device=ids.device)
        distinct.scatter_(0, slot, torch.arange(n, device=ids.device))
        return self.encode(distinct[:capacity]), row[flat].view(ids.shape)

    def forward(self, ids: Tensor) -> Tensor:
        vectors, rows = self.table(ids)
        return vectors.index_select(0, rows.reshape(-1)).view(*ids.shape, -1)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs `device`'s matmuls in, or None: autocast off, or a device without autocast
    ("meta": what tests/models/test_host_sync.py traces a GPU's step on)."""
    if device.type == "meta" or not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


class FeatureEncoder(nn.Module):
    """Batch -> (likes (B, E), views (B, E), target (B, I), history (B, L, I), mask (B, L)).

    The target and history ids share one item table (each distinct item encoded once), gathered with
    `index_select`. Under autocast the history is made once in the autocast dtype (every matmul that reads
    it would cast it), with the gradients of repeated items still summed in float32.
    """

    def __init__(self, spec: FeatureSpec, dim: int, item_tags: Tensor, item_emb: Tensor) -> None:
        super().__init__()
        self.items = ItemEncoder(spec, dim, item_tags, item_emb)
        self.likes = nn.Embedding(spec.num_levels, dim)
        self.views = nn.Embedding(spec.num_levels, dim)
        self.item_dim = 3 * dim
        # The width of concat(likes, views, target, pooled history): what a model's interaction part reads.
        self.width = 2 * dim + 2 * self.item_dim

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        seq = batch.item_seq
        ids = torch.cat([batch.item_id.reshape(-1, 1).to(seq.dtype), seq], dim=1)  # (B, 1 + L)
        vectors, rows = self.items.table(ids)
        target = vectors.index_select(0, rows[:, 0])
        history_rows = rows[:, 1:].reshape(-1)
        dtype = _autocast_dtype(vectors.device)
        if dtype is None:
            history = vectors.index_select(0, history_rows)
        elif vectors.device.type == "cpu":
            # gather in the autocast dtype: CPU's index_select backward sums in float32
            history = vectors.to(dtype).index_select(0, history_rows)
        else:  # gather in float32 (CUDA would sum bf16 gradients in bf16), then cast once for the matmuls
            history = vectors.index_select(0, history_rows).to(dtype)
        history = history.view(*seq.shape, -1)
        return (
            self.likes(batch.likes_level.long()),
            self.views(batch.views_level.long()),
            target,
            history,
            seq != 0,
        )


def masked_mean(history: Tensor, mask: Tensor) -> Tensor:
    """Mean of the non-padding history items: (B, L, I), (B, L) -> (B, I); 0 for an empty history."""
    m = mask.unsqueeze(-1).to(history.dtype)
    return (history * m).sum(1) / m.sum(1).clamp(min=1.0)


class MeanPooling(nn.Module):
    """The history as the plain mean of its items (the paper's "w/o ASTA" ablation)."""

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        return masked_mean(history, mask)


class MLP(nn.Sequential):
    """Linear -> [BatchNorm] -> activation -> Dropout, per hidden layer."""

    def __init__(
        self,
        in_dim: int,
        units: tuple[int, ...],
        dropout: float,
        batch_norm: bool,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = []
        for width in units:
            layers += [nn.Linear(in_dim, width)]
            layers += [nn.BatchNorm1d(width)] if batch_norm else []
            layers += [activation(), nn.Dropout(dropout)]
            in_dim = width
        super().__init__(*layers)
        self.out_dim = in_dim


def init_weights(model: nn.Module) -> None:
    """As the authors' framework: embeddings N(0, 1e-4), linear weights Xavier-normal, biases 0."""
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=1e-4)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def embedding_tables(model: nn.Module) -> list[Tensor]:
    """The parameters the embedding L2 penalty applies to."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]


def network_weights(model: nn.Module) -> list[Tensor]:
    """The network's weight matrices (linear layers, not biases or norms): the net L2 penalty's."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
