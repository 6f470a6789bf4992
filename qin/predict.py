"""The `predict` stage: test.parquet scored into the challenge's submission.

The challenge scores a zip holding one file, `prediction.csv`, with columns `ID` (test.parquet's own `ID`
column, as the challenge ships it; 0..N-1, the row's position, for a test file without one) and `Task2`
(the predicted click probability). `predict` writes, into its output
folder:
    prediction.csv    ID,Task2 for every row of test.parquet, in its order
    submission.zip    prediction.csv alone (what is uploaded)
    manifest.json     the model (registered name, version and content hash), the data (test.parquet's
                      md5, rows), the settings and the seconds each step took
    validation/       the gate's reports for test.parquet (as `validate` writes them)

The test file passes the same gate as in `validate` (qin/validate.py), with item ids checked against the
item table of the model that scores it, before anything is scored; it is then scored in batches of
`predict.batch_size` rows through `qin.serving.inference.Scorer`, the one scoring path.

Which model (`predict.model`, or `qin predict --model`) is found by qin/registry/resolve.py: a registered
version
(downloaded once per content hash) or a package path. The stage's key holds the package's content hash, so
a run with the same model, data and settings reuses the submission.
"""

from __future__ import annotations

import logging
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qin.data import schema
from qin.data.features import FeatureSpec
from qin.featurize import fixed_list
from qin.runs.io import atomic_dir, read_json, record_json, tree_hash, write_json
from qin.settings.params import Params

if TYPE_CHECKING:
    from qin.validate import ValidationSummary

log = logging.getLogger(__name__)

PREDICTION = "prediction.csv"
SUBMISSION = "submission.zip"
MANIFEST = "manifest.json"
VALIDATION = "validation"
SPLIT = "test"
COLUMNS = (schema.SUBMISSION_ID, "Task2")
READ_ROWS = 262_144  # parquet rows read at a time


@dataclass(frozen=True)
class PredictManifest:
    """The stage's result, as manifest.json holds it: what was scored, with which model and settings, how
    fast, and what came out."""

    model: Mapping[str, str | None]  # model_name, version (None: a package given by path), model_hash, kind
    data: Mapping[str, Any]  # the test file, its md5 and rows
    rows: int
    ids: str  # where prediction.csv's IDs come from
    settings: Mapping[str, Any]  # batch_size, device
    seconds: Mapping[str, float]  # validate, score, write, total
    rows_per_s: float | None  # scored rows per second (None: no time measured)
    prediction: Mapping[str, float]  # mean, min, max
    validation: Mapping[str, Any]  # the gate's "passed" and the test file's "warnings"
    files: Sequence[str]  # what the output folder holds for the challenge

    def to_json(self) -> dict[str, Any]:
        """The manifest.json object."""
        return record_json(self)


def predict(
    data_dir: Path,
    model_dir: Path,
    out_dir: Path,
    params: Params,
    model_name: str | None = None,
    version: str | None = None,
    model_hash: str | None = None,
) -> PredictManifest:
    """Score `data_dir`/test.parquet with the package `model_dir` into `out_dir` (see the module's text);
    return the manifest. `model_name`, `version`: the package's registered identity, for the manifest;
    `model_hash`: its content hash when the caller has it (qin/registry/resolve.py computed or checked it)."""
    from qin.serving.inference import load_package
    from qin.validate import validate_split

    cfg = params.predict
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    scorer = load_package(model_dir, device=cfg.device)
    test = Path(data_dir) / f"{SPLIT}.parquet"
    with atomic_dir(out_dir) as tmp:
        t = time.perf_counter()
        gate = validate_split(
            data_dir, SPLIT, scorer.n_items - 1, tmp / VALIDATION, params.validate, scorer.spec.table
        )
        seconds["validate"] = time.perf_counter() - t

        t = time.perf_counter()
        probs = score_file(test, scorer, cfg.batch_size)
        seconds["score"] = time.perf_counter() - t

        t = time.perf_counter()
        ids = submission_ids(test)
        write_submission(probs, tmp / PREDICTION, tmp / SUBMISSION, ids)
        seconds["write"] = time.perf_counter() - t

        seconds["total"] = time.perf_counter() - started
        identity = {"model_name": model_name, "version": version, "model_hash": model_hash}
        manifest = _manifest(model_dir, identity, test, gate, probs, ids is not None, scorer, cfg, seconds)
        write_json(tmp / MANIFEST, manifest.to_json())
    return manifest


def _manifest(
    model_dir: Path,
    identity: dict[str, str | None],
    test: Path,
    gate: ValidationSummary,
    probs: np.ndarray,
    has_ids: bool,
    scorer: Any,
    cfg: Any,
    seconds: dict[str, float],
) -> PredictManifest:
    """What was scored, with which model and settings, how fast, and what came out (manifest.json)."""
    model = {**identity, "model_hash": identity["model_hash"] or tree_hash([model_dir])}
    model["kind"] = read_json(Path(model_dir) / "model.json")["model"]["name"]
    checked = gate.files[SPLIT]
    return PredictManifest(
        model=model,
        data={"file": str(test), "md5": checked["md5"], "rows": len(probs)},
        rows=len(probs),
        ids="the test file's ID column" if has_ids else "row positions 0..N-1",
        settings={"batch_size": cfg.batch_size, "device": str(scorer.device)},
        seconds={k: round(v, 3) for k, v in seconds.items()},
        rows_per_s=round(len(probs) / seconds["score"], 1) if seconds["score"] > 0 else None,
        prediction={"mean": float(probs.mean()), "min": float(probs.min()), "max": float(probs.max())},
        validation={"passed": gate.passed, "warnings": checked["warnings"]},
        files=(PREDICTION, SUBMISSION),
    )


def score_file(test: Path, scorer: Any, batch_size: int) -> np.ndarray:
    """test.parquet's rows scored in order, read a few hundred thousand rows at a time (what `predict` does
    after the gate; bench/gpu_check.py times it on its own)."""
    pf = pq.ParquetFile(test)
    out = np.empty(pf.metadata.num_rows, dtype=np.float32)
    row = 0
    for batch in pf.iter_batches(batch_size=READ_ROWS, columns=list(scorer.spec.table.columns)):
        table = pa.Table.from_batches([batch])
        cols = model_columns(table, scorer.spec)
        out[row : row + len(table)] = scorer.predict(cols, batch_size)
        row += len(table)
    return out


def submission_ids(test: Path) -> np.ndarray | None:
    """test.parquet's `ID` column (the gate checked it: integers, unique, no nulls) in row order, as int64;
    None when the file has none."""
    pf = pq.ParquetFile(test)
    if schema.SUBMISSION_ID not in pf.schema_arrow.names:
        return None
    ids = pf.read(columns=[schema.SUBMISSION_ID])[schema.SUBMISSION_ID]
    return ids.to_numpy().astype(np.int64)


def model_columns(table: pa.Table, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """A batch of rows' model inputs, the columns `spec`'s table declares, as the Scorer takes them (ids
    int64, dense vectors float32; the whole history: the Scorer keeps the last max_len)."""
    cols = {}
    for f in spec.table.inputs:
        if f.kind == "dense":
            cols[f.col] = fixed_list(table, f.col).astype(np.float32)
        elif f.kind == "history":
            cols[f.col] = fixed_list(table, f.col).astype(np.int64)
        else:
            cols[f.col] = table[f.col].to_numpy().astype(np.int64)
    return cols


def write_submission(
    probs: np.ndarray, csv_path: Path, zip_path: Path, ids: np.ndarray | None = None
) -> None:
    """prediction.csv (ID = `ids`, by default the row position; Task2 = probability to float32's 7 digits)
    and the zip holding only it."""
    import pandas as pd

    if ids is None:
        ids = np.arange(len(probs))
    if len(ids) != len(probs):
        raise ValueError(f"{len(ids)} submission IDs for {len(probs)} scored rows")
    frame = pd.DataFrame({COLUMNS[0]: ids, COLUMNS[1]: probs})
    frame.to_csv(csv_path, index=False, float_format="%.7g", lineterminator="\n")
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        z.write(csv_path, arcname=PREDICTION)


def read_submission(zip_path: str | Path) -> Any:
    """The submission's prediction.csv as a DataFrame, after checking the zip holds only it."""
    import pandas as pd

    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        if names != [PREDICTION]:
            raise ValueError(f"{zip_path}: expected one member {PREDICTION}, found {names}")
        with z.open(PREDICTION) as f:
            return pd.read_csv(f)
