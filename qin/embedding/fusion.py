"""The `learned` item embedding: text and image features fused by what the training histories say.

Items that a user keeps together in a history are alike; a map from an item's features to `dim` numbers is
trained so that such pairs score higher than other items, starting from the PCA solution.

Shapes: N items (row i is item i + 1), D feature width (text + image, standardised), K = E = `dim`,
R history rows, L history length, B pairs per batch, H the residual block's hidden width.

Model: e = h + MLP(h), h = y @ V, on the item's PCA coordinates y = x @ start (N, K), computed once.
V (K, E) starts at the identity and the MLP's last layer at zero, so before the first step e = x @ start
exactly. The map is therefore W = start @ V, a linear map of the features restricted to the span of the
PCA directions: a step costs B * K * E, not B * D * E (D = 1792 on the real data), which is what makes
millions of pairs affordable on a CPU, and the discarded directions are the low-variance (noisiest) ones.
`hidden = 0` (the default) leaves the MLP out: on the synthetic data it is free to bend the sub-topics
that co-occurrence does not see and lowers their neighbour agreement (0.99 -> 0.98 at k = 10).

Loss: symmetric InfoNCE on (anchor, positive) pairs of items that co-occur within `window` positions
of one history: cosine similarity / temperature, the batch's other positives as negatives (an in-batch
item equal to the true positive is masked, not counted as a negative). Pairs are drawn afresh every
epoch with numpy (no table of all pairs is built): a fixed `pairs_per_epoch`, whatever R and L are.

Anchor: `anchor_weight` * ||V - I||^2 / ||I||^2 is added to the loss. Histories carry what users mix
(in the synthetic data: topics, sub-topics only through niches, and a third of the pairs cross topics);
left free, the map trades the PCA's finer structure (sub-topics) for it. The pull keeps what PCA found
and lets co-occurrence re-weight.

Propagation: after training, each item's embedding e_i becomes (1 - a) e_i + a * mean_j e_j over the
items j it co-occurs with (within `window`, weighted by the count of such pairs in the histories read),
a = `propagation`; an item in no pair keeps its own. The trained map can only re-weight what the features
say about an item; this step brings in what the behaviour says about it (in the synthetic data, which
niche sub-topic it belongs to, from users whose histories dwell on one), averaging away much of the
item's own feature noise where the histories have seen it.

Scale: the loss only sees directions (cosines); the returned embedding is rescaled as a whole so that
its root-mean-square entry equals that of `features @ start`, keeping the PCA scale. `epochs = 0` with
`propagation = 0` returns `features @ start` itself (up to float rounding). No label is read: the inputs
are features and histories only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from qin.data import schema
from qin.featurize import fixed_list
from qin.runs.io import read_batches
from qin.settings.sections import FusionConfig

EMBED_BLOCK = 16_384  # items embedded at once when writing the result
SAMPLE_BATCH_ROWS = 65_536  # training rows read at a time when sampling histories


class Fusion(nn.Module):
    """e(y) = h + MLP(h), h = y @ V: (B, K) item coordinates -> (B, E) embedding.

    y = x @ basis are the item's coordinates on a fixed (D, K) basis whose first E columns are `start`, so
    V (K, E) starts at the identity on those and zero elsewhere, and the MLP's last layer starts at zero:
    at initialisation e = x @ start exactly.
    """

    def __init__(self, k: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.eye(k, dim))  # (K, E)
        self.mlp: nn.Module | None = None
        if hidden:
            last = nn.Linear(hidden, dim)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), last)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = y @ self.proj  # (B, E)
        return h if self.mlp is None else h + self.mlp(h)


def sample_pairs(
    histories: np.ndarray, n: int, window: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """n (anchor, positive) item-id pairs, each (n,) int64: two distinct items of one history row, at most
    `window` positions apart (0: anywhere in the row). Padding (0) is never drawn. Fewer than n come back
    only when the histories hold fewer than n such pairs' worth of draws (e.g. all padding)."""
    rows, length = histories.shape
    anchors: list[np.ndarray] = []
    positives: list[np.ndarray] = []
    found, tries = 0, 0
    # Rejection sampling: draw (row, position, other position) uniformly, keep the draws that land on two
    # distinct real items; a few rounds of over-drawing reach n without building the table of all pairs.
    while found < n and tries < 20 and length > 1:
        m = max(2 * (n - found), 1024)
        r = rng.integers(0, rows, m)
        i = rng.integers(0, length, m)
        if window:
            off = rng.integers(1, min(window, length - 1) + 1, m) * rng.choice(np.array([-1, 1]), m)
            j = i + off
        else:
            j = (i + rng.integers(1, length, m)) % length
        inside = (j >= 0) & (j < length)
        r, i, j = r[inside], i[inside], j[inside]
        a, p = histories[r, i], histories[r, j]
        keep = (a != 0) & (p != 0) & (a != p)
        anchors.append(a[keep])
        positives.append(p[keep])
        found += int(keep.sum())
        tries += 1
    if not anchors:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (
        np.concatenate(anchors)[:n].astype(np.int64),
        np.concatenate(positives)[:n].astype(np.int64),
    )


def info_nce(
    anchor: torch.Tensor, positive: torch.Tensor, same: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric InfoNCE. anchor, positive: (B, E) unit rows; same: (B, B) bool, True where positive j is
    the same item as positive i (j != i), masked out of i's negatives. Returns a scalar."""
    logits = anchor @ positive.T / temperature  # (B, B)
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(len(anchor))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _anchor_penalty(model: Fusion) -> torch.Tensor:
    """||V - V0||^2 / ||V0||^2: keeps the map near PCA, whose directions carry what co-occurrence does not
    see (in the synthetic data, the sub-topics within a topic). Scalar."""
    start = torch.eye(*model.proj.shape)
    return (model.proj - start).pow(2).sum() / start.pow(2).sum()


def _embed(fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """fn applied to (N, ...) rows in blocks, without gradients: (N, ...) -> (N, E)."""
    with torch.no_grad():
        return torch.cat([fn(rows[s : s + EMBED_BLOCK]) for s in range(0, len(rows), EMBED_BLOCK)])


def _check(features: np.ndarray, start: np.ndarray, histories: np.ndarray, settings: FusionConfig) -> None:
    if features.ndim != 2 or start.ndim != 2 or start.shape != (features.shape[1], start.shape[1]):
        raise ValueError(
            f"learn_fusion: expected features (N, D) and start (D, {start.shape[1]}), "
            f"found {features.shape} and {start.shape}"
        )
    if histories.ndim != 2:
        raise ValueError(f"learn_fusion: expected histories (R, L), found {histories.shape}")
    if histories.size and (histories.min() < 0 or histories.max() > len(features)):
        raise ValueError(
            f"learn_fusion: expected history ids in 0..{len(features)} (0 = padding), "
            f"found {histories.min()}..{histories.max()}"
        )


def cooccurrence(histories: np.ndarray, n_items: int, window: int) -> sp.csr_matrix:
    """(N, N) float32 symmetric counts: entry (i, j) is how often items i + 1 and j + 1 (distinct, not
    padding) sit at most `window` positions apart in one history row (0: anywhere in the row)."""
    length = histories.shape[1]
    reach = min(window, length - 1) if window else length - 1
    counts = sp.csr_matrix((n_items, n_items), dtype=np.float32)
    for off in range(1, reach + 1):
        a, b = histories[:, :-off].ravel(), histories[:, off:].ravel()
        keep = (a != 0) & (b != 0) & (a != b)
        a, b = a[keep] - 1, b[keep] - 1
        once = sp.csr_matrix((np.ones(len(a), np.float32), (a, b)), shape=(n_items, n_items))
        counts = counts + once + once.T
    return counts


def propagate(emb: np.ndarray, counts: sp.csr_matrix, weight: float) -> np.ndarray:
    """(N, E) -> (N, E): (1 - weight) * own + weight * the count-weighted mean of the co-occurring items'
    rows; rows with no co-occurrence stay as they are."""
    degree = np.asarray(counts.sum(axis=1)).ravel()  # (N,)
    mean = np.asarray(counts @ emb) / np.maximum(degree, 1.0)[:, None]
    share = np.where(degree > 0, weight, 0.0)[:, None]
    return ((1.0 - share) * emb + share * mean).astype(np.float32)


def learn_fusion(
    features: np.ndarray, start: np.ndarray, histories: np.ndarray, settings: FusionConfig
) -> tuple[np.ndarray, dict]:
    """features: (N, D) float32, the standardised concatenated modalities of items 1..N (row i is item i+1);
    start: (D, dim) float32, the PCA projection the fusion starts from (features @ start: the pca embedding);
    histories: (R, L) int64 item ids of the training rows' histories (0 = padding, most recent last).
    Returns the (N, dim) float32 embeddings and a dict of figures (loss per epoch, pairs used, seconds)."""
    _check(features, start, histories, settings)
    began = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))  # (N, D)
    basis = torch.from_numpy(np.ascontiguousarray(start, dtype=np.float32))  # (D, K)
    y = _embed(lambda b: b @ basis, x)  # (N, K): computed once, so a step never touches D
    model = Fusion(basis.shape[1], start.shape[1], settings.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    losses: list[float] = []
    pairs = 0
    for _ in range(settings.epochs):
        a_ids, p_ids = sample_pairs(histories, settings.pairs_per_epoch, settings.window, rng)
        loss, used = _epoch(model, opt, y, a_ids, p_ids, settings)
        losses.append(loss)
        pairs += used
    emb, reached = _propagated(_embed(model, y), histories, len(features), settings)
    # One factor for the whole matrix: the PCA embedding's root-mean-square entry, so the stage sees
    # the same scale whatever the training and the propagation did to the norms.
    if settings.epochs or settings.propagation:
        ref = y.pow(2).mean().sqrt()
        emb = emb * (ref / emb.pow(2).mean().sqrt().clamp_min(1e-12))
    out = emb.numpy().astype(np.float32, copy=False)
    seconds = time.perf_counter() - began
    figures = {
        "loss": losses,
        "pairs": pairs,
        "seconds": seconds,
        "pairs_per_second": pairs / seconds if seconds else 0.0,
        "rows": int(histories.shape[0]),
        "propagated_items": reached,  # items in at least one co-occurring pair (0 without propagation)
    }
    return out, figures


def _epoch(
    model: Fusion,
    opt: torch.optim.Optimizer,
    y: torch.Tensor,
    a_ids: np.ndarray,
    p_ids: np.ndarray,
    settings: FusionConfig,
) -> tuple[float, int]:
    """One pass over the sampled (anchor, positive) pairs in batches; the mean loss and the pairs used."""
    total, batches, pairs = 0.0, 0, 0
    for s in range(0, len(a_ids) - 1, settings.batch_size):
        a = torch.from_numpy(a_ids[s : s + settings.batch_size] - 1)  # (B,) rows of features
        p = torch.from_numpy(p_ids[s : s + settings.batch_size] - 1)
        if len(a) < 2:
            break
        same = (p[:, None] == p[None, :]) & ~torch.eye(len(p), dtype=torch.bool)  # (B, B)
        za = F.normalize(model(y[a]), dim=1)  # (B, E)
        zp = F.normalize(model(y[p]), dim=1)
        loss = info_nce(za, zp, same, settings.temperature)
        if settings.anchor_weight:
            loss = loss + settings.anchor_weight * _anchor_penalty(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach())
        batches += 1
        pairs += len(a)
    return total / max(batches, 1), pairs


def _propagated(
    emb: torch.Tensor, histories: np.ndarray, n_items: int, settings: FusionConfig
) -> tuple[torch.Tensor, int]:
    """The embeddings mixed with their co-occurring items' (settings.propagation), and how many items had
    any; unchanged and 0 without propagation."""
    if not settings.propagation:
        return emb, 0
    counts = cooccurrence(histories, n_items, settings.window)
    reached = int((counts.getnnz(axis=1) > 0).sum())
    return torch.from_numpy(propagate(emb.numpy(), counts, settings.propagation)), reached


def read_histories(train_parquet: Path, max_rows: int | None = None, seed: int = 0) -> np.ndarray:
    """The `item_seq` column of a rows file, and nothing else (no label), as (R, L) int64; with `max_rows`
    below its row count, a fixed random subset of that many rows (by `seed`), in file order, read a batch
    at a time (the whole column is never in memory)."""
    path = Path(train_parquet)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: not found (expected the training rows, with column {schema.HISTORY})"
        )
    pf = pq.ParquetFile(path)
    n = pf.metadata.num_rows
    if max_rows is None or max_rows >= n:
        table = pq.read_table(path, columns=[schema.HISTORY])
        return np.asarray(fixed_list(table, schema.HISTORY), dtype=np.int64)
    keep = np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
    parts, start = [], 0
    for batch in read_batches(pf, SAMPLE_BATCH_ROWS, [schema.HISTORY]):
        lo, hi = np.searchsorted(keep, [start, start + batch.num_rows])
        if hi > lo:
            parts.append(
                np.asarray(fixed_list(batch.take(keep[lo:hi] - start), schema.HISTORY), dtype=np.int64)
            )
        start += batch.num_rows
    return np.concatenate(parts)
