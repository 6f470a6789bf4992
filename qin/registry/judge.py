"""Two registered models judged on one data version's valid split: how `promote` compares a candidate
trained on new data with the alias holder trained on older data.

Valid AUCs measured on different data do not compare. So when the candidate's data version (`data_hash`
tag) is not the holder's, both packages score the candidate's valid split, on the rows both can score: the
target item and every history item within both item tables (a model cannot score an item it has never had
an id for; keys mapped by `qin data from-log` keep their ids across versions, so the old items' rows are
all there). The share of rows compared is recorded with the decision.

A model's AUC on those rows is cached in `layout.JUDGED`, by the package's content hash, the data version
and the largest item id scored, so re-offering the same pair scores nothing. `judge_on` gives `promote`
its `Judge`; the holder's package is found as `qin predict` finds a registered version
(qin/registry/resolve.py: downloaded once per content hash, checked against its tag).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qin.data import schema
from qin.registry.protocol import Registry, VersionInfo
from qin.registry.resolve import resolve_model
from qin.runs import layout
from qin.runs.io import file_hash, file_lock, read_json, write_json
from qin.settings.params import Params

READ_ROWS = 262_144
SPLIT = "valid"


@dataclass(frozen=True)
class Comparison:
    """Both models' AUC on the rows of one valid split that both can score."""

    data_hash: str
    rows: int  # rows compared
    share: float  # of the split's rows
    candidate_auc: float
    holder_auc: float

    def to_json(self) -> dict[str, Any]:
        return {
            "data_hash": self.data_hash,
            "rows": self.rows,
            "share": round(self.share, 6),
            "valid_auc": self.candidate_auc,
            "from_valid_auc": self.holder_auc,
        }


# A comparison of the two (candidate, holder) on the candidate's data, or why there is none (`judge_on`).
Judge = Callable[[VersionInfo, VersionInfo], Comparison | str]


def data_hash_of(data_dir: str | Path) -> str:
    """The data version of the files now in `data_dir`: the digest `register` tags a version with
    (qin.registry.provenance.validated_data's, from the md5s `validate` recorded), computed from the files
    themselves."""
    data_dir = Path(data_dir)
    names = [*schema.FILES, *(n for n in schema.OPTIONAL_FILES if (data_dir / f"{n}.parquet").exists())]
    missing = [n for n in names if not (data_dir / f"{n}.parquet").is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir}: missing {', '.join(f'{n}.parquet' for n in missing)}")
    return digest({n: file_hash(data_dir / f"{n}.parquet") for n in names})


def digest(md5s: dict[str, str | None]) -> str:
    """One data version's digest from its files' md5s by name."""
    lines = sorted(f"{name}:{md5}" for name, md5 in md5s.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def compare(
    data_dir: str | Path,
    data_hash: str,
    candidate: tuple[Path, str],
    holder: tuple[Path, str],
    batch_size: int,
    cache: Path = layout.JUDGED,
) -> Comparison | str:
    """The candidate's and the holder's AUC on `data_dir`'s valid rows that both can score; or, when no
    AUC can be measured on them, why (a sentence)."""
    from qin.serving.inference import CONFIG

    n_items = min(int(read_json(p / CONFIG)["features"]["n_items"]) for p in (candidate[0], holder[0]))
    path = Path(data_dir) / f"{SPLIT}.parquet"
    total = pq.ParquetFile(path).metadata.num_rows
    results = [
        _scored(path, package, model_hash, data_hash, n_items - 1, batch_size, cache)
        for package, model_hash in (candidate, holder)
    ]
    rows = results[0]["rows"]
    if any(r.get("auc") is None for r in results):
        return (
            f"an AUC cannot be measured on the {rows} of {total} rows of {path} whose items both models know "
            f"(ids up to {n_items - 1}): {results[0].get('why') or results[1].get('why')}"
        )
    return Comparison(data_hash, rows, rows / total, results[0]["auc"], results[1]["auc"])


def judge_on(
    data_dir: str | Path,
    params: Params,
    registry: Registry,
    local: dict[str, tuple[Path, str]] | None = None,
) -> Judge:
    """A `Judge` that compares two versions on `data_dir`'s valid split (`compare`), provided it holds the
    candidate's data version. Their packages: `local` (version -> (package, content hash)), else downloaded
    as `qin predict` downloads a registered version."""

    def package(version: VersionInfo) -> tuple[Path, str]:
        if local and version.version in local:
            return local[version.version]
        ref = resolve_model(version.version, params.register, registry=registry)
        return ref.path, ref.model_hash

    def judge(candidate: VersionInfo, holder: VersionInfo) -> Comparison | str:
        try:
            here = data_hash_of(data_dir)
        except FileNotFoundError as exc:
            return f"the candidate's data is needed to compare them on it: {exc}"
        if candidate.data_hash != here:
            return (
                f"{data_dir} holds data version {here}, not the candidate's, so they cannot be compared on "
                f"it (give the folder holding data version {candidate.data_hash})"
            )
        try:
            packages = package(candidate), package(holder)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # e.g. the holder's files are gone
            return f"a package could not be had to score: {type(exc).__name__}: {exc}"
        return compare(data_dir, here, *packages, params.evaluate.batch_size)

    return judge


def _scored(
    path: Path,
    package: Path,
    model_hash: str,
    data_hash: str,
    max_item: int,
    batch_size: int,
    cache: Path,
) -> dict[str, Any]:
    """{rows, auc (None when it cannot be measured), why} of one package on the rows of `path` whose
    items are all <= `max_item`: cached by the package's hash, the data version and `max_item`."""
    from qin.serving.inference import load_package
    from qin.training.metrics import roc_auc

    entry = cache / f"{model_hash[:24]}-{data_hash}-{max_item}.json"
    with file_lock(cache / f"{entry.stem}.lock"):
        if entry.exists():
            return dict(read_json(entry))
        scorer = load_package(package, device="auto")
        probs, labels = score_known_rows(path, scorer, max_item, batch_size)
        result: dict[str, Any] = {"rows": len(labels), "auc": None, "why": None, "model_hash": model_hash}
        if len(np.unique(labels)) < 2:
            result["why"] = f"they hold {'no rows' if not len(labels) else 'one class only'}"
        else:
            result["auc"] = roc_auc(labels, probs)
        write_json(entry, result)
    return result


def score_known_rows(
    path: Path, scorer: Any, max_item: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of the rows of a labelled split whose target and history items are all
    <= `max_item`, in file order."""
    from qin.predict import model_columns

    spec = scorer.spec
    probs, labels = [], []
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=READ_ROWS, columns=[*spec.table.columns, schema.LABEL]):
        table = pa.Table.from_batches([batch])
        cols = model_columns(table, spec)
        history = cols[spec.history]
        keep = (cols[spec.target] <= max_item) & (history.max(axis=1, initial=0) <= max_item)
        if keep.any():
            probs.append(scorer.predict({c: v[keep] for c, v in cols.items()}, batch_size))
            labels.append(table[schema.LABEL].to_numpy()[keep].astype(np.float64))
    if not probs:
        return np.empty(0, np.float32), np.empty(0)
    return np.concatenate(probs), np.concatenate(labels)
