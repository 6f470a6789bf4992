"""The metrics on cases small enough to work out by hand: AUC with ties, a single class, logloss, the
user-grouped AUC's weighting, calibration bins and ECE, the ROC curve's end points."""

import math

import numpy as np
import pytest

from qin.training.metrics import (
    calibration,
    expected_calibration_error,
    grouped_auc,
    log_loss,
    roc_auc,
    roc_curve,
)


def test_auc_counts_each_positive_negative_pair_and_ties_half() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    # Pairs (pos, neg): 0.3 > 0.1, 0.3 = 0.3 (half), 0.5 > 0.1, 0.5 > 0.3: 3.5 of 4.
    assert roc_auc(y, [0.1, 0.3, 0.3, 0.5]) == pytest.approx(3.5 / 4, abs=1e-12)


def test_auc_of_a_single_class_is_nan_and_shapes_must_agree() -> None:
    assert math.isnan(roc_auc(np.ones(5), np.arange(5)))
    with pytest.raises(ValueError, match="differ in shape"):
        roc_auc(np.ones(3), np.arange(4))


def test_logloss_is_the_mean_cross_entropy() -> None:
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert log_loss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(expected, rel=1e-12)
    assert log_loss(np.array([1, 1]), np.array([0.5, 0.5])) == pytest.approx(math.log(2), rel=1e-12)


def test_grouped_auc_weights_users_by_rows_and_skips_single_class_users() -> None:
    labels = np.array([1, 0, 1, 0, 0, 0, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.7, 0.5, 0.4])
    users = np.array([1, 1, 2, 2, 2, 3, 4])  # user 1: AUC 1 (2 rows); user 2: AUC 0 (3 rows); 3, 4: one class
    assert grouped_auc(labels, scores, users) == pytest.approx((1.0 * 2 + 0.0 * 3) / 5, abs=1e-12)
    assert math.isnan(grouped_auc(np.array([1, 0]), np.array([0.5, 0.5]), np.array([1, 2])))


def test_calibration_bins_and_their_error() -> None:
    labels = np.array([0, 1, 0, 1, 1])
    probs = np.array([0.1, 0.1, 0.9, 0.9, 0.9])  # two bins of 4: [0, 0.25) and [0.75, 1]
    predicted, observed, rows = calibration(labels, probs, bins=4)
    np.testing.assert_allclose(predicted, [0.1, 0.9])
    np.testing.assert_allclose(observed, [0.5, 2 / 3])
    assert rows.tolist() == [2, 3]
    expected = (2 * abs(0.5 - 0.1) + 3 * abs(2 / 3 - 0.9)) / 5
    assert expected_calibration_error(labels, probs, bins=4) == pytest.approx(expected, abs=1e-12)


def test_roc_curve_runs_from_origin_to_one_through_every_threshold() -> None:
    fpr, tpr = roc_curve(np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert fpr.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]
