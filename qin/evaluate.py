"""The `evaluate` stage: score valid through the model package (the same path serving uses).

Writes metrics.json (AUC, logloss, user-grouped AUC, expected calibration error, and the oracle AUC when
the data ships the true click probability), PNG plots (ROC, calibration (reliability) and the learning
curves of the training run) and the same curves as CSV data files for `dvc plots` (`roc.csv`,
`calibration.csv`, `learning_curve.csv`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qin.featurize import Features
from qin.runs.io import atomic_dir, read_json, record_json, write_json
from qin.serving.inference import load_package
from qin.settings.sections import EvaluateConfig
from qin.training.metrics import (
    calibration,
    expected_calibration_error,
    grouped_auc,
    log_loss,
    roc_auc,
    roc_curve,
)

CALIBRATION_BINS = 15
ROC_POINTS = 500  # the ROC data file keeps at most this many points (evenly spaced along the curve)


@dataclass(frozen=True)
class EvaluateMetrics:
    """The stage's result, as the metrics file (evaluate.json) holds it: the valid split's figures."""

    valid_auc: float
    valid_logloss: float
    valid_gauc: float  # user-grouped AUC
    valid_ece: float  # expected calibration error
    valid_rows: int
    valid_positive_rate: float
    # The true click probability's AUC and logloss, where the data ships it (synthetic); None otherwise.
    valid_oracle_auc: float | None = None
    valid_oracle_logloss: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The evaluate.json object (the oracle's figures only where known)."""
        return record_json(self, optional=("valid_oracle_auc", "valid_oracle_logloss"))


def evaluate(
    features_dir: str | Path,
    model_dir: str | Path,
    out_path: str | Path,
    cfg: EvaluateConfig,
    plots_dir: str | Path | None = None,
    train_metrics: str | Path | None = None,
    plot_data: str | Path | None = None,
) -> EvaluateMetrics:
    feats = Features(features_dir)
    valid = feats.split("valid")
    probs = load_package(model_dir, device="auto").predict(valid, cfg.batch_size)
    labels = np.asarray(valid["label"])
    truth = np.asarray(feats.array("valid_truth")) if feats.has("valid_truth") else None
    metrics = EvaluateMetrics(
        valid_auc=roc_auc(labels, probs),
        valid_logloss=log_loss(labels, probs),
        valid_gauc=grouped_auc(labels, probs, feats.array("valid_user_id")),
        valid_ece=expected_calibration_error(labels, probs, CALIBRATION_BINS),
        valid_rows=len(labels),
        valid_positive_rate=float(labels.mean()),
        valid_oracle_auc=None if truth is None else roc_auc(labels, truth),
        valid_oracle_logloss=None if truth is None else log_loss(labels, truth),
    )
    history = read_json(train_metrics)["history"] if train_metrics else []
    if plots_dir is not None:
        _plots(Path(plots_dir), labels, probs, truth, history)
    if plot_data is not None:
        write_plot_data(Path(plot_data), labels, probs, history)
    write_json(out_path, metrics.to_json())
    return metrics


def write_plot_data(out: Path, labels: np.ndarray, probs: np.ndarray, history: list[dict]) -> None:
    """The curves as CSV files (one header row), for `dvc plots show` / `dvc plots diff`."""
    fpr, tpr = roc_curve(labels, probs)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), ROC_POINTS)).round().astype(int))
    mean_p, mean_y, counts = calibration(labels, probs, CALIBRATION_BINS)
    columns = ("epoch", "train_loss", "valid_logloss", "valid_auc", "learning_rate")
    tables: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]] = {
        "roc.csv": (
            ("fpr", "tpr"),
            [(f"{f:.6f}", f"{t:.6f}") for f, t in zip(fpr[keep], tpr[keep], strict=True)],
        ),
        "calibration.csv": (
            ("mean_predicted", "observed_rate", "rows"),
            [(f"{p:.6f}", f"{y:.6f}", int(c)) for p, y, c in zip(mean_p, mean_y, counts, strict=True)],
        ),
        "learning_curve.csv": (columns, [tuple(h.get(c, "") for c in columns) for h in history]),
    }
    with atomic_dir(out) as tmp:
        for name, (header, rows) in tables.items():
            with open(tmp / name, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                writer.writerows(rows)


def _plots(
    out: Path, labels: np.ndarray, probs: np.ndarray, truth: np.ndarray | None, history: list[dict]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_dir(out) as tmp:
        fig, ax = plt.subplots(figsize=(5, 5))
        for name, score in (("model", probs), ("oracle", truth)):
            if score is not None:
                fpr, tpr = roc_curve(labels, score)
                ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(labels, score):.4f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (valid)")
        ax.legend(loc="lower right")
        fig.savefig(tmp / "roc.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

        mean_p, mean_y, _ = calibration(labels, probs, CALIBRATION_BINS)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.plot(mean_p, mean_y, "o-", label="model")
        ax.set(xlabel="mean predicted probability", ylabel="observed click rate", title="Calibration (valid)",
               xlim=(0, 1), ylim=(0, 1))  # fmt: skip
        ax.legend(loc="upper left")
        fig.savefig(tmp / "calibration.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

        if history:
            epochs = [h["epoch"] for h in history]
            fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
            left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
            left.plot(epochs, [h["valid_logloss"] for h in history], "o-", label="valid logloss")
            left.set(xlabel="epoch", title="loss")
            left.legend()
            right.plot(epochs, [h["valid_auc"] for h in history], "o-", label="valid AUC")
            right.set(xlabel="epoch", title="valid AUC")
            fig.savefig(tmp / "learning_curve.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
