import json
from pathlib import Path

import pytest

from qin.models.din import DINConfig
from qin.settings.params import Params, load_params, preset
from qin.settings.sections import DeployConfig, flatten


def test_repo_params_load_and_match_the_dataclasses(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    params = load_params(repo / "params.yaml")
    assert isinstance(params, Params)
    assert params.train.learning_rate == pytest.approx(0.002)
    assert flatten(params.train, "train.")["train.model.name"] == "qin"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: {epochz: 3}", "'train.epochz' is not a setting"),
        ("train: {model: {attention_order: fast}}", "expected one of ['fused', 'reference'], found 'fast'"),
        ("train: {batch_size: many}", "'train.batch_size': expected an integer, found 'many'"),
        ("train: {precision: fp16}", "'train.precision': expected one of ['auto', 'fp32', 'bf16']"),
        ("train: {model: {batch_norm: 1}}", "'train.model.batch_norm': expected true or false"),
        ("training: {}", "'training' is not a setting"),
        ("data: {item_emb: given}", "'data.item_emb': expected one of ['pca', 'latent'], found 'given'"),
        ("deploy: {limit: 2}", "'deploy.limit' is not a setting; allowed keys under 'deploy'"),
        (
            "deploy: {collision_strategy: enqueue}",
            "expected one of ['ENQUEUE', 'CANCEL_NEW'], found 'enqueue'",
        ),
        (
            "deploy: {concurrency_limit: -1}",
            "'deploy.concurrency_limit': expected 0 (no limit) or a positive",
        ),
        ("train: {model: {mlp_units: [8, x]}}", "'train.model.mlp_units[1]': expected an integer, found 'x'"),
        ("train: {model: {mlp_units: 8}}", "'train.model.mlp_units': expected a list, found 8"),
        ("data: {seed: true}", "'data.seed': expected an integer, found True"),
        ("data: {latent_dim: '16'}", "'data.latent_dim': expected an integer, found '16'"),
        ("train: {learning_rate: fast}", "'train.learning_rate': expected a number, found 'fast'"),
        ("train: {learning_rate: true}", "'train.learning_rate': expected a number, found True"),
        ("register: {alias: 3}", "'register.alias': expected a string, found 3"),
        ("embed: {learned: 3}", "'embed.learned': expected a mapping, found 3"),
        ("embed: {learned: {temperature: 0}}", "'embed.learned.temperature': expected a positive number"),
        ("embed: {learned: {epochz: 1}}", "'embed.learned.epochz' is not a setting; allowed keys under"),
        (
            "train: {model: {name: xgb}}",
            "'train.model.name': expected one of ['dcnv3', 'din', 'qin', 'sdcnv3']",
        ),
        ("train: {max_len: 8}", "'train.max_len' is not a setting (use 'featurize.max_len')"),
    ],
)
def test_bad_params_are_refused_by_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_params(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_deploy_section_sets_the_concurrency_policy(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    assert load_params(repo / "params.yaml").deploy == DeployConfig(
        concurrency_limit=2, collision_strategy="ENQUEUE"
    )
    path = tmp_path / "params.yaml"
    path.write_text("deploy: {concurrency_limit: 0, collision_strategy: CANCEL_NEW}")
    assert load_params(path).deploy == DeployConfig(concurrency_limit=0, collision_strategy="CANCEL_NEW")
    path.write_text("train: {epochs: 2}")
    assert load_params(path).deploy == DeployConfig()  # an absent section takes the defaults


def test_scientific_notation_floats_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: {learning_rate: 2e-3}")
    assert load_params(path).train.learning_rate == pytest.approx(2e-3)
    assert preset("cpu").learning_rate == pytest.approx(2e-3)


@pytest.mark.parametrize(
    ("text", "width", "attention"),
    [
        ("train: {model: {name: din}}", 32, (64, 32)),  # the cpu preset: DIN at its QIN's width
        ("train: {preset: paper, model: {name: din}}", 64, (512, 256)),  # the challenge's DIN
        ("train: {model: {name: din, attention_units: [16]}}", 32, (16,)),  # a given key still wins
    ],
)
def test_a_preset_sets_where_another_model_starts(
    tmp_path: Path, text: str, width: int, attention: tuple[int, ...]
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    model = load_params(path).train.model
    assert isinstance(model, DINConfig)
    assert (model.embedding_dim, model.attention_units) == (width, attention)


def test_overrides_and_model_are_applied_into_a_resolved_params_file(tmp_path: Path) -> None:
    from qin.settings.params import write_resolved_params

    src = tmp_path / "params.yaml"
    src.write_text("train: {model: {name: qin, embedding_dim: 8, num_layers: 3}, epochs: 2}\nevaluate: {}\n")
    out = write_resolved_params(
        src, tmp_path / "out" / "resolved.yaml", {"train.learning_rate": 0.01, "evaluate.batch_size": 64}
    )
    resolved = load_params(out)
    assert resolved.train.learning_rate == pytest.approx(0.01) and resolved.evaluate.batch_size == 64
    assert resolved.train.model.num_layers == 3 and resolved.train.epochs == 2  # type: ignore[union-attr]
    assert load_params(src).evaluate.batch_size != 64  # the source file is left alone

    # Another model keeps the keys it shares with the old one (embedding_dim), drops the rest.
    din = load_params(write_resolved_params(src, tmp_path / "din.yaml", model="din")).train.model
    assert (din.name, din.embedding_dim) == ("din", 8)
    sdcn = write_resolved_params(src, tmp_path / "s.yaml", {"train.model.num_deep_layers": 2}, model="sdcnv3")
    assert load_params(sdcn).train.model.num_deep_layers == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("overrides", "model", "message"),
    [
        ({"train.learning_rat": 0.1}, None, "'train.learning_rat' is not a setting"),
        ({"train.epochs": "many"}, None, "'train.epochs': expected an integer, found 'many'"),
        ({"train.epochs.x": 1}, None, "params key 'train.epochs' is a value (2), not a section"),
        ({"train..epochs": 1}, None, "expected dotted params keys"),
        ({}, "xgboost", "model: expected one of ['dcnv3', 'din', 'qin', 'sdcnv3'], found 'xgboost'"),
    ],
)
def test_bad_overrides_are_refused_by_key(
    tmp_path: Path, overrides: dict, model: str | None, message: str
) -> None:
    from qin.settings.params import write_resolved_params

    src = tmp_path / "params.yaml"
    src.write_text("train: {epochs: 2}\n")
    with pytest.raises(ValueError) as err:
        write_resolved_params(src, tmp_path / "resolved.yaml", overrides, model)
    assert message in str(err.value)
    assert not (tmp_path / "resolved.yaml").exists()


def test_a_model_packages_settings_read_back_as_they_were_written() -> None:
    from qin.models import model_config
    from qin.models.settings import DINConfig

    # What model.json holds (the settings' fields, tuples as JSON lists), before and after pydantic.
    written = {"name": "din", "embedding_dim": 16, "attention_units": [8, 4], "attention_dropout": 0.1,
               "dnn_units": [32], "net_dropout": 0.0, "batch_norm": False}  # fmt: skip
    cfg = model_config(written)
    assert cfg == DINConfig(embedding_dim=16, attention_units=(8, 4), dnn_units=(32,), net_dropout=0.0,
                            batch_norm=False)  # fmt: skip
    assert json.loads(json.dumps(cfg.model_dump())) == written
    with pytest.raises(ValueError, match=r"params key 'model\.embedding_dim': expected an integer"):
        model_config({**written, "embedding_dim": "16"})
    with pytest.raises(ValueError, match=r"params key 'model\.name': expected one of"):
        model_config({"name": "xgb"})


def test_section_hash_is_the_hash_of_the_sections_content() -> None:
    import hashlib

    from qin.settings.sections import FusionConfig, replace, section_hash

    cfg = FusionConfig()
    blob = json.dumps(cfg.model_dump(), sort_keys=True)
    assert section_hash(cfg) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert section_hash(replace(cfg, seed=1)) != section_hash(cfg)
    assert section_hash(FusionConfig(seed=cfg.seed)) == section_hash(cfg)
    with pytest.raises(ValueError, match=r"params key 'embed\.learned\.window': expected an integer >= 0"):
        replace(cfg, window=-1)


def test_dvc_set_param_reaches_every_train_setting_the_preset_supplies(tmp_path: Path) -> None:
    """`dvc exp run -S train.KEY=VALUE` (DVC's documented form, applied by DVC's own override function) works
    for every key the preset sets, because params.yaml lists each; null there means the preset's value."""
    import shutil

    import yaml
    from dvc.utils.hydra import apply_overrides

    repo = Path(__file__).resolve().parents[2]
    listed = yaml.safe_load((repo / "params.yaml").read_text())["train"]
    supplied = yaml.safe_load((repo / "params" / "presets" / "cpu.yaml").read_text())["train"]
    assert set(supplied) - set(listed) == set()
    assert set(supplied["model"]) - set(listed["model"]) == set()
    path = tmp_path / "params.yaml"
    shutil.copy(repo / "params.yaml", path)
    apply_overrides(path, ["train.epochs=2", "train.model.embedding_dim=64", "train.model.use_qnn=false"])
    train = load_params(path).train
    assert (train.epochs, train.model.embedding_dim, train.model.use_qnn) == (2, 64, False)  # type: ignore[attr-defined]
    assert train.batch_size == preset("cpu").batch_size  # the nulls: the preset's values
    apply_overrides(path, ["train.preset=paper"])
    paper = preset("paper")
    model = paper.model.model_copy(update={"embedding_dim": 64, "use_qnn": False})
    assert load_params(path).train == paper.model_copy(update={"epochs": 2, "model": model})
