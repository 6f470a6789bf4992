"""The feature table drives the pipeline: a table that adds the user (hashed) and item_feature's text and
image vectors is a settings change that the gate, featurize, every model, the package and the request
checks follow; a package written before the table still loads and scores the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qin.data import features as F
from qin.featurize import Features, featurize
from qin.models import MODELS, build_model, config_class
from qin.serving.inference import legacy_name, load_package
from qin.serving.request import BadRequest, example_request
from qin.settings.params import Params, load_params
from qin.train import train
from qin.validate import ValidationError, validate
from tests.conftest import TINY_PARAMS

TABLES = Path(__file__).resolve().parents[2] / "params" / "features"


def _trained(root: Path, data: Path, table: str) -> Path:
    (root / "params.yaml").write_text(
        TINY_PARAMS.replace("epochs: 2", "epochs: 1").replace(
            "features: params/features/default.yaml", f"features: {TABLES / table}"
        )
    )
    params = load_params(root / "params.yaml")
    validate(data, root / "validation", params.validate, params.features)
    featurize(data, root / "validation", root / "features", params.featurize, features=params.features)
    train(root / "features", root / "model", root / "train.json", params.train)
    return root


@pytest.fixture(scope="module")
def modalities(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _trained(tmp_path_factory.mktemp("modalities"), tiny_data, "modalities.yaml")


@pytest.fixture(scope="module")
def default(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _trained(tmp_path_factory.mktemp("default"), tiny_data, "default.yaml")


def _rows(data: Path, n: int = 50) -> pd.DataFrame:
    rows = pd.read_parquet(data / "test.parquet").head(n)
    rows[F.default().history.col] = rows[F.default().history.col].map(list)
    return rows


def test_the_modalities_table_trains_a_model_on_the_inputs_it_declares(modalities: Path) -> None:
    spec = Features(modalities / "features").spec
    assert spec.sizes["user_id"] == 131_072  # hashed: the buckets, not the data's users
    assert spec.sizes["txt_emb_BERT"] == 768 and spec.sizes["img_emb_CLIPRN50"] == 1024
    scorer = load_package(modalities / "model")
    encoder = scorer.model.features
    assert list(encoder.rows) == ["likes_level", "views_level", "user_id"]
    assert list(encoder.items.embed) == [
        "item_id",
        "item_tags",
        "item_emb_d128",
        "txt_emb_BERT",
        "img_emb_CLIPRN50",
    ]
    assert encoder.items.embed["txt_emb_BERT"].weight.shape == (8, 768)
    assert (modalities / "model" / "items.img_emb_CLIPRN50.npy").exists()
    assert (
        json.loads((modalities / "model" / "model.json").read_text())["features"]["table"]
        == spec.table.plain()
    )


def test_a_request_must_carry_the_declared_row_columns(modalities: Path, tiny_data: Path) -> None:
    scorer = load_package(modalities / "model")
    rows = _rows(tiny_data)
    probs = scorer.predict_frame(rows)
    assert probs.shape == (50,) and np.isfinite(probs).all()
    with pytest.raises(BadRequest, match=r"missing column \['user_id'\]"):
        scorer.predict_frame(rows.drop(columns=["user_id"]))
    # An unseen user takes its hash bucket like any other; extra columns are ignored.
    unseen = rows.assign(user_id=rows["user_id"] + 10**12, extra="x")
    assert np.isfinite(scorer.predict_frame(unseen)).all()
    with pytest.raises(BadRequest, match=r"row 0, column 'user_id': expected an integer, found 'u1'"):
        scorer.predict_frame(rows.assign(user_id=["u1", *rows["user_id"].tolist()[1:]]))


def test_the_example_request_is_the_declared_columns_and_scores(modalities: Path) -> None:
    scorer = load_package(modalities / "model")
    example = example_request(scorer.spec)
    assert list(example.columns) == ["likes_level", "views_level", "user_id", "item_id", "item_seq"]
    assert np.isfinite(scorer.predict_frame(example)).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_takes_the_declared_inputs(modalities: Path, name: str) -> None:
    feats = Features(modalities / "features")
    items = {k: torch.from_numpy(v) for k, v in feats.items().items()}
    model = build_model(config_class(name)(name=name, embedding_dim=8), feats.spec, items).eval()
    valid = feats.split("valid")
    from qin.models.blocks import Batch

    batch = Batch(**{c: torch.from_numpy(np.asarray(v[:32])) for c, v in valid.items() if c != "label"})
    assert model(batch).shape == (32,)


def test_a_package_written_before_the_table_loads_and_scores_the_same(
    default: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """The package layout before the feature table: item_tags.npy and item_emb.npy, fixed vocabularies in
    model.json, the layers under their old names."""
    new, old = default / "model", tmp_path / "old"
    shutil.copytree(new, old)
    config = json.loads((old / "model.json").read_text())
    spec = F.FeatureSpec.read(config["features"])
    config["features"] = {"n_items": spec.n_items, "n_tags": spec.sizes["item_tags"], "tags_per_item": 5,
                          "item_emb_dim": 128, "num_levels": 11}  # fmt: skip
    (old / "model.json").write_text(json.dumps(config))
    (old / "items.item_tags.npy").rename(old / "item_tags.npy")
    (old / "items.item_emb_d128.npy").rename(old / "item_emb.npy")
    weights = torch.load(new / "weights.pt", weights_only=True)
    inverse = {legacy_name(k): k for k in _old_names(weights)}
    torch.save({inverse[k]: v for k, v in weights.items()}, old / "weights.pt")
    assert any(
        k.startswith("features.items.id_emb.") for k in torch.load(old / "weights.pt", weights_only=True)
    )
    rows = _rows(tiny_data)
    np.testing.assert_array_equal(
        load_package(old).predict_frame(rows), load_package(new).predict_frame(rows)
    )


def _old_names(weights: dict) -> list[str]:
    """The names the layers had before the table, for the default table's weights."""
    old = {
        "features.items.embed.item_id.": "features.items.id_emb.",
        "features.items.embed.item_tags.": "features.items.tag_emb.",
        "features.items.embed.item_emb_d128.": "features.items.mm_proj.",
        "features.rows.likes_level.": "features.likes.",
        "features.rows.views_level.": "features.views.",
    }
    out = []
    for k in weights:
        prefix = next((p for p in old if k.startswith(p)), None)
        out.append(k if prefix is None else old[prefix] + k.removeprefix(prefix))
    return out


def test_the_gate_requires_the_files_and_columns_the_table_declares(tiny_data: Path, tmp_path: Path) -> None:
    params = load_params_for(tmp_path)
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "item_feature.parquet").unlink()
    with pytest.raises(
        ValidationError, match=r"item_feature.parquet: column '<file>': expect the file to exist"
    ):
        validate(data, tmp_path / "v1", params.validate, F.load(str(TABLES / "modalities.yaml")))
    device = F.parse([*F.default().plain(), {"name": "device", "kind": "categorical", "vocab": 3}])
    with pytest.raises(
        ValidationError, match=r"train.parquet: column 'device': .*expected type int64.*found 'missing'"
    ):
        validate(data, tmp_path / "v2", params.validate, device)


def load_params_for(root: Path) -> Params:
    (root / "params.yaml").write_text(TINY_PARAMS)
    return load_params(root / "params.yaml")
