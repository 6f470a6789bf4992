"""Settings: the sections of `params.yaml` as frozen, typed pydantic models, and how a bad value is told.

One section per stage (`data`, `validate`, `embed`, `featurize`, `train`, `evaluate`, `register`, `predict`),
and `deploy` for the Prefect deployments. This module holds the sections that stand alone, the base class
of every settings class (`Settings`) and the one translation of pydantic's errors into messages
(`settings_error`). The train section, which starts from a preset file and holds a model's settings, and
`Params`, the whole file, are in qin/settings/params.py; a model's own settings class is in
qin/models/settings.py
(the registry, qin/models/__init__.py, names it). This module imports nothing from qin/models, so the stages
that read only their own section (validate, embed, featurize) do not run the model registry.

Unknown keys and values of the wrong type or outside their allowed set raise `ValueError` naming the dotted
key, what was expected and what was found, so a typo in params.yaml never silently falls back to a default.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

PresetName = Literal["tiny", "small", "full", "x10"]


def _share(value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError(f"expected a number in [0, 1], found {value}")
    return value


def _not_negative(value: float) -> float:
    if not value >= 0:
        raise ValueError(f"expected a number >= 0, found {value}")
    return value


Share = Annotated[float, AfterValidator(_share)]  # a fraction, 0..1
NotNegative = Annotated[float, AfterValidator(_not_negative)]

# Settings that were once elsewhere: a file that still has one is told where it went.
MOVED = {"train.max_len": "featurize.max_len"}


class SettingsError(ValueError):
    """A refused setting, its message naming the dotted params key (what `settings_error` writes)."""


class Settings(BaseModel):
    """A frozen settings section that refuses unknown keys and checks each value's type strictly: a bool is
    not an integer, an integer not a bool, a string not a number. Two forms YAML gives are taken: a float
    setting accepts a numeric string (YAML 1.1 reads 2e-3 as one, it wants a dot) and a list stands for a
    tuple. A bad value raises `SettingsError` (a ValueError) naming the key under `section`, the class's
    place in params.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    section: ClassVar[str] = ""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise settings_error(type(self), exc) from None

    # pydantic calls a custom __init__ for every validation, nested ones included; this one only translates
    # the errors of a direct construction, so validation proper goes on without it (as pydantic-settings').
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def from_mapping(cls, mapping: Any, section: str | None = None) -> Self:
        """The settings `mapping` gives (defaults for what it leaves out); `section`: where the keys are
        named from (default: the class's place in params.yaml)."""
        try:
            return cls.model_validate(mapping)
        except ValidationError as exc:
            raise settings_error(cls, exc, section) from None

    @model_validator(mode="before")
    @classmethod
    def yaml_forms(cls, data: Any) -> Any:
        """A numeric string for a float, a list for a tuple (both as YAML writes them)."""
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            kind = _unwrap(field.annotation) if field is not None else None
            if kind is float and isinstance(value, str):
                with contextlib.suppress(ValueError):  # else refused as "expected a number"
                    out[key] = float(value)
            elif get_origin(kind) is tuple and isinstance(value, list):
                out[key] = tuple(value)
        return out


S = TypeVar("S", bound=Settings)


def replace(settings: S, /, **changes: Any) -> S:
    """A copy of `settings` with `changes`, checked as params.yaml's values are (`model_copy` checks none)."""
    fields = {name: getattr(settings, name) for name in type(settings).model_fields}
    try:
        return type(settings).model_validate({**fields, **changes})
    except ValidationError as exc:
        raise settings_error(type(settings), exc) from None


def settings_error(cls: type[BaseModel], exc: ValidationError, section: str | None = None) -> SettingsError:
    """pydantic's refusal of a mapping for `cls` as one message naming the dotted key (the only place its
    errors are put into words): an unknown key first (the shallowest), else the first other error."""
    errors = exc.errors()
    first = min(
        range(len(errors)),
        key=lambda i: (len(errors[i]["loc"]), errors[i]["type"] != "extra_forbidden", i),
    )
    where = getattr(cls, "section", "") if section is None else section
    return SettingsError(_message(cls, dict(errors[first]), where))


def refuse_unknown(cls: type[BaseModel], mapping: Mapping[str, Any], section: str | None = None) -> None:
    """Refuse a key of `mapping` that is no setting of `cls`, as pydantic's refusal would word it."""
    unknown = sorted(set(mapping) - set(cls.model_fields), key=str)
    if unknown:
        where = getattr(cls, "section", "") if section is None else section
        error = {"type": "extra_forbidden", "loc": (unknown[0],), "input": mapping[unknown[0]]}
        raise SettingsError(_message(cls, error, where))


def _message(cls: type[BaseModel], error: dict[str, Any], section: str) -> str:
    loc: tuple[str | int, ...] = tuple(error["loc"])
    key = _dotted(section, loc)
    kind = error["type"]
    if kind in ("value_error", "assertion_error"):  # a validator's check: its message says what it wanted
        cause = error["ctx"]["error"]
        return str(cause) if isinstance(cause, SettingsError) else f"params key '{key}': {cause}"
    if kind == "extra_forbidden":
        owner = _annotation_at(cls, loc[:-1])
        allowed = list(owner.model_fields) if isinstance(owner, type) and issubclass(owner, BaseModel) else []
        moved = MOVED.get(key)
        return (
            f"params key '{key}' is not a setting"
            + (f" (use '{moved}')" if moved else "")
            + f"; allowed keys under '{_dotted(section, loc[:-1]) or '<top>'}': {allowed}"
        )
    if kind == "missing":
        return f"params key '{key}': expected a value (the setting has no default), found none"
    return f"params key '{key}': expected {_expected(_annotation_at(cls, loc))}, found {error['input']!r}"


def _dotted(section: str, loc: tuple[str | int, ...]) -> str:
    key = section
    for part in loc:
        key = f"{key}[{part}]" if isinstance(part, int) else f"{key}.{part}" if key else str(part)
    return key


def _unwrap(tp: Any) -> Any:
    """`tp` without Annotated's metadata and without None (an optional setting's type)."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (typing.Union, types.UnionType):
        arms = [a for a in get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            return _unwrap(arms[0])
    return tp


def _annotation_at(cls: type[BaseModel], loc: tuple[str | int, ...]) -> Any:
    """The type of the setting at `loc` under `cls` (None where pydantic's path leaves the settings)."""
    tp: Any = cls
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int) and get_origin(tp) is tuple:
            tp = get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[str(part)].annotation
        else:
            return None
    return _unwrap(tp)


def _expected(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return f"one of {list(get_args(tp))}"
    if get_origin(tp) is tuple:
        return "a list"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(tp, f"a value of type {tp}")


class DataConfig(Settings):
    """Settings of the synthetic generator (`qin data synth`); never read by a pipeline stage.

    The preset fixes the sizes; the rest shapes the planted structure (docs/data.md).
    """

    section: ClassVar[str] = "data"

    preset: PresetName = "small"
    seed: int = 20242025
    latent_dim: int = 16  # item latent space
    subtopics: int = 4  # per topic; near-duplicates share a sub-topic
    # How item_emb_d128 is made: "pca" as the challenge's organisers did (the item_feature text and image
    # vectors concatenated and reduced by PCA to 128), or "latent", the generator before item_feature: a
    # projection of the whole latent vector plus emb_noise, a view that no fusion of the modalities can match.
    item_emb: Literal["pca", "latent"] = "pca"
    emb_noise: float = 0.35  # item_emb "latent": noise added to the projection
    # item_feature.parquet's modalities: noise added to each projection (per dimension). The text carries the
    # topic, the image the sub-topic; more noise makes each alone (and their fusion) recover less.
    txt_noise: NotNegative = 1.5  # txt_emb_BERT (768 dims)
    img_noise: NotNegative = 2.0  # img_emb_CLIPRN50 (1024 dims)
    history_noise: float = 0.15  # share of history items drawn by popularity rather than interests
    # Share of in-interest history items drawn from the interest's niche (one sub-topic of the topic, per
    # user and interest) rather than from the whole topic: what makes co-occurrence carry sub-topics.
    history_niche: Share = 0.5
    target_from_interest: float = 0.5  # share of targets drawn from the user's interests
    relevance_tau: float = 0.85  # cosine above which a history item is relevant to the target
    w_relevance: float = 3.0  # logit weights: sparse history relevance,
    w_quadratic: float = 0.8  # pairwise interactions,
    w_popularity: float = 0.4  # popularity
    positive_rate: float = 0.25


class ValidateConfig(Settings):
    section: ClassVar[str] = "validate"

    # A train/valid positive rate outside this band is reported as a warning, not a failure.
    positive_rate_min: float = 0.02
    positive_rate_max: float = 0.8
    # Tag ids must be below this (MicroLens_1M_x1: 11,740 including 0 = padding).
    tag_vocab: int = 11_740


class FusionConfig(Settings):
    """The `learned` embedding (qin/embedding/fusion.py): a fusion of the text and image features trained on
    which
    items the training histories hold together, started from the pca solution."""

    section: ClassVar[str] = "embed.learned"

    epochs: int = 8
    batch_size: int = 1024  # co-occurring pairs a step; the batch's other items are the negatives
    learning_rate: float = 3e-4
    temperature: float = 0.2
    window: int = 5  # items this many positions apart in one history count as co-occurring (0: any)
    pairs_per_epoch: int = 262_144  # drawn afresh each epoch
    hidden: int = 0  # width of a residual block after the linear map (0: the linear map alone)
    anchor_weight: NotNegative = (
        30.0  # the pull back to the pca solution (qin/embedding/fusion.py `_anchor_penalty`)
    )
    # After training: this share of each item's embedding is replaced by the mean embedding of the items
    # it co-occurs with (within `window`), count-weighted (qin/embedding/fusion.py `propagate`); 0: none.
    propagation: Share = 0.5
    history_rows: int = 200_000  # train rows whose histories it reads (a fixed sample); 0: all
    seed: int = 20242025

    _LOWEST: ClassVar[dict[str, int]] = {
        "epochs": 0,
        "batch_size": 2,
        "window": 0,
        "pairs_per_epoch": 1,
        "hidden": 0,
        "history_rows": 0,
    }

    @field_validator(*_LOWEST)
    @classmethod
    def _at_least(cls, value: int, info: ValidationInfo) -> int:
        low = cls._LOWEST[str(info.field_name)]
        if value < low:
            raise ValueError(f"expected an integer >= {low}, found {value}")
        return value

    @field_validator("learning_rate", "temperature")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"expected a positive number, found {value}")
        return value


class EmbedConfig(Settings):
    """The `embed` stage (qin/embed.py): the items' 128-d embedding, `item_emb_d128`.

    method: given (as the data ships it), pca (standardise, concatenate text and image, PCA to 128: the
    challenge organisers' baseline) or learned (`learned`'s settings); pca and learned need the data's
    item_feature.parquet.
    """

    section: ClassVar[str] = "embed"

    method: Literal["given", "pca", "learned"] = "given"
    learned: FusionConfig = Field(default_factory=FusionConfig)


class FeaturizeConfig(Settings):
    section: ClassVar[str] = "featurize"

    # The history length of every model trained on these features: the most recent `max_len` items (the
    # authors use 64). The one history-length setting: train and scoring take it from the features.
    max_len: int = 64

    @field_validator("max_len")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"expected a positive integer, found {value}")
        return value


# Settings that change how fast a stage runs, not the recipe: they are left out of stage keys, and a
# checkpoint written under other values of them is resumed. They do change float rounding (threads split
# reductions differently, bf16 rounds the matmuls' inputs), so a model trained on 1 thread is not bitwise
# the one trained on 2; a run reuses whichever its key found first.
SPEED_SETTINGS: dict[str, tuple[str, ...]] = {
    "train": (
        "device",
        "compile",
        "threads",
        "precision",
        "reuse_memory",
        "data_placement",
        "sync_debug",
        "checkpoint_every",
        "checkpoint_seconds",
    ),
    "predict": ("device",),
}
# Settings a stage key holds in another form, so they are left out of it too: `predict.model` names the
# model ("champion", a version, a path) that the key identifies by its content hash.
KEY_EXCLUDED: dict[str, tuple[str, ...]] = {
    **SPEED_SETTINGS,
    "predict": (*SPEED_SETTINGS["predict"], "model"),
}


class EvaluateConfig(Settings):
    section: ClassVar[str] = "evaluate"

    batch_size: int = 8192


class PredictConfig(Settings):
    """The `predict` stage: test.parquet scored into the challenge's submission (qin/predict.py)."""

    section: ClassVar[str] = "predict"

    # The model: "auto" (the registry's register.production_alias, else register.alias), an alias, a
    # version number, or the path of a model package (or of an MLflow model that holds one).
    model: str = "auto"
    batch_size: int = 16384  # rows per forward pass (2 cores: faster than 65,536, at half the memory)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"expected a positive integer, found {value}")
        return value

    @field_validator("model")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"expected auto, an alias, a version or a path, found {value!r}")
        return value


class RegisterConfig(Settings):
    section: ClassVar[str] = "register"

    model_name: str = "qin-ctr"
    # The alias the register stage moves automatically, through its gate (qin/registry/promotion.py).
    alias: str = "staging"
    # The alias `qin promote --to production` moves; never moved automatically.
    production_alias: str = "champion"
    # A candidate takes an alias only when its valid AUC beats the holder's by at least this much, on the
    # same data version (the `data_hash` tag).
    min_delta: float = 0.001
    # Name of a `qin.registries` entry point; "mlflow" is provided by flows/tracking.py.
    registry: str = "mlflow"
    experiment: str = "qin-ctr"
    # Relative paths are taken from the working directory (the project root). MLFLOW_TRACKING_URI, when
    # set, overrides tracking_uri (e.g. a shared MLflow server).
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    # Where the MLflow UI shows runs (`make ui`), for the links in run summaries; an http(s) tracking URI
    # is used instead when one is set.
    ui_url: str = "http://127.0.0.1:5000"


class DeployConfig(Settings):
    """The concurrency policy of the `qin-train` deployments (`qin-train/local`, `qin-train/pool`).

    Enforced by the Prefect server for each deployment, so that a burst of triggers waits in line instead
    of training many models at once on the same cores.
    """

    section: ClassVar[str] = "deploy"

    # Runs of one deployment in flight at once (0: no limit).
    concurrency_limit: int = 2
    # A run over the limit: ENQUEUE waits for a slot (AwaitingConcurrencySlot), CANCEL_NEW is cancelled.
    collision_strategy: Literal["ENQUEUE", "CANCEL_NEW"] = "ENQUEUE"

    @field_validator("concurrency_limit")
    @classmethod
    def _a_limit(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"expected 0 (no limit) or a positive integer, found {value}")
        return value


def section_hash(section: BaseModel) -> str:
    """Stable hash of one settings section's content (used in cache keys and MLflow tags)."""
    blob = json.dumps(section.model_dump(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten(section: BaseModel, prefix: str = "") -> dict[str, Any]:
    """`{"train.model.embedding_dim": 32, ...}` for logging the resolved config as flat params."""
    return dict(_flatten_dict(section.model_dump(), prefix))


def _flatten_dict(d: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            items.extend(_flatten_dict(v, f"{prefix}{k}."))
        else:
            items.append((f"{prefix}{k}", v))
    return items
