"""The feature pipeline every model shares, and small blocks.

Shape legend: B batch, L history length, E embedding_dim, I item vector width (the item features' widths
summed: 3E for the default table's id, tags and item_emb_d128), R the row features' widths summed (2E for
the default table's two levels).

The inputs are those the feature table declares (qin/data/features.py): `FeatureEncoder` builds one
embedding (categorical, sequence) or linear projection (dense) per declared feature, in table order.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from qin.data.features import Feature, FeatureSpec


class Batch:
    """A batch of model inputs: one tensor per row column the feature table declares (`FeatureSpec`'s
    table: the row features, the target item (B,) and the history (B, L), 0 = padding, most recent last),
    and the label (B,) float when known. Columns are read as `batch[name]` (or `batch.name`)."""

    def __init__(self, label: Tensor | None = None, **columns: Tensor) -> None:
        self.columns = columns
        self.label = label

    def __getitem__(self, name: str) -> Tensor:
        return self.columns[name]

    def __getattr__(self, name: str) -> Tensor:
        columns = self.__dict__.get("columns", {})
        if name in columns:
            return columns[name]  # type: ignore[no-any-return]
        raise AttributeError(name)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        label = None if self.label is None else self.label.to(device, non_blocking=non_blocking)
        return Batch(label, **{k: v.to(device, non_blocking=non_blocking) for k, v in self.columns.items()})


def feature_layer(feature: Feature, spec: FeatureSpec, dim: int) -> nn.Module:
    """The layer that makes `feature`'s vector (width `feature.embedding` or `dim`): an embedding of its ids
    (id 0 held at 0 where it is padding), or a linear map of its dense vector."""
    width = feature.embedding or dim
    if feature.kind == "dense":
        return nn.Linear(spec.size(feature), width, bias=False)
    return nn.Embedding(spec.size(feature), width, padding_idx=0 if feature.padding else None)


def _width(layer: nn.Module) -> int:
    if isinstance(layer, nn.Embedding):
        return layer.embedding_dim
    assert isinstance(layer, nn.Linear), layer
    return layer.out_features


class ItemEncoder(nn.Module):
    """Item id -> (…, I): the item features' vectors concatenated in table order (the default table: the
    id's embedding, the mean of the non-padding tag embeddings, the projected item_emb_d128).

    The item table (each item feature's values per item id) is a frozen input, held as non-persistent
    buffers. Each distinct id of a call is encoded once (a batch's histories repeat items: the paper
    configuration's 8192 x 65 ids hold at most 91,718 distinct ones), then one `index_select` gathers the
    vectors of every position; the result is the same function as encoding every position, in fewer
    operations. On the CPU the distinct ids are exactly those of the call; on a GPU they fill a table of
    min(positions, items) slots, a size that the shapes alone decide, so that no step waits for the GPU
    (tests/models/test_host_sync.py).
    """

    # False: encode every position (the textbook order), for comparisons; set on the class or an instance.
    distinct: bool = True
    # The whole item table encoded once, for scoring with fixed weights (`freeze`); None while training.
    frozen: Tensor | None = None

    def __init__(self, spec: FeatureSpec, dim: int, items: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.features = tuple(spec.table.item)
        self.n_items = spec.n_items
        self.embed = nn.ModuleDict({f.name: feature_layer(f, spec, dim) for f in self.features})
        self.width = sum(_width(layer) for layer in self.embed.values())
        for f in self.features:
            if f.is_key:
                continue
            values = items[f.name]
            if len(values) != spec.n_items:
                raise ValueError(
                    f"item feature '{f.name}': {len(values)} rows, expected {spec.n_items} items"
                )
            values = values.float() if f.kind == "dense" else map_ids(f, values, spec.size(f))
            self.register_buffer(f"values_{f.name}", values, persistent=False)

    def values(self, feature: Feature) -> Tensor:
        """The item table's column of `feature` (n_items, …)."""
        return getattr(self, f"values_{feature.name}")  # type: ignore[no-any-return]

    def encode(self, ids: Tensor) -> Tensor:
        """(…) int64 -> (…, I), position by position."""
        parts = []
        for f in self.features:
            layer = self.embed[f.name]
            if f.is_key:
                parts.append(layer(ids))
            elif f.kind == "sequence":
                seq = self.values(f)[ids]  # (…, length)
                assert isinstance(layer, nn.Embedding)
                mask = (seq != 0).unsqueeze(-1).to(layer.weight.dtype)
                parts.append((layer(seq) * mask).sum(-2) / mask.sum(-2).clamp(min=1.0))  # (…, width)
            else:
                parts.append(layer(self.values(f)[ids]))
        return torch.cat(parts, dim=-1)

    def freeze(self) -> None:
        """Scoring with fixed weights: encode every item once, so that a call only gathers rows of the
        result (at 64 rows a request, 2.4x faster on 2 CPU cores: encoding a request's items costs more than
        the rest of the model). The same vectors as encoding the call's items (tests/models/test_models.py
        checks the scores to the bit on CPU); the weights must not change afterwards (the trainer never
        freezes). Used outside autocast and autograd only."""
        device = next(self.parameters()).device
        with torch.inference_mode():
            self.frozen = self.encode(torch.arange(self.n_items, device=device))

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
        n = self.n_items
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
    """Batch -> (row (B, R), target (B, I), history (B, L, I), mask (B, L)).

    `row` is the row features' vectors concatenated in table order. The target and history ids share one
    item table (each distinct item encoded once), gathered with `index_select`. Under autocast the history
    is made once in the autocast dtype (every matmul that reads it would cast it), with the gradients of
    repeated items still summed in float32.
    """

    def __init__(self, spec: FeatureSpec, dim: int, items: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.spec = spec
        # Read at every call: plain attributes (the spec's views, looked up once).
        self.row_features = spec.table.row
        self.target, self.history = spec.target, spec.history
        self.items = ItemEncoder(spec, dim, items)
        self.rows = nn.ModuleDict({f.name: feature_layer(f, spec, dim) for f in spec.table.row})
        self.item_dim = self.items.width
        self.row_dim = sum(_width(layer) for layer in self.rows.values())
        # The width of concat(row, target, pooled history): what a model's interaction part reads.
        self.width = self.row_dim + 2 * self.item_dim

    def row(self, batch: Batch) -> Tensor:
        """(B, R): the row features' vectors in table order."""
        parts = []
        for f in self.row_features:
            values = batch[f.col]
            ids = values.float() if f.kind == "dense" else map_ids(f, values, self.spec.size(f))
            parts.append(self.rows[f.name](ids))
        if not parts:
            target = batch[self.target]
            return target.new_zeros((target.shape[0], 0), dtype=torch.float32)
        return torch.cat(parts, dim=-1)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        seq = batch[self.history]
        ids = torch.cat([batch[self.target].reshape(-1, 1).to(seq.dtype), seq], dim=1)  # (B, 1 + L)
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
        return self.row(batch), target, history, seq != 0


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


def map_ids(feature: Feature, values: Tensor, size: int) -> Tensor:
    """The embedding ids (int64) of a categorical or sequence feature's raw values: hashed (value mod N),
    or as they are with a value outside 0..size-1 taking the feature's oov id (qin/data/features.py)."""
    values = values.long()
    if feature.hash is not None:
        return torch.remainder(values, feature.hash)
    if feature.oov is not None:
        return torch.where((values < 0) | (values >= size), feature.oov, values)
    return values
