"""The data contract: MicroLens_1M_x1 (WWW 2025 MM-CTR challenge, task 2), as four parquet files (and an
optional fifth).

train/valid/test.parquet, one row per impression:
    user_id      int64               user key (not a model input)
    item_seq     list<int64>         the user's past items, 0 = padding, most recent last; one length per file
    likes_level  int64 0..10
    views_level  int64 0..10
    item_id      int64 1..N          the target item
    label        float64 0/1         click (test.parquet: absent, or present and ignored)
    ID           int64               test.parquet only, optional: the submission's key, unique (the
                                     challenge's file has it; without it the key is the row position)

item_info.parquet, one row per item id 0..N in id order (row 0 is padding):
    item_id        int64
    item_tags      list<int64> of 5   tag ids, 0 = padding
    item_emb_d128  list<float32> of 128  frozen multimodal embedding

item_feature.parquet (optional: the challenge ships it, the pipeline does not need it), one row per item
id 1..N in id order (no padding row):
    item_id           int64
    item_title        string
    item_tags         list<int64>           the same tags as item_info
    likes_level       int64 0..10           the item's own levels
    views_level       int64 0..10
    txt_emb_BERT      list<float32> of 768   text embedding
    img_emb_CLIPRN50  list<float32> of 1024  image embedding
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa

H = TypeVar("H", bound=Any)

SPLITS = ("train", "valid", "test")
LABELLED_SPLITS = ("train", "valid")
ITEM_FILE = "item_info"
FILES = (*SPLITS, ITEM_FILE)
FEATURE_FILE = "item_feature"
OPTIONAL_FILES = (FEATURE_FILE,)  # validated (and imported) when present; real data without them is whole

NUM_LEVELS = 11  # likes_level / views_level take values 0..10
# The contract's row columns. Which of them the models read, and how, is the feature table's to say
# (qin/data/features.py, params/features/).
USER, LABEL = "user_id", "label"
SUBMISSION_ID = "ID"  # test.parquet's optional key column, written into prediction.csv
LEVELS = ("likes_level", "views_level")  # 0..NUM_LEVELS-1
TARGET = "item_id"
HISTORY = "item_seq"
# item_info's columns besides the id.
TAGS, ITEM_EMB = "item_tags", "item_emb_d128"
TAGS_PER_ITEM = 5
ITEM_EMB_DIM = 128
# item_feature's columns besides item_info's and the levels.
TITLE, TXT_EMB, IMG_EMB = "item_title", "txt_emb_BERT", "img_emb_CLIPRN50"
TXT_EMB_DIM, IMG_EMB_DIM = 768, 1024
# The synthetic generator's planted item structure (topic, sub-topic, unit latent vector per item 1..N).
ITEM_TRUTH_FILE = "item_truth.parquet"


@dataclass(frozen=True)
class Column:
    """One column of a data file, with the kind that says how it is stored and how the gate checks it
    (qin/data/checks.py). Kinds: those of the feature table (target, history, categorical, sequence, dense),
    plus
    the contract's own columns that no model reads: `key` (an item table's id, equal to its row position),
    `id` (any integer, e.g. the user), `unique` (an integer key, no two rows alike), `label` (0/1) and
    `text`."""

    name: str
    kind: str
    low: int | None = None  # ids (categorical, sequence): the smallest allowed (None: any)
    high: int | str | None = None  # the largest allowed; a str names a `validate` setting (its value - 1)
    size: int | None = None  # a sequence's length, a dense vector's dim


# How each kind is stored (the contract's types; a file may store a narrower int or float, widened on read).
ARROW_TYPES: dict[str, pa.DataType] = {
    "target": pa.int64(),
    "categorical": pa.int64(),
    "key": pa.int64(),
    "id": pa.int64(),
    "unique": pa.int64(),
    "label": pa.float64(),
    "text": pa.string(),
    "history": pa.list_(pa.int64()),
    "sequence": pa.list_(pa.int64()),
    "dense": pa.list_(pa.float32()),
}

_LEVELS = tuple(Column(level, "categorical", low=0, high=NUM_LEVELS - 1) for level in LEVELS)
_TAGS = Column(TAGS, "sequence", low=0, high="tag_vocab", size=TAGS_PER_ITEM)
# The contract, file by file, in column order.
CONTRACT: dict[str, tuple[Column, ...]] = {
    "train": (
        Column(USER, "id"),
        Column(HISTORY, "history"),
        *_LEVELS,
        Column(TARGET, "target"),
        Column(LABEL, "label"),
    ),
    ITEM_FILE: (Column(TARGET, "key"), _TAGS, Column(ITEM_EMB, "dense", size=ITEM_EMB_DIM)),
    FEATURE_FILE: (
        Column(TARGET, "key"),
        Column(TITLE, "text"),
        _TAGS,
        *_LEVELS,
        Column(TXT_EMB, "dense", size=TXT_EMB_DIM),
        Column(IMG_EMB, "dense", size=IMG_EMB_DIM),
    ),
}
CONTRACT["valid"] = CONTRACT["train"]
CONTRACT["test"] = tuple(c for c in CONTRACT["train"] if c.name != LABEL)
# Columns a file may carry beyond its contract: the challenge's test.parquet has the submission's key `ID`,
# and may have a (dummy) label column, which nothing reads (IGNORED: not checked beyond its type).
OPTIONAL: dict[str, tuple[Column, ...]] = {"test": (Column(LABEL, "label"), Column(SUBMISSION_ID, "unique"))}
IGNORED: dict[str, tuple[str, ...]] = {"test": (LABEL,)}


def arrow_schema(columns: tuple[Column, ...] | list[Column]) -> pa.Schema:
    return pa.schema([(c.name, ARROW_TYPES[c.kind]) for c in columns])


ROW_SCHEMA = arrow_schema(CONTRACT["train"])
TEST_SCHEMA = arrow_schema(CONTRACT["test"])
ITEM_SCHEMA = arrow_schema(CONTRACT[ITEM_FILE])
FEATURE_SCHEMA = arrow_schema(CONTRACT[FEATURE_FILE])


def schema_for(name: str) -> pa.Schema:
    """The contract's arrow schema of file `name` (the feature table's own columns extend it:
    qin/data/checks.py `file_columns`)."""
    if name not in CONTRACT:
        raise ValueError(f"unknown data file '{name}': expected one of {[*FILES, *OPTIONAL_FILES]}")
    return arrow_schema(CONTRACT[name])


def truth_file(split: str) -> str:
    """Name of the file holding the true click probability of each row (synthetic data only)."""
    return f"{split}_truth.parquet"


def most_recent(history: H, max_len: int) -> H:
    """The last `max_len` items of each row of an (N, L) history array or tensor (most recent last; all of
    them when L <= max_len): the one truncation, for featurize, training and scoring."""
    assert max_len >= 1, max_len
    return history[:, -max_len:]
