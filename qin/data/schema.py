"""The data contract: MicroLens_1M_x1 (WWW 2025 MM-CTR challenge, task 2), as four parquet files.

train/valid/test.parquet, one row per impression:
    user_id      int64               user key (not a model input)
    item_seq     list<int64>         the user's past items, 0 = padding, most recent last; one length per file
    likes_level  int64 0..10
    views_level  int64 0..10
    item_id      int64 1..N          the target item
    label        float64 0/1         click (absent from test.parquet)

item_info.parquet, one row per item id 0..N in id order (row 0 is padding):
    item_id        int64
    item_tags      list<int64> of 5   tag ids, 0 = padding
    item_emb_d128  list<float32> of 128  frozen multimodal embedding
"""

from __future__ import annotations

from typing import Any, TypeVar

import pyarrow as pa

H = TypeVar("H", bound=Any)

SPLITS = ("train", "valid", "test")
LABELLED_SPLITS = ("train", "valid")
ITEM_FILE = "item_info"
FILES = (*SPLITS, ITEM_FILE)

NUM_LEVELS = 11  # likes_level / views_level take values 0..10
# The model's inputs, declared once: the row columns featurize keeps, a scoring request carries (qin/request.py),
# inference hands the model and `qin.models.Batch` holds (besides the label).
USER, LABEL = "user_id", "label"
LEVELS = ("likes_level", "views_level")  # 0..NUM_LEVELS-1
TARGET = "item_id"
HISTORY = "item_seq"
MODEL_INPUTS = (*LEVELS, TARGET, HISTORY)
# item_info's columns besides the id.
TAGS, ITEM_EMB = "item_tags", "item_emb_d128"
TAGS_PER_ITEM = 5
ITEM_EMB_DIM = 128

ROW_SCHEMA = pa.schema(
    [
        (USER, pa.int64()),
        (HISTORY, pa.list_(pa.int64())),
        *((level, pa.int64()) for level in LEVELS),
        (TARGET, pa.int64()),
        (LABEL, pa.float64()),
    ]
)
TEST_SCHEMA = pa.schema([f for f in ROW_SCHEMA if f.name != LABEL])
ITEM_SCHEMA = pa.schema(
    [
        (TARGET, pa.int64()),
        (TAGS, pa.list_(pa.int64())),
        (ITEM_EMB, pa.list_(pa.float32())),
    ]
)


def schema_for(name: str) -> pa.Schema:
    if name == ITEM_FILE:
        return ITEM_SCHEMA
    if name == "test":
        return TEST_SCHEMA
    if name in LABELLED_SPLITS:
        return ROW_SCHEMA
    raise ValueError(f"unknown data file '{name}': expected one of {list(FILES)}")


def truth_file(split: str) -> str:
    """Name of the file holding the true click probability of each row (synthetic data only)."""
    return f"{split}_truth.parquet"


def most_recent(history: H, max_len: int) -> H:
    """The last `max_len` items of each row of an (N, L) history array or tensor (most recent last; all of
    them when L <= max_len): the one truncation, for featurize, training and scoring."""
    assert max_len >= 1, max_len
    return history[:, -max_len:]
