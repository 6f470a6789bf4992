"""Flow runs that cannot step on each other: runs started together with different models each register the
model they asked for; runs with the same settings train once and register once; switching models back and
forth reuses every trained model; a killed training resumes from its key's checkpoint. Each concurrent run
is its own process (as under a worker), against one Prefect server and one MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.processes]

RUN = """
import json, sys
from flows.qin_train import qin_train
result = qin_train(model=sys.argv[1] or None, overrides=json.loads(sys.argv[2]))
print("RESULT " + json.dumps(result))
"""


def _start(project: Path, model: str, overrides: dict[str, Any], log: str) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    out = open(project / log, "w")  # noqa: SIM115 (the child writes it)
    cmd = [sys.executable, "-c", RUN, model, json.dumps(overrides)]
    return subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def _result(project: Path, proc: subprocess.Popen, log: str) -> dict[str, Any]:
    assert proc.wait(timeout=600) == 0, (project / log).read_text()[-3000:]
    (line,) = [x for x in (project / log).read_text().splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]


def _client(project: Path) -> Any:
    """A client of the project's store (the registry URI too: by default it is whichever this process
    configured last)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(project: Path) -> dict[str, Any]:
    return {str(v.version): v for v in _client(project).search_model_versions("name='qin-ctr'")}


def test_concurrent_runs_each_register_their_own_model_and_equal_runs_train_once(
    project: Path, prefect_harness
) -> None:
    from qin.runs.io import tree_hash

    overrides = {"train.epochs": 2}
    asked = ["qin", "din", "qin"]
    procs = [_start(project, m, overrides, f"run{i}.log") for i, m in enumerate(asked)]
    results = [_result(project, p, f"run{i}.log") for i, p in enumerate(procs)]

    versions = _versions(project)
    assert len(versions) == 2  # one per distinct model: the two qin runs share one
    client = _client(project)
    for model, result in zip(asked, results, strict=True):
        version = versions[result["version"]]
        package = project / "artifacts" / "stages" / "train" / result["stage_keys"]["train"] / "model"
        config = json.loads((package / "model.json").read_text())["model"]
        run = client.get_run(version.run_id)
        # The run asked for, the package's own config, the logged params and the registered hash agree.
        assert config["name"] == run.data.params["train.model.name"] == model
        assert version.tags["model_hash"] == tree_hash([package]) == result["model_hash"]
    first, din, second = results
    assert (first["version"], first["run_id"]) == (second["version"], second["run_id"])
    assert first["stage_keys"] == second["stage_keys"] and din["version"] != first["version"]
    assert sorted([first["stages"]["train"], second["stages"]["train"]]) == ["cached", "ran"]
    assert sorted([first["newly_registered"], second["newly_registered"]]) == [False, True]
    # Validate and featurize were needed by all three at once: computed once.
    for stage in ("validate", "featurize"):
        assert [r["stages"][stage] for r in results].count("ran") == 1
        assert len({r["stage_keys"][stage] for r in results}) == 1
    assert len({r["record"] for r in results}) == 3  # each run its own record


def test_switching_models_back_and_forth_reuses_both_trained_models(project: Path, prefect_harness) -> None:
    from flows.qin_train import qin_train

    overrides = {"train.epochs": 1}
    first = qin_train(model="qin", overrides=overrides)
    din = qin_train(model="din", overrides=overrides)
    again = qin_train(model="qin", overrides=overrides)
    assert (first["stages"]["train"], din["stages"]["train"], again["stages"]["train"]) == (
        "ran",
        "ran",
        "cached",
    )
    assert (
        again["stage_keys"] == first["stage_keys"]
        and again["stage_keys"]["train"] != din["stage_keys"]["train"]
    )
    assert (again["version"], again["newly_registered"]) == (first["version"], False)
    assert len(_versions(project)) == 2


def test_a_killed_training_resumes_from_its_keys_checkpoint(project: Path, prefect_harness) -> None:
    # Long enough that the run cannot finish between its first checkpoint and the kill on a quiet machine.
    overrides = {
        "train.epochs": 60,
        "train.patience": 60,
        "train.checkpoint_every": 3,
        "train.checkpoint_seconds": 0,
    }
    proc = _start(project, "qin", overrides, "killed.log")
    train = project / "artifacts" / "stages" / "train"
    deadline = time.monotonic() + 300
    while not list(train.glob("*.partial/model.checkpoint.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, (project / "killed.log").read_text()[
            -3000:
        ]
        time.sleep(0.2)
    time.sleep(0.5)  # a few more steps past the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (partial,) = train.glob("*.partial")
    key = partial.name.removesuffix(".partial")
    assert not (train / key).exists()  # nothing published by the killed run

    result = _result(project, _start(project, "qin", overrides, "resumed.log"), "resumed.log")
    log = (project / "resumed.log").read_text()
    assert result["stage_keys"]["train"] == key and result["stages"]["train"] == "ran"
    assert f"train {key}: continuing in" in log and "resuming from" in log
    history = json.loads((train / key / "train.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 61))
    assert not partial.exists() and not list((train / key).glob("*.checkpoint.pt"))
