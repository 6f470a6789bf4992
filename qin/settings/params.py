"""params.yaml read whole: `Params` (one field per section), the train section and its presets.

The train section starts from a preset file (params/presets/) and holds the settings of the model it trains,
whose class the model registry (qin/models/__init__.py) names: so this module imports the registry and the
sections of qin/settings/sections.py, and qin/settings/sections.py imports neither. Neither imports torch:
the models' settings
classes live in torch-free modules (qin/models/settings.py).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, SerializeAsAny, field_validator

from qin.data import features as F
from qin.models import config_class
from qin.models.settings import ModelConfig
from qin.settings.sections import (
    DataConfig,
    DeployConfig,
    EmbedConfig,
    EvaluateConfig,
    FeaturizeConfig,
    PredictConfig,
    RegisterConfig,
    Settings,
    SettingsError,
    ValidateConfig,
    refuse_unknown,
)

# The train presets: params/presets/<name>.yaml, beside params.yaml in the project.
PRESETS = Path(__file__).resolve().parents[2] / "params" / "presets"


class TrainConfig(Settings):
    """The train section. A preset file (params/presets/<preset>.yaml) supplies every setting; keys given
    in params.yaml override it, so these fields have no defaults of their own."""

    section: ClassVar[str] = "train"

    # "cpu": a small QIN that trains in minutes on 2 cores; "paper": the authors' QIN and recipe.
    preset: str
    # The model's settings: the class its `name` registers (qin/models/__init__.py), all of its fields.
    model: SerializeAsAny[ModelConfig]
    batch_size: int
    # Under torchrun with N processes. fixed: the global batch is `batch_size` rows, split among the
    # processes (a one-process run's steps and schedule, fewer rows per process as N grows). weak: each
    # process reads only its own contiguous shard of the training rows (1/N of them, the remainder left
    # out) and takes `batch_size` rows of it a step: the global batch and the learning rate are N times
    # theirs (the linear scaling rule), an epoch N times fewer steps.
    scaling: Literal["fixed", "weak"]
    # Processes on this node: 0 or 1 trains in the calling process (a flow's, `qin train`'s, dvc's); N > 1
    # runs the train stage under torchrun with N processes (qin/runs/pipeline.py `call`). Across nodes, start
    # torchrun on each node yourself (docs/performance.md).
    processes: int
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

    @field_validator("model", mode="before")
    @classmethod
    def _registered(cls, value: Any) -> Any:
        """A mapping: the settings class its `name` registers, built from it (its keys named under
        'train.model'); anything else is left to the type check (a ModelConfig, or "expected a mapping")."""
        if not isinstance(value, dict):
            return value
        try:
            model_cls = config_class(value.get("name"), "params key 'train.model.name'")
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        return model_cls.from_mapping(value)


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
        raise SettingsError(
            f"params key 'train.preset': expected one of {preset_names()} (the files in params/presets/), "
            f"found {name!r}"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or set(raw) - {"train", "models"} or not isinstance(raw.get("train"), dict):
        raise SettingsError(f"{path}: expected a mapping with a 'train' section (and optionally 'models')")
    train, models = dict(raw["train"]), raw.get("models") or {}
    if train.get("preset", name) != name:
        raise SettingsError(f"{path}: key 'train.preset': expected {name!r}, found {train['preset']!r}")
    own = train.get("model", {}).get("name")
    if model is not None and model != own:
        train["model"] = {**models.get(model, {}), "name": model}
    fields = list(TrainConfig.model_fields)
    missing = [f for f in fields if f not in (*train, "preset")]
    if missing:
        raise SettingsError(f"{path}: the preset must set every train setting; missing {missing}")
    unknown = sorted(set(train) - set(fields))
    if unknown:
        raise SettingsError(f"{path}: key 'train.{unknown[0]}' is not a setting; allowed: {sorted(fields)}")
    try:
        return TrainConfig.from_mapping({**train, "preset": name})
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from None


def train_section(mapping: dict[str, Any]) -> TrainConfig:
    """The train section of params.yaml: its preset (`preset`, default "cpu") with the keys `mapping` gives
    over it; a model mapping overrides the model's settings as the preset starts them. A key set to null
    takes the preset's value (params.yaml lists the preset's keys so, for `dvc exp run -S train.KEY=V`)."""
    refuse_unknown(TrainConfig, mapping)
    mapping = {k: v for k, v in mapping.items() if v is not None}
    name = mapping.get("preset", "cpu")
    if not isinstance(name, str):
        raise SettingsError(f"params key 'train.preset': expected a string, found {name!r}")
    model = mapping.get("model")
    if isinstance(model, dict):
        model = mapping["model"] = {k: v for k, v in model.items() if v is not None}
    start = preset(name, model.get("name") if isinstance(model, dict) else None)
    merged = {**dict(start), **mapping}
    if isinstance(model, dict):
        merged["model"] = {**dict(start.model), **model}
    return TrainConfig.from_mapping(merged)


# Two sections share their names with BaseModel's class methods (the deprecated `validate`, ABCMeta's
# `register`); on an instance the section is read, as it should be, so pydantic's warning is not shown.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", r'Field name "(validate|register)" in "Params" shadows', UserWarning)

    class Params(Settings):
        """The whole of params.yaml: one field per section; an absent section takes its defaults (train: the
        cpu preset's)."""

        data: DataConfig = Field(default_factory=DataConfig)
        validate: ValidateConfig = Field(default_factory=ValidateConfig)  # type: ignore[assignment]
        embed: EmbedConfig = Field(default_factory=EmbedConfig)
        featurize: FeaturizeConfig = Field(default_factory=FeaturizeConfig)
        train: TrainConfig = Field(default_factory=lambda: preset("cpu"))
        evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
        register: RegisterConfig = Field(default_factory=RegisterConfig)
        predict: PredictConfig = Field(default_factory=PredictConfig)
        deploy: DeployConfig = Field(default_factory=DeployConfig)
        # The model inputs: a list, or the file holding one (qin/data/features.py; docs/features.md).
        features: F.FeatureTable = Field(default_factory=F.default)

        @field_validator("features", mode="before")
        @classmethod
        def _feature_table(cls, value: Any) -> Any:
            if isinstance(value, F.FeatureTable):
                return value
            try:
                return F.load(value)
            except ValueError as exc:
                raise SettingsError(str(exc)) from None

        @field_validator("train", mode="before")
        @classmethod
        def _from_preset(cls, value: Any) -> Any:
            return train_section(value) if isinstance(value, dict) else value


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found (run from the project root)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of sections, found {type(raw).__name__}")
    try:
        return Params.from_mapping(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


class Undeclared:
    """A params section a stage does not declare (qin/runs/pipeline.py STAGES): reading it raises, naming
    both."""

    def __init__(self, section: str, stage: str, declared: tuple[str, ...]) -> None:
        self._what = (section, stage, declared)

    def __getattr__(self, name: str) -> Any:
        section, stage, declared = self._what
        raise RuntimeError(
            f"stage '{stage}' read params key '{section}.{name}', but its sections are {list(declared)}: "
            f"declare '{section}' in its entry in qin/runs/pipeline.py STAGES (and dvc.yaml's params)"
        )


def declared(params: Params, sections: tuple[str, ...], stage: str) -> Params:
    """`params` with only `sections` readable: every other section is `Undeclared`."""
    hidden = {name: Undeclared(name, stage, sections) for name in Params.model_fields if name not in sections}
    return params.model_copy(update=hidden)


def to_yaml(params: Params) -> str:
    """The resolved settings (presets applied, defaults filled in) as YAML, in params.yaml's layout: the
    sections `params` holds (`declared` hides the others)."""
    sections = {
        name: section.plain() if isinstance(section, F.FeatureTable) else section.model_dump()
        for name in Params.model_fields
        if not isinstance(section := getattr(params, name), Undeclared)
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
        cls = config_class(model, "model")
        train = out.setdefault("train", {})
        if not isinstance(train, dict):
            raise ValueError(f"params key 'train': expected a mapping, found {train!r}")
        current = train.get("model")
        current = current if isinstance(current, dict) else {}
        allowed = set(cls.model_fields)
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
    from qin.runs.io import atomic_file

    src = Path(src)
    load_params(src)  # the file itself must be valid first, so an error names the right culprit
    raw = yaml.safe_load(src.read_text()) or {}
    resolved = apply_overrides(raw, overrides, model)
    text = yaml.safe_dump(resolved, sort_keys=False)
    try:
        Params.from_mapping(yaml.safe_load(text))
    except ValueError as exc:
        raise ValueError(f"{src} with model={model!r} overrides={overrides!r}: {exc}") from None
    with atomic_file(out) as tmp:
        tmp.write_text(f"# {src} with model={model!r} and overrides={overrides!r}\n{text}")
    return Path(out)
