"""The pipeline as data: one table of stages, from which everything that runs them is derived.

Each `Stage` names its function, the params sections it reads, its inputs (another stage's output, or the
raw data) and its outputs (a name inside the stage's content-addressed folder, and a path in the DVC
workspace). The `qin` CLI builds one subcommand per stage from it (options and defaults), the Prefect flows
build one task per stage and run them in table order, the failure report lists a stage's inputs and
outputs from it, and a test checks dvc.yaml against it (stages, deps, params, outs).

A stage's identity is its key: a hash of the stage's name, the code it runs, the settings it reads
(without the speed-only ones and those it holds in another form, `qin.settings.sections.KEY_EXCLUDED`) and the
identities of its inputs. In a flow run an input's identity is the key of the stage that wrote it (the raw
data's and a model package's content hash at the roots), so keys chain and two runs with the same settings
on the same data agree on every key; `qin.runs.store` keeps each key's outputs in their own folder. Run on
plain
paths (the CLI, under DVC), an input's identity is its content hash. The trainer's resumable checkpoint
belongs to the key it was written under.

Stages belong to a flow: `qin-train` runs the training stages in table order; `qin-score` runs `predict`
on a model package (`MODEL`: a registered version, downloaded, or a package path) and the raw data.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from qin.data import schema
from qin.models import module_files
from qin.runs import layout
from qin.runs.io import file_hash, read_record, tree_hash
from qin.settings.params import Params, declared, preset_files, to_yaml
from qin.settings.sections import KEY_EXCLUDED

DATA = "data"  # the source of an input that is the raw data folder, not a stage's output
# The source of an input that is a model package the caller names (qin/predict.py `resolve_model`): in the
# DVC workspace, the train stage's package.
MODEL = "model"
TRAIN_FLOW, SCORE_FLOW = "qin-train", "qin-score"
ROOT = Path(__file__).resolve().parents[2]  # the project root: code paths are relative to it
MODELS_DIR = "qin/models"  # the networks (qin/models/__init__.py registers them)
# The feature table's section (qin/data/features.py): a stage that reads it beside its own section gets it
# as `features` (`call`); its shipped files are among the stage's params files.
FEATURES = "features"
FEATURE_TABLES = ROOT / "params" / "features"


@dataclass(frozen=True)
class Input:
    arg: str  # the stage function's parameter
    option: str  # the `qin <stage>` option
    stage: str  # the stage that writes it, or DATA
    output: str  # that stage's output name
    # The files of the data folder it reads, which alone make its identity (none named: the whole folder).
    files: tuple[str, ...] = ()

    def identity_paths(self, path: Path) -> list[Path]:
        """What its identity hashes, given its path: the files it reads, or the whole path."""
        return [path / f for f in self.files] if self.files else [path]


@dataclass(frozen=True)
class Output:
    arg: str
    option: str
    name: str  # its name inside the stage's folder (artifacts/stages/<stage>/<key>/<name>)
    workspace: str  # its path in the DVC workspace: the CLI's default, dvc.yaml's `outs`
    dvc: Literal["outs", "metrics", "uncached"] = "outs"  # how dvc.yaml lists it


@dataclass(frozen=True)
class Stage:
    name: str
    function: str  # "module:function", imported when the stage runs (keeps `qin --help` fast)
    sections: tuple[str, ...]  # the params sections it reads
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    help: str
    # Code the stage runs that its imports do not show: the registry plug-in (an entry point), and files it
    # reads beside its code (the model card's template). The qin modules a plug-in imports are its code too.
    plugins: tuple[str, ...] = ()
    # It builds networks by name (qin.models.build_model), so every registered model's file is its code.
    models: bool = False
    # It takes a `key` and resumes only a checkpoint written under that key.
    resumable: bool = False
    # It may run under torchrun: the number of processes (WORLD_SIZE, when above 1) enters its key.
    distributed: bool = False
    # "module:Class" of the result its metrics output holds: what it returns when run under torchrun.
    result: str | None = None
    # False: it writes to the outside world (the registry), so it is never cached; a flow run keeps its
    # outputs in the run's record (artifacts/runs/<flow run id>/) instead of a key's folder.
    content_addressed: bool = True
    flow: str = TRAIN_FLOW  # the Prefect flow that runs it

    def __post_init__(self) -> None:
        if self.distributed and self.result is None:
            raise ValueError(
                f"stage '{self.name}': distributed, expected its result class (`result`), found none"
            )

    def output(self, name: str) -> Output:
        for out in self.outputs:
            if out.name == name:
                return out
        raise KeyError(f"stage '{self.name}' has no output '{name}' (has {[o.name for o in self.outputs]})")

    def args(self) -> tuple[str, ...]:
        """The function's path parameters: its inputs' and its outputs'."""
        return tuple(i.arg for i in self.inputs) + tuple(o.arg for o in self.outputs)

    def code(self) -> tuple[str, ...]:
        """The source files it runs, relative to the project root: its module, its plug-ins, every `qin`
        module those import (transitively) and, when it builds networks, the registered models' files (and
        what they import)."""
        modules = [self.function.split(":")[0]]
        modules += [p.removesuffix(".py").replace("/", ".") for p in self.plugins if p.endswith(".py")]
        if self.models:
            modules += [f.removesuffix(".py").replace("/", ".") for f in module_files()]
        return tuple(sorted({*(f for m in modules for f in _qin_closure(m)), *self.plugins}))

    def dvc_code(self) -> tuple[str, ...]:
        """Its code as dvc.yaml lists it: when it builds networks, the models' folder instead of its files,
        so a model added to the registry is a dependency without another line (.dvcignore leaves out the
        bytecode)."""
        if not self.models:
            return self.code()
        return tuple(sorted({MODELS_DIR if f.startswith(f"{MODELS_DIR}/") else f for f in self.code()}))

    def settings_args(self) -> tuple[str, ...]:
        """How `call` passes its settings: its one section as `cfg` (and the feature table as `features`
        when it reads that too), or several as `params`."""
        own = tuple(x for x in self.sections if x != FEATURES)
        if len(own) == 1:
            return ("cfg", *((FEATURES,) if FEATURES in self.sections else ()))
        return ("params",)

    def params_files(self) -> tuple[str, ...]:
        """The files besides params.yaml whose settings it reads: the train presets, when it reads train,
        and the shipped feature tables (params/features/), when it reads the feature table."""
        files = [*(preset_files() if "train" in self.sections else ())]
        files += sorted(FEATURE_TABLES.glob("*.yaml")) if FEATURES in self.sections else []
        return tuple(p.relative_to(ROOT).as_posix() for p in files)


_DATA_IN = Input("data_dir", "--data", DATA, DATA)
_FEATURES_IN = Input("features_dir", "--features", "featurize", "features")
_MODEL_IN = Input("model_dir", "--model", "train", "model")
_TRAIN_METRICS_IN = Input("train_metrics", "--train-metrics", "train", "train.json")
_VALIDATION_IN = Input("validation_dir", "--validation", "validate", "validation")
_EMBED_IN = Input("embed_dir", "--embedding", "embed", "embedding")

STAGES: tuple[Stage, ...] = (
    Stage(
        "validate",
        "qin.validate:validate",
        ("validate", FEATURES),
        inputs=(_DATA_IN,),
        outputs=(Output("out_dir", "--out", "validation", "artifacts/validate"),),
        help="check the raw data against the contract (great-expectations)",
    ),
    Stage(
        "embed",
        "qin.embed:embed",
        ("embed",),
        inputs=(_DATA_IN, _VALIDATION_IN),
        outputs=(Output("out_dir", "--out", "embedding", "artifacts/embed"),),
        help="the items' item_emb_d128: as shipped, or made from their text and image features",
    ),
    Stage(
        "featurize",
        "qin.featurize:featurize",
        ("featurize", FEATURES),
        inputs=(_DATA_IN, _VALIDATION_IN, _EMBED_IN),
        outputs=(Output("out_dir", "--out", "features", "artifacts/features"),),
        help="validated parquet -> arrays for training",
    ),
    Stage(
        "train",
        "qin.train:train",
        ("train",),
        inputs=(_FEATURES_IN,),
        outputs=(
            Output("out_dir", "--out", "model", "artifacts/model"),
            Output("metrics_path", "--metrics", "train.json", "metrics/train.json", dvc="metrics"),
        ),
        help="train the model; write a self-contained model package",
        models=True,
        resumable=True,
        distributed=True,
        result="qin.train:TrainSummary",
    ),
    Stage(
        "evaluate",
        "qin.evaluate:evaluate",
        ("evaluate",),
        inputs=(_FEATURES_IN, _MODEL_IN, _TRAIN_METRICS_IN),
        outputs=(
            Output("out_path", "--out", "evaluate.json", "metrics/evaluate.json", dvc="metrics"),
            Output("plots_dir", "--plots", "plots", "artifacts/evaluate"),
            Output("plot_data", "--plot-data", "plot_data", "metrics/plots"),
        ),
        help="AUC, logloss, gAUC and calibration on valid (and the oracle AUC when known); plots",
        models=True,
    ),
    Stage(
        "register",
        "qin.register:register",
        # It logs every pipeline setting with the model (the MLflow run's params and config/params.yaml).
        ("validate", "embed", "featurize", "train", "evaluate", "register", FEATURES),
        inputs=(
            _MODEL_IN,
            _TRAIN_METRICS_IN,
            Input("eval_metrics", "--metrics", "evaluate", "evaluate.json"),
            _VALIDATION_IN,
            Input("plots_dir", "--plots", "evaluate", "plots"),
            _EMBED_IN,
            # The candidate's data: where a holder trained on other data is re-scored (qin/registry/judge.py).
            _DATA_IN,
        ),
        outputs=(Output("out_path", "--out", "register.json", "artifacts/register.json", dvc="uncached"),),
        help="log the run and register the model; move the alias if it is better",
        plugins=("flows/tracking.py", "flows/pyfunc_model.py", "qin/registry/model_card.md.j2"),
        content_addressed=False,
    ),
    Stage(
        "predict",
        "qin.predict:predict",
        # The gate's settings (the test file is checked as `validate` checks it) and its own.
        ("validate", "predict"),
        # It reads test.parquet alone (the item table is the package's): the training files are no input.
        inputs=(
            Input("data_dir", "--data", DATA, DATA, files=(f"{schema.SPLITS[-1]}.parquet",)),
            Input("model_dir", "--model", MODEL, "model"),
        ),
        outputs=(Output("out_dir", "--out", "predict", "artifacts/predict"),),
        help="score test.parquet into the challenge's submission (prediction.csv in a zip) and a manifest",
        models=True,
        flow=SCORE_FLOW,
    ),
)


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise ValueError(f"stage: expected one of {[s.name for s in STAGES]}, found {name!r}")


def flow_stages(flow: str) -> tuple[Stage, ...]:
    """The stages `flow` runs, in table order."""
    return tuple(s for s in STAGES if s.flow == flow)


def dvc_deps(s: Stage) -> list[str]:
    """Its dependencies as dvc.yaml lists them: each input's workspace path (the files it reads of the data
    folder, when it names them) and its code."""
    inputs = [str(p) for i in s.inputs for p in i.identity_paths(workspace_path(i))]
    return sorted({*inputs, *s.dvc_code()})


def workspace_path(source: Input) -> Path:
    """Where the DVC workspace keeps an input: the raw data folder, its stage's output path, or (a model)
    the train stage's package."""
    if source.stage == DATA:
        return layout.DATA
    if source.stage == MODEL:
        return Path(stage("train").output("model").workspace)
    return Path(stage(source.stage).output(source.output).workspace)


def dvc_cmd(s: Stage) -> str:
    """The stage's dvc.yaml command: `qin <stage>` on the workspace paths (its defaults), and a model input
    (which `qin predict` otherwise resolves in the registry) named as the workspace's package."""
    models = [f" {i.option} {workspace_path(i)}" for i in s.inputs if i.stage == MODEL]
    return f"python -m qin {s.name}" + "".join(models)


def settings(s: Stage, params: Params) -> dict[str, Any]:
    """What makes the stage's result what it is: the sections it reads, without the speed-only keys."""
    out = {}
    for section in s.sections:
        values = getattr(params, section).model_dump()
        out[section] = {k: v for k, v in values.items() if k not in KEY_EXCLUDED.get(section, ())}
    return out


def code_hash(s: Stage) -> str:
    h = hashlib.sha256()
    for rel in s.code():
        h.update(f"{rel}\0{file_hash(ROOT / rel)}\0".encode())
    return h.hexdigest()


def stage_key(
    s: Stage, params: Params, inputs: Mapping[str, str], extra: Mapping[str, Any] | None = None
) -> str:
    """The stage's key from its settings, its code and `inputs`: each input's identity by source
    ("featurize/features": the upstream key, or a content hash; "data": the raw data's hash), and the
    `extra` arguments the stage function gets (pipeline.call), which it may write into its outputs."""
    sources = {_source(i) for i in s.inputs}
    if set(inputs) != sources:
        raise ValueError(
            f"stage '{s.name}': expected the identities of {sorted(sources)}, found {sorted(inputs)}"
        )
    what: dict[str, Any] = {
        "stage": s.name,
        "code": code_hash(s),
        "settings": settings(s, params),
        "inputs": dict(inputs),
    }
    processes = int(os.environ.get("WORLD_SIZE", "1")) if s.distributed else 1
    if processes > 1:  # another trajectory than one process's (one process keeps the keys it had)
        what["processes"] = processes
    blob = json.dumps({**what, **({"extra": dict(extra)} if extra else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def content_key(s: Stage, params: Params, paths: Mapping[str, str | Path]) -> str:
    """The key of a stage run on plain paths (`qin <stage>`, DVC): its inputs by content hash."""
    return stage_key(
        s, params, {_source(i): tree_hash(i.identity_paths(Path(paths[i.arg]))) for i in s.inputs}
    )


def call(
    s: Stage,
    paths: Mapping[str, str | Path],
    params: Params,
    key: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Any:
    """Run the stage function on `paths` (its parameter name to path, for every input and output).

    A stage that reads one section gets it as `cfg` (and the feature table as `features` when it reads
    that too); one that reads several gets `params` with only those sections readable (reading another
    raises, naming it);
    a resumable one also gets its `key`; `extra` are more keyword arguments (what the key already holds
    in another form: the registered name and version of the model package `predict` scores).
    """
    processes = params.train.processes if s.distributed else 0
    if processes > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: start it
        return _torchrun(s, paths, params, key, processes)
    fn: Callable[..., Any] = _named(s.function)
    kwargs: dict[str, Any] = {port: Path(paths[port]) for port in s.args()}
    if s.settings_args()[0] == "cfg":
        kwargs["cfg"] = getattr(params, next(x for x in s.sections if x != FEATURES))
        if FEATURES in s.sections:
            kwargs[FEATURES] = params.features
    else:
        kwargs["params"] = declared(params, s.sections, s.name)
    if s.resumable:
        kwargs["key"] = key
    return fn(**kwargs, **(extra or {}))


def _torchrun(s: Stage, paths: Mapping[str, str | Path], params: Params, key: str | None, n: int) -> Any:
    """Run `qin <stage>` on `paths` under torchrun with `n` processes on this node (the stage's settings
    written beside its first output, its key passed on, so its checkpoint is the caller's); its result is
    read back from its metrics file, which process 0 wrote. A signal or error here stops torchrun, which
    stops its processes."""
    first = Path(paths[s.outputs[0].arg])
    first.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{first.name}.", suffix=".params.yaml", dir=first.parent)
    os.close(fd)  # a name of this call's own: runs writing beside the same output never share it
    settings = Path(name)
    settings.write_text(to_yaml(params))
    ports: list[Input | Output] = [*s.inputs, *s.outputs]
    options = [x for port in ports for x in (port.option, str(paths[port.arg]))]
    options += ["--key", key] if key else []
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    cmd = [*launcher, "-m", "qin", "--params", str(settings), s.name, *options]
    child = subprocess.Popen(cmd)
    try:
        code = child.wait()
    except BaseException:  # Ctrl-C, SIGTERM (as an exception), an error: torchrun stops its workers
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    finally:
        settings.unlink(missing_ok=True)
    if code != 0:
        raise RuntimeError(f"stage '{s.name}' under torchrun ({n} processes) failed: exit status {code}")
    metrics = next(paths[o.arg] for o in s.outputs if o.dvc == "metrics")
    assert s.result is not None  # a distributed stage names it (Stage.__post_init__)
    return read_record(metrics, _named(s.result))


def _named(name: str) -> Any:
    """What "module:attribute" names, its module imported."""
    module, attribute = name.split(":")
    return getattr(importlib.import_module(module), attribute)


def _source(i: Input) -> str:
    return i.stage if i.stage in (DATA, MODEL) else f"{i.stage}/{i.output}"


@cache
def _qin_closure(module: str) -> frozenset[str]:
    """`module`'s file and those of every `qin` module it imports, directly or not (read from the source)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(_imports(ROOT / path))
    return frozenset(seen)


def _module_file(name: str) -> str | None:
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(ROOT).as_posix()
    return None


def _imports(path: Path) -> Iterable[str]:
    """The qin modules a file imports (`from qin import x` names qin.x when x is a module), except those
    imported for type checking only (under `if TYPE_CHECKING:`), which never run."""
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "qin")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qin":
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _runtime_nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node of `tree`, without the bodies of `if TYPE_CHECKING:` blocks (their `else` stays)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _names_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _names_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )
