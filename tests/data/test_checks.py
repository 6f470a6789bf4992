"""The gate's checks by kind (qin/data/checks.py): generated from the contract and the feature table, and
aggregated batch by batch to the same figures, counts and examples whatever the batch size."""

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import qin.data.checks as C
from qin.data import features as F
from qin.data import schema
from qin.data.schema import Column
from qin.settings.sections import ValidateConfig
from qin.validate import ValidationError, validate

N_ITEMS = 50


def _rows(n: int = 23) -> pa.Table:
    """A train file with one fault of each row kind, spread over the file (so over several batches)."""
    rng = np.random.default_rng(0)
    seq = rng.integers(0, N_ITEMS + 1, (n, 4)).tolist()
    seq[5][0], seq[17][3] = -1, N_ITEMS + 9  # an id below 0, one past the items
    seq[20] = seq[20][:3]  # a second length
    likes = rng.integers(0, schema.NUM_LEVELS, n)
    likes[[2, 19]] = 11
    target = rng.integers(1, N_ITEMS + 1, n)
    target[12] = 0
    label = rng.integers(0, 2, n).astype(float)
    label[[9, 21]] = 2.0
    return pa.table(
        {
            schema.USER: pa.array([None if i == 14 else i for i in range(n)], pa.int64()),
            schema.HISTORY: pa.array(seq, pa.list_(pa.int64())),
            schema.LEVELS[0]: likes,
            schema.LEVELS[1]: np.zeros(n, np.int64),
            schema.TARGET: target,
            schema.LABEL: label,
            "device": rng.integers(0, 3, n),
        }
    )


def _figures(path: Path, checks: list[C.Check], batch_rows: int) -> dict[str, tuple]:
    tallies = C.scan(pq.ParquetFile(path), checks, batch_rows)
    return {t.check.key: (t.observed(), t.examples) for t in tallies}


@pytest.mark.parametrize("batch_rows", [1, 3, 7])
def test_the_figures_do_not_depend_on_the_batch_size(tmp_path: Path, batch_rows: int) -> None:
    path = tmp_path / "train.parquet"
    pq.write_table(_rows(), path, row_group_size=10)
    checks = C.checks_for("train", C.file_columns("train", F.default()), N_ITEMS, ValidateConfig())
    whole = _figures(path, checks, 1_000_000)
    assert _figures(path, checks, batch_rows) == whole
    assert whole[f"{schema.HISTORY}.min:between"] == (1, [-1])
    assert whole[f"{schema.HISTORY}.max:between"] == (1, [N_ITEMS + 9])
    assert whole[f"{schema.HISTORY}.len:distinct"][0] == 2
    assert whole[f"{schema.LEVELS[0]}:between"] == (2, [11, 11])
    assert whole[f"{schema.TARGET}:between"] == (1, [0])
    assert whole[f"{schema.LABEL}:in_set"] == (2, [2.0, 2.0])
    assert whole[f"{schema.USER}:not_null"] == (1, [])
    assert whole["rows"] == (23, [])


@pytest.mark.parametrize("batch_rows", [2, 1_000])
def test_keys_padding_and_duplicates_are_judged_across_batches(tmp_path: Path, batch_rows: int) -> None:
    ids = np.arange(9)
    ids[[4, 5]] = [5, 4]
    tags = [[0] * 5, *([[1, 2, 0, 0, 0]] * 8)]
    tags[0][2] = 7  # the padding row has a tag
    items = pa.table(
        {
            schema.TARGET: ids,
            schema.TAGS: pa.array(tags, pa.list_(pa.int64())),
            schema.ITEM_EMB: pa.array(np.ones((9, 2), np.float32).tolist(), pa.list_(pa.float32())),
        }
    )
    pq.write_table(items, tmp_path / "item_info.parquet")
    columns = (
        Column(schema.TARGET, "key"),
        *schema.CONTRACT[schema.ITEM_FILE][1:2],
        Column(schema.ITEM_EMB, "dense", size=2),
    )
    checks = C.checks_for(schema.ITEM_FILE, columns, 8, ValidateConfig(tag_vocab=5))
    got = _figures(tmp_path / "item_info.parquet", checks, batch_rows)
    assert got[f"{schema.TARGET}:pair"] == (2, [[5, 4], [4, 5]])
    assert got[f"{schema.TAGS}.max:padding"] == (1, [7])
    assert got[f"{schema.TAGS}.max:between"] == (1, [7])  # tag_vocab 5: ids 0..4
    pq.write_table(pa.table({"ID": [3, 1, 3, 2, 1, 5]}), tmp_path / "ids.parquet")
    unique = C.checks_for("test", (Column("ID", "unique"),), 8, ValidateConfig())
    assert _figures(tmp_path / "ids.parquet", unique, batch_rows)["ID:unique"] == (4, [3, 1, 3, 1])


def test_the_table_s_own_columns_get_their_kind_s_checks() -> None:
    table = F.parse(
        [
            *F.default().plain(),
            {"name": "device", "kind": "categorical", "vocab": 3},
            {"name": "shop", "kind": "categorical", "hash": 64},
            {"name": "region", "kind": "categorical", "vocab": 4, "oov": 0},
        ]
    )
    columns = {c.name: c for c in C.file_columns("train", table)}
    assert [c.name for c in C.file_columns("train", table)][: len(schema.CONTRACT["train"])] == list(
        schema.ROW_SCHEMA.names
    )
    checks = {c.key: c for c in C.checks_for("train", tuple(columns.values()), N_ITEMS, ValidateConfig())}
    assert (checks["device:between"].low, checks["device:between"].high) == (0, 2)
    assert "shop:not_null" in checks and "shop:between" not in checks  # hashed: any integer
    assert "region:between" not in checks  # an oov id: any integer takes it
    assert checks["device:between"].describe() == "expect_column_values_to_be_between (in [0, 2])"


def test_a_declared_column_out_of_its_vocabulary_is_refused_by_name(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for f in tiny_data.iterdir():
        (data / f.name).symlink_to(f)
    device = F.parse([*F.default().plain(), {"name": "device", "kind": "categorical", "vocab": 3}])
    for split in schema.SPLITS:
        table = pq.read_table(tiny_data / f"{split}.parquet")
        values = np.arange(table.num_rows) % 3
        if split == "valid":
            values[[4, 8]] = 3
        (data / f"{split}.parquet").unlink()
        pq.write_table(table.append_column("device", pa.array(values)), data / f"{split}.parquet")
    with pytest.raises(ValidationError) as err:
        validate(data, tmp_path / "v", ValidateConfig(), device)
    (line,) = [x for x in str(err.value).splitlines() if "column 'device'" in x]
    assert "valid.parquet" in line and "in [0, 2]" in line and "2 offending rows; e.g. [3, 3]" in line


@pytest.mark.parametrize("held", [2, 1_000_000], ids=["spilled to disk", "in memory"])
def test_duplicates_are_found_exactly_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: int
) -> None:
    # Held pairs spill to files by value once there are more than `held`: the same rows are found.
    monkeypatch.setattr(C, "UNIQUE_HELD", held)
    monkeypatch.setattr(C, "PARTS", 3)
    ids = [7, 1, 9, 4, 1, 8, 12, 7, 3, 7, 15, 4]
    pq.write_table(pa.table({"ID": ids}), tmp_path / "ids.parquet")
    unique = C.checks_for("test", (Column("ID", "unique"),), 8, ValidateConfig())
    spills = set(Path(tempfile.gettempdir()).glob("qin-unique-*"))
    got = _figures(tmp_path / "ids.parquet", unique, 4)["ID:unique"]
    assert got == (7, [7, 1, 4, 1, 7])  # rows 0, 1, 3, 4, 7 (and 9, 11): the first five in row order
    assert set(Path(tempfile.gettempdir()).glob("qin-unique-*")) == spills  # the spill files are gone
