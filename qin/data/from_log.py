"""`qin data from-log`: a team's interaction log (and optional item table) -> a data folder in the contract.

A CTR team's data is a log of (user, item, time, click or rating) rows, often positives only, and a table
of items. This converts it into the four contract files (qin/data/schema.py), which `qin validate` passes,
by these rules (each a `FromLogConfig` field, a command-line option):

- **Keys**: the log's user and item keys become dense ids (users 1..U, items 1..N, 0 the padding item), the
  maps saved beside the data (`maps/users.parquet`, `maps/items.parquet`, `maps/tags.parquet`). Given the
  previous version's maps (`previous_maps`), its keys keep their ids and new keys are appended, so a model
  trained on the old version still scores the new one's rows. `qin data join-keys` maps a prediction.csv
  back to the original keys.
- **Rows**: one row per interaction; its history is the user's earlier *positive* interactions, strictly
  earlier in time, most recent last, left-padded with 0 to `history` items.
- **Labels**: a 0/1 column, or a rating >= `threshold`, or (a positives-only log) `negatives` K sampled
  non-clicks per positive, at the positive's time, drawn by item popularity from the items the user never
  interacted with.
- **Split** by global time cut-offs: the first `split[0]` of the interactions in time are train, the next
  `split[1]` valid, the rest test (rows at one time stay together).
- **Levels** (training period only): `views_level` is the decile 1..10 of the item's interactions in train,
  `likes_level` of its positives; 0 for an item with none.
- **Tags**: an item's categories, its `tags_per_item` most frequent kept; ids by frequency, at most
  `tag_vocab` - 1 of them (the gate's bound, params `validate.tag_vocab`).
- **item_emb_d128**: the PCA (qin/embedding/pca.py) of the given vector columns, concatenated; without
vectors, TF-IDF
  and truncated SVD (scikit-learn) of the title and categories; zero-padded to 128; zeros with no table.
- **item_feature.parquet** only when the vectors fit its contract (one of 768 and one of 1024 values).

test.parquet carries `ID` (the interaction's row number in the log; sampled negatives numbered after the
last row), so a submission joins back to the log, and the log's label (ignored for scoring, there for
offline evaluation). Bad input is refused naming the file, the column and example values; the output is
written to a temporary folder and renamed into place only when complete.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qin.data import schema
from qin.runs.io import atomic_dir, write_json, write_tables

MAPS = "maps"
RECORD = "from_log.json"
WRITE_ROWS = 200_000  # rows whose histories are gathered at a time
EXAMPLES = 5


@dataclass(frozen=True)
class FromLogConfig:
    user: str = "user_id"  # the log's columns
    item: str = "item_id"
    time: str = "timestamp"
    label: str | None = "label"  # a 0/1 column; or
    rating: str | None = None  # a rating column, positive when >= threshold; or
    threshold: float | None = None
    negatives: int = 0  # a positives-only log: K sampled negatives per positive
    item_key: str | None = None  # the item table's key column (default: `item`)
    tags: str | None = None  # its categories: a list column, or a string split on `tags_sep`
    tags_sep: str = "|"
    title: str | None = None
    vectors: tuple[str, ...] = ()  # its vector columns (lists of floats)
    history: int = 100
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    tags_per_item: int = schema.TAGS_PER_ITEM
    tag_vocab: int = 11_740
    previous_maps: Path | None = None
    seed: int = 0
    sep: str = ","  # the text files' separator (parquet files need none)


class LogError(ValueError):
    """The log or the item table breaks a rule; the message names the file, the column and examples."""


def _examples(values: Any) -> list:
    return [v.item() if isinstance(v, np.generic) else v for v in list(values)[:EXAMPLES]]


def _read(path: Path, columns: list[str], sep: str = ",") -> pd.DataFrame:
    """`columns` of a parquet file, or of a text file of `sep`-separated values with a header line,
    refusing a missing one by name."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    if path.suffix == ".parquet":
        found = pq.read_schema(path).names
    else:
        found = list(pd.read_csv(path, nrows=0, sep=sep).columns)
    missing = [c for c in columns if c not in found]
    if missing:
        raise LogError(f"{path}: expected the column(s) {missing}, found {found}")
    if path.suffix == ".parquet":
        return pq.read_table(path, columns=columns).to_pandas()
    return pd.read_csv(path, usecols=columns, sep=sep)


def read_log(path: Path, cfg: FromLogConfig) -> pd.DataFrame:
    """The log as columns user, item, time (int64), label (int8) and row (its row number)."""
    modes = [cfg.rating is not None, cfg.negatives > 0]
    if sum(modes) > 1 or (cfg.rating is not None) != (cfg.threshold is not None) or cfg.negatives < 0:
        raise LogError("from-log: give a label column, or --rating with --threshold, or --negatives K")
    label = cfg.rating if cfg.rating is not None else (None if cfg.negatives else cfg.label)
    columns = [cfg.user, cfg.item, cfg.time, *([label] if label else [])]
    raw = _read(path, columns, cfg.sep)
    for col in (cfg.user, cfg.item, cfg.time, *([label] if label else [])):
        nulls = raw[col].isna()
        if nulls.any():
            rows = np.flatnonzero(nulls.to_numpy())
            raise LogError(
                f"{path}: column '{col}': expected no nulls, found {int(nulls.sum())}, e.g. rows "
                f"{_examples(rows)}"
            )
    log = pd.DataFrame(
        {"user": raw[cfg.user], "item": raw[cfg.item], "time": _times(path, cfg.time, raw[cfg.time])}
    )
    log["label"] = _labels(path, label, raw[label], cfg) if label else np.ones(len(raw), np.int8)
    log["row"] = np.arange(len(raw), dtype=np.int64)
    return log


def _times(path: Path, column: str, values: pd.Series) -> np.ndarray:
    """A time column as int64: numbers as they are (rounded down), or text parsed as dates and times (in
    nanoseconds), whichever reads more of its values; the values neither reads are refused."""
    if pd.api.types.is_numeric_dtype(values):
        return np.floor(values.to_numpy(np.float64)).astype(np.int64)
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.to_numpy("datetime64[ns]").astype(np.int64)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna().to_numpy()
    if bad.any():
        dates = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        if dates.isna().sum() < bad.sum():
            bad = dates.isna().to_numpy()
            if not bad.any():
                return dates.to_numpy("datetime64[ns]").astype(np.int64)
    if bad.any():
        raise LogError(
            f"{path}: column '{column}': expected a number or a date and time, found {int(bad.sum())} "
            f"that parse as neither, e.g. {_examples(values[bad])}"
        )
    return np.floor(numbers.to_numpy(np.float64)).astype(np.int64)


def _labels(path: Path, column: str, values: pd.Series, cfg: FromLogConfig) -> np.ndarray:
    if not pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        raise LogError(f"{path}: column '{column}': expected numbers, found {_examples(values.unique())}")
    v = values.to_numpy(np.float64)
    if cfg.rating is not None:
        return (v >= float(cfg.threshold or 0)).astype(np.int8)
    bad = ~np.isin(v, (0.0, 1.0))
    if bad.any():
        raise LogError(
            f"{path}: column '{column}': expected 0 or 1 (or give --rating COL --threshold T), found "
            f"{int(bad.sum())} other values, e.g. {_examples(values[bad])}"
        )
    return v.astype(np.int8)


def dense_ids(keys: pd.Series, previous: pd.DataFrame | None, what: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Ids 1..K for `keys` (new keys in order of first appearance), those of `previous` (columns key, id)
    kept; returns (the id of each key, the map of every key)."""
    known = (
        previous
        if previous is not None
        else pd.DataFrame({"key": keys.iloc[:0], "id": np.empty(0, np.int64)})
    )
    if len(known) and pd.api.types.is_numeric_dtype(known["key"]) != pd.api.types.is_numeric_dtype(keys):
        raise LogError(
            f"{what} keys: expected the previous maps' key type ({known['key'].dtype}), found {keys.dtype}"
        )
    index = pd.Index(known["key"])
    new = pd.unique(keys[index.get_indexer(keys) < 0])
    start = int(known["id"].max()) + 1 if len(known) else 1
    table = pd.concat(
        [known, pd.DataFrame({"key": new, "id": np.arange(start, start + len(new), dtype=np.int64)})],
        ignore_index=True,
    )
    ids = table["id"].to_numpy()[pd.Index(table["key"]).get_indexer(keys)]
    return ids, table


def time_splits(times: np.ndarray, split: tuple[float, float, float]) -> np.ndarray:
    """Each row's split (0 train, 1 valid, 2 test) by global time cut-offs at the split's shares."""
    ordered = np.sort(times, kind="stable")
    n = len(ordered)
    cuts = [
        ordered[min(round(n * split[0]), n - 1)],
        ordered[min(round(n * (split[0] + split[1])), n - 1)],
    ]
    out = np.searchsorted(cuts, times, side="right").astype(np.int8)
    counts = np.bincount(out, minlength=3)
    if (counts == 0).any():
        raise LogError(
            f"from-log: the time cut-offs {cuts} leave a split empty (train, valid, test rows: "
            f"{counts.tolist()}); the log needs more distinct times"
        )
    return out


def levels(counts: np.ndarray) -> np.ndarray:
    """Deciles 1..10 of the positive counts, 0 where the count is 0."""
    out = np.zeros(len(counts), dtype=np.int64)
    seen = counts > 0
    if seen.any():
        edges = np.quantile(counts[seen], np.linspace(0.1, 0.9, 9))
        out[seen] = 1 + np.searchsorted(edges, counts[seen], side="left")
    return np.clip(out, 0, schema.NUM_LEVELS - 1)


def history_bounds(users: np.ndarray, times: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """For each row, its history as a slice [begin, end) of `positives` (every positive item, ordered by
    user then time): the user's positives strictly earlier than the row. Returns (positives' order, begin,
    end), the order indexing the rows."""
    order = np.lexsort((times, users))
    u, t, lab = users[order], times[order], labels[order].astype(np.int64)
    before = np.cumsum(lab) - lab  # positives earlier in this order
    idx = np.arange(len(order))
    new_user = np.r_[True, u[1:] != u[:-1]]
    new_time = new_user | np.r_[True, t[1:] != t[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, idx, 0))
    time_start = np.maximum.accumulate(np.where(new_time, idx, 0))
    begin, end = np.empty(len(order), np.int64), np.empty(len(order), np.int64)
    begin[order], end[order] = before[user_start], before[time_start]
    return order[lab.astype(bool)], begin, end


def sample_negatives(log: pd.DataFrame, n_items: int, k: int, seed: int) -> pd.DataFrame:
    """K rows per positive with an item the user never interacted with, drawn by item popularity (its
    interactions in the log), at the positive's time; a draw that keeps hitting the user's own items is
    given up after a few rounds (counted in the record as `negatives_given_up`)."""
    rng = np.random.default_rng(seed)
    pos = log[log["label"] == 1]
    popularity = np.bincount(log["item_id"].to_numpy(), minlength=n_items + 1).astype(np.float64)
    popularity[0] = 0.0
    cdf = np.cumsum(popularity / popularity.sum())
    seen = np.unique(log["user_id"].to_numpy() * (n_items + 1) + log["item_id"].to_numpy())
    users = np.repeat(pos["user_id"].to_numpy(), k)
    items = np.zeros(len(users), dtype=np.int64)
    todo = np.arange(len(users))
    for _ in range(20):  # by popularity, redrawing the user's own items
        if not len(todo):
            break
        draw = np.minimum(np.searchsorted(cdf, rng.random(len(todo)), side="right"), n_items)
        keys = users[todo] * (n_items + 1) + draw
        at = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
        ok = seen[at] != keys
        items[todo[ok]] = draw[ok]
        todo = todo[~ok]
    for user in np.unique(users[todo]):  # users who met most popular items: among their unseen items
        rows = todo[users[todo] == user]
        own = seen[(seen >= user * (n_items + 1)) & (seen < (user + 1) * (n_items + 1))] % (n_items + 1)
        unseen = np.setdiff1d(np.arange(1, n_items + 1), own)
        if len(unseen) and popularity[unseen].sum() > 0:
            items[rows] = rng.choice(unseen, len(rows), p=popularity[unseen] / popularity[unseen].sum())
        elif len(unseen):
            items[rows] = rng.choice(unseen, len(rows))
    keep = items > 0
    neg = pd.DataFrame(
        {
            "user_id": users[keep],
            "item_id": items[keep],
            "time": np.repeat(pos["time"].to_numpy(), k)[keep],
            "label": np.zeros(int(keep.sum()), np.int8),
        }
    )
    neg.attrs["given_up"] = int((~keep).sum())
    return neg


def read_items(path: Path, cfg: FromLogConfig) -> pd.DataFrame:
    """The item table's key, categories, title and vector columns (as named in `cfg`)."""
    key = cfg.item_key or cfg.item
    columns = [key, *(c for c in (cfg.tags, cfg.title) if c), *cfg.vectors]
    items = _read(path, columns, cfg.sep)
    dup = items[key].duplicated()
    if dup.any():
        raise LogError(
            f"{path}: column '{key}': expected one row per item, found repeated keys, e.g. "
            f"{_examples(items[key][dup])}"
        )
    return items.rename(columns={key: "key"})


def item_tags(categories: list[list[str]], cfg: FromLogConfig) -> tuple[np.ndarray, pd.DataFrame, int]:
    """(tags (N, tags_per_item) of ids 1..T, 0 padding; the tag map; the tags dropped beyond the vocabulary).
    Ids by frequency over the items; each item keeps its most frequent categories."""
    counts = pd.Series([c for cats in categories for c in dict.fromkeys(cats)], dtype=object).value_counts(
        sort=True
    )
    kept = counts.index[: cfg.tag_vocab - 1]
    ids = pd.Series(np.arange(1, len(kept) + 1, dtype=np.int64), index=kept)
    out = np.zeros((len(categories), cfg.tags_per_item), dtype=np.int64)
    for row, cats in enumerate(categories):
        known = sorted(int(ids[c]) for c in dict.fromkeys(cats) if c in ids.index)
        out[row, : min(len(known), cfg.tags_per_item)] = known[: cfg.tags_per_item]
    return out, pd.DataFrame({"key": kept.to_numpy(), "id": ids.to_numpy()}), len(counts) - len(kept)


def _categories(values: pd.Series | None, sep: str, n: int) -> list[list[str]]:
    if values is None:
        return [[] for _ in range(n)]
    out: list[list[str]] = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append([])
        elif isinstance(v, str):
            out.append([c.strip() for c in v.split(sep) if c.strip()])
        else:
            out.append([str(c) for c in v])
    return out


def item_embedding(
    n: int, vectors: np.ndarray | None, texts: list[str] | None, seed: int
) -> tuple[np.ndarray, str]:
    """(n, 128) item vectors of rms 1, and how they were made: the PCA of `vectors`, else TF-IDF + truncated
    SVD of `texts`, else zeros; fewer than 128 components are zero-padded."""
    dim = schema.ITEM_EMB_DIM
    out = np.zeros((n, dim), dtype=np.float32)
    if vectors is not None:
        from qin.embedding.pca import fit_pca

        k = min(dim, vectors.shape[1], n)
        out[:, :k] = fit_pca(vectors, k, standardise=False).transform(vectors)
        return out, f"pca of {vectors.shape[1]} given values to {k}"
    if texts is None or not any(texts):
        return out, "zeros (no item table, or no title or categories)"
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(min_df=1).fit_transform(texts)
    k = min(dim, tfidf.shape[1] - 1, n - 1)
    if k < 1:
        return out, "zeros (too few words for TF-IDF)"
    scores = TruncatedSVD(n_components=k, random_state=seed).fit_transform(tfidf)
    rms = float(np.sqrt((scores**2).sum(axis=1).mean())) or 1.0
    out[:, :k] = scores / rms
    return out, f"tf-idf of title and categories, truncated SVD to {k}"


def _vectors(path: Path, items: pd.DataFrame, columns: tuple[str, ...]) -> list[np.ndarray]:
    """Each vector column as (rows, D) float32, refusing ragged or non-finite values by name. A row
    without a vector (an item of the previous maps that the item table no longer lists) gets zeros."""
    out = []
    for col in columns:
        cells = items[col].to_numpy()
        present = np.array([isinstance(c, list | tuple | np.ndarray) for c in cells], dtype=bool)
        lengths = np.array([len(c) if p else -1 for c, p in zip(cells, present, strict=True)])
        common = int(np.bincount(lengths[present]).argmax()) if present.any() else 0
        bad = present & (lengths != common)
        if common < 1 or bad.any():
            raise LogError(
                f"{path}: column '{col}': expected vectors of one length, found lengths "
                f"{_examples(lengths[bad])} for keys {_examples(items['key'].to_numpy()[bad])}"
            )
        x = np.zeros((len(cells), common), dtype=np.float32)
        x[present] = np.stack(cells[present]).astype(np.float32)
        bad_rows = ~np.isfinite(x).all(axis=1)
        if bad_rows.any():
            raise LogError(
                f"{path}: column '{col}': expected finite values, found {int(bad_rows.sum())} vectors with "
                f"NaN or inf, for keys {_examples(items['key'].to_numpy()[bad_rows])}"
            )
        out.append(x)
    return out


def _previous(cfg: FromLogConfig, name: str) -> pd.DataFrame | None:
    if cfg.previous_maps is None:
        return None
    path = Path(cfg.previous_maps) / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected the previous version's {name} map)")
    return pq.read_table(path).to_pandas()


def from_log(
    log_path: str | Path, out: str | Path, cfg: FromLogConfig, items_path: str | Path | None = None
) -> dict:
    """Convert the log (and item table) into a data folder `out` (replaced whole); returns the record
    written there as from_log.json."""
    started = time.perf_counter()
    log_path, out = Path(log_path), Path(out)
    log = read_log(log_path, cfg)
    log = log.iloc[np.argsort(log["time"].to_numpy(), kind="stable")]  # ids in order of first appearance
    items = read_items(Path(items_path), cfg) if items_path is not None else None
    if items is not None:
        unknown = ~log["item"].isin(items["key"])
        if unknown.any():
            raise LogError(
                f"{log_path}: column '{cfg.item}': expected every item in the item table {items_path}, found "
                f"{int(unknown.sum())} rows with other items, e.g. "
                f"{_examples(pd.unique(log['item'][unknown]))}"
            )
    log["user_id"], users = dense_ids(log["user"], _previous(cfg, "users"), "user")
    all_items = (
        pd.concat([log["item"], items["key"]], ignore_index=True) if items is not None else log["item"]
    )
    _, item_map = dense_ids(all_items, _previous(cfg, "items"), "item")
    log["item_id"] = item_map["id"].to_numpy()[pd.Index(item_map["key"]).get_indexer(log["item"])]
    n_items = int(item_map["id"].max())
    rows = log[["user_id", "item_id", "time", "label", "row"]]
    record: dict[str, Any] = {"log": str(log_path), "items": str(items_path) if items_path else None}
    if cfg.negatives:
        neg = sample_negatives(rows, n_items, cfg.negatives, cfg.seed)
        neg["row"] = len(log) + np.arange(len(neg), dtype=np.int64)
        record["negatives_given_up"] = neg.attrs["given_up"]
        rows = pd.concat([rows, neg], ignore_index=True)
    rows = rows.iloc[np.argsort(rows["time"].to_numpy(), kind="stable")].reset_index(drop=True)
    split = time_splits(rows["time"].to_numpy(), cfg.split)
    with atomic_dir(out) as tmp:
        (tmp / MAPS).mkdir()
        record |= _write(tmp, rows, split, items, item_map, n_items, len(log), cfg, items_path)
        for name, table in (("users", users), ("items", item_map)):
            pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp / MAPS / f"{name}.parquet")
        record["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
        record["seconds"] = round(time.perf_counter() - started, 3)
        write_json(tmp / RECORD, record)
    return record


def _write(
    tmp: Path,
    rows: pd.DataFrame,
    split: np.ndarray,
    items: pd.DataFrame | None,
    item_map: pd.DataFrame,
    n_items: int,
    n_log: int,
    cfg: FromLogConfig,
    items_path: str | Path | None,
) -> dict[str, Any]:
    """The four files (and item_feature when the vectors fit) into `tmp`; returns their figures. Rows
    numbered `n_log` and above are sampled negatives."""
    train = split == 0
    logged = rows["row"].to_numpy() < n_log  # not a sampled negative
    item = rows["item_id"].to_numpy()
    views = np.bincount(item[train & logged], minlength=n_items + 1)
    likes = np.bincount(item[train & (rows["label"].to_numpy() == 1)], minlength=n_items + 1)
    view_lv, like_lv = levels(views), levels(likes)
    view_lv[0] = like_lv[0] = 0
    positives, begin, end = history_bounds(
        rows["user_id"].to_numpy(), rows["time"].to_numpy(), rows["label"].to_numpy()
    )
    pos_items = item[positives]
    figures: dict[str, Any] = {
        "rows": {},
        "positive_rate": {},
        "n_users": int(rows["user_id"].nunique()),
        "n_items": n_items,
    }
    for s, name in enumerate(schema.SPLITS):
        idx = np.flatnonzero(split == s)
        _write_split(
            tmp / f"{name}.parquet", rows, idx, name, pos_items, begin, end, like_lv, view_lv, cfg.history
        )
        figures["rows"][name] = len(idx)
        figures["positive_rate"][name] = float(rows["label"].to_numpy()[idx].mean())
    times = rows["time"].to_numpy()
    figures["cut_times"] = [int(times[split == 1].min()), int(times[split == 2].min())]
    figures |= _write_items(tmp, items, item_map, n_items, like_lv, view_lv, cfg, items_path)
    return figures


def _write_split(
    path: Path,
    rows: pd.DataFrame,
    idx: np.ndarray,
    name: str,
    pos_items: np.ndarray,
    begin: np.ndarray,
    end: np.ndarray,
    like_lv: np.ndarray,
    view_lv: np.ndarray,
    length: int,
) -> None:
    """One split's rows (`idx`, in time order), WRITE_ROWS at a time, each history gathered from the
    positives array."""
    offsets = np.arange(-length, 0)

    def tables() -> Iterator[pa.Table]:
        for start in range(0, max(len(idx), 1), WRITE_ROWS):
            at = idx[start : start + WRITE_ROWS]
            b, e = begin[at], end[at]
            where = e[:, None] + offsets[None, :]
            gathered = pos_items[np.clip(where, 0, None)] if len(pos_items) else 0
            seq = np.where(where >= b[:, None], gathered, 0)
            item = rows["item_id"].to_numpy()[at]
            cols: dict[str, Any] = {}
            if name == "test":
                cols[schema.SUBMISSION_ID] = pa.array(rows["row"].to_numpy()[at])
            cols[schema.USER] = pa.array(rows["user_id"].to_numpy()[at])
            cols[schema.HISTORY] = _list(seq.astype(np.int64).reshape(len(at), length))
            cols[schema.LEVELS[0]] = pa.array(like_lv[item])
            cols[schema.LEVELS[1]] = pa.array(view_lv[item])
            cols[schema.TARGET] = pa.array(item)
            cols[schema.LABEL] = pa.array(rows["label"].to_numpy()[at].astype(np.float64))
            yield pa.table(cols)

    write_tables(path, tables())


def _write_items(
    tmp: Path,
    items: pd.DataFrame | None,
    item_map: pd.DataFrame,
    n_items: int,
    like_lv: np.ndarray,
    view_lv: np.ndarray,
    cfg: FromLogConfig,
    items_path: str | Path | None,
) -> dict[str, Any]:
    """item_info.parquet (row 0 padding), the tag map and, when the vectors fit, item_feature.parquet."""
    keys = item_map.sort_values("id")["key"].reset_index(drop=True)  # item ids 1..N in order
    table = items.set_index("key").reindex(keys) if items is not None else None
    cats = _categories(table[cfg.tags] if table is not None and cfg.tags else None, cfg.tags_sep, n_items)
    tags, tag_map, dropped = item_tags(cats, cfg)
    titles, texts = _titles_and_texts(table, cats, cfg, n_items)
    vectors = (
        _vectors(Path(items_path or ""), table.reset_index(), cfg.vectors)
        if table is not None and cfg.vectors
        else []
    )
    emb, how = item_embedding(n_items, np.concatenate(vectors, axis=1) if vectors else None, texts, cfg.seed)
    ids = np.arange(n_items + 1, dtype=np.int64)
    info = pa.table(
        {
            schema.TARGET: ids,
            schema.TAGS: _list(_padded(tags)),
            schema.ITEM_EMB: _list(_padded(emb)),
        }
    )
    pq.write_table(info, tmp / f"{schema.ITEM_FILE}.parquet")
    pq.write_table(pa.Table.from_pandas(tag_map, preserve_index=False), tmp / MAPS / "tags.parquet")
    feature = _write_item_feature(tmp, ids[1:], titles, tags, like_lv[1:], view_lv[1:], vectors)
    return {"n_tags": len(tag_map), "tags_dropped": dropped, "item_emb": how, "item_feature": feature}


def _titles_and_texts(
    table: pd.DataFrame | None, cats: list[list[str]], cfg: FromLogConfig, n_items: int
) -> tuple[list[str], list[str] | None]:
    """Each item's title ("" without one) and the text that TF-IDF reads (its title and categories; None
    without an item table)."""
    titles = (
        [str(t) if isinstance(t, str) else "" for t in table[cfg.title]]
        if table is not None and cfg.title
        else [""] * n_items
    )
    texts = (
        [f"{t} {' '.join(c)}".strip() for t, c in zip(titles, cats, strict=True)]
        if table is not None
        else None
    )
    return titles, texts


def _write_item_feature(
    tmp: Path,
    ids: np.ndarray,
    titles: list[str],
    tags: np.ndarray,
    like_lv: np.ndarray,
    view_lv: np.ndarray,
    vectors: list[np.ndarray],
) -> bool:
    """item_feature.parquet of items `ids` (1..N) when the vectors are one of 768 and one of 1024 values;
    returns whether it was written."""
    if sorted(v.shape[1] for v in vectors) != sorted((schema.TXT_EMB_DIM, schema.IMG_EMB_DIM)):
        return False
    txt = next(v for v in vectors if v.shape[1] == schema.TXT_EMB_DIM)
    img = next(v for v in vectors if v.shape[1] == schema.IMG_EMB_DIM)
    feature = pa.table(
        {
            schema.TARGET: ids,
            schema.TITLE: titles,
            schema.TAGS: _list(tags),
            schema.LEVELS[0]: like_lv,
            schema.LEVELS[1]: view_lv,
            schema.TXT_EMB: _list(txt),
            schema.IMG_EMB: _list(img),
        }
    )
    pq.write_table(feature, tmp / f"{schema.FEATURE_FILE}.parquet")
    return True


def _padded(x: np.ndarray) -> np.ndarray:
    """Row 0, the padding item, before the items' rows."""
    return np.concatenate([np.zeros((1, x.shape[1]), x.dtype), x])


def _list(x: np.ndarray) -> pa.ListArray:
    """An (N, D) array as a list column of N rows of D values."""
    offsets = np.arange(0, x.shape[0] * x.shape[1] + 1, x.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(x.reshape(-1)))


def join_keys(prediction: str | Path, data_dir: str | Path, out: str | Path) -> int:
    """prediction.csv (or the submission zip) with the original user and item keys of each row, from the
    data folder's test.parquet and maps, into `out` (CSV: ID, user, item, Task2); returns the rows. `ID` is
    the interaction's row number in the log (sampled negatives: after the last row)."""
    from qin.predict import read_submission
    from qin.runs.io import atomic_file

    prediction, data_dir = Path(prediction), Path(data_dir)
    pred = read_submission(prediction) if prediction.suffix == ".zip" else pd.read_csv(prediction)
    columns = [schema.SUBMISSION_ID, schema.USER, schema.TARGET]
    test = pq.read_table(data_dir / "test.parquet", columns=columns).to_pandas()
    rows = pred.merge(test, on=schema.SUBMISSION_ID, how="left", validate="one_to_one")
    unknown = rows[schema.USER].isna()
    if unknown.any():
        raise LogError(
            f"{prediction}: column '{schema.SUBMISSION_ID}': expected the IDs of "
            f"{data_dir / 'test.parquet'}, found {int(unknown.sum())} others, e.g. "
            f"{_examples(rows[schema.SUBMISSION_ID][unknown])}"
        )
    for name, column, key in (("users", schema.USER, "user"), ("items", schema.TARGET, "item")):
        table = pq.read_table(data_dir / MAPS / f"{name}.parquet").to_pandas().set_index("id")["key"]
        rows[key] = table.reindex(rows[column].astype(np.int64)).to_numpy()
    with atomic_file(out) as tmp:
        rows[[schema.SUBMISSION_ID, "user", "item", "Task2"]].to_csv(tmp, index=False)
    return len(rows)
