"""Scoring requests checked at the door: a bad row is refused with a message that names the row, the column,
what was expected and what was found, before anything is scored.

A request is a frame of raw challenge rows: `likes_level`, `views_level` (integers 0..10), `item_id` (an item
id, 1..n_items-1) and `item_seq` (a list of item ids, 0..n_items-1, 0 being the padding id; any length, an
empty one included). A non-integer number is refused, not rounded (3.5 is not item 3); an integral float
(3.0, as JSON or a nullable column may give it) is taken as the integer.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

from qin.data.schema import HISTORY, MODEL_INPUTS, NUM_LEVELS

COLUMNS = MODEL_INPUTS  # a request's columns: the model's inputs
SCALAR_COLUMNS = tuple(c for c in COLUMNS if c != HISTORY)
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


def _bounds(column: str, n_items: int) -> tuple[int, int, str]:
    if column == "item_id":
        return 1, n_items - 1, f"an item id in 1..{n_items - 1}"
    if column == HISTORY:
        return 0, n_items - 1, f"item ids in 0..{n_items - 1}"
    return 0, NUM_LEVELS - 1, f"an integer level in 0..{NUM_LEVELS - 1}"


def _scalar_problems(frame: pd.DataFrame, column: str, n_items: int) -> Iterable[tuple[int, str]]:
    low, high, expected = _bounds(column, n_items)
    values = frame[column].to_numpy()
    if values.dtype.kind in "iu":  # the common case, checked without a Python loop
        for row in np.flatnonzero((values < low) | (values > high)).tolist():
            yield row, f"row {row}, column '{column}': expected {expected}, found {values[row]}"
        return
    for i, value in enumerate(values):
        number = _integer(value)
        if number is None or not low <= number <= high:
            yield i, f"row {i}, column '{column}': expected {expected}, found {_found(value)}"


def _history_problems(frame: pd.DataFrame, n_items: int) -> Iterable[tuple[int, str]]:
    low, high, expected = _bounds(HISTORY, n_items)
    for i, items in enumerate(frame[HISTORY].to_numpy()):
        if not isinstance(items, list | tuple | np.ndarray):
            yield i, f"row {i}, column '{HISTORY}': expected a list of item ids, found {_found(items)}"
            continue
        try:
            array = np.asarray(items)
        except ValueError:  # ragged: lists inside the list
            array = np.empty((0, 0))
        if array.ndim != 1:
            yield (
                i,
                f"row {i}, column '{HISTORY}': expected a flat list of item ids, found nested lists",
            )
            continue
        # (np.asarray takes [2, True] for integers: a list's values are judged one by one unless all ints)
        plain = isinstance(items, np.ndarray) or set(map(type, items)) <= _INT_TYPES
        if array.dtype.kind in "iu" and plain:
            out = array[(array < low) | (array > high)]
            if out.size:
                yield i, f"row {i}, column '{HISTORY}': expected {expected}, found {out[0]}"
            continue
        for value in items if not isinstance(items, np.ndarray) else array.tolist():
            number = _integer(value)
            if number is None or not low <= number <= high:
                yield i, f"row {i}, column '{HISTORY}': expected {expected}, found {_found(value)}"
                break


def check_request(frame: pd.DataFrame, n_items: int) -> None:
    """Raise BadRequest naming each bad row and column of `frame`; None when every row can be scored."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise BadRequest(
            [f"missing column{'s' if len(missing) > 1 else ''} {missing}: expected columns {list(COLUMNS)}"]
        )
    problems: list[tuple[int, str]] = []
    for column in SCALAR_COLUMNS:
        problems.extend(_scalar_problems(frame, column, n_items))
    problems.extend(_history_problems(frame, n_items))
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


def request_arrays(frame: pd.DataFrame, n_items: int, max_len: int) -> dict[str, np.ndarray]:
    """The model's input arrays for a request (int64; the history as `history_matrix` makes it), after the
    check: a bad row raises BadRequest as `check_request` names it.

    A request as JSON brings it (integer columns, histories as lists of ints) is checked and converted in a
    few vectorised passes; anything else (floats, nulls, strings, arrays in cells) takes the row-by-row
    check, which names each problem."""
    arrays = _plain_arrays(frame, n_items, max_len)
    if arrays is not None:
        return arrays
    check_request(frame, n_items)
    scalars = {c: frame[c].to_numpy(dtype=np.int64) for c in SCALAR_COLUMNS}
    return {**scalars, HISTORY: history_matrix(frame[HISTORY], len(frame), max_len)}


def _plain_arrays(frame: pd.DataFrame, n_items: int, max_len: int) -> dict[str, np.ndarray] | None:
    """The arrays of a request of plain integers within bounds, or None when it is anything else (which
    `check_request` then judges)."""
    if any(c not in frame.columns for c in COLUMNS):
        return None
    out: dict[str, np.ndarray] = {}
    for column in SCALAR_COLUMNS:
        values = frame[column].to_numpy()
        low, high, _ = _bounds(column, n_items)
        if values.dtype.kind not in "iu" or (values.size and (values.min() < low or values.max() > high)):
            return None
        out[column] = values.astype(np.int64, copy=False)
    histories = frame[HISTORY].tolist()
    if not all(type(items) is list for items in histories):
        return None
    flat = list(chain.from_iterable(histories))
    if not set(map(type, flat)) <= _INT_TYPES:  # bools, floats, nested lists, nulls: the detailed check
        return None
    low, high, _ = _bounds(HISTORY, n_items)
    try:
        values = np.array(flat, dtype=np.int64)
    except OverflowError:
        return None
    if values.size and (values.min() < low or values.max() > high):
        return None
    lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))
    out[HISTORY] = _left_padded(values, lengths, len(frame), max_len)
    return out
