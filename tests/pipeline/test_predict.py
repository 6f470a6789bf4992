"""The `predict` stage: the challenge's submission format, the gate in front of scoring, which model it
scores with (a registered version by alias or number, downloaded once and checked, or a package path)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from qin.cli import main
from qin.featurize import featurize
from qin.predict import PREDICTION, SUBMISSION, predict, read_submission
from qin.registry.protocol import VersionInfo
from qin.registry.resolve import resolve_model
from qin.runs.io import tree_hash
from qin.serving.inference import load_package
from qin.settings.params import load_params
from qin.settings.sections import replace
from qin.train import train
from qin.validate import ValidationError, validate
from tests.conftest import TINY_PARAMS


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model package trained on the tiny data, and its params file."""
    root = tmp_path_factory.mktemp("predict")
    (root / "params.yaml").write_text(TINY_PARAMS.replace("epochs: 2", "epochs: 1"))
    params = load_params(root / "params.yaml")
    validate(tiny_data, root / "validation", params.validate)
    featurize(tiny_data, root / "validation", root / "features", params.featurize)
    train(root / "features", root / "model", root / "train.json", params.train)
    return root / "model", root / "params.yaml"


def _test_rows(data: Path) -> pd.DataFrame:
    rows = pd.read_parquet(data / "test.parquet")
    rows["item_seq"] = rows["item_seq"].map(list)
    return rows


def test_qin_predict_writes_the_challenges_submission(
    trained: tuple[Path, Path], tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, params = trained
    out = tmp_path / "predict"
    code = main(
        [
            "--params",
            str(params),
            "predict",
            "--model",
            str(model),
            "--data",
            str(tiny_data),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"scoring with the package {model}" in printed and "rows scored in" in printed

    with zipfile.ZipFile(out / SUBMISSION) as z:
        assert z.namelist() == [PREDICTION]
    submission = read_submission(out / SUBMISSION)
    n = pq.ParquetFile(tiny_data / "test.parquet").metadata.num_rows
    assert list(submission.columns) == ["ID", "Task2"]
    assert submission["ID"].dtype == np.int64 and submission["Task2"].dtype == np.float64
    assert len(submission) == n and (submission["ID"].to_numpy() == np.arange(n)).all()
    # probabilities; one within float32's rounding of 1 (a logit above about 16.6: a one-epoch model on the
    # tiny data gives a few) is written as 1
    assert submission["Task2"].between(0.0, 1.0).all() and submission["Task2"].nunique() > 100
    # Row i of the submission is row i of test.parquet, scored as a request would be.
    expected = load_package(model).predict_frame(_test_rows(tiny_data))
    np.testing.assert_allclose(submission["Task2"].to_numpy(), expected, rtol=1e-6)
    assert (out / PREDICTION).read_text().splitlines()[0] == "ID,Task2"

    manifest = pd.read_json(out / "manifest.json", typ="series")
    assert manifest["rows"] == n and manifest["model"]["model_hash"] == tree_hash([model])
    assert manifest["model"]["model_name"] is None  # a package given by path is not looked up
    assert set(manifest["seconds"]) == {"validate", "score", "write", "total"}
    assert (out / "validation" / "summary.json").is_file()


def test_a_test_file_the_model_cannot_score_is_refused_before_scoring(
    trained: tuple[Path, Path], tiny_data: Path, tmp_path: Path
) -> None:
    model, params_file = trained
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    rows = pd.read_parquet(data / "test.parquet")
    n_items = load_package(model).n_items
    rows.loc[3, "item_id"] = n_items  # one past the model's item table
    rows.to_parquet(data / "test.parquet", index=False)
    out = tmp_path / "predict"
    with pytest.raises(ValidationError, match=r"test\.parquet.*item_id") as exc:
        predict(data, model, out, load_params(params_file))
    assert f"<= {n_items - 1}" in str(exc.value) or f"{n_items - 1}]" in str(exc.value)
    assert not out.exists()  # nothing half-written left for anyone to trust


class FakeRegistry:
    """What resolve_model asks a registry: versions by number or alias, and their packages."""

    def __init__(self, package: Path, model_hash: str) -> None:
        self.package = package
        self.versions = {"1": VersionInfo("1", "run-1", {"model_hash": model_hash})}
        self.aliases: dict[str, str] = {}
        self.downloads = 0

    def get_version(self, name: str, version: str) -> VersionInfo | None:
        return self.versions.get(version)

    def alias_holder(self, name: str, alias: str) -> VersionInfo | None:
        return self.versions[self.aliases[alias]] if alias in self.aliases else None

    def download_package(self, name: str, version: str, dest: Path) -> None:
        self.downloads += 1
        shutil.copytree(self.package, dest, dirs_exist_ok=True)


def test_resolve_takes_champion_else_staging_downloads_once_and_checks_the_hash(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    model, params_file = trained
    cfg = load_params(params_file).register
    registry = FakeRegistry(model, tree_hash([model]))
    root = tmp_path / "models"

    with pytest.raises(
        ValueError, match="no version of registered model 'qin-ctr' holds alias 'champion' or 'staging'"
    ):
        resolve_model("auto", cfg, root, registry)
    registry.aliases["staging"] = "1"
    ref = resolve_model("auto", cfg, root, registry)
    assert (ref.alias, ref.version, ref.model_name) == ("staging", "1", "qin-ctr")
    assert ref.path == root / tree_hash([model]) and tree_hash([ref.path]) == ref.model_hash
    assert "qin-ctr version 1 (alias 'staging')" in ref.describe()
    registry.aliases["champion"] = "1"
    assert resolve_model("auto", cfg, root, registry).alias == "champion"
    assert resolve_model("1", cfg, root, registry).alias is None
    assert registry.downloads == 1  # found in artifacts/models/<hash>/ afterwards

    with pytest.raises(ValueError, match="has no version 7"):
        resolve_model("7", cfg, root, registry)
    with pytest.raises(ValueError, match="holds alias 'canary'"):
        resolve_model("canary", cfg, root, registry)
    with pytest.raises(FileNotFoundError, match="no such model package"):
        resolve_model("./nowhere", cfg, root, registry)

    # A download whose content is not the version's model_hash is refused, and nothing is kept.
    registry.versions["2"] = VersionInfo("2", "run-2", {"model_hash": "0" * 64})
    with pytest.raises(ValueError, match="expected the version's model_hash tag"):
        resolve_model("2", cfg, root, registry)
    assert not (root / ("0" * 64)).exists()


def test_a_package_path_or_an_mlflow_model_folder_is_taken_as_it_is(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    model, params_file = trained
    cfg = replace(load_params(params_file).register, registry="none")  # never asked
    assert resolve_model(str(model), cfg).path == model
    mlflow_model = tmp_path / "mlflow-model"
    shutil.copytree(model, mlflow_model / "artifacts" / "model")
    (mlflow_model / "MLmodel").write_text(
        "flavors:\n  python_function:\n    artifacts:\n      package: {path: artifacts/model}\n"
    )
    ref = resolve_model(str(mlflow_model), cfg)
    assert ref.path == mlflow_model / "artifacts" / "model" and ref.model_hash == tree_hash([model])
    with pytest.raises(FileNotFoundError, match="expected a model package"):
        resolve_model(str(tmp_path), cfg)
