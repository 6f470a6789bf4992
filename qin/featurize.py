"""The `featurize` stage: validated parquet -> compact arrays on disk, loaded memory-mapped.

Output directory layout:
    {split}_item_seq.npy   int32 (N, L')  the last L' = min(L, max_len) history items
    {split}_likes_level.npy, {split}_views_level.npy, {split}_item_id.npy   int32 (N,)
    {split}_user_id.npy    int64 (N,)     for user-grouped AUC
    {split}_label.npy      float32 (N,)   train and valid only
    {split}_truth.npy      float32 (N,)   true click probability, when the data ships it (synthetic)
    item_tags.npy int32 (n_items, 5), item_emb.npy float32 (n_items, 128)
    manifest.json          shapes, dtypes, vocabularies and the md5 of every source file
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qin.config import FeaturizeConfig
from qin.data import schema
from qin.io import atomic_dir, file_hash, read_json, write_json
from qin.validate import require_passed

MANIFEST = "manifest.json"
ROW_FIELDS = schema.MODEL_INPUTS  # what featurize keeps of a row, besides user_id and label
BATCH_ROWS = 250_000


def fixed_list(table, column: str) -> np.ndarray:
    """A list column of one length per row as an (N, length) array (the gate checked the length)."""
    col = table[column].combine_chunks()
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    return values.reshape(len(col), -1)


def _write_split(path: Path, tmp: Path, split: str, max_len: int, manifest: dict) -> int:
    """Stream one split into memory-mapped .npy files, one parquet batch at a time; return its rows."""
    pf = pq.ParquetFile(path)
    n = pf.metadata.num_rows
    labelled = split in schema.LABELLED_SPLITS
    columns = [*ROW_FIELDS, schema.USER, *([schema.LABEL] if labelled else [])]
    arrays: dict[str, np.memmap] = {}
    row = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        table = pa.Table.from_batches([batch])
        seq = fixed_list(table, schema.HISTORY)
        values = {schema.HISTORY: schema.most_recent(seq, max_len)}
        values |= {c: table[c].to_numpy() for c in columns if c != schema.HISTORY}
        if not arrays:  # shapes are known from the first batch (one history length per file)
            for col, v in values.items():
                dtype = {schema.LABEL: np.float32, schema.USER: np.int64}.get(col, np.int32)
                arrays[col] = np.lib.format.open_memmap(
                    tmp / f"{split}_{col}.npy", mode="w+", dtype=dtype, shape=(n, *v.shape[1:])
                )
        for col, v in values.items():
            arrays[col][row : row + len(seq)] = v
        row += len(seq)
    for col, arr in arrays.items():
        arr.flush()
        manifest["arrays"][f"{split}_{col}"] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
    return n


def featurize(
    data_dir: str | Path,
    validation_dir: str | Path,
    out_dir: str | Path,
    cfg: FeaturizeConfig,
    embed_dir: str | Path | None = None,
) -> dict:
    """The arrays of the validated splits in `data_dir`, with the item table the embed stage wrote in
    `embed_dir` (its item_emb_d128); without one, the data's own."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    require_passed(validation_dir, data_dir)
    item_path = Path(embed_dir or data_dir) / f"{schema.ITEM_FILE}.parquet"
    if embed_dir is not None and not item_path.exists():
        raise FileNotFoundError(
            f"{item_path}: not found; expected the item table the embed stage writes (run embed first, "
            "into that folder)"
        )
    manifest: dict = {"max_len": cfg.max_len, "sources": {}, "arrays": {}}
    with atomic_dir(out_dir) as tmp:

        def save(name: str, arr: np.ndarray) -> None:
            np.save(tmp / f"{name}.npy", arr)
            manifest["arrays"][name] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}

        items = pq.read_table(item_path)
        manifest["sources"][schema.ITEM_FILE] = file_hash(item_path)
        tags = fixed_list(items, schema.TAGS).astype(np.int32)
        save("item_tags", tags)
        save("item_emb", fixed_list(items, schema.ITEM_EMB).astype(np.float32))
        manifest["n_items"] = int(items.num_rows)
        manifest["n_tags"] = int(tags.max()) + 1
        for split in schema.SPLITS:
            path = data_dir / f"{split}.parquet"
            manifest["sources"][split] = file_hash(path)
            n = _write_split(path, tmp, split, cfg.max_len, manifest)
            truth = data_dir / schema.truth_file(split)
            if truth.exists():
                p = pq.read_table(truth)["p_click"].to_numpy().astype(np.float32)
                if len(p) != n:
                    raise ValueError(f"{truth}: {len(p)} rows, expected {n} as in {path}")
                save(f"{split}_truth", p)
        write_json(tmp / MANIFEST, manifest)
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
        return int(self.array(f"train_{schema.HISTORY}").shape[1])

    def split(self, split: str, copy_on_write: bool = False) -> dict[str, np.ndarray]:
        cols = [*ROW_FIELDS, schema.LABEL] if self.has(f"{split}_{schema.LABEL}") else list(ROW_FIELDS)
        return {c: self.array(f"{split}_{c}", copy_on_write) for c in cols}
