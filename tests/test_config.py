from pathlib import Path

import pytest

from qin.config import Params, TrainConfig, flatten, load_params


def test_repo_params_load_and_match_the_dataclasses(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
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
    ],
)
def test_bad_params_are_refused_by_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_params(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_scientific_notation_floats_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: {learning_rate: 2e-3}")
    assert load_params(path).train.learning_rate == pytest.approx(2e-3)
    assert TrainConfig().learning_rate == pytest.approx(2e-3)
