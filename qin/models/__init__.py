"""The model registry: each model's name, the file that defines it, and the loss it trains with.

A model is one file under qin/models/ holding its settings class (a `ModelConfig` dataclass, the
`train.model` section) and its `nn.Module` (built from the blocks in qin/models/blocks.py; `forward` returns
logits). Adding a model is that file and one line in `MODELS`; the settings reader, the CLI and the flows'
parameter types take the names from here, the trainer takes the loss (qin/losses.py `LOSSES`).

This module imports no torch: reading params.yaml (and `qin --help`) stays fast. A model's file is imported
when its settings are read or it is built. The stages that build models (qin/pipeline.py `Stage.models`)
count every registered model's file as their code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

    from qin.config import ModelConfig
    from qin.data.features import FeatureSpec


@dataclass(frozen=True)
class Model:
    module: str  # the model's file, as a module name
    config: str  # its settings class there (a qin.config.ModelConfig)
    network: str  # its nn.Module there: Network(cfg, spec, items)
    loss: str = "bce"  # its training loss: a name in qin.losses.LOSSES


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
    """The settings class of model `name`."""
    entry = model(name, what)
    cls: type[ModelConfig] = getattr(importlib.import_module(entry.module), entry.config)
    return cls


def build_model(cfg: ModelConfig, spec: FeatureSpec, items: Mapping[str, Tensor]) -> nn.Module:
    """The network `cfg.name` names, built from its settings, the data's feature spec and the item table
    (`items`: each item feature's values per item id, featurize's `item_<name>` arrays)."""
    entry = model(cfg.name)
    network: Any = getattr(importlib.import_module(entry.module), entry.network)
    built: nn.Module = network(cfg, spec, items)
    return built


def module_files() -> tuple[str, ...]:
    """The registered models' files, relative to the project root."""
    return tuple(sorted({f"{m.module.replace('.', '/')}.py" for m in MODELS.values()}))
