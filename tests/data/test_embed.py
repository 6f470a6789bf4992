"""The embed stage (qin/embed.py): given keeps the shipped item table, pca is the organisers' baseline and
is exact on low-rank input, a method that needs the items' features is refused without them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from qin.data import schema
from qin.embed import ITEMS, REPORT, embed
from qin.embedding.pca import fit_pca
from qin.featurize import featurize, fixed_list
from qin.settings.sections import EmbedConfig, FeaturizeConfig, ValidateConfig
from qin.validate import validate


def test_pca_recovers_a_low_rank_input_exactly() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 6)) @ rng.standard_normal((6, 40)) + 3.0).astype(np.float64)
    pca = fit_pca(x, 6)
    assert pca.explained.sum() == pytest.approx(1.0, abs=1e-9)  # six components hold all the variance
    z = (x - pca.mean) / pca.std
    scores = z @ pca.components
    np.testing.assert_allclose(scores @ pca.components.T, z, atol=1e-8)  # reconstructed exactly
    np.testing.assert_allclose(pca.components.T @ pca.components, np.eye(6), atol=1e-10)
    assert np.sqrt(np.mean(pca.transform(x) ** 2)) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match=r"expected .* D, N >= dim = 41"):
        fit_pca(x, 41)


@pytest.fixture
def validated(tiny_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    validate(data, tmp_path / "validation", ValidateConfig())
    return data, tmp_path / "validation"


def _emb(folder: Path) -> np.ndarray:
    return fixed_list(pq.read_table(folder / ITEMS), schema.ITEM_EMB)


def test_given_keeps_the_shipped_table_and_pca_replaces_only_its_embedding(
    validated: tuple[Path, Path], tmp_path: Path
) -> None:
    data, validation = validated
    report = embed(data, validation, tmp_path / "given", EmbedConfig(method="given"))
    assert pq.read_table(tmp_path / "given" / ITEMS).equals(pq.read_table(data / ITEMS))
    assert report.method == "given" and "shipped" in report.neighbour_agreement["subtopic"]

    report = embed(data, validation, tmp_path / "pca", EmbedConfig(method="pca"))
    shipped, pca = pq.read_table(data / ITEMS), pq.read_table(tmp_path / "pca" / ITEMS)
    assert pca.schema == shipped.schema and pca.num_rows == shipped.num_rows
    assert pca.drop([schema.ITEM_EMB]).equals(shipped.drop([schema.ITEM_EMB]))
    emb = _emb(tmp_path / "pca")
    assert emb.shape == (shipped.num_rows, schema.ITEM_EMB_DIM) and not emb[0].any()  # row 0: padding
    assert not np.array_equal(emb, _emb(tmp_path / "given")) and np.isfinite(emb).all()
    assert 0 < report.explained_variance <= 1
    assert set(report.neighbour_agreement["subtopic"]) == {
        "shipped",
        "text",
        "image",
        "text+image",
        "result",
    }
    again = embed(data, validation, tmp_path / "again", EmbedConfig(method="pca"))
    assert np.array_equal(_emb(tmp_path / "again"), emb)  # deterministic
    assert (tmp_path / "pca" / REPORT).exists()
    assert again.explained_variance == report.explained_variance


def test_pca_without_the_items_features_is_refused_by_name(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / f"{schema.FEATURE_FILE}.parquet").unlink()
    validate(data, tmp_path / "validation", ValidateConfig())
    with pytest.raises(
        FileNotFoundError, match=r"item_feature.parquet: not found; params key 'embed.method'"
    ):
        embed(data, tmp_path / "validation", tmp_path / "out", EmbedConfig(method="pca"))
    assert not (tmp_path / "out").exists()
    embed(data, tmp_path / "validation", tmp_path / "out", EmbedConfig(method="given"))  # given still works
    assert (tmp_path / "out" / ITEMS).exists()


def test_learned_reads_no_label_and_only_the_training_histories(
    validated: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet

    from qin.settings.sections import FusionConfig

    data, validation = validated
    reads: list[tuple[str, list[str] | None]] = []
    read_table = pyarrow.parquet.read_table

    def recording(source, *args, columns=None, **kwargs):
        reads.append((Path(source).name, columns))
        return read_table(source, *args, columns=columns, **kwargs)

    class RecordingFile(pyarrow.parquet.ParquetFile):  # a sample is read a batch at a time
        def __init__(self, source, *args, **kwargs):
            super().__init__(source, *args, **kwargs)
            self.file_name = Path(source).name

        def iter_batches(self, *args, columns=None, **kwargs):
            reads.append((self.file_name, columns))
            return super().iter_batches(*args, columns=columns, **kwargs)

        def read(self, *args, **kwargs):
            raise AssertionError(f"{self.file_name}: read whole")

    monkeypatch.setattr(pyarrow.parquet, "read_table", recording)
    monkeypatch.setattr(pyarrow.parquet, "ParquetFile", RecordingFile)  # the ways into a file
    cfg = EmbedConfig(
        method="learned", learned=FusionConfig(epochs=1, pairs_per_epoch=2048, history_rows=500)
    )
    report = embed(data, validation, tmp_path / "learned", cfg)
    assert ("train.parquet", [schema.HISTORY]) in reads
    assert {name for name, _ in reads} <= {
        "train.parquet",
        f"{schema.ITEM_FILE}.parquet",
        f"{schema.FEATURE_FILE}.parquet",
        schema.ITEM_TRUTH_FILE,
    }
    assert all(columns == [schema.HISTORY] for name, columns in reads if name == "train.parquet")
    assert report.learned["pairs"] > 0 and _emb(tmp_path / "learned").shape[1] == schema.ITEM_EMB_DIM


def test_featurize_refuses_an_embed_folder_without_its_item_table(tiny_data: Path, tmp_path: Path) -> None:
    validate(tiny_data, tmp_path / "validation", ValidateConfig())
    (tmp_path / "embed").mkdir()
    with pytest.raises(FileNotFoundError, match=r"embed/item_info.parquet: not found; expected the item"):
        featurize(tiny_data, tmp_path / "validation", tmp_path / "out", FeaturizeConfig(), tmp_path / "embed")
    assert not (tmp_path / "out").exists()
