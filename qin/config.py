"""Settings: `params.yaml` read once into frozen, typed dataclasses.

One section per stage (`data`, `validate`, `featurize`, `train`, `evaluate`, `register`). Unknown keys and
values of the wrong type or outside their allowed set raise `ValueError` naming the key, what was expected
and what was found, so a typo in params.yaml never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

PresetName = Literal["tiny", "small", "full"]


@dataclass(frozen=True)
class DataConfig:
    """Settings of the synthetic generator (`qin data synth`); never read by a pipeline stage.

    The preset fixes the sizes; the rest shapes the planted structure (docs/data.md).
    """

    preset: PresetName = "small"
    seed: int = 20242025
    latent_dim: int = 16  # item latent space
    subtopics: int = 4  # per topic; near-duplicates share a sub-topic
    emb_noise: float = 0.35  # noise added to the projection that makes item_emb_d128
    history_noise: float = 0.15  # share of history items drawn by popularity rather than interests
    target_from_interest: float = 0.5  # share of targets drawn from the user's interests
    relevance_tau: float = 0.85  # cosine above which a history item is relevant to the target
    w_relevance: float = 3.0  # logit weights: sparse history relevance,
    w_quadratic: float = 0.8  # pairwise interactions,
    w_popularity: float = 0.4  # popularity
    positive_rate: float = 0.25


@dataclass(frozen=True)
class ValidateConfig:
    # A train/valid positive rate outside this band is reported as a warning, not a failure.
    positive_rate_min: float = 0.02
    positive_rate_max: float = 0.8
    # Tag ids must be below this (MicroLens_1M_x1: 11,740 including 0 = padding).
    tag_vocab: int = 11_740


@dataclass(frozen=True)
class FeaturizeConfig:
    # Models keep the most recent `max_len` history items (the authors use 64).
    max_len: int = 64


@dataclass(frozen=True)
class ModelConfig:
    name: Literal["qin"] = "qin"
    embedding_dim: int = 32
    # 0 means "twice the item vector width", the authors' choice (768 for 3 x 128).
    attention_dim: int = 0
    # "fused" computes the same attention in a cheaper order (see qin/models/qin.py); "reference" is the
    # textbook order. Both give the same function.
    attention_order: Literal["fused", "reference"] = "fused"
    num_layers: int = 2
    num_row: int = 2
    # Dropout on each QNN layer's linear map, and after its activation.
    linear_dropout: float = 0.0
    net_dropout: float = 0.1
    batch_norm: bool = True


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 1024
    epochs: int = 3
    learning_rate: float = 2e-3
    # L2 on the embedding tables only, added to the loss (the network's weights are not decayed).
    embedding_l2: float = 0.0
    grad_clip_norm: float = 10.0
    # Stop when valid AUC has not improved for this many epochs; the best epoch's weights are kept.
    patience: int = 2
    seed: int = 20242025
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 8192


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str = "qin-ctr"
    alias: str = "staging"
    # Name of a `qin.registries` entry point; "mlflow" is provided by flows/tracking.py.
    registry: str = "mlflow"
    experiment: str = "qin-ctr"
    # Relative paths are taken from the working directory (the project root). MLFLOW_TRACKING_URI, when
    # set, overrides tracking_uri (e.g. a shared MLflow server).
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    featurize: FeaturizeConfig = field(default_factory=FeaturizeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)


T = TypeVar("T")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"params key '{key}': expected a mapping, found {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")  # type: ignore[arg-type]
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ValueError(f"params key '{key}': expected one of {list(allowed)}, found {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arm, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"params key '{key}': unexpected {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"params key '{key}': expected true or false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"params key '{key}': expected an integer, found {value!r}")
        return value
    if tp is float:
        # YAML reads 2e-3 as a string (YAML 1.1 wants a dot); accept numeric strings for floats.
        if isinstance(value, bool):
            raise ValueError(f"params key '{key}': expected a number, found {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"params key '{key}': expected a number, found {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"params key '{key}': expected a string, found {value!r}")
        return value
    raise TypeError(f"unsupported settings type {tp!r} for '{key}'")


def from_dict(cls: type[T], mapping: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from `mapping`; missing keys take their defaults, unknown keys raise."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise ValueError(
            f"params key '{prefix}{unknown[0]}' is not a setting; allowed keys under "
            f"'{prefix.rstrip('.') or '<top>'}': {names}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in mapping.items()}
    return cls(**kwargs)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found (run from the project root)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of sections, found {type(raw).__name__}")
    try:
        return from_dict(Params, raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def section_hash(section: Any) -> str:
    """Stable hash of one settings section (used in cache keys and MLflow tags)."""
    blob = json.dumps(dataclasses.asdict(section), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten(section: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train.model.embedding_dim": 32, ...}` for logging the resolved config as flat params."""
    return dict(_flatten_dict(dataclasses.asdict(section), prefix))


def _flatten_dict(d: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            items.extend(_flatten_dict(v, f"{prefix}{k}."))
        else:
            items.append((f"{prefix}{k}", v))
    return items
