"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

from qin.runs import pipeline


def workspace(stage: str, output: str) -> Path:
    """Where `qin <stage>` (and DVC) keep a stage's output: its workspace path in the stage table."""
    return Path(pipeline.stage(stage).output(output).workspace)


# The DVC workspace paths the stage-level tests run the stage functions on.
VALIDATION = workspace("validate", "validation")
FEATURES = workspace("featurize", "features")
MODEL = workspace("train", "model")
TRAIN_METRICS = workspace("train", "train.json")
EVAL_METRICS = workspace("evaluate", "evaluate.json")
REGISTRATION = workspace("register", "register.json")


def model_variant(project: Path, name: str, auc: float) -> tuple[Path, Path]:
    """A copy of the project's trained package with different content, and metrics with a chosen valid AUC."""
    model = project / "artifacts" / name
    shutil.copytree(project / MODEL, model)
    cfg = json.loads((model / "model.json").read_text())
    cfg["meta"]["variant"] = name
    (model / "model.json").write_text(json.dumps(cfg))
    metrics = project / "metrics" / f"{name}.json"
    metrics.write_text(json.dumps({**json.loads(EVAL_METRICS.read_text()), "valid_auc": auc}))
    return model, metrics


def free_ports(n: int) -> list[int]:
    """`n` distinct ports no one listens on at 127.0.0.1 (held open together, so the kernel hands out
    different ones)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
