"""MLflow: the one module that talks to it. Implements qin.register.Registry.

Everything lives under mlruns/: the sqlite tracking/registry store and the artifacts. Each registered
model version carries tags `model_hash` and `valid_auc`, which the idempotency check and the gate read.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

import qin
from qin.config import RegisterConfig
from qin.inference import load_package
from qin.io import read_json
from qin.register import Candidate, Registered

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# The user's override, read once: mlflow.set_tracking_uri() itself writes MLFLOW_TRACKING_URI into the
# environment, so reading it later would return whatever store this process last used.
ENV_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(cfg: RegisterConfig) -> str:
    """The store's URI; a relative sqlite path is made absolute (MLflow caches stores by URI string, so a
    relative one would keep pointing at the first working directory's database)."""
    uri = ENV_TRACKING_URI or cfg.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def configure(cfg: RegisterConfig) -> MlflowClient:
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def example_frame(model_dir: Path, rows: int = 3) -> pd.DataFrame:
    """A few raw challenge rows with ids valid for this model (the logged input example)."""
    n_items = len(np.load(model_dir / "item_tags.npy", mmap_mode="r"))
    ids = [1 + i % (n_items - 1) for i in range(rows + 4)]
    return pd.DataFrame(
        {
            "likes_level": np.array([3, 5, 8][:rows], dtype=np.int64),
            "views_level": np.array([2, 6, 9][:rows], dtype=np.int64),
            "item_id": np.array(ids[:rows], dtype=np.int64),
            "item_seq": [ids[i : i + 4] for i in range(rows)],
        }
    )


class MlflowRegistry:
    def __init__(self, cfg: RegisterConfig) -> None:
        self.cfg = cfg
        self.client = configure(cfg)

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        root = Path(self.cfg.artifact_root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        return self.client.create_experiment(self.cfg.experiment, artifact_location=root.as_uri())

    def find(self, model_name: str, model_hash: str) -> Registered | None:
        try:
            versions = self.client.search_model_versions(f"name='{model_name}'")
        except MlflowException:
            return None
        for v in versions:
            if v.tags.get("model_hash") == model_hash:
                return Registered(run_id=str(v.run_id), version=str(v.version))
        return None

    def log_and_register(self, model_name: str, candidate: Candidate) -> Registered:
        exp_id = self._experiment_id()
        run_name = f"{candidate.params.get('train.model.name', 'model')}-{candidate.model_hash[:8]}"
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
            mlflow.log_params(candidate.params)
            mlflow.log_metrics(candidate.metrics)
            for h in candidate.history:
                step = int(h["epoch"])
                mlflow.log_metrics({f"epoch_{k}": float(v) for k, v in h.items() if k != "epoch"}, step=step)
            mlflow.set_tags(candidate.tags)
            for path in candidate.artifacts:
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=f"reports/{path.name}")
                else:
                    mlflow.log_artifact(str(path), artifact_path="reports")
            example = example_frame(candidate.model_dir)
            preds = load_package(candidate.model_dir).predict_frame(example)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_CODE),
                artifacts={"package": str(candidate.model_dir)},
                code_paths=[str(Path(qin.__file__).parent)],
                signature=infer_signature(example, preds),
                input_example=example,
                registered_model_name=model_name,
            )
        version = str(info.registered_model_version)
        self.client.set_model_version_tag(model_name, version, "model_hash", candidate.model_hash)
        self.client.set_model_version_tag(
            model_name, version, "valid_auc", str(candidate.metrics["valid_auc"])
        )
        for key in ("data_hash", "params_hash", "git_commit"):
            self.client.set_model_version_tag(model_name, version, key, candidate.tags[key])
        return Registered(run_id=run.info.run_id, version=version)

    def alias_holder(self, model_name: str, alias: str) -> tuple[str, float | None] | None:
        try:
            v = self.client.get_model_version_by_alias(model_name, alias)
        except MlflowException:
            return None
        auc = v.tags.get("valid_auc")
        return str(v.version), float(auc) if auc is not None else None

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name, alias, version)


def log_ablation(cfg: RegisterConfig, rows: list[dict], variant_dirs: list[Path], comparison: Path) -> str:
    """One parent run (the comparison table, CSV and bar plot) with a nested run per model; returns the
    parent's run id. Nothing is registered: the ablation compares, `qin-train` ships."""
    configure(cfg)
    exp = mlflow.set_experiment(f"{cfg.experiment}-ablation")
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name="ablation") as parent:
        for row, directory in zip(rows, variant_dirs, strict=True):
            train = read_json(directory / "train.json")
            with mlflow.start_run(run_name=row["model"], nested=True):
                mlflow.log_params({"variant": row["model"], **read_json(directory / "config.json")})
                mlflow.log_metrics({k: float(v) for k, v in row.items() if isinstance(v, int | float)})
                for h in train["history"]:
                    step = int(h["epoch"])
                    mlflow.log_metrics(
                        {f"epoch_{k}": float(v) for k, v in h.items() if k != "epoch"}, step=step
                    )
                mlflow.log_artifact(str(directory / "evaluate.json"))
        mlflow.log_artifacts(str(comparison), artifact_path="comparison")
        for row in rows:
            mlflow.log_metric(
                f"valid_auc.{row['model'].replace('/', '').replace(' ', '_')}", row["valid_auc"]
            )
    return str(parent.info.run_id)
