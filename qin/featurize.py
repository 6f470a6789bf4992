"""The `featurize` stage: validated parquet -> compact arrays on disk, loaded memory-mapped.

What it keeps is what the feature table declares (qin/data/features.py). Output directory layout:
    {split}_{column}.npy   per row column the models read (the table's row features, target and history):
                           the history int32 (N, L'), its last L' = min(L, max_len) items; a categorical
                           column int32 (N,) (int64 when hashed), its raw values; a dense column float32
                           (N, dim)
    {split}_user_id.npy    int64 (N,)     for user-grouped AUC
    {split}_label.npy      float32 (N,)   train and valid only
    {split}_truth.npy      float32 (N,)   true click probability, when the data ships it (synthetic)
    items.{name}.npy       per item feature but the id: its value for each item id 0..n_items-1 (row 0 the
                           padding item; item_feature's features 0 there): int32 ids, or float32 vectors
    manifest.json          the feature spec (the table and each feature's vocabulary size or width), shapes,
                           dtypes and the md5 of every source file
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qin.data import features as F
from qin.data import schema
from qin.runs.io import atomic_dir, file_hash, read_json, record_json, write_json
from qin.settings.sections import FeaturizeConfig
from qin.validate import require_passed

MANIFEST = "manifest.json"
BATCH_ROWS = 250_000


@dataclass(frozen=True)
class FeaturizeManifest:
    """The stage's result, as manifest.json holds it."""

    max_len: int  # featurize.max_len
    sources: Mapping[str, str]  # file name -> md5 of each source file
    arrays: Mapping[str, Mapping[str, Any]]  # array name -> its "shape" and "dtype"
    n_items: int  # item ids 0..n_items-1 (0: padding)
    spec: Mapping[str, Any]  # the feature spec (`FeatureSpec.plain`)

    def to_json(self) -> dict[str, Any]:
        """The manifest.json object."""
        return record_json(self)


def fixed_list(table, column: str) -> np.ndarray:
    """A list column of one length per row as an (N, length) array (the gate checked the length)."""
    col = table[column].combine_chunks()
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    return values.reshape(len(col), -1)


def _row_values(table: pa.Table, f: F.Feature, max_len: int) -> np.ndarray:
    """Column `f` of a batch as featurize keeps it."""
    if f.kind == "history":
        return np.asarray(schema.most_recent(fixed_list(table, f.col), max_len), dtype=np.int32)
    if f.kind == "dense":
        return fixed_list(table, f.col).astype(np.float32)
    values = table[f.col].to_numpy()
    return values.astype(np.int64 if f.hash is not None or f.col == schema.USER else np.int32)


class _Vocab:
    """The row categoricals' vocabularies: sizes fixed by the table, or (vocab: data) the train split's
    largest value plus one; each split's values checked against them."""

    def __init__(self, table: F.FeatureTable) -> None:
        self.table = table
        self.features = [f for f in table.row if f.kind == "categorical"]
        self.sizes = {f.name: F.vocab_size(f, []) if f.vocab != "data" else 0 for f in self.features}

    def see(self, split: str, path: Path, values: dict[str, np.ndarray]) -> None:
        for f in self.features:
            v = values[f.col]
            if f.vocab == "data" and split == "train":
                self.sizes[f.name] = max(self.sizes[f.name], int(v.max(initial=-1)) + 1)
                size = np.iinfo(np.int64).max  # the train split sets the vocabulary
            else:
                size = self.sizes[f.name]
            bad = F.outside(f, v, size)
            if f.oov is None and bad.any():
                found = sorted(set(v[bad][:5].tolist()))
                where = "the train split's vocabulary, " if f.vocab == "data" else ""
                raise ValueError(
                    f"{path}: column '{f.col}': expected ids in {where}0..{size - 1} (feature '{f.name}', "
                    f"no oov id declared), found {int(bad.sum())} outside, e.g. {found}"
                )


def _write_split(path: Path, tmp: Path, split: str, max_len: int, vocab: _Vocab, arrays: dict) -> int:
    """Stream one split into memory-mapped .npy files, one parquet batch at a time, each one's shape and
    dtype into `arrays`; return its rows. Its columns: the table's row inputs (`vocab` holds the table), the
    user key and the label."""
    pf = pq.ParquetFile(path)
    n = pf.metadata.num_rows
    inputs = {f.col: f for f in vocab.table.inputs}
    labelled = split in schema.LABELLED_SPLITS
    columns = list(dict.fromkeys([*inputs, schema.USER, *([schema.LABEL] if labelled else [])]))
    written: dict[str, np.memmap] = {}
    row = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        table = pa.Table.from_batches([batch])
        values = {c: _row_values(table, f, max_len) for c, f in inputs.items()}
        values[schema.USER] = table[schema.USER].to_numpy().astype(np.int64)
        if labelled:
            values[schema.LABEL] = table[schema.LABEL].to_numpy().astype(np.float32)
        vocab.see(split, path, values)
        if not written:  # shapes are known from the first batch (one history length per file)
            for col, v in values.items():
                written[col] = np.lib.format.open_memmap(
                    tmp / f"{split}_{col}.npy", mode="w+", dtype=v.dtype, shape=(n, *v.shape[1:])
                )
        for col, v in values.items():
            written[col][row : row + len(v)] = v
        row += len(batch)
    for col, arr in written.items():
        arr.flush()
        arrays[f"{split}_{col}"] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
    return n


def _item_values(f: F.Feature, items: pa.Table, n_items: int, path: Path) -> np.ndarray:
    """Item feature `f`'s value for each item id 0..n_items-1, from `items` (item_info: one row per id
    0..N; item_feature: one row per id 1..N, row 0 then holds zeros)."""
    if f.kind == "categorical":
        values = items[f.col].to_numpy().astype(np.int32)
    else:
        values = fixed_list(items, f.col).astype(np.float32 if f.kind == "dense" else np.int32)
    if len(values) == n_items - 1:
        values = np.concatenate([np.zeros((1, *values.shape[1:]), dtype=values.dtype), values])
    if len(values) != n_items:
        raise ValueError(f"{path}: {len(values)} rows, expected one per item ({n_items}, or {n_items - 1})")
    return values


def _items(tables: dict[str, tuple[Path, pa.Table]], table: F.FeatureTable, n_items: int, tmp: Path,
           arrays: dict) -> dict[str, int]:  # fmt: skip
    """Write each item feature's array (its shape and dtype into `arrays`); return each item feature's size
    (vocabulary or width)."""
    sizes = {}
    for f in table.item:
        if f.is_key:
            sizes[f.name] = n_items
            continue
        path, items = tables[f.file or ""]
        values = _item_values(f, items, n_items, path)
        sizes[f.name] = int(values.shape[1]) if f.kind == "dense" else F.vocab_size(f, [values])
        if f.kind == "dense" and f.dim != sizes[f.name]:
            raise ValueError(
                f"{path}: column '{f.col}': expected vectors of {f.dim} (feature '{f.name}'), "
                f"found {sizes[f.name]}"
            )
        bad = F.outside(f, values, sizes[f.name]) if f.kind != "dense" else np.zeros(0, dtype=bool)
        if f.oov is None and bad.any():
            raise ValueError(
                f"{path}: column '{f.col}': expected ids in 0..{sizes[f.name] - 1} (feature '{f.name}'), "
                f"found {sorted(set(values[bad][:5].tolist()))}"
            )
        np.save(tmp / f"items.{f.name}.npy", values)
        arrays[f"items.{f.name}"] = {"shape": list(values.shape), "dtype": str(values.dtype)}
    return sizes


def _item_tables(item_path: Path, feature_path: Path, table: F.FeatureTable, sources: dict
                 ) -> dict[str, tuple[Path, pa.Table]]:  # fmt: skip
    """The item files the table reads (item_info always; item_feature when it declares features from it),
    by file name, with their md5 in `sources`."""
    tables = {schema.ITEM_FILE: (item_path, pq.read_table(item_path))}
    sources[schema.ITEM_FILE] = file_hash(item_path)
    wanted = table.from_file(schema.FEATURE_FILE)
    if wanted:
        if not feature_path.exists():
            raise FileNotFoundError(
                f"{feature_path}: not found; the feature table reads {[f.name for f in wanted]} from it"
            )
        tables[schema.FEATURE_FILE] = (
            feature_path,
            pq.read_table(feature_path, columns=[f.col for f in wanted]),
        )
        sources[schema.FEATURE_FILE] = file_hash(feature_path)
    return tables


def featurize(
    data_dir: str | Path,
    validation_dir: str | Path,
    out_dir: str | Path,
    cfg: FeaturizeConfig,
    embed_dir: str | Path | None = None,
    features: F.FeatureTable | None = None,
) -> FeaturizeManifest:
    """The arrays of the validated splits in `data_dir`, with the item table the embed stage wrote in
    `embed_dir` (its item_emb_d128); without one, the data's own. `features`: the feature table (default:
    params/features/default.yaml)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    table = features or F.default()
    require_passed(validation_dir, data_dir)
    item_path = Path(embed_dir or data_dir) / f"{schema.ITEM_FILE}.parquet"
    if embed_dir is not None and not item_path.exists():
        raise FileNotFoundError(
            f"{item_path}: not found; expected the item table the embed stage writes (run embed first, "
            "into that folder)"
        )
    sources: dict[str, str] = {}
    arrays: dict[str, dict[str, Any]] = {}
    tables = _item_tables(item_path, data_dir / f"{schema.FEATURE_FILE}.parquet", table, sources)
    n_items = int(tables[schema.ITEM_FILE][1].num_rows)
    with atomic_dir(out_dir) as tmp:
        sizes = _items(tables, table, n_items, tmp, arrays)
        vocab = _Vocab(table)
        for split in schema.SPLITS:
            path = data_dir / f"{split}.parquet"
            sources[split] = file_hash(path)
            n = _write_split(path, tmp, split, cfg.max_len, vocab, arrays)
            truth = data_dir / schema.truth_file(split)
            if truth.exists():
                p = pq.read_table(truth)["p_click"].to_numpy().astype(np.float32)
                if len(p) != n:
                    raise ValueError(f"{truth}: {len(p)} rows, expected {n} as in {path}")
                np.save(tmp / f"{split}_truth.npy", p)
                arrays[f"{split}_truth"] = {"shape": list(p.shape), "dtype": str(p.dtype)}
        sizes |= {f.name: int(f.dim or 0) for f in table.row if f.kind == "dense"}
        sizes |= vocab.sizes
        spec = F.FeatureSpec(table=table, sizes=sizes, n_items=n_items)
        manifest = FeaturizeManifest(cfg.max_len, sources, arrays, n_items, spec.plain())
        write_json(tmp / MANIFEST, manifest.to_json())
    return manifest


class Features:
    """Read access to a featurize output directory (arrays memory-mapped)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest = read_json(self.root / MANIFEST)

    def has(self, name: str) -> bool:
        return name in self.manifest["arrays"]

    def array(self, name: str, copy_on_write: bool = False) -> np.ndarray:
        """The array memory-mapped: read-only, or copy-on-write (writable in memory, as torch.from_numpy
        wants, with nothing copied unless written)."""
        if not self.has(name):
            raise KeyError(f"{self.root}: no array '{name}' (have {sorted(self.manifest['arrays'])})")
        return np.load(self.root / f"{name}.npy", mmap_mode="c" if copy_on_write else "r")

    @property
    def history_len(self) -> int:
        """The history length of every split: featurize.max_len, or the data's when that is shorter. The
        models trained on these features keep all of it."""
        return int(self.array(f"train_{self.spec.history}").shape[1])

    @property
    def spec(self) -> F.FeatureSpec:
        """The feature table and its vocabularies: what a model trained on these features is built from."""
        return F.FeatureSpec.read(self.manifest["spec"])

    def items(self) -> dict[str, np.ndarray]:
        """The item table: each item feature's values per item id (in memory)."""
        return {f.name: np.array(self.array(f"items.{f.name}")) for f in self.spec.table.item if not f.is_key}

    def split(self, split: str, copy_on_write: bool = False) -> dict[str, np.ndarray]:
        """The model's row columns of `split` (and its label when it has one), memory-mapped."""
        cols = list(self.spec.table.columns)
        cols += [schema.LABEL] if self.has(f"{split}_{schema.LABEL}") else []
        return {c: self.array(f"{split}_{c}", copy_on_write) for c in cols}
