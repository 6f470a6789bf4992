"""The models' settings: the `train.model` section, one class per model, told apart by `name`.

Torch-free, so that reading params.yaml (qin/settings/params.py) imports no torch: each model's file under
qin/models/ builds its network from its class here (and re-exports it), and the registry
(qin/models/__init__.py `MODELS`) names the class of each model.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from qin.settings.sections import Settings


class ModelConfig(Settings):
    """What every model's settings have: its name in the registry (qin/models/__init__.py `MODELS`).

    Each model's own settings class subclasses this one (e.g. `QINConfig`): the `train.model` section.
    """

    section: ClassVar[str] = "train.model"

    name: str


class QINConfig(ModelConfig):
    """QIN (qin/models/qin.py). Defaults: a small CPU-friendly QIN; the `paper` preset has the authors'."""

    name: Literal["qin"] = "qin"
    embedding_dim: int = 32
    # 0 means "twice the item vector width", the authors' choice (768 for 3 x 128).
    attention_dim: int = 0
    # "fused" computes the same attention in a cheaper order; "reference" is the textbook order.
    attention_order: Literal["fused", "reference"] = "fused"
    num_layers: int = 2
    num_row: int = 2
    # Dropout on each QNN layer's linear map, and after its activation.
    linear_dropout: float = 0.0
    net_dropout: float = 0.1
    batch_norm: bool = True
    # The paper's ablations (its Table 2), one switch each:
    use_qnn: bool = True  # false: "w/o QNN", an MLP of mlp_units instead
    mlp_units: tuple[int, ...] = (1024, 512, 256)
    history_pooling: Literal["attention", "mean"] = "attention"  # mean: "w/o ASTA"
    attention_activation: Literal["relu", "softmax"] = "relu"  # softmax: "ASTA w/ SoftMax"
    qnn_activation: Literal["prelu", "relu"] = "prelu"  # relu: "QNN w/o PReLU"
    attention_dropout: float = 0.0  # 0.1: "ASTA w/ Dropout"


class DINConfig(ModelConfig):
    """DIN (qin/models/din.py), as the challenge baseline ran it."""

    name: Literal["din"] = "din"
    embedding_dim: int = 64
    attention_units: tuple[int, ...] = (512, 256)
    attention_dropout: float = 0.1
    dnn_units: tuple[int, ...] = (1024, 512, 256)
    net_dropout: float = 0.1
    batch_norm: bool = True


class DCNv3Config(ModelConfig):
    """DCNv3 (the exponential cross network alone) or SDCNv3 (exponential + linear, Tri-BCE loss)."""

    name: Literal["dcnv3", "sdcnv3"] = "dcnv3"
    embedding_dim: int = 32
    num_deep_layers: int = 4
    num_shallow_layers: int = 4
    deep_dropout: float = 0.1
    shallow_dropout: float = 0.3
    layer_norm: bool = True
