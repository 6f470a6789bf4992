"""The validation gate: clean data passes; each corruption is refused by name; nothing downstream runs."""

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qin.config import FeaturizeConfig, ValidateConfig
from qin.featurize import featurize
from qin.io import read_json
from qin.validate import ValidationError, validate


def _edit(path: Path, fn: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(fn(pq.read_table(path)), path)


def _set(table: pa.Table, column: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), column, values)


def _label_two(t: pa.Table) -> pa.Table:
    lab = t["label"].to_numpy().copy()
    lab[[3, 9]] = 2.0
    return _set(t, "label", pa.array(lab))


def _history_id_out_of_range(t: pa.Table) -> pa.Table:
    seq = np.stack(t["item_seq"].to_numpy(zero_copy_only=False))
    seq[4, -1] = 10_000
    return _set(t, "item_seq", pa.array(list(seq)))


def _string_ids(t: pa.Table) -> pa.Table:
    return _set(t, "item_id", pa.array([str(v) for v in t["item_id"].to_pylist()]))


CORRUPTIONS = {
    "label 2": (
        "train",
        _label_two,
        "train.parquet: column 'label': expect_column_values_to_be_in_set",
        "2.0",
    ),
    "missing column": ("valid", lambda t: t.drop_columns(["likes_level"]), "column 'likes_level'", "missing"),
    "history id out of range": ("test", _history_id_out_of_range, "column 'item_seq'", "10000"),
    "string ids": ("train", _string_ids, "column 'item_id'", "string"),
    "level 11": (
        "valid",
        lambda t: _set(t, "views_level", pa.array([11] * t.num_rows)),
        "'views_level'",
        "11",
    ),
}


def test_clean_data_passes_and_writes_the_report(tiny_data: Path, tmp_path: Path) -> None:
    summary = validate(tiny_data, tmp_path / "v", ValidateConfig())
    assert summary["passed"]
    assert read_json(tmp_path / "v" / "summary.json")["files"]["train"]["md5"]
    assert "PASSED" in (tmp_path / "v" / "report.md").read_text()


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corruption_is_refused_by_name_and_blocks_featurize(
    case: str, tiny_data: Path, tmp_path: Path
) -> None:
    split, corrupt, where, example = CORRUPTIONS[case]
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    _edit(data / f"{split}.parquet", corrupt)
    with pytest.raises(ValidationError) as err:
        validate(data, tmp_path / "v", ValidateConfig())
    message = str(err.value)
    assert where in message and example in message, message
    assert "FAILED" in (tmp_path / "v" / "report.md").read_text()
    with pytest.raises(ValidationError, match="failed validation"):
        featurize(data, tmp_path / "v", tmp_path / "features", FeaturizeConfig())
    assert not (tmp_path / "features").exists()


def test_featurize_refuses_data_changed_after_validation(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    validate(data, tmp_path / "v", ValidateConfig())
    _edit(data / "train.parquet", _label_two)
    with pytest.raises(ValidationError, match=r"train\.parquet: changed since it was validated"):
        featurize(data, tmp_path / "v", tmp_path / "features", FeaturizeConfig())
    assert not (tmp_path / "features").exists()


def test_featurize_writes_compact_arrays(tiny_data: Path, tmp_path: Path) -> None:
    from qin.featurize import Features

    validate(tiny_data, tmp_path / "v", ValidateConfig())
    featurize(tiny_data, tmp_path / "v", tmp_path / "f", FeaturizeConfig(max_len=8))
    feats = Features(tmp_path / "f")
    seq = feats.array("train_item_seq")
    assert seq.dtype == np.int32 and seq.shape[1] == 8
    full = np.stack(pq.read_table(tiny_data / "train.parquet")["item_seq"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(seq, full[:, -8:])  # the most recent items are kept
    assert feats.array("item_emb").dtype == np.float32
    assert feats.has("valid_truth") and not feats.has("train_truth")
