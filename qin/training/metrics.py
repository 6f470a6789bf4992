"""Classification metrics: scikit-learn's (`roc_auc_score`, `log_loss`, `roc_curve`, `calibration_curve`),
imported where they are used so that `qin --help` stays fast. The user-grouped AUC (gAUC) has no library
version: it is ours, on top of the library's AUC.
"""

from __future__ import annotations

import numpy as np


def _pair(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    return y, s


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN when the labels hold one class only."""
    from sklearn.metrics import roc_auc_score

    y, s = _pair(labels, scores)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy (probabilities clipped to float64's epsilon, as scikit-learn does)."""
    from sklearn.metrics import log_loss as sk_log_loss

    y, p = _pair(labels, probs)
    return float(sk_log_loss(y, p, labels=[False, True]))


def grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """User-grouped AUC (gAUC): per-user AUC averaged with weights = the user's rows, over the users that
    have both clicks and non-clicks."""
    y, s = _pair(labels, scores)
    _, g = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    pos = np.bincount(g, weights=y)
    size = np.bincount(g)
    mixed = np.flatnonzero((pos > 0) & (pos < size))
    if mixed.size == 0:
        return float("nan")
    order = np.argsort(g, kind="stable")
    starts = np.concatenate([[0], np.cumsum(size)[:-1]])
    total = weight = 0.0
    for u in mixed:
        idx = order[starts[u] : starts[u] + size[u]]
        total += roc_auc(y[idx], s[idx]) * size[u]
        weight += size[u]
    return float(total / weight)


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> tuple[np.ndarray, ...]:
    """Per non-empty equal-width probability bin: (mean predicted probability, observed click rate, rows),
    as scikit-learn's `calibration_curve` bins them."""
    from sklearn.calibration import calibration_curve

    y, p = _pair(labels, probs)
    observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    # The rows of each bin, binned as calibration_curve bins them (searchsorted on the inner edges).
    rows = np.bincount(np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], p), minlength=bins)
    return predicted, observed, rows[rows > 0]


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Σ_b (n_b / N) |observed rate - mean probability| over equal-width probability bins."""
    predicted, observed, rows = calibration(labels, probs, bins)
    return float((rows * np.abs(observed - predicted)).sum() / max(rows.sum(), 1))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    y, s = _pair(labels, scores)
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr
