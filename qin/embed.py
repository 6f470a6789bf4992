"""The `embed` stage: the item table the models read, its `item_emb_d128` made from the items' text and
image features (the challenge's task 1) or kept as the data ships it.

Methods (params `embed.method`):
    given    item_emb_d128 as shipped (the only one for data without item_feature.parquet)
    pca      the organisers' baseline: every text and image column standardised, both concatenated,
             PCA to 128
    learned  a fusion of both modalities trained on which items the training histories hold together
             (qin/embedding/fusion.py), started from the pca solution; it reads train.parquet's histories
             only, never a label

Output folder:
    item_info.parquet  item_info with the new item_emb_d128 (row 0 stays the zero padding row)
    report.json        method, seconds, explained variance (pca), and on synthetic data (item_truth.parquet)
                       the nearest-neighbour agreement with the planted sub-topics and topics of the shipped
                       embedding, each modality, their concatenation and the result
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qin.data import schema
from qin.embedding.pca import fit_pca
from qin.embedding.similarity import concat_unit, neighbour_agreements, read_item_truth
from qin.featurize import fixed_list
from qin.runs.io import atomic_dir, record_json, write_json
from qin.settings.sections import EmbedConfig
from qin.validate import require_passed

ITEMS, REPORT = f"{schema.ITEM_FILE}.parquet", "report.json"


@dataclass(frozen=True)
class EmbedReport:
    """The stage's result, as report.json holds it (the optional figures only where they apply)."""

    method: str
    items: int
    seconds: float
    explained_variance: float | None = None  # pca and learned: the PCA's share of the variance
    learned: Mapping[str, Any] | None = None  # learned: the fusion's figures (qin/embedding/fusion.py)
    # Synthetic data: level ("subtopic", "topic") -> embedding -> nearest-neighbour agreement.
    neighbour_agreement: Mapping[str, Mapping[str, float]] | None = None

    def to_json(self) -> dict[str, Any]:
        """The report.json object."""
        return record_json(self, optional=("explained_variance", "learned", "neighbour_agreement"))


def embed(
    data_dir: str | Path, validation_dir: str | Path, out_dir: str | Path, cfg: EmbedConfig
) -> EmbedReport:
    """Write the item table with `cfg.method`'s item_emb_d128 and its report into `out_dir`; return the
    report."""
    data_dir = Path(data_dir)
    require_passed(validation_dir, data_dir)
    start = time.perf_counter()
    items = pq.read_table(data_dir / ITEMS)
    shipped = fixed_list(items, schema.ITEM_EMB).astype(np.float32)
    modalities = _modalities(data_dir, items.num_rows - 1) if cfg.method != "given" else None
    explained, learned = None, None
    if modalities is None:
        emb = shipped
    else:
        emb = np.zeros_like(shipped)
        emb[1:], explained, learned = _fused(cfg, data_dir, modalities)
    seconds = round(time.perf_counter() - start, 3)  # the embedding's, without the agreement's
    report = EmbedReport(
        method=cfg.method,
        items=items.num_rows - 1,
        seconds=seconds,
        explained_variance=explained,
        learned=learned,
        neighbour_agreement=_agreement(data_dir, shipped[1:], emb[1:], modalities),
    )
    with atomic_dir(out_dir) as tmp:
        table = items.set_column(
            items.schema.get_field_index(schema.ITEM_EMB), schema.ITEM_EMB, _list_column(emb)
        )
        pq.write_table(table, tmp / ITEMS)
        write_json(tmp / REPORT, report.to_json())
    return report


def _modalities(data_dir: Path, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(text (N, 768), image (N, 1024)) of items 1..N from item_feature.parquet (which the gate checked)."""
    path = data_dir / f"{schema.FEATURE_FILE}.parquet"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: not found; params key 'embed.method': 'pca' and 'learned' need the items' text and "
            "image features, and without them only 'given' applies"
        )
    table = pq.read_table(path, columns=[schema.TXT_EMB, schema.IMG_EMB])
    if table.num_rows != n_items:
        raise ValueError(f"{path}: {table.num_rows} rows, expected {n_items} (the items of {ITEMS})")
    return fixed_list(table, schema.TXT_EMB), fixed_list(table, schema.IMG_EMB)


def _fused(
    cfg: EmbedConfig, data_dir: Path, modalities: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, float, dict[str, Any] | None]:
    """The (N, 128) embedding of items 1..N by `cfg.method`, the PCA's explained variance and (learned) the
    fusion's figures."""
    features = np.concatenate(modalities, axis=1)
    pca = fit_pca(features, schema.ITEM_EMB_DIM)
    explained = round(float(pca.explained.sum()), 6)
    if cfg.method == "pca":
        return pca.transform(features), explained, None
    from qin.embedding.fusion import learn_fusion, read_histories

    rows = cfg.learned.history_rows or None
    histories = read_histories(data_dir / "train.parquet", rows, cfg.learned.seed)
    start = (pca.components * pca.scale).astype(np.float32)
    emb, learned = learn_fusion(pca.standardise(features), start, histories, cfg.learned)
    return emb, explained, learned


def _agreement(
    data_dir: Path, shipped: np.ndarray, emb: np.ndarray, modalities: tuple[np.ndarray, np.ndarray] | None
) -> dict[str, dict[str, float]] | None:
    """Nearest-neighbour agreement (k=10) with the planted sub-topics and topics, by level and embedding,
    when the data has them (None otherwise)."""
    if not (data_dir / schema.ITEM_TRUTH_FILE).exists():
        return None
    truth = read_item_truth(data_dir)
    candidates = {"shipped": shipped, "result": emb}
    if modalities is not None:
        text, image = modalities
        candidates |= {"text": text, "image": image, "text+image": concat_unit(text, image)}
    levels = {level: truth[level] for level in ("subtopic", "topic")}
    scores = {name: neighbour_agreements(e, levels) for name, e in candidates.items()}
    return {level: {name: round(scores[name][level], 4) for name in candidates} for level in levels}


def _list_column(matrix: np.ndarray) -> pa.ListArray:
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)
