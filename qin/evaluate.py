"""The `evaluate` stage: score valid through the model package (the same path serving uses)."""

from __future__ import annotations

from pathlib import Path

from qin.config import EvaluateConfig
from qin.featurize import Features
from qin.inference import load_package
from qin.io import write_json
from qin.metrics import log_loss, roc_auc


def evaluate(
    features_dir: str | Path, model_dir: str | Path, out_path: str | Path, cfg: EvaluateConfig
) -> dict:
    feats = Features(features_dir)
    valid = feats.split("valid")
    probs = load_package(model_dir, device="auto").predict(valid, cfg.batch_size)
    labels = valid["label"]
    metrics = {
        "valid_auc": roc_auc(labels, probs),
        "valid_logloss": log_loss(labels, probs),
        "valid_rows": len(labels),
        "valid_positive_rate": float(labels.mean()),
    }
    if feats.has("valid_truth"):
        truth = feats.array("valid_truth")
        metrics["valid_oracle_auc"] = roc_auc(labels, truth)
        metrics["valid_oracle_logloss"] = log_loss(labels, truth)
    write_json(out_path, metrics)
    return metrics
