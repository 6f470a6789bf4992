"""`dvc repro` runs the same stages through `python -m qin`; `dvc metrics show` and `dvc plots show` read
what they wrote; a second `dvc repro` finds all up to date, and changing one params section re-runs only
the stages that read it."""

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _dvc(root: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_dvc_repro_twice_and_after_a_params_change(project: Path) -> None:
    for item in ("dvc.yaml", "qin", "flows", "params"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / item)
    _dvc(project, "init", "--no-scm", "-q")
    shutil.copy(REPO / ".dvcignore", project / ".dvcignore")  # the code's bytecode is not a dependency
    links = configparser.ConfigParser()
    links.read(REPO / ".dvc" / "config")
    _dvc(project, "config", "cache.type", links["cache"]["type"])  # the project's: links, not copies
    first = _dvc(project, "repro")
    for stage in ("validate", "embed", "featurize", "train", "evaluate", "register", "predict"):
        assert f"Running stage '{stage}'" in first
    assert (project / "artifacts" / "register.json").exists()
    assert (project / "artifacts" / "predict" / "submission.zip").exists()  # the workspace model's

    import json

    (metrics,) = json.loads(_dvc(project, "metrics", "show", "--json")).values()  # the workspace
    shown = metrics["data"]["metrics/evaluate.json"]["data"]
    assert 0.5 < shown["valid_auc"] <= 1
    plots = json.loads(_dvc(project, "plots", "show", "--json"))
    assert not plots.get("errors")
    assert set(plots["data"]) == {
        "ROC (valid)",
        "Learning curves (loss)",
        "Learning curves (valid AUC)",
        "Calibration (valid)",
    }
    roc = plots["data"]["ROC (valid)"][0]["content"]["data"]["values"]
    assert len(roc) > 10 and {"fpr", "tpr"} <= set(roc[0])

    # The outputs are links into DVC's cache (hard links, symbolic where those fail), not second copies,
    # and DVC protects a linked file from writes through the workspace.
    weights = project / "artifacts" / "model" / "weights.pt"
    assert weights.is_symlink() or weights.stat().st_nlink >= 2
    assert not weights.stat().st_mode & 0o222  # read-only

    second = _dvc(project, "repro")
    assert "Running stage" not in second
    assert "up to date" in _dvc(project, "status")

    params = (project / "params.yaml").read_text().replace("batch_size: 1024", "batch_size: 2048")
    (project / "params.yaml").write_text(params)
    third = _dvc(project, "repro")
    assert "Running stage 'evaluate'" in third and "Running stage 'train'" not in third
    assert "Running stage 'predict'" not in third  # the model it scores did not change

    # A preset is a params file of the stages that read train: a change to it is a params change there only.
    preset = project / "params" / "presets" / "cpu.yaml"
    preset.write_text(preset.read_text().replace("grad_clip_norm: 10.0", "grad_clip_norm: 5.0"))
    status = json.loads(_dvc(project, "status", "--json"))
    assert set(status) == {"train", "register"}, status
    changed = [c["changed deps"] for c in status["train"] if "changed deps" in c]
    assert changed == [{"params/presets/cpu.yaml": {"train": "modified"}}], status
