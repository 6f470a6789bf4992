"""Settings: `params.yaml` read once into frozen, typed dataclasses.

One section per stage (`data`, `validate`, `embed`, `featurize`, `train`, `evaluate`, `register`, `predict`),
and `deploy` for the Prefect deployments. The train section starts from a preset file (params/presets/), and a
model's own settings class lives in its file under qin/models/ (the registry there names it). Unknown keys
and values of the wrong type or outside their allowed set raise `ValueError` naming the key, what was
expected and what was found, so a typo in params.yaml never silently falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from qin.data import features as F

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
    # How item_emb_d128 is made: "pca" as the challenge's organisers did (the item_feature text and image
    # vectors concatenated and reduced by PCA to 128), or "latent", the generator before item_feature: a
    # projection of the whole latent vector plus emb_noise, a view that no fusion of the modalities can match.
    item_emb: Literal["pca", "latent"] = "pca"
    emb_noise: float = 0.35  # item_emb "latent": noise added to the projection
    # item_feature.parquet's modalities: noise added to each projection (per dimension). The text carries the
    # topic, the image the sub-topic; more noise makes each alone (and their fusion) recover less.
    txt_noise: float = 1.5  # txt_emb_BERT (768 dims)
    img_noise: float = 2.0  # img_emb_CLIPRN50 (1024 dims)
    history_noise: float = 0.15  # share of history items drawn by popularity rather than interests
    # Share of in-interest history items drawn from the interest's niche (one sub-topic of the topic, per
    # user and interest) rather than from the whole topic: what makes co-occurrence carry sub-topics.
    history_niche: float = 0.5
    target_from_interest: float = 0.5  # share of targets drawn from the user's interests
    relevance_tau: float = 0.85  # cosine above which a history item is relevant to the target
    w_relevance: float = 3.0  # logit weights: sparse history relevance,
    w_quadratic: float = 0.8  # pairwise interactions,
    w_popularity: float = 0.4  # popularity
    positive_rate: float = 0.25

    def __post_init__(self) -> None:
        for key in ("txt_noise", "img_noise"):
            value = getattr(self, key)
            if not value >= 0:
                raise ValueError(f"params key 'data.{key}': expected a number >= 0, found {value}")
        if not 0 <= self.history_niche <= 1:
            raise ValueError(
                f"params key 'data.history_niche': expected a number in [0, 1], found {self.history_niche}"
            )


@dataclass(frozen=True)
class ValidateConfig:
    # A train/valid positive rate outside this band is reported as a warning, not a failure.
    positive_rate_min: float = 0.02
    positive_rate_max: float = 0.8
    # Tag ids must be below this (MicroLens_1M_x1: 11,740 including 0 = padding).
    tag_vocab: int = 11_740


@dataclass(frozen=True)
class FusionConfig:
    """The `learned` embedding (qin/fusion.py): a fusion of the text and image features trained on which
    items the training histories hold together, started from the pca solution."""

    epochs: int = 8
    batch_size: int = 1024  # co-occurring pairs a step; the batch's other items are the negatives
    learning_rate: float = 3e-4
    temperature: float = 0.2
    window: int = 5  # items this many positions apart in one history count as co-occurring (0: any)
    pairs_per_epoch: int = 262_144  # drawn afresh each epoch
    hidden: int = 0  # width of a residual block after the linear map (0: the linear map alone)
    anchor_weight: float = 30.0  # the pull back to the pca solution (qin/fusion.py `_anchor_penalty`)
    # After training: this share of each item's embedding is replaced by the mean embedding of the items
    # it co-occurs with (within `window`), count-weighted (qin/fusion.py `propagate`); 0: none.
    propagation: float = 0.5
    history_rows: int = 200_000  # train rows whose histories it reads (a fixed sample); 0: all
    seed: int = 20242025

    def __post_init__(self) -> None:
        lowest = {
            "epochs": 0,
            "batch_size": 2,
            "window": 0,
            "pairs_per_epoch": 1,
            "hidden": 0,
            "history_rows": 0,
        }
        for name, low in lowest.items():
            if getattr(self, name) < low:
                found = getattr(self, name)
                raise ValueError(
                    f"params key 'embed.learned.{name}': expected an integer >= {low}, found {found}"
                )
        for name in ("learning_rate", "temperature"):
            if not getattr(self, name) > 0:
                found = getattr(self, name)
                raise ValueError(
                    f"params key 'embed.learned.{name}': expected a positive number, found {found}"
                )
        if self.anchor_weight < 0:
            raise ValueError(
                f"params key 'embed.learned.anchor_weight': expected 0 or more, found {self.anchor_weight}"
            )
        if not 0 <= self.propagation <= 1:
            raise ValueError(
                "params key 'embed.learned.propagation': expected a number in [0, 1], "
                f"found {self.propagation}"
            )


@dataclass(frozen=True)
class EmbedConfig:
    """The `embed` stage (qin/embed.py): the items' 128-d embedding, `item_emb_d128`.

    method: given (as the data ships it), pca (standardise, concatenate text and image, PCA to 128: the
    challenge organisers' baseline) or learned (`learned`'s settings); pca and learned need the data's
    item_feature.parquet.
    """

    method: Literal["given", "pca", "learned"] = "given"
    learned: FusionConfig = field(default_factory=FusionConfig)


@dataclass(frozen=True)
class FeaturizeConfig:
    # The history length of every model trained on these features: the most recent `max_len` items (the
    # authors use 64). The one history-length setting: train and scoring take it from the features.
    max_len: int = 64

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(
                f"params key 'featurize.max_len': expected a positive integer, found {self.max_len}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """What every model's settings have: its name in the registry (qin/models/__init__.py `MODELS`).

    Each model's own settings class subclasses this one in the model's file (e.g. qin/models/qin.py
    `QINConfig`): the `train.model` section, told apart by `name`.
    """

    name: str


# The train presets: params/presets/<name>.yaml, beside params.yaml in the project.
PRESETS = Path(__file__).resolve().parents[1] / "params" / "presets"


@dataclass(frozen=True)
class TrainConfig:
    """The train section. A preset file (params/presets/<preset>.yaml) supplies every setting; keys given
    in params.yaml override it, so these fields have no defaults of their own."""

    # "cpu": a small QIN that trains in minutes on 2 cores; "paper": the authors' QIN and recipe.
    preset: str
    model: ModelConfig
    batch_size: int
    epochs: int
    learning_rate: float
    # L2 penalties added to the loss: on the embedding tables, and (separately) on the network's weights.
    embedding_l2: float
    net_l2: float
    grad_clip_norm: float
    # Halve the learning rate after lr_patience epochs without a valid AUC gain; stop after patience.
    lr_patience: int
    patience: int
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    # A resumable checkpoint at every epoch end, and within an epoch when `checkpoint_seconds` have passed
    # since the last one, looked at every `checkpoint_every` steps (0: never within an epoch). Under torchrun
    # process 0 looks at the clock and tells the others, so no process waits on the others at every step.
    checkpoint_every: int
    checkpoint_seconds: float
    # Matmuls in bfloat16 under autocast (weights, optimizer and losses stay float32). auto: bf16 on a CUDA
    # GPU with native bf16 and on a CPU with native bf16 dot products (AVX512-BF16 or AMX), where training
    # measured 2.7x (paper) and 1.4x (cpu preset) faster than fp32 (bench/throughput.py); fp32 elsewhere.
    precision: Literal["auto", "fp32", "bf16"]
    # torch.compile the training step (CPU needs a C++ compiler; fails with a message when it cannot).
    compile: bool
    # Intra-op CPU threads per process (0: torch's default, one per core; torchrun sets 1 per process).
    threads: int
    # CPU (glibc): keep the memory a step frees for the next step instead of returning it to the system and
    # faulting it in again: faster at large batches, but the heap's fragmentation raises the peak RSS.
    reuse_memory: bool
    # CUDA: where the training rows live. auto: on the GPU when they fit in a quarter of its free memory, else
    # on the host; host: always on the host, each batch gathered into pinned memory one batch ahead (on a
    # worker thread, while the GPU works on the one before) and copied asynchronously.
    data_placement: Literal["auto", "host"]
    # CUDA: torch.cuda.set_sync_debug_mode inside each training step: "error" raises at any operation that
    # makes the host wait for the GPU (a check, as bench/gpu_check.sh runs it), "warn" warns, "off".
    sync_debug: Literal["off", "warn", "error"]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def preset_files() -> tuple[Path, ...]:
    """Every preset file: what a stage that reads the train section reads besides params.yaml."""
    return tuple(PRESETS / f"{name}.yaml" for name in preset_names())


def preset(name: str, model: str | None = None) -> TrainConfig:
    """The train settings of preset `name`, starting `model` (default: the preset's own) from the preset's
    `models` entry for it when it has one, else from the model's class defaults."""
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"params key 'train.preset': expected one of {preset_names()} (the files in params/presets/), "
            f"found {name!r}"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or set(raw) - {"train", "models"} or not isinstance(raw.get("train"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'train' section (and optionally 'models')")
    train, models = dict(raw["train"]), raw.get("models") or {}
    if train.get("preset", name) != name:
        raise ValueError(f"{path}: key 'train.preset': expected {name!r}, found {train['preset']!r}")
    own = train.get("model", {}).get("name")
    if model is not None and model != own:
        train["model"] = {**models.get(model, {}), "name": model}
    hints = typing.get_type_hints(TrainConfig)
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in (*train, "preset")]
    if missing:
        raise ValueError(f"{path}: the preset must set every train setting; missing {missing}")
    unknown = sorted(set(train) - set(hints))
    if unknown:
        raise ValueError(f"{path}: key 'train.{unknown[0]}' is not a setting; allowed: {sorted(hints)}")
    try:
        kwargs = {k: _coerce(v, hints[k], f"train.{k}") for k, v in train.items() if k != "preset"}
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return TrainConfig(preset=name, **kwargs)


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


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 8192


@dataclass(frozen=True)
class PredictConfig:
    """The `predict` stage: test.parquet scored into the challenge's submission (qin/predict.py)."""

    # The model: "auto" (the registry's register.production_alias, else register.alias), an alias, a
    # version number, or the path of a model package (or of an MLflow model that holds one).
    model: str = "auto"
    batch_size: int = 16384  # rows per forward pass (2 cores: faster than 65,536, at half the memory)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(
                f"params key 'predict.batch_size': expected a positive integer, found {self.batch_size}"
            )
        if not self.model.strip():
            raise ValueError(
                "params key 'predict.model': expected auto, an alias, a version or a path, found ''"
            )


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str = "qin-ctr"
    # The alias the register stage moves automatically, through the gate (qin/register.py `promote`).
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


@dataclass(frozen=True)
class DeployConfig:
    """The concurrency policy of the `qin-train` deployments (`qin-train/local`, `qin-train/pool`).

    Enforced by the Prefect server for each deployment, so that a burst of triggers waits in line instead
    of training many models at once on the same cores.
    """

    # Runs of one deployment in flight at once (0: no limit).
    concurrency_limit: int = 2
    # A run over the limit: ENQUEUE waits for a slot (AwaitingConcurrencySlot), CANCEL_NEW is cancelled.
    collision_strategy: Literal["ENQUEUE", "CANCEL_NEW"] = "ENQUEUE"

    def __post_init__(self) -> None:
        if self.concurrency_limit < 0:
            raise ValueError(
                "params key 'deploy.concurrency_limit': expected 0 (no limit) or a positive integer, "
                f"found {self.concurrency_limit}"
            )


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    featurize: FeaturizeConfig = field(default_factory=FeaturizeConfig)
    train: TrainConfig = field(default_factory=lambda: preset("cpu"))
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    # The model inputs: a list, or the file holding one (qin/data/features.py; docs/features.md).
    features: F.FeatureTable = field(default_factory=F.default)


T = TypeVar("T")

# Settings that were once elsewhere: a file that still has one is told where it went.
MOVED = {"train.max_len": "featurize.max_len"}


def _coerce(value: Any, tp: Any, key: str, base: Any = None) -> Any:
    """Check `value` against type `tp`; `base` (the current value) is what a nested mapping overrides."""
    origin = get_origin(tp)
    arms = get_args(tp) if origin in (typing.Union, types.UnionType) else ()
    if tp is F.FeatureTable:
        return F.load(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"params key '{key}': expected a mapping, found {value!r}")
        cls: Any = tp
        base_name = getattr(base, "name", None)
        if tp is ModelConfig:  # a model's settings: the class its `name` registers (qin/models)
            from qin.models import config_class

            cls = config_class(value.get("name", base_name), f"params key '{key}.name'")
        same = isinstance(base, cls) and value.get("name", base_name) == base_name
        return from_dict(cls, value, prefix=f"{key}.", base=base if same else None)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ValueError(f"params key '{key}': expected one of {list(allowed)}, found {value!r}")
        return value
    if arms:
        errors = []
        for arm in arms:
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arm, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"params key '{key}': unexpected {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"params key '{key}': expected a list, found {value!r}")
        (item,) = {a for a in get_args(tp) if a is not Ellipsis}
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
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


def from_dict(cls: type[T], mapping: dict[str, Any], prefix: str = "", base: T | None = None) -> T:
    """Build dataclass `cls` from `mapping` over `base` (default: the class defaults); unknown keys raise.

    The train section starts from its preset (`train.preset`, a file in params/presets/) instead of class
    defaults: the preset's own model, or the one `train.model.name` names, as the preset starts it.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        moved = MOVED.get(f"{prefix}{unknown[0]}")
        raise ValueError(
            f"params key '{prefix}{unknown[0]}' is not a setting"
            + (f" (use '{moved}')" if moved else "")
            + f"; allowed keys under '{prefix.rstrip('.') or '<top>'}': {names}"
        )
    if cls is TrainConfig:
        default = base.preset if isinstance(base, TrainConfig) else "cpu"
        name = _coerce(mapping.get("preset", default), hints["preset"], f"{prefix}preset")
        model = mapping.get("model")
        base = preset(name, model.get("name") if isinstance(model, dict) else None)  # type: ignore[assignment]
    start = base if base is not None else cls()  # type: ignore[call-arg]
    kwargs = {k: _coerce(v, hints[k], prefix + k, getattr(start, k)) for k, v in mapping.items()}
    return dataclasses.replace(start, **kwargs)  # type: ignore[type-var]


def model_config(mapping: dict[str, Any]) -> ModelConfig:
    """A model's settings from a plain mapping (as stored in a model package)."""
    return _coerce(mapping, ModelConfig, "model")  # type: ignore[no-any-return]


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


def section_dict(section: Any) -> Any:
    """One settings section as plain values (the feature table: its list of features)."""
    if isinstance(section, F.FeatureTable):
        return section.plain()
    return dataclasses.asdict(section)


def section_hash(section: Any) -> str:
    """Stable hash of one settings section (used in cache keys and MLflow tags)."""
    blob = json.dumps(section_dict(section), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten(section: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train.model.embedding_dim": 32, ...}` for logging the resolved config as flat params."""
    if isinstance(section, F.FeatureTable):
        return {f"{prefix}{f['name']}": json.dumps(f, sort_keys=True) for f in section.plain()}
    return dict(_flatten_dict(dataclasses.asdict(section), prefix))


def _flatten_dict(d: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            items.extend(_flatten_dict(v, f"{prefix}{k}."))
        else:
            items.append((f"{prefix}{k}", v))
    return items


class Undeclared:
    """A params section a stage does not declare (qin/pipeline.py STAGES): reading it raises, naming both."""

    def __init__(self, section: str, stage: str, declared: tuple[str, ...]) -> None:
        self._what = (section, stage, declared)

    def __getattr__(self, name: str) -> Any:
        section, stage, declared = self._what
        raise RuntimeError(
            f"stage '{stage}' read params key '{section}.{name}', but its sections are {list(declared)}: "
            f"declare '{section}' in its entry in qin/pipeline.py STAGES (and dvc.yaml's params)"
        )


def declared(params: Params, sections: tuple[str, ...], stage: str) -> Params:
    """`params` with only `sections` readable: every other section is `Undeclared`."""
    hidden = {f.name: Undeclared(f.name, stage, sections) for f in dataclasses.fields(Params)}
    return dataclasses.replace(params, **{k: v for k, v in hidden.items() if k not in sections})  # type: ignore[arg-type]


def to_yaml(params: Params) -> str:
    """The resolved settings (presets applied, defaults filled in) as YAML, in params.yaml's layout: the
    sections `params` holds (`declared` hides the others)."""
    sections = {
        f.name: section_dict(getattr(params, f.name))
        for f in dataclasses.fields(params)
        if not isinstance(getattr(params, f.name), Undeclared)
    }
    return yaml.safe_dump(_plain(sections), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def apply_overrides(
    raw: dict[str, Any], overrides: dict[str, Any] | None = None, model: str | None = None
) -> dict[str, Any]:
    """A copy of the params mapping `raw` with `model` (train.model.name) and dotted `overrides` applied.

    Switching the model keeps only the model keys the new model also has (e.g. embedding_dim); overrides
    are applied after it, so `{"train.model.embedding_dim": 64}` sets the new model's width. Keys are not
    checked here: `load_params` refuses unknown ones by name.
    """
    out = copy.deepcopy(raw)
    if model is not None:
        from qin.models import config_class

        cls = config_class(model, "model")
        train = out.setdefault("train", {})
        if not isinstance(train, dict):
            raise ValueError(f"params key 'train': expected a mapping, found {train!r}")
        current = train.get("model")
        current = current if isinstance(current, dict) else {}
        allowed = {f.name for f in dataclasses.fields(cls)}
        train["model"] = {**{k: v for k, v in current.items() if k in allowed}, "name": model}
    for key, value in (overrides or {}).items():
        parts = str(key).split(".")
        if not all(parts):
            raise ValueError(
                f"overrides: key {key!r}: expected dotted params keys like 'train.learning_rate'"
            )
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(
                    f"overrides: key {key!r}: params key '{'.'.join(parts[: i + 1])}' is a value "
                    f"({child!r}), not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def write_resolved_params(
    src: str | Path, out: str | Path, overrides: dict[str, Any] | None = None, model: str | None = None
) -> Path:
    """Write params file `src` with `model` and `overrides` applied to `out` (atomically), after checking
    it loads; the stages then read `out` exactly as they read params.yaml."""
    from qin.io import atomic_file

    src = Path(src)
    load_params(src)  # the file itself must be valid first, so an error names the right culprit
    raw = yaml.safe_load(src.read_text()) or {}
    resolved = apply_overrides(raw, overrides, model)
    text = yaml.safe_dump(resolved, sort_keys=False)
    try:
        from_dict(Params, yaml.safe_load(text))
    except ValueError as exc:
        raise ValueError(f"{src} with model={model!r} overrides={overrides!r}: {exc}") from None
    with atomic_file(out) as tmp:
        tmp.write_text(f"# {src} with model={model!r} and overrides={overrides!r}\n{text}")
    return Path(out)
