"""What a model registry must do (`Registry`) and the records it takes and gives: the package to log
(`Candidate`), a registered version (`Registered`, `VersionInfo`), and its one error (`RegistryError`).

The MLflow implementation lives in flows/tracking.py and is found through the `qin.registries` entry point
named in params (`register.registry`, `load_registry`), so this library never imports MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from qin.settings.sections import RegisterConfig

# The version tags `alias_history.<n>` record the alias moves (qin/registry/promotion.py).
HISTORY_TAG = "alias_history"


@dataclass(frozen=True)
class DataVersion:
    """The data a package was trained on, as `validate` recorded it: its folder, its digest (the `data_hash`
    tag) and each file's rows."""

    folder: Path
    digest: str
    rows: dict[str, int]


@dataclass(frozen=True)
class Candidate:
    model_dir: Path
    model_hash: str
    metrics: dict[str, float]  # final metrics (evaluate)
    history: list[dict[str, float]]  # per-epoch metrics (train)
    params: dict[str, Any]  # the full resolved config, flattened
    tags: dict[str, str]  # provenance: data, params and code hashes, git commit
    # Reports and metrics to attach: (a file or folder, the run's artifact folder to put it in).
    artifacts: list[tuple[Path, str]] = field(default_factory=list)
    config_yaml: str = ""  # the full resolved settings, as `qin params` prints them
    extra_tags: dict[str, str] = field(default_factory=dict)  # more version tags (e.g. the stage keys)
    data: DataVersion | None = None  # the run's dataset input

    def version_tags(self) -> dict[str, str]:
        """Every tag the version is created with: what `find` and the promotion rules read, the provenance,
        and `extra_tags` (which may not replace any of the others)."""
        own = {
            "model_hash": self.model_hash,
            "valid_auc": str(self.metrics["valid_auc"]),
            **{key: self.tags[key] for key in ("data_hash", "params_hash", "git_commit", "code_hash")},
        }
        clash = sorted(k for k in self.extra_tags if k in own or k.startswith(f"{HISTORY_TAG}."))
        if clash:
            raise ValueError(
                f"Candidate.extra_tags: expected keys other than {sorted(own)} and '{HISTORY_TAG}.<n>', "
                f"found {clash}"
            )
        return {**self.extra_tags, **own}


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as the promotion rules see it: its run and its tags."""

    version: str
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def valid_auc(self) -> float | None:
        auc = self.tags.get("valid_auc")
        return float(auc) if auc is not None else None

    @property
    def data_hash(self) -> str | None:
        return self.tags.get("data_hash")


class RegistryError(RuntimeError):
    """The registry could not be read or written; the message names what was asked and the store's error.
    A promotion that meets one changes nothing."""


@dataclass(frozen=True)
class Registered:
    run_id: str
    version: str


class Registry(Protocol):
    def find(self, model_name: str, model_hash: str) -> Registered | None:
        """The lowest-numbered version whose `model_hash` tag is this content hash, if any."""

    def log_and_register(self, model_name: str, candidate: Candidate) -> Registered:
        """Log one run (params, metrics, artifacts, the model), then create a new version of its model in
        one call carrying `candidate.version_tags()`."""

    def delete_version(self, model_name: str, version: str) -> None:
        """Delete the version and its run (a duplicate that lost a registration race)."""

    def get_version(self, model_name: str, version: str) -> VersionInfo | None:
        """The version with its tags, or None when the model or version does not exist."""

    def versions(self, model_name: str) -> list[VersionInfo]:
        """Every version of the model with its tags ([] when it has none)."""

    def alias_holder(self, model_name: str, alias: str) -> VersionInfo | None:
        """The version holding `alias`, or None."""

    def set_alias_if(self, model_name: str, alias: str, version: str, expected: str | None) -> bool:
        """Re-read who holds `alias`; give it to `version` only if the holder is still `expected` (None: no
        holder). Returns whether it was set."""

    def set_version_tag(self, model_name: str, version: str, key: str, value: str) -> None: ...

    def missing_artifacts(self, model_name: str, version: str) -> str | None:
        """Why its run or model artifacts cannot be used (run deleted, model files gone), or None."""

    def download_package(self, model_name: str, version: str, dest: Path) -> None:
        """Copy the version's model package (the files `qin.serving.inference.load_package` reads) into
        `dest`, an empty folder."""

    def log_scoring(self, model_name: str, version: str, manifest: Path, name: str) -> None:
        """Attach a scoring manifest (qin/predict.py) to the version's run, as `predictions/<name>.json`."""


def load_registry(cfg: RegisterConfig) -> Registry:
    """The registry plug-in params name (`register.registry`), built with the register section."""
    found = {ep.name: ep for ep in entry_points(group="qin.registries")}
    if cfg.registry not in found:
        raise ValueError(
            f"params key 'register.registry': expected one of {sorted(found)}, found {cfg.registry!r} "
            "(registries are 'qin.registries' entry points; is the project installed?)"
        )
    return found[cfg.registry].load()(cfg)
