"""Synthetic MicroLens_1M_x1: the real schema, planted structure, and the true click probability.

The data model (docs/data.md has the long form):
- Items live in a latent space: topics, each split into sub-topics; an item's latent vector is its
  topic centre + sub-topic offset + noise. `item_emb_d128` is the PCA of item_feature's text and image
  vectors (below), as the challenge's organisers made it, so the multimodal embedding carries the
  similarity that a rarely seen item id cannot learn (`item_emb: latent`: a noisy random projection of the
  latent vector instead, the generator before item_feature). Tags come from the
  item's topic pool. Popularity is heavy-tailed; likes/views levels follow popularity (and quality).
- Users have 1-3 interest topics, each with a niche (one of its sub-topics); a history is drawn from
  them, half of the in-interest items from the niche (`history_niche`), plus noise, with a true length
  that varies, left-padded with 0 to the file's fixed length. So which items a history holds together
  says which sub-topic they share, more sharply than the item features do.
- The click logit combines (a) the sparse relevance of the target to individual history items,
  sum_s relu(cos(target, item_s) - tau): only near-duplicates (same sub-topic) count, which attention can
  find and mean pooling blurs; (b) pairwise (quadratic) interactions between likes, views and the target's
  latent factors; (c) popularity. The intercept is set so that about 25% of rows are positive.

item_feature.parquet (the challenge's per-item features) holds a synthetic title, the tags, the item's
levels and two modality vectors, each a noisy projection of part of the latent vector (the text mostly the
topic, the image the sub-topic and the residual): together they recover item similarity better than
either alone. item_truth.parquet saves each item's topic, sub-topic and unit latent vector, so that an
embedding can be scored against the planted similarity (qin/embedding/similarity.py).

Saved beside the data: the true click probability of every valid/test row, and in synth.json the valid
oracle AUC (scoring with the truth) and the no-history bound (scoring with E[p | target, likes, views],
the best any model that ignores the history can do, estimated by sampling histories from their posterior).

Everything is drawn from numpy Generators seeded from (seed, purpose, chunk), so a seed gives the same
bytes on every run, and rows are generated in chunks to bound memory.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from multiprocessing.pool import AsyncResult
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qin.data import schema
from qin.embedding.pca import pca_from_scatter
from qin.runs.io import atomic_dir, write_json
from qin.settings.sections import DataConfig
from qin.training.metrics import roc_auc


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


_FULL = Preset(
    3_600_000, 10_000, 379_142, n_items=91_717, tag_vocab=11_740, seq_len=100, n_users=900_000, n_topics=200
)
PRESETS: dict[str, Preset] = {
    "tiny": Preset(3_000, 600, 600, n_items=400, tag_vocab=150, seq_len=20, n_users=300, n_topics=8),
    "small": Preset(
        200_000, 10_000, 20_000, n_items=20_000, tag_vocab=2_000, seq_len=50, n_users=40_000, n_topics=40
    ),
    "full": _FULL,
    # The full preset with ten times its training rows (the same items, users and valid/test splits): the
    # scale bench/data_scale.py runs by hand (issue 26).
    "x10": replace(_FULL, n_train=10 * _FULL.n_train),
}
CHUNK_CELLS = 6_000_000  # history cells (rows x length) generated at once: bounds memory on `full`
FEATURE_CHUNK_ITEMS = 8_192  # item_feature rows generated at once (~60 MB of float32 vectors)
# item_feature's modalities split the latent vector (centre + offset + residual) between them: the text
# sees the topic centre and a little of the sub-topic offset, the image the offset and the item's residual.
TEXT_OFFSET_SHARE = 0.25
# Titles: each topic owns a block of words; the rest of a title comes from shared words.
TITLE_WORDS_PER_TOPIC = 40
TITLE_SHARED_WORDS = 200
TITLE_TOPIC_SHARE = 0.7
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
NO_HISTORY_SAMPLES = 32  # posterior histories drawn per row for the no-history bound


@dataclass(frozen=True)
class World:
    """Everything shared by all rows: items and users."""

    unit: np.ndarray  # (N+1, K) float32 unit latent vectors, row 0 unused
    pop_z: np.ndarray  # (N+1,) standardised log popularity
    likes: np.ndarray  # (N+1,) likes level per item
    views: np.ndarray  # (N+1,) views level per item
    topic_of: np.ndarray  # (N+1,) topic of each item
    topic_cdf: np.ndarray  # per-topic popularity CDFs, concatenated: topic c spans (c, c+1]
    topic_items: np.ndarray  # item ids sorted by topic, aligned with topic_cdf
    topic_mass: np.ndarray  # (C,) share of all popularity that each topic holds
    global_cdf: np.ndarray  # popularity CDF over items 1..N
    interests: np.ndarray  # (U, 3) interest topic per slot; users with fewer interests repeat one
    niches: np.ndarray  # (U, 3) global sub-topic id of each slot's niche, within that slot's topic
    sub_cdf: np.ndarray  # per-sub-topic popularity CDFs, concatenated like topic_cdf
    sub_items: np.ndarray  # item ids sorted by global sub-topic, aligned with sub_cdf
    tags: np.ndarray  # (N+1, 5)
    emb: np.ndarray  # (N+1, 128) float32
    intercept: float
    # The latent vector's three parts (latent = centre + offset + residual), for item_feature's modalities.
    subtopic_of: np.ndarray  # (N+1,) global sub-topic id: topic * subtopics + sub-topic
    centre: np.ndarray  # (N+1, K) the item's topic centre
    offset: np.ndarray  # (N+1, K) its sub-topic's offset from the centre
    residual: np.ndarray  # (N+1, K) its own noise


def _rng(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *purpose]))


def _segment_cdf(group: np.ndarray, weight: np.ndarray, n_groups: int) -> np.ndarray:
    """For rows sorted by `group`: within-group CDFs of `weight`, offset so group g spans (g, g+1]."""
    cum = np.cumsum(weight)
    ends = np.searchsorted(group, np.arange(n_groups), side="right")
    starts = np.concatenate([[0], ends[:-1]])
    before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    total = cum[np.maximum(ends - 1, 0)] - before
    g_before, g_total = before[group], total[group]
    return group + (cum - g_before) / np.where(g_total > 0, g_total, 1.0)


def _item_latents(
    p: Preset, cfg: DataConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each item's topic, global sub-topic id and the three parts of its latent vector (centre, offset,
    residual), all (N+1, ...) with row 0 unused."""
    n, k, c = p.n_items, cfg.latent_dim, p.n_topics
    centres = rng.standard_normal((c, k))
    sub = rng.standard_normal((c, cfg.subtopics, k)) * 0.6
    topic_of = np.zeros(n + 1, dtype=np.int64)
    topic_of[1:] = rng.integers(0, c, n)
    sub_of = rng.integers(0, cfg.subtopics, n + 1)
    centre, offset = centres[topic_of], sub[topic_of, sub_of]
    residual = 0.25 * rng.standard_normal((n + 1, k))
    return topic_of, topic_of * cfg.subtopics + sub_of, centre, offset, residual


def _popularity_and_levels(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(pop, pop_z, likes, views) of items 0..N: heavy-tailed popularity (0 for row 0), its standardised
    log, and the likes and views levels that follow it (likes also an item's quality)."""
    log_pop = rng.standard_normal(n + 1) * 1.2
    pop = np.exp(log_pop)
    pop[0] = 0.0
    pop_z = (log_pop - log_pop[1:].mean()) / log_pop[1:].std()
    quality = rng.standard_normal(n + 1)
    views = np.clip(np.rint(5 + 2.0 * pop_z + 0.7 * rng.standard_normal(n + 1)), 0, 10).astype(np.int64)
    likes = np.clip(np.rint(5 + 1.2 * pop_z + 1.2 * quality), 0, 10).astype(np.int64)
    return pop, pop_z, likes, views


def _popularity_cdf(group_of: np.ndarray, pop: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Items 1..N sorted by group (topic or sub-topic) and their within-group popularity CDFs (see World)."""
    order = np.argsort(group_of[1:], kind="stable") + 1
    return _segment_cdf(group_of[order], pop[order], n_groups), order


def _item_tags(p: Preset, topic_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N+1, 5) tags, 0 padding: each topic owns a block of the vocabulary; 2..5 tags per item, 15% drawn
    from anywhere."""
    n, c = p.n_items, p.n_topics
    vocab = np.arange(1, p.tag_vocab)
    rng.shuffle(vocab)
    blocks = np.array_split(vocab, c)
    n_tags = rng.integers(2, schema.TAGS_PER_ITEM + 1, n + 1)
    pick = rng.random((n + 1, schema.TAGS_PER_ITEM))
    tags = np.zeros((n + 1, schema.TAGS_PER_ITEM), dtype=np.int64)
    for t in range(c):
        rows = np.flatnonzero(topic_of == t)
        tags[rows] = blocks[t][(pick[rows] * len(blocks[t])).astype(np.int64)]
    noisy = rng.random((n + 1, schema.TAGS_PER_ITEM)) < 0.15
    tags[noisy] = rng.integers(1, p.tag_vocab, int(noisy.sum()))
    tags[np.arange(schema.TAGS_PER_ITEM)[None, :] >= n_tags[:, None]] = 0
    tags[0] = 0
    return tags


def _latent_emb(latent: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """item_emb `latent`: items 1..N's latent vectors through a random projection to 128, plus noise."""
    k, n = cfg.latent_dim, len(latent) - 1
    proj = rng.standard_normal((k, schema.ITEM_EMB_DIM)) / np.sqrt(k)
    return latent[1:] @ proj + cfg.emb_noise * rng.standard_normal((n + 1, schema.ITEM_EMB_DIM))[1:]


def _user_interests(p: Preset, cfg: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(interests, niches), (U, 3) each: 1..3 interest topics per user, each with a niche sub-topic; the
    slots beyond a user's interests repeat the first."""
    n_int = rng.integers(1, 4, p.n_users)
    topics = rng.integers(0, p.n_topics, (p.n_users, 3))
    niche_of = topics * cfg.subtopics + rng.integers(0, cfg.subtopics, (p.n_users, 3))
    extra = np.arange(3)[None, :] < n_int[:, None]
    return np.where(extra, topics, topics[:, :1]), np.where(extra, niche_of, niche_of[:, :1])


def _calibrated_intercept(world: World, p: Preset, cfg: DataConfig) -> float:
    """The intercept that makes about cfg.positive_rate of a probe sample's rows positive (bisection)."""
    logit = _logit_parts(world, cfg, _rows(world, p, cfg, _rng(cfg.seed, 2), 20_000))
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if np.mean(1 / (1 + np.exp(-(logit + mid)))) > cfg.positive_rate else (mid, hi)
    return (lo + hi) / 2


def _build_world(p: Preset, cfg: DataConfig) -> World:
    """The items (stream (seed, 0), drawn in this order), the users (seed, 1) and the intercept (seed, 2)."""
    rng = _rng(cfg.seed, 0)
    topic_of, subtopic_of, centre, offset, residual = _item_latents(p, cfg, rng)
    latent = centre + offset + residual
    pop, pop_z, likes, views = _popularity_and_levels(p.n_items, rng)
    topic_cdf, topic_items = _popularity_cdf(topic_of, pop, p.n_topics)
    sub_cdf, sub_items = _popularity_cdf(subtopic_of, pop, p.n_topics * cfg.subtopics)
    tags = _item_tags(p, topic_of, rng)
    emb = np.zeros((p.n_items + 1, schema.ITEM_EMB_DIM), dtype=np.float32)  # "pca": filled in below
    if cfg.item_emb == "latent":  # the last draws from this stream: "pca" leaves every other file unchanged
        emb[1:] = _latent_emb(latent, cfg, rng)
    interests, niches = _user_interests(p, cfg, _rng(cfg.seed, 1))
    world = World(
        unit=(latent / np.linalg.norm(latent, axis=1, keepdims=True)).astype(np.float32),
        pop_z=pop_z,
        likes=likes,
        views=views,
        topic_of=topic_of,
        topic_cdf=topic_cdf,
        topic_items=topic_items,
        topic_mass=np.bincount(topic_of[1:], weights=pop[1:], minlength=p.n_topics) / pop[1:].sum(),
        global_cdf=np.cumsum(pop[1:]) / pop[1:].sum(),
        interests=interests,
        niches=niches,
        sub_cdf=sub_cdf,
        sub_items=sub_items,
        tags=tags,
        emb=emb,
        intercept=0.0,
        subtopic_of=subtopic_of,
        centre=centre,
        offset=offset,
        residual=residual,
    )
    if cfg.item_emb == "pca":
        emb[1:] = _organisers_emb(world, cfg)
    return replace(world, intercept=_calibrated_intercept(world, p, cfg))


def _sample_from_groups(
    cdf: np.ndarray, items: np.ndarray, groups: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One item per entry of `groups`, by popularity within the group (cdf, items: see World)."""
    pos = np.searchsorted(cdf, groups + rng.random(groups.shape))
    return items[np.minimum(pos, len(items) - 1)]


def _sample_from_topics(world: World, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of `topics`, by popularity within the topic."""
    return _sample_from_groups(world.topic_cdf, world.topic_items, topics, rng)


def _sample_popular(world: World, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    pos = np.searchsorted(world.global_cdf, rng.random(shape))
    return np.minimum(pos, len(world.global_cdf) - 1) + 1


def _histories(world: World, p: Preset, cfg: DataConfig, users: np.ndarray, rng: np.random.Generator):
    """(n, L) left-padded histories drawn from each user's interests: an interest slot, then (with
    probability history_niche) an item of that slot's niche sub-topic, else of its topic; plus popularity
    noise."""
    n, length = len(users), p.seq_len
    slot = rng.integers(0, 3, (n, length))
    hist = _sample_from_topics(world, np.take_along_axis(world.interests[users], slot, axis=1), rng)
    if cfg.history_niche:  # no draw at 0: the rows are then those of a generator without niches
        niche = rng.random((n, length)) < cfg.history_niche
        groups = np.take_along_axis(world.niches[users], slot, axis=1)[niche]
        hist[niche] = _sample_from_groups(world.sub_cdf, world.sub_items, groups, rng)
    noise = rng.random((n, length)) < cfg.history_noise
    hist[noise] = _sample_popular(world, (int(noise.sum()),), rng)
    true_len = rng.integers(max(1, length // 10), length + 1, n)
    hist[np.arange(length)[None, :] < (length - true_len)[:, None]] = 0
    return hist


def _rows(
    world: World, p: Preset, cfg: DataConfig, rng: np.random.Generator, n: int
) -> dict[str, np.ndarray]:
    user = rng.integers(0, p.n_users, n)
    hist = _histories(world, p, cfg, user, rng)
    target = _sample_popular(world, (n,), rng)
    from_interest = rng.random(n) < cfg.target_from_interest
    t_topic = world.interests[user, rng.integers(0, 3, n)]
    target[from_interest] = _sample_from_topics(world, t_topic[from_interest], rng)
    jitter = (rng.random((n, 2)) < 0.1) * rng.choice(np.array([-1, 1]), (n, 2))
    return {
        "user_id": user.astype(np.int64) + 1,
        "item_seq": hist.astype(np.int64),
        "likes_level": np.clip(world.likes[target] + jitter[:, 0], 0, 10).astype(np.int64),
        "views_level": np.clip(world.views[target] + jitter[:, 1], 0, 10).astype(np.int64),
        "item_id": target.astype(np.int64),
    }


def _logit_parts(world: World, cfg: DataConfig, rows: dict[str, np.ndarray]) -> np.ndarray:
    """The click logit without the intercept."""
    target, hist = rows["item_id"], rows["item_seq"]
    u_t = world.unit[target]  # (n, K)
    cos = np.einsum("nk,nlk->nl", u_t, world.unit[hist])  # (n, L)
    relevance = np.where(hist > 0, np.maximum(cos - cfg.relevance_tau, 0.0), 0.0).sum(axis=1)
    lz, vz = (rows["likes_level"] - 5) / 2.5, (rows["views_level"] - 5) / 2.5
    quad = lz * vz + 2.0 * lz * u_t[:, 0] + 4.0 * u_t[:, 1] * u_t[:, 2]
    return (
        cfg.w_relevance * np.tanh(relevance / 0.3)
        + cfg.w_quadratic * quad
        + cfg.w_popularity * world.pop_z[target]
    )


def _probability(world: World, cfg: DataConfig, rows: dict[str, np.ndarray]) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(_logit_parts(world, cfg, rows) + world.intercept)))


def _user_weight(world: World, cfg: DataConfig, m: np.ndarray, topic: np.ndarray) -> np.ndarray:
    """w(m) x Z, the likelihood (up to a factor that cancels) that a user with `m` of its 3 interest slots on
    `topic` produces a target of that topic."""
    f = cfg.target_from_interest
    return (1 - f) + f * m / (3.0 * world.topic_mass[topic])


def _topic_holders(world: World, p: Preset, cfg: DataConfig) -> tuple[np.ndarray, ...]:
    """(holders, cdf, weight, count): the users holding each topic in one of their interest slots, sorted by
    topic, and their weights' within-topic CDFs (_segment_cdf); per topic, its holders' total weight and
    their number."""
    n_topics = len(world.topic_mass)
    keys, m = np.unique(
        (np.arange(p.n_users)[:, None] * n_topics + world.interests).ravel(), return_counts=True
    )
    user, topic = keys // n_topics, keys % n_topics
    order = np.argsort(topic, kind="stable")
    user, topic, m = user[order], topic[order], m[order]
    w = _user_weight(world, cfg, m, topic)
    cdf = _segment_cdf(topic, w, n_topics)
    return (
        user,
        cdf,
        np.bincount(topic, weights=w, minlength=n_topics),
        np.bincount(topic, minlength=n_topics),
    )


def _posterior_users(
    world: World,
    p: Preset,
    holders: np.ndarray,
    cdf: np.ndarray,
    c: np.ndarray,
    half: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(2 * len(c) * half,) users: `half` per topic of `c` among its holders, drawn by weight (`holders`,
    `cdf`: from _topic_holders), then `half` per topic among the other users, uniformly."""
    cc = np.repeat(c, half)
    pos = np.minimum(np.searchsorted(cdf, cc + rng.random(cc.shape)), len(holders) - 1)
    others = rng.integers(0, p.n_users, cc.shape)
    for _ in range(100):  # rejection: users that do not hold c (they are the large majority)
        bad = (world.interests[others] == cc[:, None]).any(axis=1)
        if not bad.any():
            break
        others[bad] = rng.integers(0, p.n_users, int(bad.sum()))
    return np.concatenate([holders[pos], others])


def no_history_scores(
    world: World,
    p: Preset,
    cfg: DataConfig,
    rows: dict[str, np.ndarray],
    rng: np.random.Generator,
    samples: int = NO_HISTORY_SAMPLES,
) -> np.ndarray:
    """E[p | target, likes, views] per row: the history integrated out over its posterior given the target.

    A user's likelihood of producing the target depends only on m, how many of its 3 interest slots hold
    the target's topic c: w(m) ∝ (1-f)/Z + f·m/(3·Z_c). Half the samples come from the users holding c
    (drawn in proportion to w), half from the rest (uniformly, w(0) each); the two means are mixed by the
    groups' total weights.
    """
    holders, cdf, w_holders, n_holders = _topic_holders(world, p, cfg)
    n = len(rows["item_id"])
    scores = np.empty(n)
    half = samples // 2
    step = max(1, CHUNK_CELLS // (samples * p.seq_len * 4))
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        c = world.topic_of[rows["item_id"][sl]]
        k = len(c)
        users = _posterior_users(world, p, holders, cdf, c, half, rng)
        sampled = {key: np.tile(np.repeat(rows[key][sl], half), 2) for key in rows if key != "item_seq"}
        sampled["item_seq"] = _histories(world, p, cfg, users, rng)
        prob = _probability(world, cfg, sampled).reshape(2, k, half).mean(axis=2)
        w_in = np.where(n_holders[c] > 0, w_holders[c], 0.0)
        w_out = (p.n_users - n_holders[c]) * _user_weight(world, cfg, np.zeros(k), c)
        scores[sl] = (w_in * prob[0] + w_out * prob[1]) / (w_in + w_out)
    return scores


def _list_array(matrix: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    n, width = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.ravel(), type=value_type))


# What a forked worker generates rows from (`_chunk_pool`): the world and the settings, inherited, not sent.
_FORKED: tuple[World, Preset, DataConfig] | None = None
ChunkJob = tuple[int, int, int, bool, bool]  # split number, chunk number, rows, labelled, keep the rows
ChunkResult = tuple[pa.Table, np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None]
ChunkMap = Callable[[Iterable[ChunkJob]], Iterator[ChunkResult]]


def _chunk(job: ChunkJob, shared: tuple[World, Preset, DataConfig] | None = None) -> ChunkResult:
    """One chunk of a split from its own stream (seed, 10 + split, chunk): the table as written, the true
    probabilities, the labels (labelled splits) and, when the job says to keep them, the rows (a worker
    sends back nothing it need not)."""
    world, p, cfg = shared or _FORKED  # type: ignore[misc]
    split_no, chunk, n, labelled, keep = job
    sch = schema.ROW_SCHEMA if labelled else schema.TEST_SCHEMA
    rng = _rng(cfg.seed, 10 + split_no, chunk)
    rows = _rows(world, p, cfg, rng, n)
    prob = _probability(world, cfg, rows)
    cols = {name: pa.array(v) for name, v in rows.items() if name != "item_seq"}
    cols["item_seq"] = _list_array(rows["item_seq"], pa.int64())
    labels = (rng.random(n) < prob).astype(np.float64) if labelled else None
    if labels is not None:
        cols["label"] = pa.array(labels)
    return pa.table(cols).select(sch.names).cast(sch), prob, labels, rows if keep else None


@contextlib.contextmanager
def _chunk_pool(world: World, p: Preset, cfg: DataConfig, workers: int) -> Iterator[ChunkMap]:
    """A map of `_chunk` over jobs that yields results in job order: in this process, or on `workers` forked
    processes (which inherit the world), at most two chunks per worker ahead of the one written. Either
    way the chunks are the same bytes: each comes from its own stream."""
    if workers <= 1:
        yield lambda jobs: (_chunk(job, (world, p, cfg)) for job in jobs)
        return
    global _FORKED
    _FORKED = (world, p, cfg)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:

            def ordered(jobs: Iterable[ChunkJob]) -> Iterator[ChunkResult]:
                pending: deque[AsyncResult[ChunkResult]] = deque()
                for job in jobs:
                    pending.append(pool.apply_async(_chunk, (job,)))
                    if len(pending) >= 2 * workers:
                        yield pending.popleft().get()
                while pending:
                    yield pending.popleft().get()

            yield ordered
    finally:
        _FORKED = None


def _write_split(
    chunks: ChunkMap, p: Preset, split_no: int, n_rows: int, path: Path, labelled: bool
) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None]:
    """Write one split chunk by chunk; return the true probabilities, the labels and (small splits) the
    rows."""
    sch = schema.ROW_SCHEMA if labelled else schema.TEST_SCHEMA
    chunk_rows = max(1, CHUNK_CELLS // p.seq_len)
    starts = range(0, n_rows, chunk_rows)
    keep = len(starts) == 1  # a split in one chunk: its rows are returned too
    jobs = [
        (split_no, chunk, min(chunk_rows, n_rows - start), labelled, keep)
        for chunk, start in enumerate(starts)
    ]
    truth, labels, kept = [], [], None
    with pq.ParquetWriter(path, sch) as writer:
        for table, prob, label, rows in chunks(jobs):
            writer.write_table(table)
            truth.append(prob)
            if label is not None:
                labels.append(label)
            kept = rows
    return np.concatenate(truth), np.concatenate(labels) if labels else None, kept


def _title_words(n_words: int) -> np.ndarray:
    """`n_words` distinct pronounceable words of three syllables."""
    base = len(_SYLLABLES)
    assert n_words <= base**3, n_words
    ids = np.arange(n_words)
    return np.array(
        ["".join(_SYLLABLES[d] for d in (i // base**2, i // base % base, i % base)) for i in ids.tolist()]
    )


def _titles(world: World, rng: np.random.Generator) -> list[str]:
    """Titles of items 1..N: 3 to 8 words, most from the item's topic block, the rest shared."""
    n, n_topics = len(world.topic_of) - 1, len(world.topic_mass)
    words = _title_words(n_topics * TITLE_WORDS_PER_TOPIC + TITLE_SHARED_WORDS)
    length = rng.integers(3, 9, n)
    own = world.topic_of[1:, None] * TITLE_WORDS_PER_TOPIC + rng.integers(0, TITLE_WORDS_PER_TOPIC, (n, 8))
    shared = n_topics * TITLE_WORDS_PER_TOPIC + rng.integers(0, TITLE_SHARED_WORDS, (n, 8))
    token = np.where(rng.random((n, 8)) < TITLE_TOPIC_SHARE, own, shared)
    return [" ".join(words[row[:m]]) for row, m in zip(token, length.tolist(), strict=True)]


def _feature_projections(cfg: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The text's and the image's random projections of the latent space: the first draws of (seed, 20)."""
    k = cfg.latent_dim
    return (
        rng.standard_normal((k, schema.TXT_EMB_DIM)) / np.sqrt(k),
        rng.standard_normal((k, schema.IMG_EMB_DIM)) / np.sqrt(k),
    )


def _modalities(world: World, cfg: DataConfig) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(ids, text (n, 768), image (n, 1024)) of items 1..N, FEATURE_CHUNK_ITEMS at a time.

    Each modality is a random projection of part of the latent vector plus noise: the text of the topic
    centre (+ TEXT_OFFSET_SHARE of the sub-topic offset), the image of the offset + the residual, so the
    text tells topics apart, the image sub-topics within them (noisily), and both together do best. Drawn
    from their own streams (seed, 20) and (seed, 21, chunk), the same on every call.
    """
    txt_proj, img_proj = _feature_projections(cfg, _rng(cfg.seed, 20))
    n = len(world.topic_of) - 1
    for chunk, start in enumerate(range(1, n + 1, FEATURE_CHUNK_ITEMS)):
        ids = np.arange(start, min(n + 1, start + FEATURE_CHUNK_ITEMS))
        noise = _rng(cfg.seed, 21, chunk)
        txt = (world.centre[ids] + TEXT_OFFSET_SHARE * world.offset[ids]) @ txt_proj
        txt += cfg.txt_noise * noise.standard_normal(txt.shape)
        img = (world.offset[ids] + world.residual[ids]) @ img_proj
        img += cfg.img_noise * noise.standard_normal(img.shape)
        yield ids, txt.astype(np.float32), img.astype(np.float32)


def _organisers_emb(world: World, cfg: DataConfig) -> np.ndarray:
    """item_emb_d128 of items 1..N as the challenge's organisers made it: the text and image vectors
    concatenated and reduced by PCA to 128 (centred, not standardised; scores scaled to a root mean square
    of 1). Two passes over the modalities' chunks, so memory stays at one chunk and a D x D matrix."""
    n, dim = len(world.topic_of) - 1, schema.TXT_EMB_DIM + schema.IMG_EMB_DIM
    total, gram = np.zeros(dim), np.zeros((dim, dim))
    for _, txt, img in _modalities(world, cfg):
        x = np.concatenate([txt, img], axis=1).astype(np.float64)
        total += x.sum(axis=0)
        gram += x.T @ x
    mean = total / n
    pca = pca_from_scatter(mean, gram - n * np.outer(mean, mean), n, schema.ITEM_EMB_DIM, standardise=False)
    return np.concatenate(
        [pca.transform(np.concatenate([t, i], axis=1)) for _, t, i in _modalities(world, cfg)]
    )


def _write_item_feature(world: World, cfg: DataConfig, path: Path) -> None:
    """item_feature.parquet: items 1..N with a title, tags, levels and the two modality vectors
    (`_modalities`)."""
    rng = _rng(cfg.seed, 20)
    _feature_projections(cfg, rng)  # drawn first on this stream; the titles come after them
    titles = _titles(world, rng)
    with pq.ParquetWriter(path, schema.FEATURE_SCHEMA) as writer:
        for ids, txt, img in _modalities(world, cfg):
            start = int(ids[0])
            cols = {
                schema.TARGET: pa.array(ids),
                schema.TITLE: pa.array(titles[start - 1 : ids[-1]], pa.string()),
                schema.TAGS: _list_array(world.tags[ids], pa.int64()),
                schema.LEVELS[0]: pa.array(world.likes[ids]),
                schema.LEVELS[1]: pa.array(world.views[ids]),
                schema.TXT_EMB: _list_array(txt, pa.float32()),
                schema.IMG_EMB: _list_array(img, pa.float32()),
            }
            writer.write_table(pa.table(cols).select(schema.FEATURE_SCHEMA.names).cast(schema.FEATURE_SCHEMA))


def _item_truth(world: World) -> pa.Table:
    """Each item's planted place (items 1..N): topic, global sub-topic id and unit latent vector."""
    return pa.table(
        {
            schema.TARGET: pa.array(np.arange(1, len(world.topic_of), dtype=np.int64)),
            "topic": pa.array(world.topic_of[1:]),
            "subtopic": pa.array(world.subtopic_of[1:].astype(np.int64)),
            "latent": _list_array(world.unit[1:], pa.float32()),
        }
    )


def synthesize(out: str | Path, cfg: DataConfig, workers: int = 1, item_feature: bool = True) -> dict:
    """Write train/valid/test/item_info/item_feature parquet, truth files and synth.json into `out`,
    atomically. `workers`: processes that generate the splits' chunks (the same bytes for any number);
    `item_feature=False` leaves item_feature.parquet (0.7 GB on `full`, optional in the contract) out."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset '{cfg.preset}': expected one of {sorted(PRESETS)}")
    p = PRESETS[cfg.preset]
    world = _build_world(p, cfg)
    out = Path(out)
    # The pool forks before this process writes any parquet (no writer threads of its own yet).
    with _chunk_pool(world, p, cfg, workers) as chunks, atomic_dir(out) as tmp:
        items = pa.table(
            {
                "item_id": pa.array(np.arange(p.n_items + 1, dtype=np.int64)),
                "item_tags": _list_array(world.tags, pa.int64()),
                "item_emb_d128": _list_array(world.emb, pa.float32()),
            },
            schema=schema.ITEM_SCHEMA,
        )
        pq.write_table(items, tmp / f"{schema.ITEM_FILE}.parquet")
        summary: dict = {"config": cfg.model_dump(), "sizes": asdict(p)}
        for split_no, split in enumerate(schema.SPLITS):
            n_rows = getattr(p, f"n_{split}")
            labelled = split in schema.LABELLED_SPLITS
            prob, labels, rows = _write_split(chunks, p, split_no, n_rows, tmp / f"{split}.parquet", labelled)
            if split != "train":
                pq.write_table(pa.table({"p_click": prob}), tmp / schema.truth_file(split))
            if labels is not None:
                summary[f"{split}_positive_rate"] = float(labels.mean())
            if split == "valid":
                assert labels is not None and rows is not None
                summary["valid_oracle_auc"] = roc_auc(labels, prob)
                bound = no_history_scores(world, p, cfg, rows, _rng(cfg.seed, 3))
                summary["valid_no_history_auc"] = roc_auc(labels, bound)
        # Last, from streams of its own, so the rows above are the same bytes with or without it (item_info
        # holds their PCA, made from the same draws in _build_world).
        if item_feature:
            _write_item_feature(world, cfg, tmp / f"{schema.FEATURE_FILE}.parquet")
        pq.write_table(_item_truth(world), tmp / schema.ITEM_TRUTH_FILE)
        write_json(tmp / "synth.json", summary)
    return summary
