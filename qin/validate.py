"""The `validate` stage: a great-expectations gate in front of everything else.

It checks the four contract files, and item_feature.parquet when the data folder has it (the file is
optional: real data without it still passes).

Each file is checked in two passes:
1. its schema, as a small frame of (column, type) rows: every expected column present with an allowed
   type, no extra columns;
2. its values, on a frame where list cells are replaced by derived scalar columns (`item_seq.len`,
   `item_seq.min`, `item_seq.max`, `item_emb_d128.nonfinite`, ...), because GX's column expectations do
   not work on list cells. The frame is derived batch by batch, so memory stays bounded on the full data.

Output (always, pass or fail), in the output directory: `summary.json` (machine-readable, with the md5 of
every data file), `report.md` (for people, readable offline) and `data_docs/` (GX Data Docs HTML; it pulls
its styling from CDNs, so it is plain offline). On failure `ValidationError` carries one line per failed
expectation naming the file, column, expectation, the count and up to 5 offending values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qin.config import ValidateConfig
from qin.data import features as F
from qin.data import schema
from qin.io import atomic_dir, file_hash, read_json, write_json

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
REPORT = "report.md"
DATA_DOCS = "data_docs"
BATCH_ROWS = 250_000
FEATURE_BATCH_ROWS = 8_192  # item_feature rows carry 1,792 floats each: derive fewer at a time

INT_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")
FLOAT_TYPES = ("float", "double")
# The types a file may store each contract column as (widened on reading), for every column of
# qin/data/schema.py (a test checks that these are its columns).
ALLOWED_TYPES: dict[str, tuple[str, ...]] = {
    schema.USER: INT_TYPES,
    **{level: INT_TYPES for level in schema.LEVELS},
    schema.TARGET: INT_TYPES,
    schema.LABEL: (*FLOAT_TYPES, *INT_TYPES),
    schema.HISTORY: tuple(f"list<{t}>" for t in INT_TYPES),
    schema.TAGS: tuple(f"list<{t}>" for t in INT_TYPES),
    schema.ITEM_EMB: tuple(f"list<{t}>" for t in FLOAT_TYPES),
    schema.TITLE: ("string", "large_string"),
    schema.TXT_EMB: tuple(f"list<{t}>" for t in FLOAT_TYPES),
    schema.IMG_EMB: tuple(f"list<{t}>" for t in FLOAT_TYPES),
    schema.SUBMISSION_ID: INT_TYPES,
}
# Columns a file may carry beyond its contract: the challenge's test.parquet has the submission's key `ID`,
# and may have a (dummy) label column, which nothing reads.
OPTIONAL_COLUMNS = {"test": (schema.LABEL, schema.SUBMISSION_ID)}
IGNORED_COLUMNS = {"test": (schema.LABEL,)}


class ValidationError(RuntimeError):
    """The data broke the contract; the message names every failed expectation."""


@dataclass
class Finding:
    file: str
    column: str
    expectation: str
    severity: str
    count: int | None
    examples: list[Any] = field(default_factory=list)
    observed: Any = None

    def line(self) -> str:
        what = f"{self.count} offending rows" if self.count is not None else f"found {self.observed!r}"
        ex = f"; e.g. {self.examples[:5]}" if self.examples else ""
        return f"{self.file}: column '{self.column}': {self.expectation} failed: {what}{ex}"


# The types a declared feature's column may be stored as, by kind (qin/data/features.py), for the columns
# that are not the contract's own.
KIND_TYPES: dict[str, tuple[str, ...]] = {
    "categorical": INT_TYPES,
    "target": INT_TYPES,
    "history": tuple(f"list<{t}>" for t in INT_TYPES),
    "sequence": tuple(f"list<{t}>" for t in INT_TYPES),
    "dense": tuple(f"list<{t}>" for t in FLOAT_TYPES),
}
KIND_CONTRACT = {
    "categorical": "int64",
    "target": "int64",
    "history": "list<int64>",
    "sequence": "list<int64>",
    "dense": "list<float>",
}


def declared_columns(name: str, table: F.FeatureTable) -> dict[str, F.Feature]:
    """The feature table's columns in file `name` that its contract does not hold, by column."""
    contract = set(schema.schema_for(name).names)
    if name == schema.ITEM_FILE or name == schema.FEATURE_FILE:
        features = table.from_file(name)
    else:
        features = table.inputs
    return {f.col: f for f in features if f.col not in contract and not f.is_key}


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return str(t)


def _contract_type(name: str, column: str, table: F.FeatureTable) -> str:
    extra = declared_columns(name, table)
    if column in extra:
        return KIND_CONTRACT[extra[column].kind]
    return _type_name(schema.schema_for(name).field(column).type)


def _derive_batch(table: pa.Table) -> pd.DataFrame:
    """Scalar columns as they are; each list column as .len/.min/.max/.nonfinite per row."""
    cols: dict[str, Any] = {}
    for name in table.column_names:
        col = table[name].combine_chunks()
        if not _type_name(col.type).startswith("list<"):
            cols[name] = col.to_pandas()
            continue
        lengths = pc.list_value_length(col)
        cols[f"{name}.len"] = lengths.to_pandas()
        n = pc.fill_null(lengths, 0).to_numpy().astype(np.int64)
        # Nulls inside a list become NaN here and are counted as non-finite.
        values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
        starts = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
        full = n > 0
        lo, hi = np.full(len(n), np.nan), np.full(len(n), np.nan)
        nonfinite = np.zeros(len(n), dtype=np.int64)
        if values.size:
            lo[full] = np.minimum.reduceat(values, starts[full])
            hi[full] = np.maximum.reduceat(values, starts[full])
            nonfinite[full] = np.add.reduceat((~np.isfinite(values)).astype(np.int64), starts[full])
        cols[f"{name}.min"], cols[f"{name}.max"], cols[f"{name}.nonfinite"] = lo, hi, nonfinite
    return pd.DataFrame(cols)


def _derive(pf: pq.ParquetFile, batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
    # Row group by row group: the batch reader, given the whole file, buffers far more than one batch.
    parts = [
        _derive_batch(pa.Table.from_batches([b]))
        for group in range(pf.metadata.num_row_groups)
        for b in pf.iter_batches(batch_size=batch_rows, row_groups=[group])
    ]
    if not parts:
        return _derive_batch(pf.schema_arrow.empty_table())
    return pd.concat(parts, ignore_index=True)


class _Gx:
    """One ephemeral GX context writing Data Docs into `docs_dir`; a checkpoint per (file, pass)."""

    def __init__(self, docs_dir: Path) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx  # ~3.5 s to import: only when validating
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self.gx = gx
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.ctx.add_data_docs_site(
            site_name="qin",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        self.source = self.ctx.data_sources.add_pandas("qin")

    def run(self, name: str, frame: pd.DataFrame, expectations: list) -> dict:
        gx = self.gx
        batch = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
        suite = self.ctx.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        vd = self.ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = self.ctx.checkpoints.add(
            gx.Checkpoint(
                name=name,
                validation_definitions=[vd],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["qin"])],
                result_format="SUMMARY",
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        return next(iter(result.run_results.values())).to_json_dict()


def _plain(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _findings(file: str, result: dict) -> list[Finding]:
    out = []
    for r in result["results"]:
        if r["success"]:
            continue
        cfg = r["expectation_config"]
        kw = cfg["kwargs"]
        res = r.get("result") or {}
        exc = (r.get("exception_info") or {}).get("exception_message")
        cond = kw.get("row_condition")
        cond = cond.get("pass_through_filter", cond) if isinstance(cond, dict) else cond
        condition = f" where {cond}" if cond else ""
        out.append(
            Finding(
                file=file,
                column=str(kw.get("column") or kw.get("column_A") or "<table>").split(".")[0],
                expectation=cfg["type"] + (f" ({exc})" if exc else "") + _bounds(kw) + condition,
                severity=str(cfg.get("severity") or "critical"),
                count=res.get("unexpected_count"),
                examples=_plain(res.get("partial_unexpected_list") or [])[:5],
                observed=_plain(res.get("observed_value")),
            )
        )
    return out


def _bounds(kw: dict) -> str:
    """The expectation's arguments, as a reader needs them ("[0, 10]", "of item_seq.len")."""
    parts = []
    if "column" in kw and "." in str(kw["column"]):
        parts.append(f"on {kw['column']}")
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if lo is not None and hi is not None:
        parts.append(f"in [{lo:g}, {hi:g}]")
    elif lo is not None or hi is not None:
        parts.append(f">= {lo:g}" if lo is not None else f"<= {hi:g}")
    if "value_set" in kw:
        parts.append(f"in {kw['value_set']}")
    if "value" in kw:
        parts.append(f"= {kw['value']}")
    return f" ({', '.join(parts)})" if parts else ""


def _schema_expectations(name: str, table: F.FeatureTable) -> list:
    import great_expectations.expectations as gxe

    allowed = [*schema.schema_for(name).names, *OPTIONAL_COLUMNS.get(name, ())]
    pairs = [(c, t) for c in allowed for t in ALLOWED_TYPES[c]]
    pairs += [(c, t) for c, f in declared_columns(name, table).items() for t in KIND_TYPES[f.kind]]
    return [gxe.ExpectColumnPairValuesToBeInSet(column_A="column", column_B="type", value_pairs_set=pairs)]


def _declared_expectations(name: str, table: F.FeatureTable) -> list:
    """The value pass's expectations on the feature table's own columns of file `name`, by kind: no nulls;
    a categorical within its vocabulary (unless it is hashed, or names an oov id: then any integer), ids of
    a sequence >= 0 and of its length, a dense vector of its dim and finite."""
    import great_expectations.expectations as E

    exps: list = []
    for column, f in declared_columns(name, table).items():
        if f.kind == "categorical":
            exps.append(E.ExpectColumnValuesToNotBeNull(column=column))
            if f.hash is None and f.oov is None:
                top = f.vocab - 1 if isinstance(f.vocab, int) else None
                exps.append(E.ExpectColumnValuesToBeBetween(column=column, min_value=0, max_value=top))
            continue
        size = f.dim if f.kind == "dense" else f.length
        exps += [
            E.ExpectColumnValuesToNotBeNull(column=f"{column}.len"),
            E.ExpectColumnValuesToBeBetween(column=f"{column}.len", min_value=size, max_value=size),
            E.ExpectColumnValuesToBeBetween(column=f"{column}.nonfinite", min_value=0, max_value=0),
        ]
        if f.kind == "sequence":
            exps.append(E.ExpectColumnValuesToBeBetween(column=f"{column}.min", min_value=0))
            if isinstance(f.vocab, int) and f.oov is None:
                exps.append(E.ExpectColumnValuesToBeBetween(column=f"{column}.max", max_value=f.vocab - 1))
    return exps


def _value_expectations(name: str, n_items: int, cfg: ValidateConfig, columns: list[str]) -> list:
    """The value pass's expectations for file `name`, whose derived frame has `columns`."""
    import great_expectations.expectations as E
    from great_expectations.expectations.metadata_types import FailureSeverity

    exps: list = [E.ExpectTableRowCountToBeBetween(min_value=1)]
    if name == schema.FEATURE_FILE:
        return [*exps, *_feature_expectations(n_items, cfg)]
    if name == schema.ITEM_FILE:
        return [
            *exps,
            E.ExpectColumnValuesToNotBeNull(column=schema.TARGET),
            E.ExpectColumnPairValuesToBeEqual(column_A=schema.TARGET, column_B="row_index"),
            E.ExpectColumnValuesToNotBeNull(column=f"{schema.TAGS}.len"),
            E.ExpectColumnValuesToBeBetween(
                column=f"{schema.TAGS}.len", min_value=schema.TAGS_PER_ITEM, max_value=schema.TAGS_PER_ITEM
            ),
            E.ExpectColumnValuesToBeBetween(column=f"{schema.TAGS}.nonfinite", min_value=0, max_value=0),
            E.ExpectColumnValuesToBeBetween(column=f"{schema.TAGS}.min", min_value=0),
            E.ExpectColumnValuesToBeBetween(column=f"{schema.TAGS}.max", max_value=cfg.tag_vocab - 1),
            E.ExpectColumnValuesToBeBetween(
                column=f"{schema.TAGS}.max",
                max_value=0,
                row_condition="row_index==0",
                condition_parser="pandas",
            ),
            E.ExpectColumnValuesToNotBeNull(column=f"{schema.ITEM_EMB}.len"),
            E.ExpectColumnValuesToBeBetween(
                column=f"{schema.ITEM_EMB}.len", min_value=schema.ITEM_EMB_DIM, max_value=schema.ITEM_EMB_DIM
            ),
            E.ExpectColumnValuesToBeBetween(column=f"{schema.ITEM_EMB}.nonfinite", min_value=0, max_value=0),
        ]
    exps += [E.ExpectColumnValuesToNotBeNull(column=c) for c in (schema.USER, *schema.LEVELS)]
    exps += [
        *(
            E.ExpectColumnValuesToBeBetween(column=level, min_value=0, max_value=schema.NUM_LEVELS - 1)
            for level in schema.LEVELS
        ),
        E.ExpectColumnValuesToNotBeNull(column=schema.TARGET),
        E.ExpectColumnValuesToBeBetween(column=schema.TARGET, min_value=1, max_value=n_items),
        E.ExpectColumnValuesToNotBeNull(column=f"{schema.HISTORY}.len"),
        E.ExpectColumnUniqueValueCountToBeBetween(column=f"{schema.HISTORY}.len", min_value=1, max_value=1),
        E.ExpectColumnValuesToBeBetween(column=f"{schema.HISTORY}.nonfinite", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column=f"{schema.HISTORY}.min", min_value=0),
        E.ExpectColumnValuesToBeBetween(column=f"{schema.HISTORY}.max", max_value=n_items),
    ]
    if name == "test" and schema.SUBMISSION_ID in columns:
        exps += [
            E.ExpectColumnValuesToNotBeNull(column=schema.SUBMISSION_ID),
            E.ExpectColumnValuesToBeUnique(column=schema.SUBMISSION_ID),
        ]
    if name in schema.LABELLED_SPLITS:
        exps += [
            E.ExpectColumnValuesToNotBeNull(column=schema.LABEL),
            E.ExpectColumnValuesToBeInSet(column=schema.LABEL, value_set=[0, 1]),
            E.ExpectColumnMeanToBeBetween(
                column=schema.LABEL,
                min_value=cfg.positive_rate_min,
                max_value=cfg.positive_rate_max,
                severity=FailureSeverity.WARNING,
            ),
        ]
    return exps


def _feature_expectations(n_items: int, cfg: ValidateConfig) -> list:
    """item_feature: items 1..N (item_info's ids, in order), their tags and levels, two modality vectors of
    exactly their dimension, every value finite."""
    import great_expectations.expectations as E

    exps: list = [
        E.ExpectTableRowCountToEqual(value=n_items),
        E.ExpectColumnValuesToNotBeNull(column=schema.TARGET),
        E.ExpectColumnPairValuesToBeEqual(column_A=schema.TARGET, column_B="row_id"),
        E.ExpectColumnValuesToNotBeNull(column=schema.TITLE),
        E.ExpectColumnValuesToNotBeNull(column=f"{schema.TAGS}.len"),
        E.ExpectColumnValuesToBeBetween(column=f"{schema.TAGS}.nonfinite", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column=f"{schema.TAGS}.min", min_value=0),
        E.ExpectColumnValuesToBeBetween(column=f"{schema.TAGS}.max", max_value=cfg.tag_vocab - 1),
    ]
    for level in schema.LEVELS:
        exps += [
            E.ExpectColumnValuesToNotBeNull(column=level),
            E.ExpectColumnValuesToBeBetween(column=level, min_value=0, max_value=schema.NUM_LEVELS - 1),
        ]
    for column, dim in ((schema.TXT_EMB, schema.TXT_EMB_DIM), (schema.IMG_EMB, schema.IMG_EMB_DIM)):
        exps += [
            E.ExpectColumnValuesToNotBeNull(column=f"{column}.len"),
            E.ExpectColumnValuesToBeBetween(column=f"{column}.len", min_value=dim, max_value=dim),
            E.ExpectColumnValuesToBeBetween(column=f"{column}.nonfinite", min_value=0, max_value=0),
        ]
    return exps


def _check_file(
    gx: _Gx, data_dir: Path, name: str, n_items: int | None, cfg: ValidateConfig, table: F.FeatureTable
) -> dict:
    path = data_dir / f"{name}.parquet"
    info: dict[str, Any] = {"path": str(path), "findings": []}

    def refuse(what: str, found: str) -> dict:
        info["findings"] = [Finding(str(path), "<file>", what, "critical", None, observed=found)]
        return info

    if not path.exists():
        return refuse("expect the file to exist", "no such file")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # a truncated or non-parquet file
        return refuse("expect a readable parquet file", f"{type(exc).__name__}: {exc}")
    info["md5"] = file_hash(path)
    info["rows"] = pf.metadata.num_rows
    expected = [*schema.schema_for(name).names, *declared_columns(name, table)]
    found = {f.name: _type_name(f.type) for f in pf.schema_arrow}
    extra = [c for c in found if c not in expected]
    schema_frame = pd.DataFrame(
        {
            "column": expected + extra,
            "type": [found.get(c, "missing") for c in expected] + [found[c] for c in extra],
        }
    )
    result = gx.run(f"{name}-schema", schema_frame, _schema_expectations(name, table))
    findings = []
    for f in _findings(str(path), result):  # one finding per offending (column, type) pair
        for col, typ in f.examples:
            if col in expected:
                want = f"type {_contract_type(name, col, table)}"
            elif col in OPTIONAL_COLUMNS.get(name, ()):
                want = f"one of the types {', '.join(ALLOWED_TYPES[col])}, or no such column"
            else:
                want = "no such column"
            findings.append(
                Finding(str(path), col, f"{f.expectation} (expected {want})", f.severity, None, observed=typ)
            )
    if not findings:
        try:
            frame = _derive(pf, FEATURE_BATCH_ROWS if name == schema.FEATURE_FILE else BATCH_ROWS)
        except Exception as exc:  # corrupt pages behind a valid footer
            return refuse("expect readable row groups", f"{type(exc).__name__}: {exc}")
        if name == schema.ITEM_FILE:
            frame["row_index"] = np.arange(len(frame))
            n_items = len(frame) - 1
        if name == schema.FEATURE_FILE:  # no padding row: row r holds item r + 1
            frame["row_id"] = np.arange(1, len(frame) + 1)
        assert n_items is not None
        expectations = _value_expectations(name, n_items, cfg, list(frame.columns))
        expectations += _declared_expectations(name, table)
        findings = _findings(str(path), gx.run(name, frame, expectations))
    ignored = [c for c in IGNORED_COLUMNS.get(name, ()) if c in found]
    if ignored:
        info["notes"] = [f"{path}: column '{c}' is present and ignored (nothing reads it)" for c in ignored]
    info["findings"] = findings
    return info


def validate(
    data_dir: str | Path, out_dir: str | Path, cfg: ValidateConfig, features: F.FeatureTable | None = None
) -> dict:
    """Validate the four files in `data_dir` (and item_feature.parquet when it is there, or the feature
    table reads from it); write summary.json, report.md and data_docs/ to `out_dir`. `features`: the feature
    table, whose columns the files must hold (default: params/features/default.yaml).

    Raises `ValidationError` (after writing the reports) when any critical expectation fails.
    """
    data_dir = Path(data_dir)
    table = features or F.default()
    needed = {f.file for f in table.item} - set(schema.FILES)

    def check(gx: _Gx) -> dict[str, dict]:
        files: dict[str, dict] = {}
        item = files[schema.ITEM_FILE] = _check_file(gx, data_dir, schema.ITEM_FILE, None, cfg, table)
        n_items = item["rows"] - 1 if "rows" in item and not item["findings"] else None
        for split in schema.SPLITS:
            if n_items is None:  # the id range comes from item_info; without it the rows cannot be judged
                files[split] = {"path": str(data_dir / f"{split}.parquet"), "findings": [], "skipped": True}
                continue
            files[split] = _check_file(gx, data_dir, split, n_items, cfg, table)
        for name in schema.OPTIONAL_FILES:
            if not (data_dir / f"{name}.parquet").exists() and name not in needed:
                continue
            if n_items is None:
                files[name] = {"path": str(data_dir / f"{name}.parquet"), "findings": [], "skipped": True}
                continue
            files[name] = _check_file(gx, data_dir, name, n_items, cfg, table)
        return files

    return _gate(data_dir, Path(out_dir), check)


def validate_split(
    data_dir: str | Path,
    split: str,
    max_item_id: int,
    out_dir: str | Path,
    cfg: ValidateConfig,
    features: F.FeatureTable | None = None,
) -> dict:
    """The same gate for one split on its own, with item ids up to `max_item_id` and the columns of
    `features` (e.g. `predict` checks test.parquet against the item table and the feature table of the
    model that scores it); reports in `out_dir` as `validate` writes them. Raises `ValidationError` when a
    critical expectation fails."""
    data_dir, table = Path(data_dir), features or F.default()
    return _gate(
        data_dir,
        Path(out_dir),
        lambda gx: {split: _check_file(gx, data_dir, split, max_item_id, cfg, table)},
    )


def file_failures(data_dir: str | Path, name: str, n_items: int, cfg: ValidateConfig) -> list[str]:
    """The gate's critical failures for one file of `data_dir` (item ids up to `n_items`), one line each
    (file, column, expectation, what was found), without writing reports: for `qin data import`."""
    import tempfile

    with tempfile.TemporaryDirectory() as docs:
        info = _check_file(_Gx(Path(docs)), Path(data_dir), name, n_items, cfg, F.default())
    return [f.line() for f in info["findings"] if f.severity == "critical"]


def _gate(data_dir: Path, out_dir: Path, check: Callable[[_Gx], dict[str, dict]]) -> dict:
    """Run `check` (file name -> its findings) in one GX context; write the reports; raise on failure."""
    with atomic_dir(out_dir) as tmp:
        files = check(_Gx(tmp / DATA_DOCS))
        findings = [f for info in files.values() for f in info["findings"]]
        critical = [f for f in findings if f.severity == "critical"]
        summary = {
            "passed": not critical,
            "data_dir": str(data_dir),
            "files": {
                name: {
                    **{k: v for k, v in info.items() if k != "findings"},
                    "failures": [f.line() for f in info["findings"] if f.severity == "critical"],
                    "warnings": [f.line() for f in info["findings"] if f.severity != "critical"],
                }
                for name, info in files.items()
            },
        }
        write_json(tmp / SUMMARY, summary)
        (tmp / REPORT).write_text(_markdown(summary))
    for f in findings:
        if f.severity != "critical":
            log.warning("%s", f.line())
    if critical:
        raise ValidationError(
            f"validation of {data_dir} failed ({len(critical)} expectations; report: {out_dir / REPORT}):\n"
            + "\n".join(f"  - {f.line()}" for f in critical)
        )
    return summary


def _markdown(summary: dict) -> str:
    lines = [f"# Data validation: {'PASSED' if summary['passed'] else 'FAILED'}", ""]
    lines += ["| file | rows | md5 | result |", "|---|---|---|---|"]
    for info in summary["files"].values():
        status = "skipped" if info.get("skipped") else ("ok" if not info["failures"] else "FAILED")
        lines.append(f"| {info['path']} | {info.get('rows', '-')} | {info.get('md5', '-')} | {status} |")
    for kind in ("failures", "warnings", "notes"):
        items = [x for info in summary["files"].values() for x in info.get(kind, ())]
        if items:
            lines += ["", f"## {kind.capitalize()}", ""] + [f"- {x}" for x in items]
    lines += ["", f"GX Data Docs (HTML): `{DATA_DOCS}/index.html`"]
    return "\n".join(lines) + "\n"


def require_passed(validation_dir: str | Path, data_dir: str | Path) -> None:
    """Refuse to go on unless `validate` passed on exactly the files now in `data_dir`."""
    summary = read_json(Path(validation_dir) / SUMMARY)
    if not summary.get("passed"):
        raise ValidationError(
            f"{validation_dir}/{SUMMARY}: the data failed validation; fix it and rerun validate"
        )
    if summary.get("gate_skipped"):
        log.warning("%s: the data was not validated (%s)", validation_dir, summary["gate_skipped"])
    for name, info in summary["files"].items():
        path = Path(data_dir) / f"{name}.parquet"
        if not path.exists() or file_hash(path) != info.get("md5"):
            raise ValidationError(
                f"{path}: changed since it was validated (md5 {info.get('md5')} in "
                f"{validation_dir}/{SUMMARY}); rerun validate"
            )


def skip_gate(data_dir: str | Path, out_dir: str | Path, why: str) -> dict:
    """A summary that lets featurize read `data_dir` without the gate: for a machine without
    great-expectations (bench/gpu_check.py on a GPU image, tests/models/test_cuda.py), never for a
    pipeline run (no stage calls it). It names the files by md5, as `validate` does, and says why the gate
    was left out; `require_passed` warns when it reads one."""
    data_dir = Path(data_dir)
    names = [*schema.FILES, *(n for n in schema.OPTIONAL_FILES if (data_dir / f"{n}.parquet").exists())]
    paths = {n: data_dir / f"{n}.parquet" for n in names}
    summary = {
        "passed": True,
        "gate_skipped": why,
        "data_dir": str(data_dir),
        "files": {n: {"path": str(p), "md5": file_hash(p)} for n, p in paths.items()},
    }
    with atomic_dir(Path(out_dir)) as tmp:
        write_json(tmp / SUMMARY, summary)
        (tmp / REPORT).write_text(f"# Data validation: SKIPPED\n\n{why}\n")
    return summary
