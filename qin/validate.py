"""The `validate` stage: a great-expectations gate in front of everything else.

It checks the four contract files, and item_feature.parquet when the data folder has it (the file is
optional: real data without it still passes).

Each file is checked in two passes, both generated from its columns' kinds: the contract's
(qin/data/schema.py `CONTRACT`) and the feature table's own columns in that file (qin/data/checks.py):
1. its schema, as a small frame of (column, type) rows: every expected column present with a type its kind
   allows, no extra columns;
2. its values: each kind's checks (qin/data/checks.py) are aggregated batch by batch (offending rows counted
   with their first values, distinct values, sums, the row count) and never on a frame of all rows; GX then
   judges each check's figure for the whole file (a count of offending rows must be 0, a row count or a
   mean within its bounds), so memory stays that of one batch on the full data.

Output (always, pass or fail), in the output directory: `summary.json` (machine-readable, with the md5 of
every data file; the stage returns it as a `ValidationSummary`), `report.md` (for people, readable offline)
and `data_docs/` (GX Data Docs HTML; it pulls its styling from CDNs, so it is plain offline). On failure
`ValidationError` carries one line per failed expectation naming the file, column, expectation, the count
and up to 5 offending values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import qin.data.checks as C
from qin.data import features as F
from qin.data import schema
from qin.data.schema import Column
from qin.runs.io import atomic_dir, file_hash, read_json, record_json, write_json
from qin.settings.sections import ValidateConfig

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
REPORT = "report.md"
DATA_DOCS = "data_docs"
BATCH_ROWS = 250_000
FEATURE_BATCH_ROWS = 8_192  # item_feature rows carry 1,792 floats each: derive fewer at a time

INT_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")
FLOAT_TYPES = ("float", "double")
# The types a file may store a column of each kind as (widened on reading).
STORED_TYPES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("target", "categorical", "key", "id", "unique"), INT_TYPES),
    "label": (*FLOAT_TYPES, *INT_TYPES),
    "text": ("string", "large_string"),
    **dict.fromkeys(("history", "sequence"), tuple(f"list<{t}>" for t in INT_TYPES)),
    "dense": tuple(f"list<{t}>" for t in FLOAT_TYPES),
}
# Every contract column's stored types, by its kind (a contract column has one kind in every file).
ALLOWED_TYPES: dict[str, tuple[str, ...]] = {
    c.name: STORED_TYPES[c.kind] for cs in (*schema.CONTRACT.values(), *schema.OPTIONAL.values()) for c in cs
}
OPTIONAL_COLUMNS = {name: tuple(c.name for c in cs) for name, cs in schema.OPTIONAL.items()}


class ValidationError(RuntimeError):
    """The data broke the contract; the message names every failed expectation."""


@dataclass(frozen=True)
class ValidationSummary:
    """The gate's result, as summary.json holds it: whether the data passed, and what it found per file."""

    passed: bool
    data_dir: str
    # File name -> its path, md5, rows, failures, warnings and notes (or `skipped`).
    files: Mapping[str, Mapping[str, Any]]
    gate_skipped: str | None = None  # why the gate was left out (`skip_gate`); None: it ran

    def to_json(self) -> dict[str, Any]:
        """The summary.json object (`gate_skipped` only where the gate was left out)."""
        return record_json(self, optional=("gate_skipped",))


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


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return str(t)


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


def _schema_expectations(columns: tuple[Column, ...]) -> list:
    import great_expectations.expectations as gxe

    pairs = [(c.name, t) for c in columns for t in STORED_TYPES[c.kind]]
    return [gxe.ExpectColumnPairValuesToBeInSet(column_A="column", column_B="type", value_pairs_set=pairs)]


def _judgements(tallies: list[C.Tally]) -> list:
    """One GX expectation per check, on the file's figure for it (`Tally.observed`)."""
    import great_expectations.expectations as E
    from great_expectations.expectations.metadata_types import FailureSeverity

    out = []
    for t in tallies:
        low, high = t.check.bounds
        severity = FailureSeverity.WARNING if t.check.severity == "warning" else FailureSeverity.CRITICAL
        out.append(
            E.ExpectColumnValuesToBeBetween(
                column=t.check.key, min_value=low, max_value=high, severity=severity
            )
        )
    return out


def _findings(path: str, tallies: list[C.Tally], figures: dict[str, float], result: dict) -> list[Finding]:
    """A finding for each check GX failed, with the offending rows' count and first values (or the figure)."""
    by_key = {t.check.key: t for t in tallies}
    out = []
    for r in result["results"]:
        if r["success"]:
            continue
        t = by_key[r["expectation_config"]["kwargs"]["column"]]
        exc = (r.get("exception_info") or {}).get("exception_message")
        figure = figures[t.check.key]
        out.append(
            Finding(
                file=path,
                column=t.check.column,
                expectation=t.check.describe() + (f" ({exc})" if exc else ""),
                severity=t.check.severity,
                count=int(figure) if t.check.counts_rows else None,
                examples=t.examples,
                observed=None if t.check.counts_rows else figure,
            )
        )
    return out


def _check_schema(
    gx: _Gx, path: Path, name: str, found: dict[str, str], columns: tuple[Column, ...]
) -> list[Finding]:
    """The schema pass: every expected column present with an allowed type, no columns beyond the optional."""
    optional = schema.OPTIONAL.get(name, ())
    expected = [c.name for c in columns]
    extra = [c for c in found if c not in expected]
    frame = pd.DataFrame(
        {
            "column": expected + extra,
            "type": [found.get(c, "missing") for c in expected] + [found[c] for c in extra],
        }
    )
    kinds = {c.name: c.kind for c in columns}
    result = gx.run(f"{name}-schema", frame, _schema_expectations((*columns, *optional)))
    findings = []
    for r in result["results"]:
        if r["success"]:
            continue
        expectation = r["expectation_config"]["type"]
        for col, typ in (r.get("result") or {}).get("partial_unexpected_list") or []:
            if col in kinds:
                want = f"type {_type_name(schema.ARROW_TYPES[kinds[col]])}"
            elif col in OPTIONAL_COLUMNS.get(name, ()):
                want = f"one of the types {', '.join(ALLOWED_TYPES[col])}, or no such column"
            else:
                want = "no such column"
            findings.append(
                Finding(str(path), col, f"{expectation} (expected {want})", "critical", None, observed=typ)
            )
    return findings


def _check_values(gx: _Gx, pf: pq.ParquetFile, path: Path, name: str, checks: list[C.Check]) -> list[Finding]:
    """The value pass: each check's figure, aggregated batch by batch (qin/data/checks.py), judged by GX."""
    tallies = C.scan(pf, checks, FEATURE_BATCH_ROWS if name == schema.FEATURE_FILE else BATCH_ROWS)
    figures = {t.check.key: t.observed() for t in tallies}
    result = gx.run(name, pd.DataFrame([figures]), _judgements(tallies))
    return _findings(str(path), tallies, figures, result)


def _check_file(
    gx: _Gx, data_dir: Path, name: str, n_items: int | None, cfg: ValidateConfig, table: F.FeatureTable
) -> dict:
    """Both passes on file `name` (items 1..n_items; None: item_info, whose rows say N)."""
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
    info["md5"], info["rows"] = file_hash(path), pf.metadata.num_rows
    found = {f.name: _type_name(f.type) for f in pf.schema_arrow}
    columns = C.file_columns(name, table)
    info["findings"] = _check_schema(gx, path, name, found, columns)
    if not info["findings"]:
        items = pf.metadata.num_rows - 1 if n_items is None else n_items
        checks = C.checks_for(name, columns + C.optional_columns(name, list(found)), items, cfg)
        try:
            info["findings"] = _check_values(gx, pf, path, name, checks)
        except (OSError, pa.ArrowException) as exc:  # corrupt pages behind a valid footer
            return refuse("expect readable row groups", f"{type(exc).__name__}: {exc}")
    ignored = [c for c in schema.IGNORED.get(name, ()) if c in found]
    if ignored:
        info["notes"] = [f"{path}: column '{c}' is present and ignored (nothing reads it)" for c in ignored]
    return info


def validate(
    data_dir: str | Path, out_dir: str | Path, cfg: ValidateConfig, features: F.FeatureTable | None = None
) -> ValidationSummary:
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
) -> ValidationSummary:
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


def _gate(data_dir: Path, out_dir: Path, check: Callable[[_Gx], dict[str, dict]]) -> ValidationSummary:
    """Run `check` (file name -> its findings) in one GX context; write the reports; raise on failure."""
    with atomic_dir(out_dir) as tmp:
        files = check(_Gx(tmp / DATA_DOCS))
        findings = [f for info in files.values() for f in info["findings"]]
        critical = [f for f in findings if f.severity == "critical"]
        summary = ValidationSummary(
            passed=not critical,
            data_dir=str(data_dir),
            files={
                name: {
                    **{k: v for k, v in info.items() if k != "findings"},
                    "failures": [f.line() for f in info["findings"] if f.severity == "critical"],
                    "warnings": [f.line() for f in info["findings"] if f.severity != "critical"],
                }
                for name, info in files.items()
            },
        )
        write_json(tmp / SUMMARY, summary.to_json())
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


def _markdown(summary: ValidationSummary) -> str:
    lines = [f"# Data validation: {'PASSED' if summary.passed else 'FAILED'}", ""]
    lines += ["| file | rows | md5 | result |", "|---|---|---|---|"]
    for info in summary.files.values():
        status = "skipped" if info.get("skipped") else ("ok" if not info["failures"] else "FAILED")
        lines.append(f"| {info['path']} | {info.get('rows', '-')} | {info.get('md5', '-')} | {status} |")
    for kind in ("failures", "warnings", "notes"):
        items = [x for info in summary.files.values() for x in info.get(kind, ())]
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


def skip_gate(data_dir: str | Path, out_dir: str | Path, why: str) -> ValidationSummary:
    """A summary that lets featurize read `data_dir` without the gate: for a machine without
    great-expectations (bench/gpu_check.py on a GPU image, tests/models/test_cuda.py), never for a
    pipeline run (no stage calls it). It names the files by md5, as `validate` does, and says why the gate
    was left out; `require_passed` warns when it reads one."""
    data_dir = Path(data_dir)
    names = [*schema.FILES, *(n for n in schema.OPTIONAL_FILES if (data_dir / f"{n}.parquet").exists())]
    paths = {n: data_dir / f"{n}.parquet" for n in names}
    summary = ValidationSummary(
        passed=True,
        data_dir=str(data_dir),
        files={n: {"path": str(p), "md5": file_hash(p)} for n, p in paths.items()},
        gate_skipped=why,
    )
    with atomic_dir(Path(out_dir)) as tmp:
        write_json(tmp / SUMMARY, summary.to_json())
        (tmp / REPORT).write_text(f"# Data validation: SKIPPED\n\n{why}\n")
    return summary
