"""The learned fusion: starts at PCA, is deterministic, learns co-occurrence, and never reads a label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qin.embedding import fusion
from qin.embedding.fusion import learn_fusion, read_histories, sample_pairs
from qin.embedding.similarity import neighbour_agreement
from qin.settings.sections import FusionConfig, replace

FAST = FusionConfig(epochs=2, batch_size=64, pairs_per_epoch=512, hidden=16, seed=3)


def _planted(n_items: int = 240, groups: int = 8, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Items in groups; a group shows in 4 of 12 feature columns, under stronger noise in the rest; the
    start is a random orthonormal projection to 8, so it mixes the two. Histories: one group per row.
    Returns features (N, 12), start (12, 8), histories (R, 12), group (N,)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, groups, n_items)
    centres = rng.standard_normal((groups, 4)) * 1.5
    features = rng.standard_normal((n_items, 12)) * 1.5
    features[:, :4] = centres[group] + 0.3 * rng.standard_normal((n_items, 4))
    features = ((features - features.mean(0)) / features.std(0)).astype(np.float32)
    start = np.linalg.qr(rng.standard_normal((12, 8)))[0].astype(np.float32)
    members = [np.flatnonzero(group == g) + 1 for g in range(groups)]
    rows = [rng.choice(members[g], 12) for g in rng.integers(0, groups, 400)]
    histories = np.stack(rows).astype(np.int64)
    histories[::3, :4] = 0  # left padding on some rows
    return features, start, histories, group


def test_output_is_one_float32_row_per_item_of_the_chosen_width() -> None:
    features, start, histories, _ = _planted()
    emb, figures = learn_fusion(features, start, histories, FAST)
    assert emb.shape == (len(features), start.shape[1]) and emb.dtype == np.float32
    assert np.isfinite(emb).all()
    assert len(figures["loss"]) == FAST.epochs and figures["pairs"] == FAST.epochs * FAST.pairs_per_epoch
    assert figures["seconds"] > 0


def test_no_epochs_and_no_propagation_return_the_pca_embedding() -> None:
    features, start, histories, _ = _planted()
    settings = replace(FAST, epochs=0, propagation=0.0)
    emb, figures = learn_fusion(features, start, histories, settings)
    np.testing.assert_allclose(emb, features @ start, rtol=1e-5, atol=1e-5)
    assert figures["pairs"] == 0


def test_training_keeps_the_scale_of_the_pca_embedding() -> None:
    features, start, histories, _ = _planted()
    emb, _ = learn_fusion(features, start, histories, FAST)
    rms = np.sqrt(np.mean((features @ start) ** 2))
    assert np.sqrt(np.mean(emb**2)) == pytest.approx(rms, rel=1e-4)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    features, start, histories, _ = _planted()
    a, _ = learn_fusion(features, start, histories, FAST)
    b, _ = learn_fusion(features, start, histories, FAST)
    c, _ = learn_fusion(features, start, histories, replace(FAST, seed=4))
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_loss_decreases_and_items_that_co_occur_end_up_as_neighbours() -> None:
    features, start, histories, group = _planted()
    settings = replace(FAST, epochs=6, learning_rate=1e-2, anchor_weight=0.0, pairs_per_epoch=2048)
    emb, figures = learn_fusion(features, start, histories, settings)
    assert figures["loss"][-1] < figures["loss"][0] - 0.1
    before = neighbour_agreement(features @ start, group, k=10)
    after = neighbour_agreement(emb, group, k=10)
    assert after > before + 0.1, (before, after)


def test_pairs_are_two_distinct_real_items_of_one_row_within_the_window() -> None:
    rows, length, window = 50, 20, 3
    histories = np.arange(1, rows * length + 1, dtype=np.int64).reshape(rows, length)  # id -> (row, position)
    histories[:, :5] = 0
    a, p = sample_pairs(histories, 5000, window, np.random.default_rng(0))
    assert len(a) == len(p) == 5000
    (ra, ia), (rp, ip) = divmod(a - 1, length), divmod(p - 1, length)
    assert (ra == rp).all() and (a != p).all() and (a > 0).all() and (p > 0).all()
    assert (np.abs(ia - ip) <= window).all() and (np.abs(ia - ip) == window).any()
    a0, p0 = sample_pairs(histories, 5000, 0, np.random.default_rng(0))
    assert (np.abs((a0 - 1) % length - (p0 - 1) % length) > window).any()  # 0: the whole row


def test_co_occurrence_counts_pairs_within_the_window_both_ways_and_skips_padding_and_repeats() -> None:
    histories = np.array([[0, 1, 2, 3], [0, 0, 2, 2], [3, 1, 0, 0]], dtype=np.int64)  # ids 1..3
    counts = fusion.cooccurrence(histories, 3, window=1).toarray()
    # pairs one apart: (1,2), (2,3) in row 0; (2,2) is a repeat; (3,1) in row 2; padding never counts
    np.testing.assert_array_equal(counts, [[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    wide = fusion.cooccurrence(histories, 3, window=0).toarray()  # 0: anywhere in the row
    np.testing.assert_array_equal(wide, [[0, 1, 2], [1, 0, 1], [2, 1, 0]])


def test_propagation_mixes_in_the_count_weighted_mean_of_the_co_occurring_items() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [5.0, 5.0]], dtype=np.float32)
    histories = np.array([[1, 2, 0], [1, 3, 1]], dtype=np.int64)  # item 4 never co-occurs
    counts = fusion.cooccurrence(histories, 4, window=1)  # 1-2 once, 1-3 twice
    out = fusion.propagate(emb, counts, 0.5)
    np.testing.assert_allclose(out[0], 0.5 * emb[0] + 0.5 * (emb[1] + 2 * emb[2]) / 3, rtol=1e-6)
    np.testing.assert_allclose(out[1], 0.5 * emb[1] + 0.5 * emb[0], rtol=1e-6)
    np.testing.assert_array_equal(out[3], emb[3])
    # in learn_fusion, after the (here: no) training, and rescaled to the pca embedding's scale
    features, start, planted, _ = _planted()
    settings = replace(FAST, epochs=0, propagation=0.5)
    got, figures = learn_fusion(features, start, planted, settings)
    want = fusion.propagate(features @ start, fusion.cooccurrence(planted, len(features), FAST.window), 0.5)
    want *= np.sqrt(np.mean((features @ start) ** 2) / np.mean(want**2))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert figures["propagated_items"] == int(
        (np.bincount(planted.ravel(), minlength=len(features) + 1)[1:] > 0).sum()
    )


def test_propagation_pulls_items_towards_the_group_their_histories_share() -> None:
    features, start, histories, group = _planted()
    settings = replace(FAST, epochs=0, propagation=0.5)
    emb, _ = learn_fusion(features, start, histories, settings)
    before = neighbour_agreement(features @ start, group, k=10)
    after = neighbour_agreement(emb, group, k=10)
    assert after > before + 0.1, (before, after)


def test_histories_of_padding_only_give_no_pairs_and_the_start_back() -> None:
    features, start, _, _ = _planted()
    emb, figures = learn_fusion(features, start, np.zeros((10, 6), np.int64), FAST)
    assert figures["pairs"] == 0
    np.testing.assert_allclose(emb, features @ start, rtol=1e-5, atol=1e-5)


def test_mismatched_inputs_and_bad_settings_are_refused_by_name() -> None:
    features, start, histories, _ = _planted()
    with pytest.raises(ValueError, match="start"):
        learn_fusion(features, start[:-1], histories, FAST)
    with pytest.raises(ValueError, match="history ids"):
        learn_fusion(features, start, histories + len(features), FAST)
    with pytest.raises(ValueError, match=r"params key 'embed\.learned\.temperature'"):
        FusionConfig(temperature=0.0)
    with pytest.raises(ValueError, match=r"params key 'embed\.learned\.propagation'.*found 1\.5"):
        FusionConfig(propagation=1.5)


def test_read_histories_reads_only_the_history_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "train.parquet"
    seq = [[0, 0, 3], [1, 2, 3], [0, 4, 5], [2, 2, 1], [5, 1, 1], [3, 3, 0], [1, 0, 0]]
    n = len(seq)
    table = pa.table({"item_seq": seq, "item_id": list(range(1, n + 1)), "label": [0.0, 1.0] * 3 + [0.0]})
    pq.write_table(table, path, row_group_size=3)
    asked: list[object] = []
    read_table = pq.read_table

    def spy(source: object, *args: object, **kwargs: object) -> pa.Table:
        asked.append(kwargs.get("columns"))
        return read_table(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fusion.pq, "read_table", spy)
    monkeypatch.setattr(fusion, "SAMPLE_BATCH_ROWS", 2)
    whole = read_histories(path)
    assert asked == [["item_seq"]]
    assert whole.dtype == np.int64 and whole.tolist() == seq
    # A sample is read a batch at a time (never the whole column): the rows of one fixed draw, in order.
    some = read_histories(path, max_rows=4, seed=1)
    assert asked == [["item_seq"]]
    keep = np.sort(np.random.default_rng(1).choice(n, 4, replace=False))
    assert some.dtype == np.int64 and some.tolist() == whole[keep].tolist()
    with pytest.raises(FileNotFoundError, match="item_seq"):
        read_histories(tmp_path / "missing.parquet")
