"""item_feature.parquet from the generator: the challenge's schema, two modality vectors that each carry part
of the planted item structure (their fusion recovers it best), drawn so that the rows do not change; the
shipped item_emb_d128 is their PCA, as the organisers made it."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qin.data import schema
from qin.data.synth import PRESETS, synthesize
from qin.embedding.similarity import concat_unit, neighbour_agreement, neighbour_agreements, read_item_truth
from qin.featurize import fixed_list
from qin.runs.io import file_hash
from qin.settings.sections import DataConfig


def _vectors(data: Path, column: str) -> np.ndarray:
    return np.stack(pq.read_table(data / "item_feature.parquet")[column].to_numpy(zero_copy_only=False))


def test_item_feature_follows_the_challenge_schema(tiny_data: Path) -> None:
    n = PRESETS["tiny"].n_items
    table = pq.read_table(tiny_data / "item_feature.parquet")
    assert table.schema.equals(schema.FEATURE_SCHEMA)
    assert table["item_id"].to_pylist() == list(range(1, n + 1))  # no padding row
    for column, dim in ((schema.TXT_EMB, schema.TXT_EMB_DIM), (schema.IMG_EMB, schema.IMG_EMB_DIM)):
        vectors = _vectors(tiny_data, column)
        assert vectors.shape == (n, dim) and vectors.dtype == np.float32, column
        assert np.isfinite(vectors).all() and vectors.std() > 0, column
    items = pq.read_table(tiny_data / "item_info.parquet")
    assert table["item_tags"].to_pylist() == items["item_tags"].to_pylist()[1:]
    titles = table["item_title"].to_pylist()
    assert all(3 <= len(t.split()) <= 8 for t in titles) and len(set(titles)) > 0.9 * n
    # An item's levels are its own: every row that targets it carries them, give or take one level.
    train = pq.read_table(tiny_data / "train.parquet").to_pandas()
    for level in schema.LEVELS:
        values = table[level].to_numpy()
        assert values.min() >= 0 and values.max() < schema.NUM_LEVELS
        assert np.all(np.abs(train[level].to_numpy() - values[train["item_id"].to_numpy() - 1]) <= 1)


def test_item_truth_names_each_items_topic_and_subtopic(tiny_data: Path) -> None:
    truth = read_item_truth(tiny_data)
    n, k = PRESETS["tiny"].n_items, DataConfig().latent_dim
    assert truth["item_id"].tolist() == list(range(1, n + 1))
    assert np.array_equal(truth["subtopic"] // DataConfig().subtopics, truth["topic"])
    assert truth["latent"].shape == (n, k)
    np.testing.assert_allclose(np.linalg.norm(truth["latent"], axis=1), 1.0, rtol=1e-5)


def _without_emb(data: Path) -> pa.Table:
    return pq.read_table(data / "item_info.parquet").drop([schema.ITEM_EMB])


def test_the_modality_settings_change_item_feature_and_the_shipped_embedding_only(
    tmp_path: Path, tiny_data: Path
) -> None:
    out = tmp_path / "noisier"
    synthesize(out, DataConfig(preset="tiny", seed=7, txt_noise=3.0, img_noise=0.5))
    for name in [
        *(f"{n}.parquet" for n in schema.SPLITS),
        schema.truth_file("valid"),
        schema.truth_file("test"),
        schema.ITEM_TRUTH_FILE,
    ]:
        assert file_hash(out / name) == file_hash(tiny_data / name), name
    assert file_hash(out / "item_feature.parquet") != file_hash(tiny_data / "item_feature.parquet")
    ours, theirs = (
        pq.read_table(out / "item_feature.parquet"),
        pq.read_table(tiny_data / "item_feature.parquet"),
    )
    assert ours.select(["item_id", "item_title", "item_tags", *schema.LEVELS]).equals(
        theirs.select(["item_id", "item_title", "item_tags", *schema.LEVELS])
    )
    # item_emb_d128 is made from the modalities, so it changes with them; the rest of item_info does not.
    assert _without_emb(out).equals(_without_emb(tiny_data))
    assert not np.array_equal(_shipped(out), _shipped(tiny_data))


def _shipped(data: Path) -> np.ndarray:
    return fixed_list(pq.read_table(data / "item_info.parquet"), schema.ITEM_EMB)


def test_the_shipped_embedding_is_the_organisers_pca_of_text_and_image(tiny_data: Path) -> None:
    both = np.concatenate([_vectors(tiny_data, schema.TXT_EMB), _vectors(tiny_data, schema.IMG_EMB)], axis=1)
    # An independent PCA (SVD of the centred concatenation, not standardised), signs aligned per component.
    centred = both.astype(np.float64) - both.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    scores = u[:, : schema.ITEM_EMB_DIM] * s[: schema.ITEM_EMB_DIM]
    scores /= np.sqrt((scores**2).mean())
    shipped = _shipped(tiny_data)
    assert not shipped[0].any()  # the padding row
    signs = np.sign((scores * shipped[1:]).sum(axis=0))
    np.testing.assert_allclose(shipped[1:], scores * signs, atol=2e-4)


def test_latent_item_emb_is_a_view_the_modalities_do_not_make(tmp_path: Path) -> None:
    """item_emb "latent" (the generator before item_feature): a projection of the latent vector, so the
    modality settings leave item_info as it is, and it tells sub-topics apart better than the fusion."""
    a, b = tmp_path / "a", tmp_path / "b"
    synthesize(a, DataConfig(preset="tiny", seed=7, item_emb="latent"))
    synthesize(b, DataConfig(preset="tiny", seed=7, item_emb="latent", txt_noise=3.0, img_noise=0.5))
    assert file_hash(a / "item_info.parquet") == file_hash(b / "item_info.parquet")
    truth = read_item_truth(a)
    fused = concat_unit(_vectors(a, schema.TXT_EMB), _vectors(a, schema.IMG_EMB))
    assert neighbour_agreement(_shipped(a)[1:], truth["subtopic"]) > neighbour_agreement(
        fused, truth["subtopic"]
    )


def test_fusing_text_and_image_recovers_the_subtopics_better_than_either(tiny_data: Path) -> None:
    truth = read_item_truth(tiny_data)
    txt, img = _vectors(tiny_data, schema.TXT_EMB), _vectors(tiny_data, schema.IMG_EMB)
    sub = {
        "text": neighbour_agreement(txt, truth["subtopic"]),
        "image": neighbour_agreement(img, truth["subtopic"]),
        "both": neighbour_agreement(concat_unit(txt, img), truth["subtopic"]),
    }
    chance = 1 / (PRESETS["tiny"].n_topics * DataConfig().subtopics)
    assert 2 * chance < sub["text"] < sub["both"] - 0.1, sub
    assert 2 * chance < sub["image"] < sub["both"] - 0.1, sub
    # The text carries the topic, the image what tells sub-topics of a topic apart.
    assert neighbour_agreement(txt, truth["topic"]) > 0.9 > neighbour_agreement(img, truth["topic"])
    assert neighbour_agreement(truth["latent"], truth["subtopic"]) > sub["both"]


def test_neighbour_agreement_on_a_hand_worked_case() -> None:
    # Two tight pairs far apart, and a fifth point in the first pair's group but nearer the second pair.
    emb = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [0.5, 1.0]])
    groups = np.array([0, 0, 1, 1, 0])
    # k = 1: items 0..3 find their pair-mate (hits); item 4 finds item 3 (a miss).
    assert neighbour_agreement(emb, groups, k=1) == pytest.approx(4 / 5)
    assert neighbour_agreement(emb, groups, k=1, max_queries=5) == pytest.approx(4 / 5)
    with pytest.raises(
        ValueError, match=r"expected emb \(N, D\) and groups \(N,\), found \(5, 2\) and \(4,\)"
    ):
        neighbour_agreement(emb, groups[:4])
    with pytest.raises(ValueError, match="expected 1 <= k < N = 5, found k = 5"):
        neighbour_agreement(emb, groups, k=5)
    # Several groupings from one neighbour search: the same as scoring each alone.
    coarse = np.array([0, 0, 0, 0, 1])
    both = neighbour_agreements(emb, {"fine": groups, "coarse": coarse}, k=1)
    assert both == {
        "fine": pytest.approx(4 / 5),
        "coarse": pytest.approx(neighbour_agreement(emb, coarse, k=1)),
    }
    assert both["coarse"] == pytest.approx(4 / 5)  # item 4 (alone in its group) misses; the rest hit
    with pytest.raises(ValueError, match=r"and coarse \(N,\), found \(5, 2\) and \(3,\)"):
        neighbour_agreements(emb, {"fine": groups, "coarse": coarse[:3]})
