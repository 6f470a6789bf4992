"""Which model package to score with: a registered version by alias or number, or a package path.

A registered version's package is downloaded once into artifacts/models/<content hash>/ and checked against
the version's `model_hash` tag; a later run finds it there. The registry is the plug-in named in params
(`register.registry`, qin/registry/protocol.py), so this library never imports MLflow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from qin.registry.protocol import Registry, load_registry
from qin.runs import layout
from qin.runs.io import atomic_dir, file_lock, tree_hash
from qin.settings.sections import RegisterConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """A model package to score with, and how it was found."""

    path: Path
    model_hash: str
    model_name: str | None = None  # registered name and version; None for a package given by path
    version: str | None = None
    alias: str | None = None  # the alias it was found by, if any

    def identity(self) -> dict[str, str | None]:
        """What the manifest records of the model: its registered name and version (stable for one content
        hash) and the content hash, which `predict` then need not compute again."""
        return {"model_name": self.model_name, "version": self.version, "model_hash": self.model_hash}

    def describe(self) -> str:
        if self.model_name is None:
            return f"the package {self.path} (content hash {self.model_hash[:12]})"
        by = f" (alias '{self.alias}')" if self.alias else ""
        return f"{self.model_name} version {self.version}{by}, content hash {self.model_hash[:12]}"


def resolve_model(
    spec: str, cfg: RegisterConfig, root: str | Path = layout.MODELS, registry: Registry | None = None
) -> ModelRef:
    """The model `spec` names: "auto" (the production alias, else the staging one), an alias, a version
    number, or a path (a model package, or an MLflow model folder holding one as its pyfunc's "package"
    artifact). A registered version's package is downloaded into `root`/<model_hash>/ unless it is there."""
    path = Path(spec)
    if path.exists():
        package = _package_in(path)
        return ModelRef(package, tree_hash([package]))
    if spec != "auto" and ("/" in spec or spec.startswith(".")):
        raise FileNotFoundError(f"predict.model {spec!r}: no such model package")
    if registry is None:
        registry = load_registry(cfg)
    name = cfg.model_name
    if spec.isdigit():
        alias, info = None, registry.get_version(name, spec)
        if info is None:
            raise ValueError(f"predict.model {spec!r}: registered model '{name}' has no version {spec}")
    else:
        aliases = (cfg.production_alias, cfg.alias) if spec == "auto" else (spec,)
        alias, info = next(((a, v) for a in aliases if (v := registry.alias_holder(name, a))), (None, None))
        if info is None:
            raise ValueError(
                f"predict.model {spec!r}: no version of registered model '{name}' holds alias "
                f"{' or '.join(repr(a) for a in aliases)} (promote one with `qin promote`, or name a version "
                "or a package path)"
            )
    model_hash = info.tags.get("model_hash")
    if not model_hash:
        raise ValueError(f"{name} version {info.version}: expected a 'model_hash' tag, found none")
    folder = Path(root) / model_hash
    with file_lock(Path(root) / f"{model_hash}.lock"):
        if not (folder.is_dir() and tree_hash([folder]) == model_hash):
            log.info("downloading %s version %s into %s", name, info.version, folder)
            with atomic_dir(folder) as tmp:
                registry.download_package(name, info.version, tmp)
                found = tree_hash([tmp])
                if found != model_hash:
                    raise ValueError(
                        f"{name} version {info.version}: its package's content hash is {found}, expected the "
                        f"version's model_hash tag {model_hash}"
                    )
    return ModelRef(folder, model_hash, name, info.version, alias)


def _package_in(path: Path) -> Path:
    """The model package `path` is, or the one inside the MLflow model `path` is."""
    from qin.serving.inference import CONFIG

    if (path / CONFIG).is_file():
        return path
    if (path / "MLmodel").is_file():
        return package_in_mlflow_model(path)
    raise FileNotFoundError(
        f"{path}: expected a model package (with {CONFIG}) or an MLflow model holding one, found neither"
    )


def package_in_mlflow_model(path: str | Path) -> Path:
    """Where an MLflow model folder (as the register stage logs it) keeps its model package: the pyfunc
    flavour's artifact "package", read from its MLmodel file."""
    import yaml

    path = Path(path)
    mlmodel = yaml.safe_load((path / "MLmodel").read_text()) or {}
    rel = (
        ((mlmodel.get("flavors") or {}).get("python_function") or {}).get("artifacts", {}).get("package", {})
    )
    if not isinstance(rel, dict) or "path" not in rel:
        raise FileNotFoundError(
            f"{path / 'MLmodel'}: expected flavors.python_function.artifacts.package.path (a qin model), "
            "found none"
        )
    package = path / rel["path"]
    if not (package / "model.json").is_file():
        raise FileNotFoundError(f"{package}: expected a model package (with model.json), found none")
    return package
