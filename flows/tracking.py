"""MLflow: the one module that talks to it. Implements qin.registry.protocol.Registry.

Everything lives under mlruns/: the sqlite tracking/registry store and the artifacts. Runs go to one
experiment per data version (`<register.experiment>/data-<data hash[:8]>`). A run holds the resolved
settings (as params and as `config/params.yaml`), metrics with per-epoch history, system metrics (CPU,
memory, disk; psutil), the reports, a `model_card.md` and the model. Each registered model version is
created, after its model files, with tags `model_hash`, `valid_auc`, `data_hash`, `params_hash`,
`git_commit`, `code_hash` (read by the idempotency check and the promotion rules) and the candidate's
`extra_tags`; `alias_history.<n>` tags are added, one per alias move.

sqlite is a single-writer store: concurrent processes race creating its tables on first use ("table ...
already exists", failed migrations), and a writer that waits past sqlite's busy timeout gets "database is
locked". So with a `sqlite:///` URI every store access holds a file lock beside the database
(`store_lock`); a tracking server (`http(s)://`, the team stack) serialises writes itself and takes none.
With a server, experiments use its artifact store (uploads go through its proxy, `mlflow-artifacts:/`),
`register.artifact_root` is not used, and a server that restarts is retried by MLflow's client (about 4
minutes with its defaults); one that stays away fails the call with TrackingServerUnavailable, naming it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_RUN_NOTE

import qin
from qin.registry.card import model_card, version_description
from qin.registry.protocol import Candidate, DataVersion, Registered, RegistryError, VersionInfo
from qin.registry.resolve import package_in_mlflow_model
from qin.runs.io import file_lock, read_json
from qin.runs.store import lineage
from qin.serving.inference import load_package
from qin.serving.request import example_request
from qin.settings.params import load_params
from qin.settings.sections import RegisterConfig, flatten

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


def is_server(uri: str) -> bool:
    """A tracking server (the team stack), rather than a store this process opens itself."""
    return uri.startswith(("http://", "https://"))


def store_lock(uri: str) -> contextlib.AbstractContextManager[None]:
    """Hold while using the store at `uri`: a file lock beside a sqlite database, nothing for a server."""
    if uri.startswith("sqlite:///"):
        # Store calls are short: poll often rather than file_lock's default half second.
        return file_lock(uri.removeprefix("sqlite:///") + ".lock", poll_seconds=0.02)
    return contextlib.nullcontext()


def configure(cfg: RegisterConfig) -> MlflowClient:
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def pyfunc_args(model_dir: Path) -> dict[str, Any]:
    """How the package in `model_dir` is logged or saved as an MLflow pyfunc: model from code
    (flows/pyfunc_model.py), the package as its artifact, `qin` bundled, a column signature and an example
    (the row columns its feature table declares)."""
    scorer = load_package(model_dir)
    example = example_request(scorer.spec)
    preds = scorer.predict_frame(example)
    return {
        "python_model": str(PYFUNC_CODE),
        "artifacts": {"package": str(model_dir)},
        "code_paths": [str(Path(qin.__file__).parent)],
        "signature": infer_signature(example, preds),
        "input_example": example,
    }


def save_pyfunc(model_dir: Path, out: Path) -> Path:
    """The package as a local MLflow model directory `out`, outside any store (tests, benchmarks)."""
    mlflow.pyfunc.save_model(str(out), **pyfunc_args(model_dir))
    return out


def log_history(history: list[dict]) -> None:
    """The training run's per-epoch metrics (train.json `history`) as `epoch_*` metric steps."""
    for h in history:
        values = {f"epoch_{k}": float(v) for k, v in h.items() if k != "epoch"}
        mlflow.log_metrics(values, step=int(h["epoch"]))


def _version_info(v: Any) -> VersionInfo:
    return VersionInfo(version=str(v.version), run_id=str(v.run_id), tags=dict(v.tags))


P = ParamSpec("P")
R = TypeVar("R")


def _serialised(
    method: Callable[Concatenate[MlflowRegistry, P], R],
) -> Callable[Concatenate[MlflowRegistry, P], R]:
    """Run a registry method under `store_lock` (re-entrant, so methods may call each other)."""

    @functools.wraps(method)
    def locked(self: MlflowRegistry, *args: P.args, **kwargs: P.kwargs) -> R:
        with store_lock(self.uri):
            try:
                return method(self, *args, **kwargs)
            except (MlflowException, requests.exceptions.RequestException) as exc:
                if is_server(self.uri) and _unreachable(exc):
                    raise TrackingServerUnavailable(
                        f"the MLflow tracking server at {self.uri} did not answer ({method.__name__}) "
                        f"through MLflow's {MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()} retries "
                        f"(MLFLOW_HTTP_REQUEST_MAX_RETRIES); a version is created only after its model files "
                        f"are uploaded, so none is left without them: {exc}"
                    ) from exc
                raise

    return locked


class TrackingServerUnavailable(RuntimeError):
    """The tracking server stayed away through MLflow's own retries (a restart shorter than those is
    retried without a word)."""


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, requests.exceptions.ConnectionError) or "Max retries exceeded" in str(exc)


def dataset_input(data: DataVersion) -> DatasetInput:
    """The data a run trained on as an MLflow dataset input: named by its folder, its content digest (the
    `data_hash` tag), its folder as a local source, each file's rows as its profile; context "training"."""
    dataset = Dataset(
        name=data.folder.name,
        digest=data.digest,
        source_type="local",
        source=json.dumps({"uri": data.folder.as_uri()}),
        profile=json.dumps({"rows": data.rows}),
    )
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])


def nothing_found(exc: MlflowException) -> bool:
    """Whether MLflow's error says there is nothing to find, as opposed to a store that failed: the model
    does not exist (RESOURCE_DOES_NOT_EXIST) or holds no such alias (the registry store answers that with
    INVALID_PARAMETER_VALUE, "Registered model alias <alias> not found.", locally and over REST alike)."""
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    said = str(exc.message).lower()
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in said and "not found" in said


class MlflowRegistry:
    def __init__(self, cfg: RegisterConfig) -> None:
        self.cfg = cfg
        self.uri = tracking_uri(cfg)
        with store_lock(self.uri):  # the client's construction creates the tables on first use
            self.client = configure(cfg)

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None  # a tracking server: its own artifact store (proxied, `mlflow-artifacts:/`)
        if not is_server(self.uri):
            root = Path(self.cfg.artifact_root).resolve()
            root.mkdir(parents=True, exist_ok=True)
            location = root.as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # Another client of a shared server created it since we looked.
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @_serialised
    def find(self, model_name: str, model_hash: str) -> Registered | None:
        # No `except MlflowException: None` here: a store error taken for "not registered" would create a
        # duplicate version.
        versions = self.client.search_model_versions(
            f"name='{model_name}' and tags.model_hash='{model_hash}'"
        )
        if not versions:
            return None
        # The lowest number: racing clients that each created one agree on which to keep.
        v = min(versions, key=lambda v: int(v.version))
        return Registered(run_id=str(v.run_id), version=str(v.version))

    @_serialised
    def log_and_register(self, model_name: str, candidate: Candidate) -> Registered:
        tags = candidate.version_tags()  # before the run: bad extra tags fail without leaving one behind
        exp_id = self._experiment_id(experiment_name(self.cfg, candidate.tags["data_hash"]))
        run_name = f"{candidate.params.get('train.model.name', 'model')}-{candidate.model_hash[:8]}"
        # System metrics (CPU, memory, disk, network; psutil) sampled every second while the run is open.
        mlflow.set_system_metrics_sampling_interval(1)
        mlflow.set_system_metrics_samples_before_logging(1)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, log_system_metrics=True) as run:
            mlflow.log_params(candidate.params)
            if candidate.data is not None:
                self.client.log_inputs(run.info.run_id, [dataset_input(candidate.data)])
            if candidate.config_yaml:
                mlflow.log_text(candidate.config_yaml, "config/params.yaml")
            mlflow.log_metrics(candidate.metrics)
            log_history(candidate.history)
            mlflow.set_tags({**candidate.tags, "model_hash": candidate.model_hash})
            for path, folder in candidate.artifacts:
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=folder)
                else:
                    mlflow.log_artifact(str(path), artifact_path=folder)
            info = mlflow.pyfunc.log_model(name="model", **pyfunc_args(candidate.model_dir))
            # One call creates the version with all its tags, after its model files exist: a crash
            # never leaves a version that `find` or the promotion rules cannot read.
            created = mlflow.register_model(info.model_uri, model_name, tags=tags)
            version = str(created.version)
            card = model_card(candidate, model_name, version)
            mlflow.log_text(card, "model_card.md")
            mlflow.set_tag(MLFLOW_RUN_NOTE, card)  # what the MLflow UI shows as the run's description
        description = version_description(candidate, model_name, version, run.info.run_id)
        self.client.update_model_version(model_name, version, description=description)
        return Registered(run_id=run.info.run_id, version=version)

    @_serialised
    def delete_version(self, model_name: str, version: str) -> None:
        run_id = self.client.get_model_version(model_name, version).run_id
        self.client.delete_model_version(model_name, version)  # first: `find` stops seeing it
        if run_id:
            self.client.delete_run(run_id)

    @_serialised
    def get_version(self, model_name: str, version: str) -> VersionInfo | None:
        try:
            v = self.client.get_model_version(model_name, version)
        except MlflowException:
            return None
        return _version_info(v)

    @_serialised
    def versions(self, model_name: str) -> list[VersionInfo]:
        return [_version_info(v) for v in self.client.search_model_versions(f"name='{model_name}'")]

    @_serialised
    def alias_holder(self, model_name: str, alias: str) -> VersionInfo | None:
        # Only "not found" means no holder: any other store error taken for "none" could let a promotion
        # move the alias over the version that holds it.
        try:
            v = self.client.get_model_version_by_alias(model_name, alias)
        except MlflowException as exc:
            if nothing_found(exc):
                return None
            raise RegistryError(
                f"reading which version holds alias '{alias}' of model '{model_name}' from the registry at "
                f"{self.uri} failed: {exc}"
            ) from exc
        return _version_info(v)

    @_serialised
    def set_alias_if(self, model_name: str, alias: str, version: str, expected: str | None) -> bool:
        # Atomic among local processes on sqlite (under store_lock); on a server, a window remains
        # between this re-read and the set.
        holder = self.alias_holder(model_name, alias)
        if (holder.version if holder is not None else None) != expected:
            return False
        self.client.set_registered_model_alias(model_name, alias, version)
        return True

    @_serialised
    def set_version_tag(self, model_name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(model_name, version, key, value)

    @_serialised
    def missing_artifacts(self, model_name: str, version: str) -> str | None:
        try:
            v = self.client.get_model_version(model_name, version)
        except MlflowException:
            return f"model '{model_name}' has no version {version}"
        if v.run_id:
            try:
                run = self.client.get_run(v.run_id)
            except MlflowException:
                return f"its run {v.run_id} does not exist"
            if run.info.lifecycle_stage == "deleted":
                return f"its run {v.run_id} is deleted"
        uri = self.client.get_model_version_download_uri(model_name, version)
        try:
            names = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(artifact_uri=uri)}
        except Exception as exc:  # any store error means the model cannot be downloaded
            return f"its model artifacts at {uri} cannot be listed ({exc})"
        if "MLmodel" not in names:
            return f"its model artifacts at {uri} have no MLmodel file (found {sorted(names) or 'nothing'})"
        return None

    @_serialised
    def download_package(self, model_name: str, version: str, dest: Path) -> None:
        uri = self.client.get_model_version_download_uri(model_name, version)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            shutil.copytree(package_in_mlflow_model(local), dest, dirs_exist_ok=True)

    @_serialised
    def log_scoring(self, model_name: str, version: str, manifest: Path, name: str) -> None:
        run_id = self.client.get_model_version(model_name, version).run_id
        with tempfile_copy(manifest, f"{name}.json") as path:
            self.client.log_artifact(run_id, str(path), artifact_path="predictions")


@contextlib.contextmanager
def tempfile_copy(path: Path, name: str) -> Any:
    """`path` copied to a temporary file called `name` (MLflow names an artifact after its file)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(shutil.copy(path, Path(tmp) / name))


def experiment_name(cfg: RegisterConfig, data_hash: str) -> str:
    """One experiment per data version: runs on different data do not compare."""
    return f"{cfg.experiment}/data-{data_hash[:8]}"


def run_link(cfg: RegisterConfig, run_id: str) -> str:
    """The run's page in the MLflow UI: the tracking server when it is one, else `register.ui_url`."""
    uri = tracking_uri(cfg)
    base = uri if is_server(uri) else cfg.ui_url
    with store_lock(uri):
        experiment_id = configure(cfg).get_run(run_id).info.experiment_id
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_hint(cfg: RegisterConfig) -> str | None:
    """How to open the run links when nothing answers at `register.ui_url` (a local store: `make ui` serves
    it); None when a tracking server holds the runs or the UI answers."""
    if is_server(tracking_uri(cfg)):
        return None
    url = urllib.parse.urlsplit(cfg.ui_url)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=0.5):
            return None
    except OSError:
        return f"nothing serves the MLflow UI at {cfg.ui_url} now: `make ui` starts it, then open the link"


def log_ablation(
    cfg: RegisterConfig,
    rows: list[dict],
    done: list[dict[str, str]],
    comparison: Path,
    kind: str = "ablation",
) -> str:
    """One parent run (the comparison table, CSV and bar plot) with a nested run per model; returns the
    parent's run id. `done`: per model, its params file and its train and evaluate key folders; `kind`:
    the comparison (ablation, embed-eval), which names the experiment and the run. Nothing is registered:
    a comparison compares, `qin-train` ships."""
    with store_lock(tracking_uri(cfg)):
        configure(cfg)
        exp = mlflow.set_experiment(f"{cfg.experiment}-{kind}")
        with mlflow.start_run(experiment_id=exp.experiment_id, run_name=kind) as parent:
            for row, variant in zip(rows, done, strict=True):
                with mlflow.start_run(run_name=row["model"], nested=True):
                    train_dir, evaluate_dir = Path(variant["train"]), Path(variant["evaluate"])
                    settings = load_params(variant["params"])
                    mlflow.log_params(
                        {
                            "variant": row["model"],
                            **flatten(settings.train, "train."),
                            **flatten(settings.embed, "embed."),
                        }
                    )
                    mlflow.log_metrics({k: float(v) for k, v in row.items() if isinstance(v, int | float)})
                    log_history(read_json(train_dir / "train.json")["history"])
                    mlflow.log_artifact(str(evaluate_dir / "evaluate.json"))
                    mlflow.set_tags({f"stage.{k}": v for k, v in (lineage(evaluate_dir) or {}).items()})
            mlflow.log_artifacts(str(comparison), artifact_path="comparison")
            for row in rows:
                mlflow.log_metric(
                    f"valid_auc.{row['model'].replace('/', '').replace(' ', '_')}", row["valid_auc"]
                )
    return str(parent.info.run_id)
