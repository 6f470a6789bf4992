"""The stage table (qin/runs/pipeline.py): dvc.yaml agrees with it, the stage functions take what it says, the
CLI is derived from it, and stage keys change exactly when what a stage computes can change."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from qin.cli import build_parser
from qin.runs import pipeline
from qin.settings.params import Params, declared, load_params, to_yaml
from qin.settings.sections import replace
from tests.conftest import REPO, TINY_PARAMS


def _dvc_view(s: pipeline.Stage) -> dict:
    """What dvc.yaml must say for stage `s`, derived from the table."""
    outs: list = [o.workspace for o in s.outputs if o.dvc == "outs"]
    outs += [{o.workspace: {"cache": False}} for o in s.outputs if o.dvc == "uncached"]
    view = {
        "cmd": pipeline.dvc_cmd(s),
        "deps": pipeline.dvc_deps(s),
        "params": [*s.sections, *({f: None} for f in s.params_files())],
        "outs": outs,
        "metrics": [o.workspace for o in s.outputs if o.dvc == "metrics"],
    }
    return {k: v for k, v in view.items() if v}


def test_dvc_yaml_has_the_tables_stages_deps_params_and_outs() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [s.name for s in pipeline.STAGES]
    for s in pipeline.STAGES:
        found = {**stages[s.name], "deps": sorted(stages[s.name]["deps"])}
        expected = _dvc_view(s)
        assert found == expected, (
            f"dvc.yaml stage '{s.name}' differs from qin/runs/pipeline.py; it should read:\n"
            + yaml.safe_dump({s.name: expected}, sort_keys=False)
        )


def test_every_stage_function_takes_its_ports_and_settings() -> None:
    for s in pipeline.STAGES:
        module, name = s.function.split(":")
        signature = inspect.signature(getattr(importlib.import_module(module), name))
        given = {*s.args(), *s.settings_args(), *(["key"] if s.resumable else [])}
        required = {n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
        assert given <= set(signature.parameters), (s.name, given - set(signature.parameters))
        assert required <= given, (s.name, required - given)


def test_inputs_name_outputs_that_upstream_stages_write() -> None:
    names = [s.name for s in pipeline.STAGES]
    for position, s in enumerate(pipeline.STAGES):
        for i in s.inputs:
            if i.stage not in (pipeline.DATA, pipeline.MODEL):
                assert names.index(i.stage) < position, f"{s.name} reads {i.stage}, which runs later"
                assert pipeline.stage(i.stage).output(i.output).name == i.output
        options = [p.option for p in (*s.inputs, *s.outputs)]
        assert len(set(options)) == len(options), s.name


def test_a_stages_code_is_its_module_and_the_qin_modules_it_imports() -> None:
    train = pipeline.stage("train").code()
    assert {
        "qin/train.py",
        "qin/models/qin.py",
        "qin/models/din.py",
        "qin/training/runtime.py",
        "qin/settings/sections.py",
        "qin/settings/params.py",  # the train section, its presets
        "qin/models/settings.py",  # the models' settings
    } <= set(train)
    assert "qin/register.py" not in train and "qin/runs/pipeline.py" not in train
    assert "flows/tracking.py" in pipeline.stage("register").code()
    assert set(pipeline.stage("validate").code()) == {
        "qin/data/checks.py",  # the checks by kind
        # its section alone: not the model registry (qin/settings/params.py reads that)
        "qin/settings/sections.py",
        "qin/data/__init__.py",
        "qin/data/features.py",  # the feature table, whose columns it checks
        "qin/data/schema.py",
        "qin/runs/io.py",
        "qin/validate.py",
    }


def test_the_cli_has_a_subcommand_per_stage_with_workspace_defaults() -> None:
    parser = build_parser()
    args = parser.parse_args(["evaluate"])
    assert (args.features_dir, args.model_dir, args.train_metrics) == (
        Path("artifacts/features"),
        Path("artifacts/model"),
        Path("metrics/train.json"),
    )
    assert (args.out_path, args.plots_dir, args.plot_data) == (
        Path("metrics/evaluate.json"),
        Path("artifacts/evaluate"),
        Path("metrics/plots"),
    )
    args = parser.parse_args(["train", "--features", "f", "--out", "m", "--metrics", "t.json"])
    assert (args.features_dir, args.out_dir, args.metrics_path) == (Path("f"), Path("m"), Path("t.json"))


@pytest.fixture
def params(tmp_path: Path) -> Params:
    (tmp_path / "params.yaml").write_text(TINY_PARAMS)
    return load_params(tmp_path / "params.yaml")


def _replace(params: Params, section: str, **changes: object) -> Params:
    return replace(params, **{section: replace(getattr(params, section), **changes)})


def test_keys_change_with_what_a_stage_computes_and_nothing_else(params: Params) -> None:
    train = pipeline.stage("train")
    up = {"featurize/features": "f" * 24}
    key = pipeline.stage_key(train, params, up)
    assert pipeline.stage_key(train, params, dict(up)) == key
    # Speed-only settings change how fast, not what: the same key.
    for speed in ({"threads": 1}, {"precision": "fp32"}, {"compile": True}, {"reuse_memory": False}):
        assert pipeline.stage_key(train, _replace(params, "train", **speed), up) == key, speed
    assert pipeline.stage_key(train, _replace(params, "train", device="cuda"), up) == key
    # What the stage computes from: its settings, its inputs.
    assert pipeline.stage_key(train, _replace(params, "train", learning_rate=1e-3), up) != key
    assert pipeline.stage_key(train, params, {"featurize/features": "e" * 24}) != key
    # Sections the stage does not read do not enter its key.
    assert pipeline.stage_key(train, _replace(params, "evaluate", batch_size=7), up) == key
    assert pipeline.stage_key(pipeline.stage("evaluate"), params, {
        "featurize/features": "f" * 24, "train/model": key, "train/train.json": key
    }) != pipeline.stage_key(pipeline.stage("evaluate"), _replace(params, "evaluate", batch_size=7), {
        "featurize/features": "f" * 24, "train/model": key, "train/train.json": key
    })  # fmt: skip
    with pytest.raises(ValueError, match=r"expected the identities of \['featurize/features'\], found \[\]"):
        pipeline.stage_key(train, params, {})


def test_the_number_of_training_processes_enters_the_train_key_only(
    params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, featurize = pipeline.stage("train"), pipeline.stage("featurize")
    up = {"featurize/features": "f" * 24}
    alone = pipeline.stage_key(train, params, up)
    ups = {"data": "d" * 24, "embed/embedding": "e" * 24, "validate/validation": "v" * 24}
    before = pipeline.stage_key(featurize, params, ups)
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: one process's key
    assert pipeline.stage_key(train, params, up) == alone
    monkeypatch.setenv("WORLD_SIZE", "2")
    two = pipeline.stage_key(train, params, up)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert len({alone, two, pipeline.stage_key(train, params, up)}) == 3
    assert pipeline.stage_key(featurize, params, ups) == before


def test_a_stage_fed_wrong_keys_is_refused_by_name(params: Params, tmp_path: Path) -> None:
    from qin.runs import store

    (tmp_path / "p.yaml").write_text(TINY_PARAMS)
    with pytest.raises(ValueError, match="stage 'train' reads 'featurize/features': expected the key of"):
        store.run("train", tmp_path / "p.yaml", tmp_path, {}, root=tmp_path / "stages")
    with pytest.raises(ValueError, match="stage: expected one of"):
        pipeline.stage("deploy")


def _sections_read(s: pipeline.Stage) -> set[str]:
    """The params sections a stage function's module reads, as `params.<section>` (what `call` passes it)."""
    module = importlib.import_module(s.function.split(":")[0])
    tree = ast.parse(Path(inspect.getfile(module)).read_text())
    sections = set(Params.model_fields)
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "params"
    } & sections


def test_every_stage_declares_exactly_the_params_sections_it_reads() -> None:
    for s in pipeline.STAGES:
        if (
            s.settings_args()[0] == "cfg"
        ):  # its one section as `cfg` (and the table as `features`), no `params`
            parameters = inspect.signature(_function(s)).parameters
            assert "params" not in parameters, s.name
            assert (pipeline.FEATURES in parameters) == (pipeline.FEATURES in s.sections), s.name
        else:
            assert _sections_read(s) == set(s.sections), s.name


def _function(s: pipeline.Stage):
    module, name = s.function.split(":")
    return getattr(importlib.import_module(module), name)


def test_a_stage_reading_a_section_it_does_not_declare_is_stopped_by_name(params: Params) -> None:
    shown = declared(params, ("validate", "predict"), "predict")
    assert shown.predict == params.predict and shown.validate == params.validate
    with pytest.raises(RuntimeError, match=r"stage 'predict' read params key 'train.model'.*declare 'train'"):
        _ = shown.train.model
    assert set(yaml.safe_load(to_yaml(shown))) == {"validate", "predict"}


def test_the_train_presets_and_feature_tables_are_params_files_of_the_stages_that_read_them() -> None:
    presets = {f"params/presets/{p.name}" for p in (REPO / "params" / "presets").glob("*.yaml")}
    assert presets == {"params/presets/cpu.yaml", "params/presets/paper.yaml"}
    tables = {f"params/features/{p.name}" for p in (REPO / "params" / "features").glob("*.yaml")}
    assert {"params/features/default.yaml", "params/features/user_id.yaml"} <= tables
    for s in pipeline.STAGES:
        expected = (presets if "train" in s.sections else set()) | (
            tables if "features" in s.sections else set()
        )
        assert set(s.params_files()) == expected, s.name


def test_predict_s_key_is_the_test_file_s_and_the_model_s_not_the_training_files(
    params: Params, tiny_data: Path, tmp_path: Path
) -> None:
    import shutil

    data, model = tmp_path / "data", tmp_path / "model"
    shutil.copytree(tiny_data, data)
    model.mkdir()
    (model / "weights.pt").write_bytes(b"w")
    predict = pipeline.stage("predict")

    def key() -> str:
        return pipeline.content_key(predict, params, {"data_dir": data, "model_dir": model})

    before = key()
    (data / "train.parquet").write_bytes((data / "train.parquet").read_bytes() + b"\0")  # other training data
    (data / "valid.parquet").unlink()
    assert key() == before
    (data / "test.parquet").write_bytes((data / "test.parquet").read_bytes() + b"\0")
    assert key() != before
    assert "data/test.parquet" in pipeline.dvc_deps(predict) and "data" not in pipeline.dvc_deps(predict)
