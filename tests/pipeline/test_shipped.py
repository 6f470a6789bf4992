"""The challenge's files as shipped (qin/data/shipped.py): test.parquet with its own shuffled `ID` column,
with or without a dummy label, fixed-size lists and narrower integers. They import, pass the gate, give
the same arrays as the contract's storage, train, and predict a submission keyed by the file's IDs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qin.data.importer import import_files
from qin.data.shipped import reshape_as_shipped
from qin.featurize import Features, featurize
from qin.predict import predict, read_submission
from qin.settings.params import load_params
from qin.train import train
from qin.validate import ValidationError, validate
from tests.conftest import TINY_PARAMS


@pytest.fixture(scope="module")
def shipped(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny data reshaped as shipped (test label present), imported, validated, featurized and trained
    one epoch on; and the same steps' features from the contract's storage, to compare."""
    root = tmp_path_factory.mktemp("shipped")
    (root / "params.yaml").write_text(TINY_PARAMS.replace("epochs: 2", "epochs: 1"))
    params = load_params(root / "params.yaml")
    reshaped = reshape_as_shipped(tiny_data, root / "as_shipped", test_label=True, seed=3)
    import_files(root / "as_shipped", root / "data")
    summary = validate(root / "data", root / "validation", params.validate)
    featurize(root / "data", root / "validation", root / "features", params.featurize)
    validate(tiny_data, root / "validation_contract", params.validate)
    featurize(tiny_data, root / "validation_contract", root / "features_contract", params.featurize)
    train(root / "features", root / "model", root / "train.json", params.train)
    return {"root": root, "params": params, "ids": reshaped["ids"], "summary": summary}


def test_the_shipped_storage_passes_the_gate_and_says_the_test_label_is_ignored(shipped: dict) -> None:
    root, summary = shipped["root"], shipped["summary"]
    assert pq.read_schema(root / "data" / "test.parquet").names[0] == "ID"
    assert pa.types.is_fixed_size_list(pq.read_schema(root / "data" / "train.parquet").field("item_seq").type)
    assert summary.passed
    assert any("column 'label' is present and ignored" in n for n in summary.files["test"]["notes"])
    assert "column 'label' is present and ignored" in (root / "validation" / "report.md").read_text()
    ids = shipped["ids"]
    assert len(np.unique(ids)) == len(ids) and not (np.sort(ids) == np.arange(len(ids))).all()
    assert not (np.diff(ids) > 0).all()  # shuffled


def test_the_shipped_storage_gives_the_contracts_arrays(shipped: dict) -> None:
    ours, theirs = Features(shipped["root"] / "features"), Features(shipped["root"] / "features_contract")
    assert set(ours.manifest["arrays"]) == set(theirs.manifest["arrays"]) - {
        n for n in theirs.manifest["arrays"] if n.endswith("_truth")
    }
    for name, spec in ours.manifest["arrays"].items():
        assert spec == theirs.manifest["arrays"][name], name
        np.testing.assert_array_equal(ours.array(name), theirs.array(name), err_msg=name)


@pytest.mark.parametrize("test_label", [True, False], ids=["with a test label", "without"])
def test_the_submission_is_keyed_by_the_files_ids_in_row_order(
    shipped: dict, tiny_data: Path, tmp_path: Path, test_label: bool
) -> None:
    root, params = shipped["root"], shipped["params"]
    data = root / "data"
    if not test_label:
        data = tmp_path / "data"
        reshape_as_shipped(tiny_data, data, test_label=False, seed=3)
    manifest = predict(data, root / "model", tmp_path / "predict", params)
    submission = read_submission(tmp_path / "predict" / "submission.zip")
    np.testing.assert_array_equal(submission["ID"].to_numpy(), shipped["ids"])
    assert manifest.ids == "the test file's ID column"
    # The same rows in the contract's storage (no ID) get the same scores, keyed by row position.
    plain = predict(tiny_data, root / "model", tmp_path / "plain", params)
    assert plain.ids == "row positions 0..N-1"
    positions = read_submission(tmp_path / "plain" / "submission.zip")
    np.testing.assert_array_equal(positions["ID"].to_numpy(), np.arange(len(positions)))
    np.testing.assert_array_equal(submission["Task2"].to_numpy(), positions["Task2"].to_numpy())


def _with_ids(data: Path, ids: pa.Array) -> None:
    table = pq.read_table(data / "test.parquet")
    pq.write_table(table.set_column(0, "ID", ids), data / "test.parquet")


@pytest.mark.parametrize(
    ("ids", "fragments"),
    [
        (
            lambda n: np.r_[np.arange(n - 1), 0],
            ("expect_column_values_to_be_unique", "2 offending rows", "[0, 0]"),
        ),
        (lambda n: pa.array([None, *range(1, n)], pa.int64()), ("expect_column_values_to_not_be_null",)),
        (lambda n: np.arange(n) + 0.5, ("(expected one of the types int8", "found 'double'")),
    ],
    ids=["duplicate", "null", "not integers"],
)
def test_a_bad_id_column_is_refused_by_name(
    shipped: dict, tiny_data: Path, tmp_path: Path, ids, fragments: tuple[str, ...]
) -> None:
    data = tmp_path / "data"
    reshape_as_shipped(tiny_data, data, seed=3)
    n = pq.ParquetFile(data / "test.parquet").metadata.num_rows
    column = ids(n)
    _with_ids(data, column if isinstance(column, pa.Array) else pa.array(column))
    with pytest.raises(ValidationError) as err:
        validate(data, tmp_path / "v", shipped["params"].validate)
    line = next(x for x in str(err.value).splitlines() if "column 'ID'" in x)
    assert "test.parquet" in line and all(f in line for f in fragments), line
