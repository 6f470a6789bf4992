"""The feature table's settings (qin/data/features.py): the default is today's inputs, a bad entry is refused
naming its key, and the model maps raw values to ids as the table says (hash, oov)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qin.data import features as F
from qin.data import schema
from qin.models.blocks import map_ids
from qin.settings.params import load_params


def test_the_default_table_is_the_challenge_baselines_inputs() -> None:
    table = F.default()
    assert table.columns == (*schema.LEVELS, schema.TARGET, schema.HISTORY)
    assert [f.col for f in table.item] == [schema.TARGET, schema.TAGS, schema.ITEM_EMB]
    assert table.target.col == schema.TARGET and table.history.col == schema.HISTORY
    assert [f.name for f in table.row] == list(schema.LEVELS)


def test_params_yaml_names_the_default_table_and_a_list_works_as_well(tmp_path: Path) -> None:
    assert load_params("params.yaml").features == F.default()
    (tmp_path / "p.yaml").write_text(
        "features:\n"
        + "".join(f"  - {row}\n" for row in F.default().plain())
        + "  - {name: user_id, kind: categorical, hash: 64}\n"
    )
    table = load_params(tmp_path / "p.yaml").features
    assert [f.name for f in table.row] == [*schema.LEVELS, "user_id"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "u", "kind": "categorical"},
            r"features\[4\] \(u\)': vocab/hash: kind 'categorical' needs exactly one",
        ),
        (
            {"name": "u", "kind": "categorical", "vocab": 3, "colour": 1},
            r"features\[4\] \(u\).colour' is not a setting",
        ),
        ({"name": "u", "kind": "text"}, r"features\[4\] \(u\).kind': expected one of .*found 'text'"),
        (
            {"name": "u", "kind": "dense", "dim": "8"},
            r"features\[4\] \(u\).dim': expected an integer, found '8'",
        ),
        ({"name": "u", "kind": "dense"}, r"dim: expected for a dense feature"),
        (
            {"name": "u", "kind": "sequence", "vocab": 3, "length": 2},
            r"'sequence' is supported for item features only",
        ),
        ({"name": "u", "kind": "categorical", "vocab": 3, "oov": 5}, r"oov: expected an id in 0..2, found 5"),
        (
            {"name": "u", "kind": "categorical", "hash": 8, "oov": 0},
            r"a hashed feature has no out-of-vocabulary id",
        ),
        (
            {"name": "likes_level", "kind": "categorical", "vocab": 3},
            r"expected each name once, found \['likes_level'\]",
        ),
        (
            {"name": "t2", "kind": "target"},
            r"expected exactly one feature of kind 'target', found \['target_item', 't2'\]",
        ),
        ({"name": "u-1", "kind": "categorical", "vocab": 3}, r"name: expected letters, digits and '_'"),
    ],
)
def test_a_bad_entry_is_refused_naming_its_key(entry: dict, message: str) -> None:
    rows = F.default().plain()
    with pytest.raises(ValueError, match=message):
        F.parse([*rows[:4], entry, *rows[4:]])


def test_a_missing_table_file_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("features: params/features/nope.yaml\n")
    with pytest.raises(
        ValueError, match=r"features': expected a feature table file, found 'params/features/nope.yaml'"
    ):
        load_params(tmp_path / "p.yaml")


def test_the_model_maps_raw_values_to_ids_as_the_table_says() -> None:
    hashed = F.Feature(name="u", kind="categorical", hash=10)
    values = torch.tensor([3, 13, -1, 10**12 + 7])
    assert map_ids(hashed, values, 10).tolist() == [3, 3, 9, 7]
    oov = F.Feature(name="u", kind="categorical", vocab=5, oov=0)
    assert map_ids(oov, torch.tensor([1, 4, 5, -2]), 5).tolist() == [1, 4, 0, 0]
    plain = F.Feature(name="u", kind="categorical", vocab=5)
    assert map_ids(plain, torch.tensor([1, 4]), 5).tolist() == [1, 4]
    assert F.outside(plain, np.array([1, 5, -1]), 5).tolist() == [False, True, True]
    assert not F.outside(hashed, np.array([10**12]), 10).any()


def test_a_dense_row_feature_is_checked_at_the_door_and_arrives_as_floats() -> None:
    import pandas as pd

    from qin.serving.request import BadRequest, request_arrays

    table = F.parse([*F.default().plain(), {"name": "ctx", "kind": "dense", "dim": 3}])
    spec = F.FeatureSpec(table=table, sizes={**F.default_spec(50, 9).sizes, "ctx": 3}, n_items=50)
    good = pd.DataFrame(
        {
            "likes_level": [1, 2],
            "views_level": [3, 4],
            "item_id": [5, 6],
            "item_seq": [[1, 2], []],
            "ctx": [[0.5, 1, -2.0], [0, 0, 0]],
        }
    )
    arrays = request_arrays(good, spec, max_len=4)
    assert arrays["ctx"].dtype == np.float32 and arrays["ctx"].tolist() == [[0.5, 1, -2], [0, 0, 0]]
    for cell, found in (([1.0, 2.0], "2 values"), ([1, float("nan"), 2], "values that are not finite"),
                        ("x", "'x'"), ([1, True, 2], "values that are not numbers")):  # fmt: skip
        bad = good.assign(ctx=[[0.0, 0.0, 0.0], cell])
        with pytest.raises(
            BadRequest, match=rf"row 1, column 'ctx': expected a list of 3 finite numbers, found {found}"
        ):
            request_arrays(bad, spec, max_len=4)
