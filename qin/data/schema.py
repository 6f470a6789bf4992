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
FEATURE_SCHEMA = pa.schema(
    [
        (TARGET, pa.int64()),
        (TITLE, pa.string()),
        (TAGS, pa.list_(pa.int64())),
        *((level, pa.int64()) for level in LEVELS),
        (TXT_EMB, pa.list_(pa.float32())),
        (IMG_EMB, pa.list_(pa.float32())),
    ]
)


def schema_for(name: str) -> pa.Schema:
    if name == ITEM_FILE:
        return ITEM_SCHEMA
    if name == FEATURE_FILE:
        return FEATURE_SCHEMA
    if name == "test":
        return TEST_SCHEMA
    if name in LABELLED_SPLITS:
        return ROW_SCHEMA
    raise ValueError(f"unknown data file '{name}': expected one of {[*FILES, *OPTIONAL_FILES]}")


def truth_file(split: str) -> str:
    """Name of the file holding the true click probability of each row (synthetic data only)."""
    return f"{split}_truth.parquet"


def most_recent(history: H, max_len: int) -> H:
    """The last `max_len` items of each row of an (N, L) history array or tensor (most recent last; all of
    them when L <= max_len): the one truncation, for featurize, training and scoring."""
    assert max_len >= 1, max_len
    return history[:, -max_len:]
