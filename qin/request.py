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
from typing import Any

import numpy as np
import pandas as pd

from qin.data.schema import NUM_LEVELS

SCALAR_COLUMNS = ("likes_level", "views_level", "item_id")
HISTORY = "item_seq"
COLUMNS = (*SCALAR_COLUMNS, HISTORY)
MAX_REPORTED = 5  # problems named in one message; the rest are counted


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
        if array.dtype.kind in "iu":
            out = array[(array < low) | (array > high)]
            if out.size:
                yield i, f"row {i}, column '{HISTORY}': expected {expected}, found {out[0]}"
            continue
        for value in array.tolist():
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
    truncation of a request's history)."""
    seq = np.zeros((rows, max_len), dtype=np.int64)
    for i, items in enumerate(histories):
        tail = np.asarray(items, dtype=np.int64)[-max_len:]  # checked: integers, or integral floats
        if len(tail):
            seq[i, -len(tail) :] = tail  # most recent last
    return seq
