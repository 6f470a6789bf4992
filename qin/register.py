"""The `register` stage: record a trained package in a model registry and apply the staging gate.

The library defines what a registry must do (`Registry`) and the gate; the MLflow implementation lives in
flows/tracking.py and is found through the `qin.registries` entry point named in params
(`register.registry`), so this library never imports MLflow.

Idempotent: a package whose content hash is already registered is not logged again; its existing run
and version are reported instead.

Gate (first version): the candidate takes the alias (`staging`) when its valid AUC beats that of the
version holding the alias, or when no version holds it.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import qin
from qin.config import Params, RegisterConfig, flatten, section_hash
from qin.io import read_json, tree_hash, write_json
from qin.validate import DATA_DOCS, REPORT, SUMMARY


@dataclass(frozen=True)
class Candidate:
    model_dir: Path
    model_hash: str
    metrics: dict[str, float]  # final metrics (evaluate)
    history: list[dict[str, float]]  # per-epoch metrics (train)
    params: dict[str, Any]  # the full resolved config, flattened
    tags: dict[str, str]  # provenance: data, params and code hashes, git commit
    artifacts: list[Path] = field(default_factory=list)  # reports and metrics files to attach


@dataclass(frozen=True)
class Registered:
    run_id: str
    version: str


class Registry(Protocol):
    def find(self, model_name: str, model_hash: str) -> Registered | None:
        """The registered version whose package has this content hash, if any."""

    def log_and_register(self, model_name: str, candidate: Candidate) -> Registered:
        """Log one run (params, metrics, artifacts, the model) and register its model as a new version."""

    def alias_holder(self, model_name: str, alias: str) -> tuple[str, float | None] | None:
        """(version, its valid AUC) of the version holding `alias`, or None."""

    def set_alias(self, model_name: str, alias: str, version: str) -> None: ...


def load_registry(cfg: RegisterConfig) -> Registry:
    found = {ep.name: ep for ep in entry_points(group="qin.registries")}
    if cfg.registry not in found:
        raise ValueError(
            f"params key 'register.registry': expected one of {sorted(found)}, found {cfg.registry!r} "
            "(registries are 'qin.registries' entry points; is the project installed?)"
        )
    return found[cfg.registry].load()(cfg)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def code_hash() -> str:
    """Hash of the library's source: part of every cache key and of the provenance tags."""
    h = hashlib.sha256()
    root = Path(qin.__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def data_hash(validation_dir: str | Path) -> str:
    """Hash of the validated data files (their md5s, as recorded by `validate`)."""
    summary = read_json(Path(validation_dir) / SUMMARY)
    md5s = sorted(f"{name}:{info.get('md5')}" for name, info in summary["files"].items())
    return hashlib.sha256("\n".join(md5s).encode()).hexdigest()[:16]


def gate(candidate_auc: float, holder: tuple[str, float | None] | None) -> tuple[bool, str]:
    if holder is None:
        return True, "no version holds the alias yet"
    version, auc = holder
    if auc is None:
        return True, f"version {version} has no valid_auc to compare with"
    if candidate_auc > auc:
        return True, f"valid_auc {candidate_auc:.5f} beats version {version}'s {auc:.5f}"
    return False, f"valid_auc {candidate_auc:.5f} does not beat version {version}'s {auc:.5f}"


def register(
    model_dir: str | Path,
    train_metrics: str | Path,
    eval_metrics: str | Path,
    validation_dir: str | Path,
    out_path: str | Path,
    params: Params,
    plots_dir: str | Path | None = None,
    registry: Registry | None = None,
) -> dict:
    cfg = params.register
    registry = registry or load_registry(cfg)
    model_dir = Path(model_dir)
    metrics = read_json(eval_metrics)
    model_hash = tree_hash([model_dir])
    existing = registry.find(cfg.model_name, model_hash)
    if existing is None:
        candidate = Candidate(
            model_dir=model_dir,
            model_hash=model_hash,
            metrics={k: float(v) for k, v in metrics.items()},
            history=read_json(train_metrics)["history"],
            params={
                **flatten(params.featurize, "featurize."),
                **flatten(params.train, "train."),
                **flatten(params.evaluate, "evaluate."),
            },
            tags={
                "model_hash": model_hash,
                "data_hash": data_hash(validation_dir),
                "params_hash": section_hash(params.train),
                "code_hash": code_hash(),
                "git_commit": git_commit(),
                "qin_version": qin.__version__,
            },
            artifacts=[
                Path(validation_dir) / SUMMARY,
                Path(validation_dir) / REPORT,
                Path(validation_dir) / DATA_DOCS,
                Path(train_metrics),
                Path(eval_metrics),
                *([Path(plots_dir)] if plots_dir is not None and Path(plots_dir).exists() else []),
            ],
        )
        registered = registry.log_and_register(cfg.model_name, candidate)
    else:
        registered = existing
    holder = registry.alias_holder(cfg.model_name, cfg.alias)
    if holder is not None and holder[0] == registered.version:
        promoted, reason = True, f"version {registered.version} already holds '{cfg.alias}'"
    else:
        promoted, reason = gate(float(metrics["valid_auc"]), holder)
        if promoted:
            registry.set_alias(cfg.model_name, cfg.alias, registered.version)
    result = {
        "model_name": cfg.model_name,
        "run_id": registered.run_id,
        "version": registered.version,
        "newly_registered": existing is None,
        "alias": cfg.alias,
        "has_alias": promoted,
        "reason": reason,
        "valid_auc": float(metrics["valid_auc"]),
        "model_hash": model_hash,
    }
    write_json(out_path, result)
    return result
