"""Registration under concurrency: one version per package hash whatever the number of racing runs, no
"database is locked" from the sqlite store, a duplicate left by a client without our locks is settled
(the lowest version wins), and a version is created with its tags and describes the model it holds.
(Alias compare-and-set: tests/pipeline/test_promote.py.)"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qin.register import register
from qin.registry.protocol import Candidate, Registered
from qin.registry.registration import Registration, read_registration
from qin.runs import layout
from qin.runs.io import tree_hash
from qin.settings.params import Params, load_params
from tests import helpers as ws
from tests.conftest import TINY_PARAMS
from tests.helpers import model_variant
from tests.pipeline.test_promote import FakeRegistry

CORE_TAGS = {"model_hash", "valid_auc", "data_hash", "params_hash", "git_commit", "code_hash"}


# ---------------------------------------------------------------- the rules, with an in-memory registry


def fake_package(root: Path, params: Params, auc: float = 0.7) -> dict[str, Path]:
    """The files `register` reads, without training: a model.json, metrics and a validation summary."""
    model, validation, metrics = root / "model", root / "validate", root / "metrics"
    for d in (model, validation, metrics):
        d.mkdir(parents=True)
    model_cfg = {"model": params.train.model.model_dump(), "meta": {}}
    (model / "model.json").write_text(json.dumps(model_cfg))
    train = {"path": str(root / "data" / "train.parquet"), "md5": "0" * 32, "rows": 1}
    (validation / "summary.json").write_text(json.dumps({"files": {"train": train}}))
    (metrics / "train.json").write_text(json.dumps({"history": []}))
    (metrics / "evaluate.json").write_text(json.dumps({"valid_auc": auc}))
    return {"model_dir": model, "validation_dir": validation, "train": metrics / "train.json"}


def fake_register(pkg: dict[str, Path], params: Params, registry: FakeRegistry, out: Path) -> Registration:
    return register(
        pkg["model_dir"],
        pkg["train"],
        pkg["train"].with_name("evaluate.json"),
        pkg["validation_dir"],
        out,
        params,
        registry=registry,
        gate_staging=False,
    )


def test_a_duplicate_created_by_a_client_without_our_lock_is_deleted_and_the_older_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Raced(FakeRegistry):
        """Another client registers the same package between our `find` and our create."""

        def log_and_register(self, model_name: str, candidate: Candidate) -> Registered:
            self.other = super().log_and_register(model_name, candidate)
            return super().log_and_register(model_name, candidate)

    monkeypatch.chdir(tmp_path)
    params = Params()
    pkg = fake_package(tmp_path, params)
    reg = Raced([])
    result = fake_register(pkg, params, reg, tmp_path / "register.json")
    assert (result.version, result.run_id, result.newly_registered, result.gate) == ("1", "run1", False, None)
    assert reg.deleted == ["2"] and list(reg.by_number) == ["1"]
    assert reg.by_number["1"].tags["model_hash"] == tree_hash([pkg["model_dir"]])
    assert read_registration(tmp_path / "register.json") == result


def test_a_version_is_created_with_every_tag_and_extra_tags_may_not_replace_them(tmp_path: Path) -> None:
    candidate = Candidate(
        model_dir=tmp_path,
        model_hash="h" * 64,
        metrics={"valid_auc": 0.71},
        history=[],
        params={},
        tags={"data_hash": "d", "params_hash": "p", "git_commit": "g", "code_hash": "c"},
        extra_tags={"stage.train": "k1"},
    )
    tags = candidate.version_tags()
    assert set(tags) == CORE_TAGS | {"stage.train"}
    assert (tags["model_hash"], tags["valid_auc"], tags["stage.train"]) == ("h" * 64, "0.71", "k1")
    for bad in ({"model_hash": "x"}, {"alias_history.1": "{}"}):
        with pytest.raises(
            ValueError, match=rf"extra_tags: expected keys other than .* found \['{next(iter(bad))}'\]"
        ):
            dataclasses.replace(candidate, extra_tags=bad).version_tags()


def test_a_package_whose_model_differs_from_the_params_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params = Params()
    pkg = fake_package(tmp_path, params)
    cfg = json.loads((pkg["model_dir"] / "model.json").read_text())
    cfg["model"]["embedding_dim"] += 8
    (pkg["model_dir"] / "model.json").write_text(json.dumps(cfg))
    reg = FakeRegistry([])
    with pytest.raises(ValueError, match=r"model\.json: expected the model config of params 'train\.model'"):
        fake_register(pkg, params, reg, tmp_path / "register.json")
    assert reg.by_number == {}


# ---------------------------------------------------------------- racing processes, one sqlite store


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Iterator[Path]:
    """A project trained once (tiny data) with four package variants; tests register copies of it."""
    from qin.evaluate import evaluate
    from qin.featurize import featurize
    from qin.train import train
    from qin.validate import validate

    root = tmp_path_factory.mktemp("trained")
    (root / "params.yaml").write_text(TINY_PARAMS)
    shutil.copytree(tiny_data, root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        params = load_params("params.yaml")
        validate(layout.DATA, ws.VALIDATION, params.validate)
        featurize(layout.DATA, ws.VALIDATION, ws.FEATURES, params.featurize)
        train(ws.FEATURES, ws.MODEL, ws.TRAIN_METRICS, params.train)
        evaluate(ws.FEATURES, ws.MODEL, ws.EVAL_METRICS, params.evaluate)
        for name, auc in (("a", 0.70), ("b", 0.75), ("c", 0.80)):
            model_variant(root, name, auc)
    yield root


@pytest.fixture
def project(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the trained project with an empty MLflow store, as the working directory."""
    root = tmp_path / "project"
    shutil.copytree(trained, root, ignore=shutil.ignore_patterns("data", "features"))
    monkeypatch.chdir(root)  # conftest clears an MLFLOW_TRACKING_URI inherited from an earlier test
    return root


def register_in_process(project: str, variant: str, out: str, ready: Any, results: Any) -> None:
    """One racing run (in a spawned process): register a variant as soon as every racer is ready."""
    try:
        os.chdir(project)
        import flows.tracking  # noqa: F401 (imported before the start line, so the race is the store's)

        params = load_params("params.yaml")
        ready.wait(timeout=300)
        model, metrics = Path("artifacts") / variant, Path("metrics") / f"{variant}.json"
        result = register(model, ws.TRAIN_METRICS, metrics, ws.VALIDATION, out, params)
        results.put({"variant": variant, **result.to_json()})  # register.json's fields
    except BaseException:
        results.put({"variant": variant, "error": traceback.format_exc()})


def race(project: Path, variants: list[str]) -> list[dict]:
    """Register `variants` from as many processes at once; the results, after every process ended."""
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Barrier(len(variants)), ctx.Queue()
    procs = [
        ctx.Process(
            target=register_in_process,
            args=(str(project), v, str(project / "artifacts" / f"register-{i}.json"), ready, results),
        )
        for i, v in enumerate(variants)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r["error"] for r in out if "error" in r]
    assert errors == [], "\n".join(errors)
    return out


def mlflow_client(project: Path) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    # The registry URI too: its default is whatever store this process configured last.
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.slow
@pytest.mark.processes
def test_racing_processes_registering_one_package_create_one_version(project: Path) -> None:
    results = race(project, ["a"] * 4)
    assert {(r["version"], r["run_id"]) for r in results} == {("1", results[0]["run_id"])}
    assert sorted(r["newly_registered"] for r in results) == [False, False, False, True]
    assert all(r["has_alias"] for r in results)
    client = mlflow_client(project)
    (version,) = client.search_model_versions("name='qin-ctr'")
    assert version.tags["model_hash"] == tree_hash([project / "artifacts" / "a"])
    assert str(client.get_model_version_by_alias("qin-ctr", "staging").version) == "1"


@pytest.mark.slow
@pytest.mark.processes
def test_racing_processes_registering_different_packages_each_get_a_tagged_version(project: Path) -> None:
    results = race(project, ["a", "b", "c"])
    assert sorted(r["version"] for r in results) == ["1", "2", "3"]
    assert all(r["newly_registered"] for r in results)
    client = mlflow_client(project)
    by_version = {str(x.version): x for x in client.search_model_versions("name='qin-ctr'")}
    for r in results:
        tags = by_version[r["version"]].tags
        assert tags["model_hash"] == r["model_hash"] == tree_hash([project / "artifacts" / r["variant"]])
        assert set(tags) >= CORE_TAGS and float(tags["valid_auc"]) == r["valid_auc"]
        assert client.get_run(r["run_id"]).data.tags["model_hash"] == r["model_hash"]
    # Each version was offered staging in whatever order the race ran; the best must end up holding it.
    best = next(r["version"] for r in results if r["variant"] == "c")
    assert str(client.get_model_version_by_alias("qin-ctr", "staging").version) == best


@pytest.mark.slow
def test_a_duplicate_from_a_client_without_our_lock_is_deleted_with_its_run(project: Path) -> None:
    from mlflow.entities import ViewType

    from flows.tracking import MlflowRegistry

    class Raced(MlflowRegistry):
        """Another client (another machine: not our lock folder) registers the same package, with a
        stage key of its own, between our `find` and our create."""

        def log_and_register(self, model_name: str, candidate: Candidate) -> Registered:
            other = dataclasses.replace(candidate, extra_tags={"stage.train": "k1"})
            self.other = super().log_and_register(model_name, other)
            return super().log_and_register(model_name, candidate)

    params = load_params("params.yaml")

    def register_a(registry: MlflowRegistry | None = None) -> Registration:
        package, metrics = project / "artifacts" / "a", project / "metrics" / "a.json"
        return register(
            package, ws.TRAIN_METRICS, metrics, ws.VALIDATION, ws.REGISTRATION, params, registry=registry
        )

    reg = Raced(params.register)
    result = register_a(reg)
    assert (result.version, result.run_id) == ("1", reg.other.run_id)
    assert not result.newly_registered and result.gate is not None and result.gate.has_alias
    client = mlflow_client(project)
    (kept,) = client.search_model_versions("name='qin-ctr'")
    assert str(kept.version) == "1" and kept.tags["stage.train"] == "k1" and set(kept.tags) >= CORE_TAGS
    experiment = client.get_run(kept.run_id).info.experiment_id
    (duplicate_run,) = client.search_runs([experiment], run_view_type=ViewType.DELETED_ONLY)
    assert duplicate_run.info.run_id != kept.run_id
    assert duplicate_run.data.tags["model_hash"] == kept.tags["model_hash"]
    # Registering the package again finds the kept version and creates nothing.
    again = register_a()
    assert (again.version, again.newly_registered) == ("1", False)
