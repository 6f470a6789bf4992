"""Scoring requests checked at the door (qin/serving/request.py): each kind of bad row refused with its own
message
naming the row, the column, what was expected and what was found; good rows, empty and long histories pass."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from qin.data.features import default_spec
from qin.serving.request import BadRequest, check_request, history_matrix, request_arrays

N_ITEMS = 100  # ids 0 (padding) .. 99
SPEC = default_spec(N_ITEMS, n_tags=20)


def _rows(**change: Any) -> pd.DataFrame:
    """Three good rows; `change` replaces one column's values (a list, one per row)."""
    good = {
        "likes_level": [0, 5, 10],
        "views_level": [3, 3, 3],
        "item_id": [1, 50, 99],
        "item_seq": [[1, 2, 3], [], [99, 0, 7]],
    }
    return pd.DataFrame({**good, **change})


def test_good_rows_pass() -> None:
    check_request(_rows(), SPEC)
    check_request(_rows(item_id=[1.0, 50.0, 99.0]), SPEC)  # integral floats, as JSON may carry them
    check_request(_rows(item_seq=[np.array([1, 2]), (3,), []]), SPEC)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"item_id": [1, 100, 2]}, "row 1, column 'item_id': expected an item id in 1..99, found 100"),
        ({"item_id": [1, 2, -4]}, "row 2, column 'item_id': expected an item id in 1..99, found -4"),
        ({"item_id": [1, 3.5, 2]}, "row 1, column 'item_id': expected an item id in 1..99, found 3.5"),
        (
            {"item_seq": [[1], [2, 500], []]},
            "row 1, column 'item_seq': expected item ids in 0..99, found 500",
        ),
        ({"item_seq": [[1, -2], [2], []]}, "row 0, column 'item_seq': expected item ids in 0..99, found -2"),
        ({"item_seq": [[1], [2.5], []]}, "row 1, column 'item_seq': expected item ids in 0..99, found 2.5"),
        ({"item_seq": [[1], 7, []]}, "row 1, column 'item_seq': expected a list of item ids, found 7"),
        (
            {"item_seq": [[1], [2, True], []]},
            "row 1, column 'item_seq': expected item ids in 0..99, found True",
        ),
        (
            {"item_seq": [[1], [[2, 3], [4]], []]},
            "row 1, column 'item_seq': expected a flat list of item ids, found nested lists",
        ),
        (
            {"item_seq": [[1], [[2, 3]], []]},
            "row 1, column 'item_seq': expected a flat list of item ids, found nested lists",
        ),
        (
            {"likes_level": [0, 99, 1]},
            "row 1, column 'likes_level': expected an integer in 0..10, found 99",
        ),
        (
            {"views_level": [0, 1, 1.5]},
            "row 2, column 'views_level': expected an integer in 0..10, found 1.5",
        ),
        (
            {"views_level": [0, None, 1]},
            "row 1, column 'views_level': expected an integer in 0..10, found null",
        ),
        ({"item_id": [1, "3", 2]}, "row 1, column 'item_id': expected an item id in 1..99, found '3'"),
        ({"item_id": [0, 1, 2]}, "row 0, column 'item_id': expected an item id in 1..99, found 0"),
    ],
)
def test_each_kind_of_bad_row_is_refused_naming_it(change: dict[str, list[Any]], message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        check_request(_rows(**change), SPEC)
    assert str(refused.value) == message
    with pytest.raises(BadRequest) as refused:  # what scoring calls: the same refusal
        request_arrays(_rows(**change), SPEC, max_len=4)
    assert str(refused.value) == message


def test_a_missing_column_is_named() -> None:
    with pytest.raises(BadRequest, match=r"missing column \['item_seq'\]: expected columns \['likes_level'"):
        check_request(_rows().drop(columns=["item_seq"]), SPEC)


def test_every_problem_is_named_in_row_order_up_to_a_count() -> None:
    frame = _rows(likes_level=[11, 0, 12], item_id=[1, 200, 2])
    with pytest.raises(BadRequest) as refused:
        check_request(frame, SPEC)
    assert str(refused.value) == (
        "row 0, column 'likes_level': expected an integer in 0..10, found 11; "
        "row 1, column 'item_id': expected an item id in 1..99, found 200; "
        "row 2, column 'likes_level': expected an integer in 0..10, found 12"
    )
    many = pd.concat([_rows(item_id=[1, 200, 2])] * 8, ignore_index=True)  # 8 bad rows, 5 named
    with pytest.raises(
        BadRequest, match=r"row 13, column .item_id.: expected an item id in 1..99, found 200; and 3 more$"
    ):
        check_request(many, SPEC)


def test_histories_keep_their_most_recent_items_left_padded() -> None:
    seq = history_matrix([[1, 2, 3, 4, 5], [], [7.0, 8.0]], rows=3, max_len=3)
    assert seq.tolist() == [[3, 4, 5], [0, 0, 0], [0, 7, 8]]
    assert seq.dtype == np.int64


@pytest.mark.parametrize(
    "histories",
    [
        [[1, 2, 3, 4, 5], [], [7, 8]],  # plain ints, as JSON brings them: the vectorised path
        [np.array([1, 2, 3, 4, 5]), (), [7.0, 8.0]],  # arrays, tuples, integral floats: the row-by-row path
    ],
)
def test_request_arrays_are_the_checked_columns_and_the_history_matrix(histories: list[Any]) -> None:
    frame = pd.DataFrame(
        {"likes_level": [0, 5, 10], "views_level": [3, 3, 3], "item_id": [1, 50, 99], "item_seq": histories}
    )
    arrays = request_arrays(frame, SPEC, max_len=3)
    assert arrays["item_seq"].tolist() == [[3, 4, 5], [0, 0, 0], [0, 7, 8]]
    assert arrays["item_id"].tolist() == [1, 50, 99] and arrays["likes_level"].tolist() == [0, 5, 10]
    assert all(a.dtype == np.int64 for a in arrays.values())
    assert request_arrays(frame.head(0), SPEC, max_len=3)["item_seq"].shape == (0, 3)
