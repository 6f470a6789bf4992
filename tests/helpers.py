"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from qin import layout


def model_variant(project: Path, name: str, auc: float) -> tuple[Path, Path]:
    """A copy of the project's trained package with different content, and metrics with a chosen valid AUC."""
    model = project / "artifacts" / name
    shutil.copytree(project / layout.MODEL, model)
    cfg = json.loads((model / "model.json").read_text())
    cfg["meta"]["variant"] = name
    (model / "model.json").write_text(json.dumps(cfg))
    metrics = project / "metrics" / f"{name}.json"
    metrics.write_text(json.dumps({**json.loads(layout.EVAL_METRICS.read_text()), "valid_auc": auc}))
    return model, metrics
