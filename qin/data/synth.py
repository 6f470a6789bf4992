"""Synthetic MicroLens_1M_x1: the real schema, planted structure, and the true click probability.

The data model:
- Items live in a latent space: topics, each split into sub-topics; an item's latent vector is its
  topic centre + sub-topic offset + noise. `item_emb_d128` is a noisy random projection of it, so the
  multimodal embedding carries the similarity that a rarely seen item id cannot learn. Tags come from the
  item's topic pool. Popularity is heavy-tailed; likes/views levels follow popularity (and quality).
- Users have 1-3 interest topics; a history is drawn from them (plus noise), with a true length that
  varies, left-padded with 0 to the file's fixed length.
- The click logit combines (a) the sparse relevance of the target to individual history items,
  sum_s relu(cos(target, item_s) - tau): only near-duplicates (same sub-topic) count, which attention can
  find and mean pooling blurs; (b) pairwise (quadratic) interactions between likes, views and the target's
  latent factors; (c) popularity. The intercept is set so that about 25% of rows are positive.

Everything is drawn from numpy Generators seeded from (seed, purpose, chunk), so a seed gives the same
bytes on every run, and rows are generated in chunks to bound memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qin.data import schema
from qin.io import atomic_dir, write_json
from qin.metrics import roc_auc


@dataclass(frozen=True)
class Preset:
    n_train: int
    n_valid: int
    n_test: int
    n_items: int
    tag_vocab: int  # including 0 = padding
    seq_len: int
    n_users: int
    n_topics: int
    chunk_rows: int = 250_000


PRESETS: dict[str, Preset] = {
    "tiny": Preset(3_000, 600, 600, n_items=400, tag_vocab=150, seq_len=20, n_users=300, n_topics=8),
    "small": Preset(
        200_000, 10_000, 20_000, n_items=20_000, tag_vocab=2_000, seq_len=50, n_users=40_000, n_topics=40
    ),
    "full": Preset(
        3_600_000,
        10_000,
        379_142,
        n_items=91_717,
        tag_vocab=11_740,
        seq_len=100,
        n_users=900_000,
        n_topics=200,
    ),
}

LATENT_DIM = 16
SUBTOPICS = 4
TARGET_POSITIVE_RATE = 0.25
RELEVANCE_TAU = 0.85  # cosine above which a history item counts as a near-duplicate of the target
# Weights of the logit's parts; see module docstring.
W_RELEVANCE = 3.0
W_QUADRATIC = 0.8
W_POPULARITY = 0.4


@dataclass(frozen=True)
class World:
    """Everything shared by all rows: items and users."""

    unit: np.ndarray  # (N+1, K) unit latent vectors, row 0 unused
    pop_z: np.ndarray  # (N+1,) standardised log popularity
    likes: np.ndarray  # (N+1,) int likes level per item
    views: np.ndarray  # (N+1,) int views level per item
    topic_of: np.ndarray  # (N+1,) topic of each item
    topic_cdf: np.ndarray  # concatenated per-topic popularity CDFs, topic c spans (c, c+1]
    topic_items: np.ndarray  # item ids sorted by topic, aligned with topic_cdf
    global_cdf: np.ndarray  # popularity CDF over items 1..N
    interests: np.ndarray  # (U, 3) interest topics per user
    tags: np.ndarray  # (N+1, 5)
    emb: np.ndarray  # (N+1, 128) float32
    intercept: float


def _rng(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *purpose]))


def _build_world(p: Preset, seed: int) -> World:
    rng = _rng(seed, 0)
    n, k, c = p.n_items, LATENT_DIM, p.n_topics
    centres = rng.standard_normal((c, k))
    sub = rng.standard_normal((c, SUBTOPICS, k)) * 0.6
    topic_of = np.zeros(n + 1, dtype=np.int64)
    topic_of[1:] = rng.integers(0, c, n)
    sub_of = rng.integers(0, SUBTOPICS, n + 1)
    latent = centres[topic_of] + sub[topic_of, sub_of] + 0.25 * rng.standard_normal((n + 1, k))
    unit = latent / np.linalg.norm(latent, axis=1, keepdims=True)

    log_pop = rng.standard_normal(n + 1) * 1.2
    pop = np.exp(log_pop)
    pop[0] = 0.0
    pop_z = (log_pop - log_pop[1:].mean()) / log_pop[1:].std()
    quality = rng.standard_normal(n + 1)
    views = np.clip(np.rint(5 + 2.0 * pop_z + 0.7 * rng.standard_normal(n + 1)), 0, 10).astype(np.int64)
    likes = np.clip(np.rint(5 + 1.2 * pop_z + 1.2 * quality), 0, 10).astype(np.int64)

    order = np.argsort(topic_of[1:], kind="stable") + 1
    topic_sorted = topic_of[order]
    w = pop[order]
    cdf = np.empty(n)
    for t in range(c):
        sl = topic_sorted == t
        cs = np.cumsum(w[sl])
        cdf[sl] = t + cs / cs[-1]
    gcdf = np.cumsum(pop[1:])
    gcdf /= gcdf[-1]

    # Tags: each topic owns a block of the vocabulary; 2..5 tags per item, 15% drawn from anywhere.
    vocab = np.arange(1, p.tag_vocab)
    rng.shuffle(vocab)
    blocks = np.array_split(vocab, c)
    n_tags = rng.integers(2, schema.TAGS_PER_ITEM + 1, n + 1)
    tags = np.zeros((n + 1, schema.TAGS_PER_ITEM), dtype=np.int64)
    pick = rng.random((n + 1, schema.TAGS_PER_ITEM))
    for t in range(c):
        rows = np.flatnonzero(topic_of == t)
        block = blocks[t]
        tags[rows] = block[(pick[rows] * len(block)).astype(np.int64)]
    noisy = rng.random((n + 1, schema.TAGS_PER_ITEM)) < 0.15
    tags[noisy] = rng.integers(1, p.tag_vocab, int(noisy.sum()))
    tags[np.arange(schema.TAGS_PER_ITEM)[None, :] >= n_tags[:, None]] = 0
    tags[0] = 0

    proj = rng.standard_normal((k, schema.ITEM_EMB_DIM)) / np.sqrt(k)
    emb = (latent @ proj + 0.35 * rng.standard_normal((n + 1, schema.ITEM_EMB_DIM))).astype(np.float32)
    emb[0] = 0.0

    urng = _rng(seed, 1)
    n_int = urng.integers(1, 4, p.n_users)
    topics = urng.integers(0, c, (p.n_users, 3))
    interests = np.where(np.arange(3)[None, :] < n_int[:, None], topics, topics[:, :1])

    world = World(
        unit=unit,
        pop_z=pop_z,
        likes=likes,
        views=views,
        topic_of=topic_of,
        topic_cdf=cdf,
        topic_items=order,
        global_cdf=gcdf,
        interests=interests,
        tags=tags,
        emb=emb,
        intercept=0.0,
    )
    # Calibrate the intercept on a probe sample so that about 25% of rows are positive.
    logit = _rows(world, p, _rng(seed, 2), 20_000)["logit"]
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(logit + mid)))) > TARGET_POSITIVE_RATE:
            hi = mid
        else:
            lo = mid
    return World(**{**world.__dict__, "intercept": (lo + hi) / 2})


def _sample_from_topics(world: World, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of `topics`, by popularity within the topic."""
    pos = np.searchsorted(world.topic_cdf, topics + rng.random(topics.shape))
    return world.topic_items[np.minimum(pos, len(world.topic_items) - 1)]


def _sample_popular(world: World, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    pos = np.searchsorted(world.global_cdf, rng.random(shape))
    return np.minimum(pos, len(world.global_cdf) - 1) + 1


def _rows(world: World, p: Preset, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    L = p.seq_len
    user = rng.integers(0, p.n_users, n)
    interests = world.interests[user]  # (n, 3)
    slot = rng.integers(0, 3, (n, L))
    hist = _sample_from_topics(world, np.take_along_axis(interests, slot, axis=1), rng)
    noise = rng.random((n, L)) < 0.15
    hist[noise] = _sample_popular(world, (int(noise.sum()),), rng)
    true_len = rng.integers(max(1, L // 10), L + 1, n)
    hist[np.arange(L)[None, :] < (L - true_len)[:, None]] = 0  # left padding

    from_interest = rng.random(n) < 0.5
    target = _sample_popular(world, (n,), rng)
    t_topic = interests[np.arange(n), rng.integers(0, 3, n)]
    target[from_interest] = _sample_from_topics(world, t_topic[from_interest], rng)

    jitter = rng.random((n, 2)) < 0.1
    step = rng.choice(np.array([-1, 1]), (n, 2))
    likes = np.clip(world.likes[target] + jitter[:, 0] * step[:, 0], 0, 10)
    views = np.clip(world.views[target] + jitter[:, 1] * step[:, 1], 0, 10)

    u_t = world.unit[target]  # (n, K)
    cos = np.einsum("nk,nlk->nl", u_t, world.unit[hist])  # (n, L)
    relevance = np.where(hist > 0, np.maximum(cos - RELEVANCE_TAU, 0.0), 0.0).sum(axis=1)
    lz, vz = (likes - 5) / 2.5, (views - 5) / 2.5
    quad = lz * vz + 2.0 * lz * u_t[:, 0] + 4.0 * u_t[:, 1] * u_t[:, 2]
    logit = (
        W_RELEVANCE * np.tanh(relevance / 0.3)
        + W_QUADRATIC * quad
        + W_POPULARITY * world.pop_z[target]
        + world.intercept
    )
    return {
        "user_id": user.astype(np.int64) + 1,
        "item_seq": hist.astype(np.int64),
        "likes_level": likes.astype(np.int64),
        "views_level": views.astype(np.int64),
        "item_id": target.astype(np.int64),
        "logit": logit,
    }


def _list_array(matrix: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    n, width = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.ravel(), type=value_type))


def _write_split(world: World, p: Preset, seed: int, split_no: int, n_rows: int, path: Path,
                 labelled: bool) -> np.ndarray:
    """Write one split chunk by chunk; return the true click probability of every row."""
    sch = schema.ROW_SCHEMA if labelled else schema.TEST_SCHEMA
    truth = []
    with pq.ParquetWriter(path, sch) as writer:
        for chunk, start in enumerate(range(0, n_rows, p.chunk_rows)):
            n = min(p.chunk_rows, n_rows - start)
            rng = _rng(seed, 10 + split_no, chunk)
            rows = _rows(world, p, rng, n)
            prob = 1.0 / (1.0 + np.exp(-rows.pop("logit")))
            cols = {
                "user_id": pa.array(rows["user_id"]),
                "item_seq": _list_array(rows["item_seq"], pa.int64()),
                "likes_level": pa.array(rows["likes_level"]),
                "views_level": pa.array(rows["views_level"]),
                "item_id": pa.array(rows["item_id"]),
            }
            if labelled:
                cols["label"] = pa.array((rng.random(n) < prob).astype(np.float64))
            writer.write_table(pa.table(cols, schema=sch))
            truth.append(prob)
    return np.concatenate(truth)


def synthesize(out: str | Path, preset: str = "small", seed: int = 20242025) -> dict:
    """Write train/valid/test/item_info parquet (+ truth files and synth.json) into `out`, atomically."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}': expected one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    world = _build_world(p, seed)
    out = Path(out)
    with atomic_dir(out) as tmp:
        items = pa.table(
            {
                "item_id": pa.array(np.arange(p.n_items + 1, dtype=np.int64)),
                "item_tags": _list_array(world.tags, pa.int64()),
                "item_emb_d128": _list_array(world.emb, pa.float32()),
            },
            schema=schema.ITEM_SCHEMA,
        )
        pq.write_table(items, tmp / f"{schema.ITEM_FILE}.parquet")
        summary: dict = {"preset": preset, "seed": seed, "sizes": asdict(p)}
        for split_no, split in enumerate(schema.SPLITS):
            n_rows = getattr(p, f"n_{split}")
            labelled = split in schema.LABELLED_SPLITS
            prob = _write_split(world, p, seed, split_no, n_rows, tmp / f"{split}.parquet", labelled)
            if split != "train":
                pq.write_table(pa.table({"p_click": prob}), tmp / schema.truth_file(split))
            if labelled:
                labels = pq.read_table(tmp / f"{split}.parquet", columns=["label"])["label"].to_numpy()
                summary[f"{split}_positive_rate"] = float(labels.mean())
                if split == "valid":
                    summary["valid_oracle_auc"] = roc_auc(labels, prob)
        write_json(tmp / "synth.json", summary)
    return summary
