"""The validation gate: clean data passes; each corruption is refused with its own message, naming the file
and column; nothing downstream is written."""

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qin.featurize import featurize
from qin.runs.io import read_json
from qin.settings.sections import FeaturizeConfig, ValidateConfig
from qin.validate import ValidationError, validate

Corrupt = Callable[[Path], None]


def _edit(name: str, fn: Callable[[pa.Table], pa.Table]) -> Corrupt:
    def apply(data: Path) -> None:
        path = data / f"{name}.parquet"
        pq.write_table(fn(pq.read_table(path)), path)

    return apply


def _set(table: pa.Table, column: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), column, values)


def _lists(table: pa.Table, column: str) -> list:
    return [list(v) for v in table[column].to_pylist()]


def _label_two(t: pa.Table) -> pa.Table:
    lab = t["label"].to_numpy().copy()
    lab[[3, 9]] = 2.0
    return _set(t, "label", pa.array(lab))


def _history_id(value: int) -> Callable[[pa.Table], pa.Table]:
    def fn(t: pa.Table) -> pa.Table:
        seq = _lists(t, "item_seq")
        seq[4][-1] = value
        return _set(t, "item_seq", pa.array(seq, pa.list_(pa.int64())))

    return fn


def _ragged(t: pa.Table) -> pa.Table:
    seq = _lists(t, "item_seq")
    seq[7] = seq[7][1:]
    return _set(t, "item_seq", pa.array(seq, pa.list_(pa.int64())))


def _emb(row: int, value: float, length: int = 128) -> Callable[[pa.Table], pa.Table]:
    def fn(t: pa.Table) -> pa.Table:
        emb = _lists(t, "item_emb_d128")
        emb[row] = (emb[row] + [0.0])[:length]
        emb[row][0] = value
        return _set(t, "item_emb_d128", pa.array(emb, pa.list_(pa.float32())))

    return fn


def _vector(column: str, row: int, value: float, length: int | None = None) -> Callable[[pa.Table], pa.Table]:
    """Set item_feature's modality vector of `row` to start with `value` (and cut it to `length`)."""

    def fn(t: pa.Table) -> pa.Table:
        vectors = t[column].to_pylist()
        vectors[row] = [value, *vectors[row][1:]][:length]
        return _set(t, column, pa.array(vectors, pa.list_(pa.float32())))

    return fn


def _tags(row: int, tags: list[int]) -> Callable[[pa.Table], pa.Table]:
    def fn(t: pa.Table) -> pa.Table:
        all_tags = _lists(t, "item_tags")
        all_tags[row] = tags
        return _set(t, "item_tags", pa.array(all_tags, pa.list_(pa.int64())))

    return fn


def _swap_rows(t: pa.Table) -> pa.Table:
    order = np.arange(t.num_rows)
    order[[5, 6]] = [6, 5]
    return t.take(pa.array(order))


def _duplicate_id(t: pa.Table) -> pa.Table:
    ids = t["item_id"].to_numpy().copy()
    ids[8] = 7
    return _set(t, "item_id", pa.array(ids))


def _truncate(name: str) -> Corrupt:
    def apply(data: Path) -> None:
        path = data / f"{name}.parquet"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return apply


def _delete(name: str) -> Corrupt:
    return lambda data: (data / f"{name}.parquet").unlink()


def _nulls(column: str) -> Callable[[pa.Table], pa.Table]:
    def fn(t: pa.Table) -> pa.Table:
        values = t[column].to_pylist()
        values[2] = None
        return _set(t, column, pa.array(values, t.schema.field(column).type))

    return fn


# name: (corruption, what the message must name: file, column, and a fragment of what was found/expected)
CORRUPTIONS: dict[str, tuple[Corrupt, tuple[str, ...]]] = {
    "missing column": (
        _edit("valid", lambda t: t.drop_columns(["likes_level"])),
        ("valid.parquet", "column 'likes_level'", "expected type int64", "found 'missing'"),
    ),
    "string ids": (
        _edit("train", lambda t: _set(t, "item_id", pa.array([str(v) for v in t["item_id"].to_pylist()]))),
        ("train.parquet", "column 'item_id'", "expected type int64", "found 'string'"),
    ),
    "history id out of range": (
        _edit("test", _history_id(10_000)),
        ("test.parquet", "column 'item_seq'", "on item_seq.max", "1 offending rows", "10000"),
    ),
    "negative history id": (
        _edit("train", _history_id(-3)),
        ("train.parquet", "column 'item_seq'", "on item_seq.min", "-3"),
    ),
    "ragged history lengths": (
        _edit("train", _ragged),
        ("train.parquet", "column 'item_seq'", "expect_column_unique_value_count_to_be_between", "found 2"),
    ),
    "NaN in an embedding": (
        _edit("item_info", _emb(11, float("nan"))),
        ("item_info.parquet", "column 'item_emb_d128'", "on item_emb_d128.nonfinite", "1 offending rows"),
    ),
    "inf in an embedding": (
        _edit("item_info", _emb(12, float("inf"))),
        ("item_info.parquet", "column 'item_emb_d128'", "on item_emb_d128.nonfinite", "1 offending rows"),
    ),
    "wrong embedding length": (
        _edit("item_info", _emb(13, 0.5, length=127)),
        ("item_info.parquet", "column 'item_emb_d128'", "on item_emb_d128.len", "[127"),
    ),
    "misordered item ids": (
        _edit("item_info", _swap_rows),
        (
            "item_info.parquet",
            "column 'item_id'",
            "expect_column_pair_values_to_be_equal",
            "[[6, 5], [5, 6]]",
        ),
    ),
    "duplicated item id": (
        _edit("item_info", _duplicate_id),
        ("item_info.parquet", "column 'item_id'", "expect_column_pair_values_to_be_equal", "[[7, 8]]"),
    ),
    "tag id beyond the vocabulary": (
        _edit("item_info", _tags(20, [1, 2, 20_000, 0, 0])),
        ("item_info.parquet", "column 'item_tags'", "on item_tags.max", "20000"),
    ),
    "four tags": (
        _edit("item_info", _tags(21, [1, 2, 3, 4])),
        ("item_info.parquet", "column 'item_tags'", "on item_tags.len", "[4"),
    ),
    "padding row with tags": (
        _edit("item_info", _tags(0, [5, 0, 0, 0, 0])),
        ("item_info.parquet", "column 'item_tags'", "where row_index==0", "[5"),
    ),
    "label 2": (
        _edit("train", _label_two),
        ("train.parquet", "column 'label'", "expect_column_values_to_be_in_set", "[2.0, 2.0]"),
    ),
    "null label": (
        _edit("valid", _nulls("label")),
        ("valid.parquet", "column 'label'", "expect_column_values_to_not_be_null", "1 offending rows"),
    ),
    "level 11": (
        _edit("valid", lambda t: _set(t, "views_level", pa.array([11] * t.num_rows))),
        ("valid.parquet", "column 'views_level'", "in [0, 10]", "[11, 11"),
    ),
    "target id 0": (
        _edit("valid", lambda t: _set(t, "item_id", pa.array([0] * t.num_rows))),
        ("valid.parquet", "column 'item_id'", "in [1, 400]", "[0, 0"),
    ),
    "empty file": (
        _edit("valid", lambda t: t.slice(0, 0)),
        ("valid.parquet", "column '<table>'", "expect_table_row_count_to_be_between", "found 0"),
    ),
    "truncated parquet": (
        _truncate("train"),
        ("train.parquet", "column '<file>'", "expect a readable parquet file"),
    ),
    "missing file": (
        _delete("test"),
        ("test.parquet", "column '<file>'", "expect the file to exist", "no such file"),
    ),
    "text vector of 767": (
        _edit("item_feature", _vector("txt_emb_BERT", 30, 0.5, length=767)),
        ("item_feature.parquet", "column 'txt_emb_BERT'", "on txt_emb_BERT.len, in [768, 768]", "[767]"),
    ),
    "NaN in an image vector": (
        _edit("item_feature", _vector("img_emb_CLIPRN50", 31, float("nan"))),
        (
            "item_feature.parquet",
            "column 'img_emb_CLIPRN50'",
            "on img_emb_CLIPRN50.nonfinite",
            "1 offending rows",
        ),
    ),
    "inf in a text vector": (
        _edit("item_feature", _vector("txt_emb_BERT", 32, float("-inf"))),
        ("item_feature.parquet", "column 'txt_emb_BERT'", "on txt_emb_BERT.nonfinite", "1 offending rows"),
    ),
    "item_feature with a padding row": (
        _edit("item_feature", lambda t: _set(t, "item_id", pa.array(np.arange(t.num_rows)))),
        (
            "item_feature.parquet",
            "column 'item_id'",
            "expect_column_pair_values_to_be_equal",
            "[[0, 1], [1, 2]",
        ),
    ),
    "item_feature missing the last item": (
        _edit("item_feature", lambda t: t.slice(0, t.num_rows - 1)),
        ("item_feature.parquet", "column '<table>'", "expect_table_row_count_to_equal (= 400)", "found 399"),
    ),
    "image vectors as strings": (
        _edit("item_feature", lambda t: _set(t, "img_emb_CLIPRN50", pa.array(["x"] * t.num_rows))),
        ("item_feature.parquet", "column 'img_emb_CLIPRN50'", "expected type list<float>", "found 'string'"),
    ),
    "test file with the wrong columns": (
        _edit(
            "test", lambda t: t.rename_columns([c if c != "item_seq" else "history" for c in t.column_names])
        ),
        ("test.parquet", "column 'item_seq'", "found 'missing'", "column 'history'", "no such column"),
    ),
}


def test_clean_data_passes_and_writes_the_reports(tiny_data: Path, tmp_path: Path) -> None:
    summary = validate(tiny_data, tmp_path / "v", ValidateConfig())
    assert summary.passed
    assert read_json(tmp_path / "v" / "summary.json")["files"]["train"]["md5"]
    assert "PASSED" in (tmp_path / "v" / "report.md").read_text()
    assert (tmp_path / "v" / "data_docs" / "index.html").exists()
    assert summary.files["item_feature"]["md5"]  # validated when present


def test_data_without_item_feature_passes(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "item_feature.parquet").unlink()
    summary = validate(data, tmp_path / "v", ValidateConfig())
    assert summary.passed and "item_feature" not in summary.files


def test_a_test_file_may_carry_an_unused_label_column(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    _edit("test", lambda t: t.append_column("label", pa.array(np.zeros(t.num_rows))))(data)
    assert validate(data, tmp_path / "v", ValidateConfig()).passed


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_is_refused_by_name_and_blocks_featurize(
    case: str, tiny_data: Path, tmp_path: Path
) -> None:
    corrupt, fragments = CORRUPTIONS[case]
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    corrupt(data)
    with pytest.raises(ValidationError) as err:
        validate(data, tmp_path / "v", ValidateConfig())
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert "FAILED" in (tmp_path / "v" / "report.md").read_text()
    assert not read_json(tmp_path / "v" / "summary.json")["passed"]
    with pytest.raises(ValidationError, match="failed validation"):
        featurize(data, tmp_path / "v", tmp_path / "features", FeaturizeConfig())
    assert not (tmp_path / "features").exists()


def test_the_table_covers_at_least_twelve_corruptions() -> None:
    assert len(CORRUPTIONS) >= 12


def test_featurize_refuses_data_changed_after_validation(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    validate(data, tmp_path / "v", ValidateConfig())
    _edit("train", _label_two)(data)
    with pytest.raises(ValidationError, match=r"train\.parquet: changed since it was validated"):
        featurize(data, tmp_path / "v", tmp_path / "features", FeaturizeConfig())
    assert not (tmp_path / "features").exists()


def test_featurize_writes_compact_memory_mapped_arrays(tiny_data: Path, tmp_path: Path) -> None:
    from qin.featurize import Features

    validate(tiny_data, tmp_path / "v", ValidateConfig())
    manifest = featurize(tiny_data, tmp_path / "v", tmp_path / "f", FeaturizeConfig(max_len=8))
    feats = Features(tmp_path / "f")
    seq = feats.array("train_item_seq")
    assert isinstance(seq, np.memmap) and seq.dtype == np.int32 and seq.shape[1] == 8
    full = np.stack(pq.read_table(tiny_data / "train.parquet")["item_seq"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(seq, full[:, -8:])  # the most recent items are kept
    labels = pq.read_table(tiny_data / "train.parquet")["label"].to_numpy()
    np.testing.assert_array_equal(feats.array("train_label"), labels)
    assert feats.array("items.item_emb_d128").dtype == np.float32
    assert feats.has("valid_truth") and not feats.has("train_truth")
    assert set(manifest.sources) == {"train", "valid", "test", "item_info"}
    assert manifest.arrays["train_item_seq"]["shape"] == [len(labels), 8]


def test_the_gate_knows_a_stored_type_for_every_contract_column_and_no_other() -> None:
    from qin.data import features as F
    from qin.data import schema
    from qin.validate import ALLOWED_TYPES, OPTIONAL_COLUMNS

    columns = {f.name for name in (*schema.FILES, *schema.OPTIONAL_FILES) for f in schema.schema_for(name)}
    assert set(ALLOWED_TYPES) == columns | {c for cs in OPTIONAL_COLUMNS.values() for c in cs}
    assert {schema.TXT_EMB, schema.IMG_EMB, schema.TITLE} <= columns - {
        f.name for name in schema.FILES for f in schema.schema_for(name)
    }
    assert set(F.default().columns) <= columns  # the default feature table reads contract columns
