"""Classification metrics on numpy arrays (no scikit-learn in the library's import path)."""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    rank_sum = mean_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """User-grouped AUC (gAUC): per-user AUC averaged with weights = the user's rows, over the users that
    have both clicks and non-clicks."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
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


def calibration_bins(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> tuple[np.ndarray, ...]:
    """Per equal-width probability bin: (rows, sum of labels, sum of probabilities)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    return (
        np.bincount(b, minlength=bins),
        np.bincount(b, weights=y, minlength=bins),
        np.bincount(b, weights=p, minlength=bins),
    )


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Σ_b (n_b / N) |mean label - mean probability| over equal-width probability bins."""
    n, y_sum, p_sum = calibration_bins(labels, probs, bins)
    return float(np.abs(y_sum - p_sum).sum() / max(n.sum(), 1))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]
