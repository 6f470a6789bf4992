"""`qin data from-log`: an interaction log (and item table) converted into the contract by the rules in
qin/data/from_log.py, each checked against a brute-force reading of the log written here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from qin.cli import main
from qin.data import schema
from qin.data.from_log import FromLogConfig, LogError, from_log, join_keys
from qin.settings.sections import ValidateConfig
from qin.validate import validate

HISTORY = 8


def _log(seed: int = 0, users: int = 60, items: int = 50, rows: int = 3000) -> pd.DataFrame:
    """String keys, integer times with ties, and clicks that depend on the user and the item."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, rows)
    i = rng.zipf(1.6, rows) % items
    taste = rng.random((users, 4))
    genre = np.arange(items) % 4
    click = rng.random(rows) < 0.15 + 0.6 * taste[u, genre[i]]
    return pd.DataFrame(
        {
            "uid": [f"u{x}" for x in u],
            "movie": [f"m{x}" for x in i],
            "ts": np.sort(rng.integers(0, rows // 3, rows)),  # about 3 interactions per time stamp
            "clicked": click.astype(int),
        }
    )


def _items(items: int = 50, dim: int = 16) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    genres = ["Drama", "Comedy", "Action", "Horror"]
    return pd.DataFrame(
        {
            "movie": [f"m{x}" for x in range(items)],
            "genres": [f"{genres[x % 4]}|{genres[(x * 7) % 4]}" for x in range(items)],
            "name": [f"film {x} {genres[x % 4].lower()}" for x in range(items)],
            "vec": list(rng.standard_normal((items, dim)).astype(np.float32)),
        }
    )


CFG = FromLogConfig(
    user="uid", item="movie", time="ts", label="clicked", tags="genres", title="name", history=HISTORY
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("from_log")
    log, items = _log(), _items()
    log.to_csv(root / "log.csv", index=False)
    items.to_parquet(root / "items.parquet")
    cfg = dataclasses.replace(CFG, vectors=("vec",))
    record = from_log(root / "log.csv", root / "data", cfg, root / "items.parquet")
    return {"root": root, "log": log, "record": record, "data": root / "data"}


def _rows(data: Path, split: str) -> pd.DataFrame:
    return pq.read_table(data / f"{split}.parquet").to_pandas()


def _keys(data: Path, name: str) -> dict[int, str]:
    table = pq.read_table(data / "maps" / f"{name}.parquet").to_pandas()
    return dict(zip(table["id"], table["key"], strict=True))


def test_the_output_passes_the_gate(converted: dict, tmp_path: Path) -> None:
    summary = validate(converted["data"], tmp_path / "v", ValidateConfig(tag_vocab=10))
    assert summary.passed
    assert "column 'label' is present and ignored" in " ".join(summary.files["test"]["notes"])
    record = converted["record"]
    assert sum(record["rows"].values()) == len(converted["log"])
    assert record["item_emb"] == "pca of 16 given values to 16" and not record["item_feature"]


def test_each_history_is_the_users_strictly_earlier_positives_most_recent_last(converted: dict) -> None:
    log, data = converted["log"], converted["data"]
    users, items = _keys(data, "users"), _keys(data, "items")
    # The log is in time order, so the splits' rows, concatenated, are its rows (the sorts are stable).
    rows = pd.concat(
        [_rows(data, s).drop(columns="ID", errors="ignore") for s in schema.SPLITS], ignore_index=True
    )
    assert len(rows) == len(log)
    np.testing.assert_array_equal(
        _rows(data, "test")["ID"], np.arange(len(log) - len(_rows(data, "test")), len(log))
    )
    assert [users[u] for u in rows["user_id"]] == log["uid"].tolist()
    assert [items[i] for i in rows["item_id"]] == log["movie"].tolist()
    np.testing.assert_array_equal(rows["label"], log["clicked"])
    times, clicked, uid, movie = (log[c].to_numpy() for c in ("ts", "clicked", "uid", "movie"))
    for k in range(len(log)):
        earlier = (uid == uid[k]) & (times < times[k]) & (clicked == 1)
        expected = ([""] * HISTORY + movie[earlier].tolist())[-HISTORY:]
        found = [items[int(i)] if i else "" for i in rows["item_seq"][k]]
        assert found == expected, k
    cut = converted["record"]["cut_times"]
    n = {s: len(_rows(data, s)) for s in schema.SPLITS}
    assert n["train"] == int((times < cut[0]).sum()) and n["test"] == int((times >= cut[1]).sum())
    assert n["train"] == pytest.approx(0.8 * len(log), abs=5)  # about 3 rows share a time


def test_no_later_split_reaches_a_training_history_and_levels_come_from_train_only(
    converted: dict, tmp_path: Path
) -> None:
    log, root = converted["log"], converted["root"]
    cut = converted["record"]["cut_times"][0]
    # Flip every label at or after the train cut: train rows, their histories and the levels stay the same.
    flipped = log.assign(clicked=np.where(log["ts"] >= cut, 1 - log["clicked"], log["clicked"]))
    flipped.to_csv(tmp_path / "log.csv", index=False)
    from_log(tmp_path / "log.csv", tmp_path / "data", CFG, root / "items.parquet")
    a, b = _rows(converted["data"], "train"), _rows(tmp_path / "data", "train")
    assert a.drop(columns="item_seq").equals(b.drop(columns="item_seq"))
    assert all((x == y).all() for x, y in zip(a["item_seq"], b["item_seq"], strict=True))
    for split in ("valid", "test"):  # the levels of later rows too: from train only
        x, y = _rows(converted["data"], split), _rows(tmp_path / "data", split)
        assert (x[list(schema.LEVELS)].to_numpy() == y[list(schema.LEVELS)].to_numpy()).all()
    # Flipping train labels changes the likes levels.
    flipped = log.assign(clicked=np.where(log["ts"] < cut, 1 - log["clicked"], log["clicked"]))
    flipped.to_csv(tmp_path / "log2.csv", index=False)
    from_log(tmp_path / "log2.csv", tmp_path / "data2", CFG, root / "items.parquet")
    assert not (
        _rows(tmp_path / "data2", "valid")["likes_level"] == _rows(converted["data"], "valid")["likes_level"]
    ).all()
    train = _rows(converted["data"], "train")
    assert train["views_level"].min() == 1 and train["views_level"].max() == 10  # every one seen in train
    assert train["likes_level"].max() == 10


def test_negatives_are_never_the_users_own_items_and_come_at_the_positives_time(tmp_path: Path) -> None:
    log = _log()
    positives = log[log["clicked"] == 1].drop(columns="clicked")
    positives.to_parquet(tmp_path / "log.parquet")
    cfg = dataclasses.replace(CFG, label=None, negatives=3)
    record = from_log(tmp_path / "log.parquet", tmp_path / "data", cfg)
    assert record["negatives_given_up"] == 0
    users, items = _keys(tmp_path / "data", "users"), _keys(tmp_path / "data", "items")
    seen = set(zip(positives["uid"], positives["movie"], strict=True))
    total = 0
    for split in schema.SPLITS:
        rows = _rows(tmp_path / "data", split)
        neg = rows[rows["label"] == 0]
        total += len(neg)
        assert not any(
            (users[u], items[i]) in seen for u, i in zip(neg["user_id"], neg["item_id"], strict=True)
        )
    assert total == 3 * len(positives)
    assert record["item_emb"].startswith("zeros")


def test_ids_map_back_and_a_new_version_keeps_the_old_ids(converted: dict, tmp_path: Path) -> None:
    data, log = converted["data"], converted["log"]
    test = _rows(data, "test")
    prediction = pd.DataFrame({"ID": test["ID"][::-1], "Task2": np.linspace(0, 1, len(test))})
    prediction.to_csv(tmp_path / "prediction.csv", index=False)
    assert join_keys(tmp_path / "prediction.csv", data, tmp_path / "keyed.csv") == len(test)
    keyed = pd.read_csv(tmp_path / "keyed.csv")
    assert list(keyed.columns) == ["ID", "user", "item", "Task2"]
    np.testing.assert_array_equal(keyed["user"], log["uid"].to_numpy()[keyed["ID"]])
    np.testing.assert_array_equal(keyed["item"], log["movie"].to_numpy()[keyed["ID"]])

    # Version 2: more interactions, with new users and items; the old keys keep their ids.
    newer = pd.concat([log, _log(seed=5, users=80, items=70).assign(ts=lambda f: f["ts"] + 10_000)])
    newer.to_csv(tmp_path / "log2.csv", index=False)
    # The new item table drops item m0 (which only the previous maps still name) and adds m50..m69.
    items2 = _items(items=70).iloc[1:]
    items2.to_parquet(tmp_path / "items2.parquet")
    newer = newer[newer["movie"] != "m0"]
    newer.to_csv(tmp_path / "log2.csv", index=False)
    cfg = dataclasses.replace(CFG, previous_maps=data / "maps", vectors=("vec",))
    from_log(tmp_path / "log2.csv", tmp_path / "data2", cfg, tmp_path / "items2.parquet")
    for name in ("users", "items"):
        old, new = _keys(data, name), _keys(tmp_path / "data2", name)
        assert {i: new[i] for i in old} == old
        assert len(new) > len(old) and sorted(new) == list(range(1, len(new) + 1))


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda f: f.drop(columns="ts"), ("log.csv", "expected the column(s) ['ts']", "found ['uid'")),
        (
            lambda f: f.assign(ts=f["ts"].astype(str).where(f.index != 7, "yesterday-ish")),
            ("log.csv: column 'ts'", "parse as neither", "'yesterday-ish'"),
        ),
        (
            lambda f: f.assign(clicked=f["clicked"].where(f.index != 3, 2)),
            ("column 'clicked'", "expected 0 or 1", "[2]"),
        ),
        (
            lambda f: f.assign(movie=f["movie"].where(f.index != 5, "m999")),
            ("log.csv: column 'movie'", "expected every item in the item table", "['m999']"),
        ),
    ],
    ids=["missing column", "unparsable time", "label 2", "item not in the item table"],
)
def test_bad_input_is_refused_by_file_column_and_example_and_nothing_is_written(
    tmp_path: Path, edit, fragments: tuple[str, ...]
) -> None:
    edit(_log()).to_csv(tmp_path / "log.csv", index=False)
    _items().to_parquet(tmp_path / "items.parquet")
    with pytest.raises(LogError) as err:
        from_log(tmp_path / "log.csv", tmp_path / "data", CFG, tmp_path / "items.parquet")
    assert all(f in str(err.value) for f in fragments), str(err.value)
    assert not (tmp_path / "data").exists() and not list(tmp_path.glob(".data*"))


@pytest.mark.slow
def test_the_cli_output_trains_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qin.evaluate import evaluate
    from qin.featurize import featurize
    from qin.settings.params import load_params
    from qin.train import train
    from tests.conftest import TINY_PARAMS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(TINY_PARAMS.replace("max_len: 16", "max_len: 8"))
    _log(rows=6000).to_csv("log.csv", index=False)
    _items().to_parquet("items.parquet")
    args = [
        "--user",
        "uid",
        "--item",
        "movie",
        "--time",
        "ts",
        "--label",
        "clicked",
        "--items",
        "items.parquet",
    ]
    assert (
        main(
            [
                "data",
                "from-log",
                "log.csv",
                *args,
                "--tags",
                "genres",
                "--title",
                "name",
                "--history",
                "8",
                "--no-dvc",
            ]
        )
        == 0
    )
    params = load_params("params.yaml")
    validate("data", "v", params.validate)
    featurize("data", "v", "f", params.featurize)
    train("f", "model", "train.json", params.train)
    metrics = evaluate("f", "model", "evaluate.json", params.evaluate)
    assert metrics.valid_rows == pq.ParquetFile("data/valid.parquet").metadata.num_rows
    assert metrics.valid_auc > 0.55  # the clicks depend on the user's taste for the item's genre
