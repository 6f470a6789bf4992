"""Scoring requests checked at the door: a bad row is refused with a message that names the row, the column,
what was expected and what was found, before anything is scored.

A request is a frame of raw rows holding the row columns the model's feature table declares
(qin/data/features.py; missing ones are refused by name, extra ones ignored): the target item (an item id,
1..n_items-1), the history (a list of item ids, 0..n_items-1, 0 being the padding id; any length, an empty
one included), each categorical row feature (an integer: within its vocabulary, or any integer when it is
hashed or names an oov id, which an unseen value then takes) and each dense row feature (a list of its
`dim` finite numbers). With the default table: `likes_level`, `views_level` (integers 0..10), `item_id` and
`item_seq`. A non-integer number is refused, not rounded (3.5 is not item 3); an integral float (3.0, as
JSON or a nullable column may give it) is taken as the integer.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

from qin.data.features import Feature, FeatureSpec

MAX_REPORTED = 5  # problems named in one message; the rest are counted
# The types of a history's values taken without a closer look (not bool, a subclass of int).
_INT_TYPES = {int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64}


class BadRequest(ValueError):
    """A request the model cannot score; the message names every problem found (up to MAX_REPORTED)."""

    def __init__(self, problems: Sequence[str], total: int | None = None) -> None:
        total = len(problems) if total is None else total
        shown = list(problems[:MAX_REPORTED])
        more = f"; and {total - len(shown)} more" if total > len(shown) else ""
        super().__init__("; ".join(shown) + more)
        self.problems = shown


def _found(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "null"
    if isinstance(value, str):
        return repr(value)
    return repr(value.item() if isinstance(value, np.generic) else value)


def _integer(value: Any) -> int | None:
    """The integer `value` stands for, or None when it is not one (3.5, "3", True, null)."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)  # type: ignore[call-overload]
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(float(value))
    return None


INT64 = (-(2**63), 2**63 - 1)


def _bounds(f: Feature, spec: FeatureSpec) -> tuple[int, int, str]:
    """The integer range a value of categorical, target or history feature `f` must lie in, and its words."""
    top = spec.n_items - 1
    if f.kind == "target":
        return 1, top, f"an item id in 1..{top}"
    if f.kind == "history":
        return 0, top, f"item ids in 0..{top}"
    if f.hash is not None or f.oov is not None:
        return *INT64, "an integer"
    return 0, spec.size(f) - 1, f"an integer in 0..{spec.size(f) - 1}"


def _scalar_problems(frame: pd.DataFrame, f: Feature, spec: FeatureSpec) -> Iterable[tuple[int, str]]:
    low, high, expected = _bounds(f, spec)
    values = frame[f.col].to_numpy()
    if values.dtype.kind in "iu":  # the common case, checked without a Python loop
        for row in np.flatnonzero((values < low) | (values > high)).tolist():
            yield row, f"row {row}, column '{f.col}': expected {expected}, found {values[row]}"
        return
    for i, value in enumerate(values):
        number = _integer(value)
        if number is None or not low <= number <= high:
            yield i, f"row {i}, column '{f.col}': expected {expected}, found {_found(value)}"


def _flat(items: Any) -> np.ndarray | None:
    """A cell's list as a flat array, or None when it is not a flat list."""
    try:
        array = np.asarray(items)
    except ValueError:  # ragged: lists inside the list
        return None
    return array if array.ndim == 1 else None


def _history_problems(frame: pd.DataFrame, f: Feature, spec: FeatureSpec) -> Iterable[tuple[int, str]]:
    column = f.col
    low, high, expected = _bounds(f, spec)
    for i, items in enumerate(frame[column].to_numpy()):
        if not isinstance(items, list | tuple | np.ndarray):
            yield i, f"row {i}, column '{column}': expected a list of item ids, found {_found(items)}"
            continue
        array = _flat(items)
        if array is None:
            yield i, f"row {i}, column '{column}': expected a flat list of item ids, found nested lists"
            continue
        # (np.asarray takes [2, True] for integers: a list's values are judged one by one unless all ints)
        plain = isinstance(items, np.ndarray) or set(map(type, items)) <= _INT_TYPES
        if array.dtype.kind in "iu" and plain:
            out = array[(array < low) | (array > high)]
            if out.size:
                yield i, f"row {i}, column '{column}': expected {expected}, found {out[0]}"
            continue
        for value in items if not isinstance(items, np.ndarray) else array.tolist():
            number = _integer(value)
            if number is None or not low <= number <= high:
                yield i, f"row {i}, column '{column}': expected {expected}, found {_found(value)}"
                break


def _dense_problems(frame: pd.DataFrame, f: Feature, spec: FeatureSpec) -> Iterable[tuple[int, str]]:
    dim, column = spec.size(f), f.col
    for i, items in enumerate(frame[column].to_numpy()):
        found = _dense_found(items, dim)
        if found is not None:
            yield i, f"row {i}, column '{column}': expected a list of {dim} finite numbers, found {found}"


def _dense_found(items: Any, dim: int) -> str | None:
    """What is wrong with a dense cell, in words; None when it is a list of `dim` finite numbers."""
    array = _flat(items) if isinstance(items, list | tuple | np.ndarray) else None
    if array is None:
        return _found(items) if not isinstance(items, list | tuple | np.ndarray) else "nested lists"
    values = items if isinstance(items, list | tuple) else array.tolist()
    if array.dtype.kind not in "iuf" or any(isinstance(v, bool | np.bool_) for v in values):
        return "values that are not numbers"
    if len(array) != dim:
        return f"{len(array)} values"
    if not np.isfinite(array.astype(np.float64)).all():
        return "values that are not finite"
    return None


def _problems(frame: pd.DataFrame, f: Feature, spec: FeatureSpec) -> Iterable[tuple[int, str]]:
    if f.kind == "history":
        return _history_problems(frame, f, spec)
    if f.kind == "dense":
        return _dense_problems(frame, f, spec)
    return _scalar_problems(frame, f, spec)


def check_request(frame: pd.DataFrame, spec: FeatureSpec) -> None:
    """Raise BadRequest naming each bad row and column of `frame`; None when every row can be scored."""
    columns = list(spec.table.columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BadRequest(
            [f"missing column{'s' if len(missing) > 1 else ''} {missing}: expected columns {columns}"]
        )
    problems: list[tuple[int, str]] = []
    for f in spec.table.inputs:
        problems.extend(_problems(frame, f, spec))
    if problems:
        problems.sort(key=lambda p: p[0])  # row order, then the columns' order
        raise BadRequest([message for _, message in problems], total=len(problems))


def history_matrix(histories: Iterable[Any], rows: int, max_len: int) -> np.ndarray:
    """(rows, max_len) item ids: each history's most recent max_len items, left-padded with 0 (the one
    truncation of a request's history). The histories must have passed the check."""
    arrays = [np.asarray(items, dtype=np.int64).reshape(-1) for items in histories]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    values = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
    return _left_padded(values, lengths, rows, max_len)


def _left_padded(values: np.ndarray, lengths: np.ndarray, rows: int, max_len: int) -> np.ndarray:
    """The histories laid end to end (`values`, `lengths` per row) as a (rows, max_len) matrix: the last
    max_len of each, most recent last, 0 before them."""
    seq = np.zeros((rows, max_len), dtype=np.int64)
    if values.size:
        row = np.repeat(np.arange(rows), lengths)
        starts = np.cumsum(lengths) - lengths
        col = max_len - np.repeat(lengths, lengths) + (np.arange(values.size) - np.repeat(starts, lengths))
        keep = col >= 0
        seq[row[keep], col[keep]] = values[keep]
    return seq


def request_arrays(frame: pd.DataFrame, spec: FeatureSpec, max_len: int) -> dict[str, np.ndarray]:
    """The model's input arrays for a request (ids int64, the history as `history_matrix` makes it, dense
    vectors float32), after the check: a bad row raises BadRequest as `check_request` names it.

    A request as JSON brings it (integer columns, histories as lists of ints) is checked and converted in a
    few vectorised passes; anything else (floats, nulls, strings, arrays in cells) takes the row-by-row
    check, which names each problem."""
    arrays = _plain_arrays(frame, spec, max_len)
    if arrays is not None:
        return arrays
    check_request(frame, spec)
    out: dict[str, np.ndarray] = {}
    for f in spec.table.inputs:
        if f.kind == "history":
            out[f.col] = history_matrix(frame[f.col], len(frame), max_len)
        elif f.kind == "dense":
            out[f.col] = _dense_matrix(frame[f.col], len(frame), spec.size(f))
        else:
            out[f.col] = frame[f.col].to_numpy(dtype=np.int64)
    return out


def _dense_matrix(cells: Iterable[Any], rows: int, dim: int) -> np.ndarray:
    return np.asarray([np.asarray(c, dtype=np.float32) for c in cells], dtype=np.float32).reshape(rows, dim)


def _plain_arrays(frame: pd.DataFrame, spec: FeatureSpec, max_len: int) -> dict[str, np.ndarray] | None:
    """The arrays of a request of plain integers within bounds, or None when it is anything else (which
    `check_request` then judges)."""
    if any(c not in frame.columns for c in spec.table.columns):
        return None
    out: dict[str, np.ndarray] = {}
    for f in spec.table.inputs:
        if f.kind == "dense":
            return None  # dense row features: the detailed check
        if f.kind == "history":
            continue
        values = frame[f.col].to_numpy()
        low, high, _ = _bounds(f, spec)
        if values.dtype.kind not in "iu" or (values.size and (values.min() < low or values.max() > high)):
            return None
        out[f.col] = values.astype(np.int64, copy=False)
    history = spec.table.history
    histories = frame[history.col].tolist()
    if not all(type(items) is list for items in histories):
        return None
    flat = list(chain.from_iterable(histories))
    if not set(map(type, flat)) <= _INT_TYPES:  # bools, floats, nested lists, nulls: the detailed check
        return None
    low, high, _ = _bounds(history, spec)
    try:
        values = np.array(flat, dtype=np.int64)
    except OverflowError:
        return None
    if values.size and (values.min() < low or values.max() > high):
        return None
    lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))
    out[history.col] = _left_padded(values, lengths, len(frame), max_len)
    return out


def example_request(spec: FeatureSpec, rows: int = 3) -> pd.DataFrame:
    """A few valid rows for a model of `spec`: its row columns, ids within their vocabularies (the input
    example and signature an MLflow model is logged with)."""
    ids = [1 + i % (spec.n_items - 1) for i in range(rows + 4)]
    out: dict[str, Any] = {}
    for j, f in enumerate(spec.table.inputs):
        if f.kind == "target":
            out[f.col] = np.array(ids[:rows], dtype=np.int64)
        elif f.kind == "history":
            out[f.col] = [ids[i : i + 4] for i in range(rows)]
        elif f.kind == "dense":
            out[f.col] = [
                np.full(spec.size(f), 0.1 * (i + 1), dtype=np.float32).tolist() for i in range(rows)
            ]
        else:
            top = spec.size(f) if f.hash is None and f.oov is None else 1_000
            out[f.col] = np.array([(3 + 3 * i + j) % top for i in range(rows)], dtype=np.int64)
    return pd.DataFrame(out)
