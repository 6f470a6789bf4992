"""The model registry: each model's name, the file that defines it, and the loss it trains with.

A model is its settings class (a `ModelConfig`, the `train.model` section) in a torch-free module
(qin/models/settings.py) and one file under qin/models/ holding its `nn.Module` (built from the blocks in
qin/models/blocks.py; `forward` returns logits). Adding a model is those and one line in `MODELS`; the
settings reader (qin/settings/params.py), the CLI and the flows' parameter types take the names from here, the
trainer takes the loss (qin/training/losses.py `LOSSES`).

This module imports no torch, nor do the settings modules: reading params.yaml (and `qin --help`) stays fast.
A model's network file is imported when it is built. The import runs one way: this registry and the
settings modules import qin.settings.sections, never the reverse, so the stages that read only their own
section do not
count the models as their code; those that build models (qin/runs/pipeline.py `Stage.models`) count every
registered model's files.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

    from qin.data.features import FeatureSpec
    from qin.models.settings import ModelConfig


@dataclass(frozen=True)
class Model:
    module: str  # the model's network file, as a module name
    config: str  # its settings class (a ModelConfig) in `settings`
    network: str  # its nn.Module in `module`: Network(cfg, spec, items)
    loss: str = "bce"  # its training loss: a name in qin.training.losses.LOSSES
    settings: str = "qin.models.settings"  # the torch-free module of its settings class


MODELS: dict[str, Model] = {
    "qin": Model("qin.models.qin", "QINConfig", "QIN"),
    "din": Model("qin.models.din", "DINConfig", "DIN"),
    "dcnv3": Model("qin.models.dcnv3", "DCNv3Config", "DCNv3"),
    "sdcnv3": Model("qin.models.dcnv3", "DCNv3Config", "DCNv3", loss="tri_bce"),
}


def model(name: object, what: str = "params key 'train.model.name'") -> Model:
    """The registry entry of model `name`; an unknown name is refused, naming `what` gave it."""
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"{what}: expected one of {sorted(MODELS)}, found {name!r}")
    return MODELS[name]


def config_class(name: object, what: str = "params key 'train.model.name'") -> type[ModelConfig]:
    """The settings class of model `name` (imports no torch)."""
    entry = model(name, what)
    cls: type[ModelConfig] = getattr(importlib.import_module(entry.settings), entry.config)
    return cls


def model_config(mapping: Any) -> ModelConfig:
    """A model's settings from a plain mapping (as a model package's model.json stores them: the fields of
    its settings class, tuples as lists); keys are named from 'model'."""
    if not isinstance(mapping, dict):
        raise ValueError(f"params key 'model': expected a mapping, found {mapping!r}")
    return config_class(mapping.get("name"), "params key 'model.name'").from_mapping(mapping, "model")


def build_model(cfg: ModelConfig, spec: FeatureSpec, items: Mapping[str, Tensor]) -> nn.Module:
    """The network `cfg.name` names, built from its settings, the data's feature spec and the item table
    (`items`: each item feature's values per item id, featurize's `item_<name>` arrays)."""
    entry = model(cfg.name)
    network: Any = getattr(importlib.import_module(entry.module), entry.network)
    built: nn.Module = network(cfg, spec, items)
    return built


def module_files() -> tuple[str, ...]:
    """The registered models' files (networks and settings), relative to the project root."""
    modules = {name for m in MODELS.values() for name in (m.module, m.settings)}
    return tuple(sorted(f"{name.replace('.', '/')}.py" for name in modules))
