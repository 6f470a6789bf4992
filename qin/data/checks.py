"""The gate's value checks: generated per column kind, computed batch by batch from aggregates.

A file's columns are its contract's (qin/data/schema.py `CONTRACT`) plus the feature table's own columns
in it (`file_columns`); each has a kind, and the kind says which checks apply (`checks_for`):

    key          not null; equal to its row position (item_info: 0..N; item_feature: 1..N)
    id           not null
    unique       not null; no two rows alike
    label        not null; in {0, 1}; the mean within validate's positive-rate band (a warning)
    text         not null
    target       not null; an item id 1..N
    history      a list per row, one length in the whole file, ids 0..N, no nulls inside
    categorical  not null; within its vocabulary (none for a hashed id or one with an oov id)
    sequence     a list of exactly its length, ids within its vocabulary, no nulls inside; item_info's
                 padding row (row 0) all zeros
    dense        a vector of exactly its dim, every value finite

Each check is stated as the row-level GX expectation it stands for (`expect_column_values_to_be_between`
on `item_seq.max`, <= N, ...), but no frame of all rows is ever built: `scan` reads the file a batch at a
time, derives each list column's per-row length/min/max/non-finite count for that batch only, and keeps per
check only aggregates: the offending rows' count and their first values, a set of distinct values, a sum,
the row count. Memory stays that of one batch (a `unique` column's values spill to disk past UNIQUE_HELD).
`Tally.observed` is the file's figure each check is judged by (qin/validate.py hands those figures to GX).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qin.data import features as F
from qin.data import schema
from qin.data.schema import Column
from qin.runs.io import read_batches
from qin.settings.sections import ValidateConfig

EXAMPLES = 5  # offending values kept per check
UNIQUE_HELD = 4_000_000  # (row, value) pairs of a unique column held in memory (64 MB) before they spill
PARTS = 256  # the files they spill to, by value
POSITION = {schema.ITEM_FILE: 0, schema.FEATURE_FILE: 1}  # an item file's key: its row position + this


def file_columns(name: str, table: F.FeatureTable) -> tuple[Column, ...]:
    """File `name`'s columns: its contract's, then the feature table's own columns in it, by kind."""
    contract = schema.CONTRACT[name]
    known = {c.name for c in contract}
    features = table.from_file(name) if name in POSITION else table.inputs
    return contract + tuple(_column(f) for f in features if f.col not in known and not f.is_key)


def _column(f: F.Feature) -> Column:
    """A declared feature's column, with its kind's bounds: a fixed vocabulary N gives ids 0..N-1; a hashed
    id, or one with an oov id, may be any integer (a sequence's ids stay >= 0, 0 being its padding)."""
    if f.kind == "dense":
        return Column(f.col, f.kind, size=f.dim)
    if f.kind not in ("categorical", "sequence"):  # target, history: bounded by the item table
        return Column(f.col, f.kind)
    bounded = f.hash is None and f.oov is None
    high = f.vocab - 1 if isinstance(f.vocab, int) and bounded else None
    low = 0 if bounded or f.kind == "sequence" else None
    return Column(f.col, f.kind, low=low, high=high, size=f.length)


def optional_columns(name: str, present: list[str]) -> tuple[Column, ...]:
    """The optional columns file `name` has (checked by their kind), less those nothing reads."""
    ignored = schema.IGNORED.get(name, ())
    return tuple(c for c in schema.OPTIONAL.get(name, ()) if c.name in present and c.name not in ignored)


@dataclass(frozen=True)
class Check:
    """One check of one column (see the module's docstring). `rule` says how a batch is judged:
    not_null, between, in_set, pair (equal to the row position), distinct (the number of distinct values
    within [low, high]), unique, rows (the row count within [low, high]) or mean."""

    key: str  # unique within the file: the name of the figure GX judges
    column: str
    rule: str
    expectation: str  # the row-level GX expectation it stands for, as the refusal names it
    stat: str | None = None  # a list column's per-row figure: len, min, max, nonfinite (None: the value)
    low: float | None = None
    high: float | None = None
    value_set: tuple[float, ...] | None = None
    first_row_only: bool = False  # item_info's padding row
    offset: int = 0  # pair: the key equals the row position plus this
    severity: str = "critical"

    @property
    def counts_rows(self) -> bool:
        """Whether the figure is a number of offending rows (which must be 0)."""
        return self.rule in ("not_null", "between", "in_set", "pair", "unique")

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """The range GX holds the file's figure to."""
        return (0, 0) if self.counts_rows else (self.low, self.high)

    def describe(self) -> str:
        """`expect_column_values_to_be_between (on item_seq.max, <= 400)`, as a reader needs it."""
        parts = [f"on {self.column}.{self.stat}"] if self.stat else []
        if self.rule == "pair":
            parts.append("= the row position" + (f" + {self.offset}" if self.offset else ""))
        elif self.rule == "rows" and self.low == self.high:
            parts.append(f"= {self.low:g}")
        elif self.value_set is not None:
            parts.append(f"in {list(self.value_set)}")
        elif self.rule in ("between", "distinct", "rows", "mean"):
            parts.append(_range(self.low, self.high))
        cond = " where row_index==0" if self.first_row_only else ""
        return self.expectation + (f" ({', '.join(parts)})" if parts else "") + cond


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    return f">= {low:g}" if low is not None else f"<= {high:g}"


def _check(column: str, rule: str, stat: str | None = None, **kw: Any) -> Check:
    names = {
        "not_null": "expect_column_values_to_not_be_null",
        "between": "expect_column_values_to_be_between",
        "in_set": "expect_column_values_to_be_in_set",
        "pair": "expect_column_pair_values_to_be_equal",
        "distinct": "expect_column_unique_value_count_to_be_between",
        "unique": "expect_column_values_to_be_unique",
        "mean": "expect_column_mean_to_be_between",
    }
    tag = "padding" if kw.get("first_row_only") else rule
    key = f"{column}.{stat}:{tag}" if stat else f"{column}:{tag}"
    return Check(key=key, column=column, rule=rule, expectation=names[rule], stat=stat, **kw)


def checks_for(name: str, columns: tuple[Column, ...], n_items: int, cfg: ValidateConfig) -> list[Check]:
    """Every check of file `name` (whose items are 1..n_items): the row count, then each column's by kind."""
    if name == schema.FEATURE_FILE:  # one row per item 1..N
        rows = Check("rows", "<table>", "rows", "expect_table_row_count_to_equal", low=n_items, high=n_items)
    else:
        rows = Check("rows", "<table>", "rows", "expect_table_row_count_to_be_between", low=1)
    out = [rows]
    for c in columns:
        out += _KIND_CHECKS[c.kind](name, c, n_items, cfg)
    return out


def _bounded(c: Column, cfg: ValidateConfig) -> tuple[int | None, int | None]:
    high = getattr(cfg, c.high) - 1 if isinstance(c.high, str) else c.high
    return c.low, high


def _scalar(name: str, c: Column, n_items: int, cfg: ValidateConfig) -> list[Check]:
    out = [_check(c.name, "not_null")]
    if c.kind == "key":
        out.append(_check(c.name, "pair", offset=POSITION[name]))
    elif c.kind == "unique":
        out.append(_check(c.name, "unique"))
    elif c.kind == "label":
        out += [
            _check(c.name, "in_set", value_set=(0, 1)),
            _check(c.name, "mean", low=cfg.positive_rate_min, high=cfg.positive_rate_max, severity="warning"),
        ]
    elif c.kind == "target":
        out.append(_check(c.name, "between", low=1, high=n_items))
    elif c.kind == "categorical" and _bounded(c, cfg) != (None, None):
        low, high = _bounded(c, cfg)
        out.append(_check(c.name, "between", low=low, high=high))
    return out


def _list(name: str, c: Column, n_items: int, cfg: ValidateConfig) -> list[Check]:
    out = [_check(c.name, "not_null", "len")]
    if c.kind == "history":  # any length, but one for the whole file
        out.append(_check(c.name, "distinct", "len", high=1))
    else:
        out.append(_check(c.name, "between", "len", low=c.size, high=c.size))
    out.append(_check(c.name, "between", "nonfinite", low=0, high=0))
    low, high = (0, n_items) if c.kind == "history" else _bounded(c, cfg)
    if c.kind == "dense":
        return out
    if low is not None:
        out.append(_check(c.name, "between", "min", low=low))
    if high is not None:
        out.append(_check(c.name, "between", "max", high=high))
    if name == schema.ITEM_FILE and c.kind == "sequence":  # the padding row's ids are all 0
        out.append(_check(c.name, "between", "max", high=0, first_row_only=True))
    return out


_KIND_CHECKS = {
    **dict.fromkeys(("key", "id", "unique", "label", "text", "target", "categorical"), _scalar),
    **dict.fromkeys(("history", "sequence", "dense"), _list),
}


@dataclass
class Tally:
    """One check's aggregates over the batches seen so far."""

    check: Check
    count: int = 0  # offending rows (or, for rows/mean, the rows seen)
    examples: list[Any] = field(default_factory=list)
    distinct: set = field(default_factory=set)
    total: float = 0.0
    keys: Keys | None = None  # unique: every (row, value), held in bounded memory

    def __post_init__(self) -> None:
        if self.check.rule == "unique":
            self.keys = Keys()

    def offending(self, values: np.ndarray, bad: np.ndarray, start: int = 0) -> None:
        self.count += int(bad.sum())
        if len(self.examples) < EXAMPLES and bad.any():
            hits = np.flatnonzero(bad)[: EXAMPLES - len(self.examples)]
            whole = self.check.stat is not None  # a list's stat: an int list's min/max are whole numbers
            if self.check.rule == "pair":
                self.examples += [[_plain(values[i]), int(i) + start + self.check.offset] for i in hits]
            else:
                self.examples += [_plain(values[i], whole) for i in hits]

    def observed(self) -> float:
        """The file's figure: offending rows, distinct values, rows, or the mean."""
        if self.check.rule == "distinct":
            return len(self.distinct)
        if self.check.rule == "mean":
            return self.total / self.count if self.count else float("nan")
        return self.count

    def finish(self) -> None:
        """After the last batch: a unique check counts the rows whose value another row has too."""
        if self.keys is not None:
            self.count, self.examples = self.keys.duplicates()
            self.keys = None


class Keys:
    """The (row, value) pairs of a `unique` column in bounded memory: held until UNIQUE_HELD of them, then
    spilled to PARTS files on disk by value (every row of one value lands in one file), each file checked
    on its own at the end. Exact, with memory of UNIQUE_HELD pairs or one file's."""

    def __init__(self) -> None:
        self.held: list[np.ndarray] = []
        self.n_held = 0
        self.spill: tempfile.TemporaryDirectory | None = None

    def add(self, rows: np.ndarray, values: np.ndarray) -> None:
        self.held.append(np.stack([rows, values.astype(np.int64)], axis=1))
        self.n_held += len(rows)
        if self.n_held > UNIQUE_HELD:
            self._spill()

    def _spill(self) -> None:
        if self.spill is None:
            self.spill = tempfile.TemporaryDirectory(prefix="qin-unique-")
        if not self.held:
            return
        pairs = np.concatenate(self.held)
        part = np.mod(pairs[:, 1], PARTS)
        for k in np.unique(part):
            with open(Path(self.spill.name) / f"{k}.bin", "ab") as f:
                pairs[part == k].tofile(f)
        self.held, self.n_held = [], 0

    def duplicates(self) -> tuple[int, list[Any]]:
        """The rows whose value is not unique: their count, and the first EXAMPLES values in row order."""
        try:
            parts: Iterator[np.ndarray]
            if self.spill is not None:
                self._spill()
                files = sorted(Path(self.spill.name).iterdir())
                parts = (np.fromfile(f, dtype=np.int64).reshape(-1, 2) for f in files)
            else:
                parts = iter([np.concatenate(self.held) if self.held else np.zeros((0, 2), np.int64)])
            count, first = 0, np.zeros((0, 2), np.int64)
            for pairs in parts:
                seen, counts = np.unique(pairs[:, 1], return_counts=True)
                bad = pairs[np.isin(pairs[:, 1], seen[counts > 1])]
                count += len(bad)
                first = np.concatenate([first, bad])
                first = first[np.argsort(first[:, 0], kind="stable")][:EXAMPLES]
            return count, [int(v) for v in first[:, 1]]
        finally:
            if self.spill is not None:
                self.spill.cleanup()


def _plain(v: Any, whole: bool = False) -> Any:
    v = v.item() if isinstance(v, np.generic) else v
    return int(v) if whole and isinstance(v, float) and v.is_integer() else v


@dataclass
class Derived:
    """A column of one batch as the checks read it: per-row values (or a list's stat) and which are set
    (a text column's values are not read: only whether they are set)."""

    values: np.ndarray
    valid: np.ndarray


def _derive(col: pa.ChunkedArray, stats: set[str | None]) -> dict[str | None, Derived]:
    """A column of one batch as its checks read it: a scalar column's values (stat None), or each
    requested per-row stat (len/min/max/nonfinite) of a list column, its values flattened once."""
    col = col.combine_chunks()
    valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
    if None in stats:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            return {None: Derived(np.zeros(len(valid)), valid)}
        return {None: Derived(pc.fill_null(col, 0).to_numpy(zero_copy_only=False), valid)}
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    out: dict[str | None, Derived] = {"len": Derived(lengths, valid)}
    if stats <= {"len"}:
        return out
    # Nulls inside a list become NaN here and are counted as non-finite.
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
    full = lengths > 0
    starts = (np.cumsum(lengths) - lengths)[full]
    for stat in stats - {"len"}:
        values = np.zeros(len(lengths)) if stat == "nonfinite" else np.full(len(lengths), np.nan)
        if flat.size and stat == "nonfinite":
            values[full] = np.add.reduceat((~np.isfinite(flat)).astype(np.int64), starts)
        elif flat.size:
            values[full] = (np.minimum if stat == "min" else np.maximum).reduceat(flat, starts)
        out[stat] = Derived(values, valid if stat == "nonfinite" else valid & full)
    return out


def _judge(tally: Tally, d: Derived, start: int) -> None:
    """Add one batch (its first row is row `start` of the file) to `tally`."""
    c = tally.check
    if c.rule == "not_null":
        tally.count += int((~d.valid).sum())
        return
    ok = d.valid & ~np.isnan(d.values.astype(np.float64))
    if c.first_row_only:
        ok &= np.arange(start, start + len(ok)) == 0
    v = d.values
    if c.rule == "between":
        low = -np.inf if c.low is None else c.low
        high = np.inf if c.high is None else c.high
        tally.offending(v, ok & ((v < low) | (v > high)))
    elif c.rule == "in_set":
        tally.offending(v, ok & ~np.isin(v, list(c.value_set or ())))
    elif c.rule == "pair":
        tally.offending(v, ok & (v != np.arange(start, start + len(v)) + c.offset), start)
    elif c.rule == "distinct":
        tally.distinct |= set(np.unique(v[ok]).tolist())
    elif c.rule == "unique" and tally.keys is not None:
        tally.keys.add(np.arange(start, start + len(v))[ok], v[ok])
    elif c.rule == "mean":
        tally.count, tally.total = tally.count + int(ok.sum()), tally.total + float(v[ok].sum())


def scan(pf: pq.ParquetFile, checks: list[Check], batch_rows: int) -> list[Tally]:
    """Every check's aggregates over file `pf`, read `batch_rows` rows at a time."""
    tallies = [Tally(c) for c in checks]
    stats: dict[str, set[str | None]] = {}
    for c in checks:
        if c.rule != "rows":
            stats.setdefault(c.column, set()).add(c.stat)
    start = 0
    for batch in read_batches(pf, batch_rows):
        derived = {column: _derive(batch[column], wanted) for column, wanted in stats.items()}
        for t in tallies:
            if t.check.rule == "rows":
                t.count += batch.num_rows
            else:
                _judge(t, derived[t.check.column][t.check.stat], start)
        start += batch.num_rows
    for t in tallies:
        t.finish()
    return tallies
