"""How well an item embedding recovers the planted item similarity (synthetic data: item_truth.parquet).

`neighbour_agreement(emb, groups)`: the share of each item's k nearest neighbours (cosine) that share
its group (its sub-topic, say), averaged over items; `neighbour_agreements` scores several groupings from
one neighbour search. Chance is about the share of items in one's own group; an embedding that puts every
item amid its own group scores 1. Fuse modalities with `concat_unit` (each one scaled to unit length
first, so that neither dominates by its norm).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from qin.data import schema

QUERY_BLOCK = 256  # query items scored at once: a (256, N) block of cosines


def read_item_truth(data_dir: str | Path) -> dict[str, np.ndarray]:
    """item_truth.parquet as arrays over items 1..N: item_id, topic, subtopic (global ids), latent (N, K)."""
    path = Path(data_dir) / schema.ITEM_TRUTH_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: not found (the planted item structure exists for synthetic data only)"
        )
    table = pq.read_table(path)
    out = {c: table[c].to_numpy() for c in (schema.TARGET, "topic", "subtopic")}
    out["latent"] = np.stack(table["latent"].to_numpy(zero_copy_only=False))
    return out


def _unit(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.maximum(norm, 1e-12)


def concat_unit(*embs: np.ndarray) -> np.ndarray:
    """The fusion of several (N, D_i) embeddings of the same items: each row-normalised, then concatenated."""
    return np.concatenate([_unit(e) for e in embs], axis=1)


def neighbour_agreement(
    emb: np.ndarray, groups: np.ndarray, k: int = 10, max_queries: int | None = 2_000, seed: int = 0
) -> float:
    """Mean share of an item's k nearest neighbours (cosine, itself excluded) that share its group.

    emb: (N, D), one row per item, aligned with groups: (N,) group ids (e.g. item_truth's `subtopic`;
    slice item_info's embedding [1:] to drop its padding row). With more than `max_queries` items, a fixed
    random sample of that many (by `seed`) is scored, against all N items.
    """
    return neighbour_agreements(emb, {"groups": groups}, k, max_queries, seed)["groups"]


def neighbour_agreements(
    emb: np.ndarray,
    levels: dict[str, np.ndarray],
    k: int = 10,
    max_queries: int | None = 2_000,
    seed: int = 0,
) -> dict[str, float]:
    """`neighbour_agreement` for several groupings of the same items at once (e.g. sub-topic and topic),
    from one search for the nearest neighbours: {level: agreement}."""
    emb = np.asarray(emb)
    n = len(emb)
    for level, groups in levels.items():
        if emb.ndim != 2 or np.shape(groups) != (n,):
            raise ValueError(
                f"neighbour_agreement: expected emb (N, D) and {level} (N,), found {emb.shape} and "
                f"{np.shape(groups)}"
            )
    if not 1 <= k < n:
        raise ValueError(f"neighbour_agreement: expected 1 <= k < N = {n}, found k = {k}")
    unit = _unit(emb)
    queries = np.arange(n)
    if max_queries is not None and n > max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(n, max_queries, replace=False))
    hits = dict.fromkeys(levels, 0)
    for start in range(0, len(queries), QUERY_BLOCK):
        q = queries[start : start + QUERY_BLOCK]
        cos = unit[q] @ unit.T  # (B, N)
        cos[np.arange(len(q)), q] = -np.inf
        nearest = np.argpartition(-cos, k - 1, axis=1)[:, :k]  # (B, k)
        for level, groups in levels.items():
            groups = np.asarray(groups)
            hits[level] += int((groups[nearest] == groups[q][:, None]).sum())
    return {level: count / (len(queries) * k) for level, count in hits.items()}
