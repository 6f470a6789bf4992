"""The settings import one way: qin/settings/sections.py (the sections that stand alone) imports nothing under
qin/models; the model registry and qin/settings/params.py (the train section, `Params`) import it. So reading
params.yaml imports no torch, and adding a model changes the code of no stage that reads only its own
section (validate, embed, featurize): their keys stay, train's changes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from qin.runs import pipeline

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, root: Path = REPO) -> str:
    """Run `code` in a fresh interpreter with the project at `root` first on its path; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_reading_the_settings_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from qin.models import config_class, model_config\n"
        "from qin.settings.params import load_params\n"
        "params = load_params('params.yaml')\n"
        "assert config_class('din').__name__ == 'DINConfig', config_class('din')\n"
        "assert model_config(params.train.model.model_dump()) == params.train.model\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    assert _python(code).strip() == "[]"


def test_qin_config_imports_nothing_under_qin_models() -> None:
    # Its source (what a stage's code is made of: imports in function bodies count too) and what runs.
    assert pipeline._qin_closure("qin.settings.sections") == frozenset({"qin/settings/sections.py"})
    code = (
        "import sys\nimport qin.settings.sections\n"
        "print(sorted(m for m in sys.modules if m.startswith('qin.')))\n"
    )
    assert json.loads(_python(code).replace("'", '"')) == ["qin.settings", "qin.settings.sections"]


def test_the_stages_that_read_their_own_section_run_no_model_file() -> None:
    for name in ("validate", "embed", "featurize"):
        code = pipeline.stage(name).code()
        assert not [f for f in code if f.startswith("qin/models/")], (name, code)
        assert "qin/settings/params.py" not in code, name
    train = pipeline.stage("train").code()
    assert {"qin/models/__init__.py", "qin/models/settings.py", "qin/settings/params.py"} <= set(train)


# A model added as the registry's docstring says: its settings class in the torch-free settings module, its
# network in a file of its own, and one line in MODELS.
NEW_SETTINGS = '''

class TinyMLPConfig(ModelConfig):
    """A model added after the others (tests/code/test_settings_layering.py)."""

    name: Literal["tinymlp"] = "tinymlp"
    embedding_dim: int = 8
'''
NEW_NETWORK = '''"""A model added after the others: an MLP over the encoded features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qin.data.features import FeatureSpec
from qin.models.blocks import Batch, FeatureEncoder
from qin.models.settings import TinyMLPConfig


class TinyMLP(nn.Module):
    def __init__(self, cfg: TinyMLPConfig, spec: FeatureSpec, items: dict[str, Tensor]) -> None:
        super().__init__()
        self.features = FeatureEncoder(spec, cfg.embedding_dim, items)
        self.head = nn.Linear(self.features.width, 1)

    def forward(self, batch: Batch) -> Tensor:
        row, target, history, mask = self.features(batch)
        return self.head(torch.cat([row, target, history.mean(1)], dim=-1)).squeeze(-1)
'''
NEW_ENTRY = '\nMODELS["tinymlp"] = Model("qin.models.tinymlp", "TinyMLPConfig", "TinyMLP")\n'

# The keys of the stages, each on the same settings and inputs, as the project at the path's root makes them.
KEYS = """
import json
from qin.runs import pipeline
from qin.models import MODELS
from qin.settings.params import load_params

params = load_params("params.yaml")
out = {}
for name in ("validate", "embed", "featurize", "train"):
    s = pipeline.stage(name)
    inputs = {pipeline._source(i): "0" * 24 for i in s.inputs}
    out[name] = {
        "key": pipeline.stage_key(s, params, inputs),
        "code_hash": pipeline.code_hash(s),
        "code": list(s.code()),
    }
print(json.dumps({"stages": out, "models": sorted(MODELS), "root": str(pipeline.ROOT)}))
"""


def test_adding_a_model_changes_no_key_of_validate_embed_or_featurize(tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(REPO / "qin", root / "qin", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "params", root / "params")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    before = json.loads(_python(KEYS, root))
    assert before["root"] == str(root)  # the copy's pipeline, its files hashed

    models = root / "qin" / "models"
    (models / "settings.py").write_text((models / "settings.py").read_text() + NEW_SETTINGS)
    (models / "tinymlp.py").write_text(NEW_NETWORK)
    (models / "__init__.py").write_text((models / "__init__.py").read_text() + NEW_ENTRY)
    after = json.loads(_python(KEYS, root))

    assert after["models"] == sorted([*before["models"], "tinymlp"])
    assert "qin/models/tinymlp.py" in after["stages"]["train"]["code"]
    for name in ("validate", "embed", "featurize"):
        assert after["stages"][name] == before["stages"][name], name
    assert after["stages"]["train"]["code_hash"] != before["stages"]["train"]["code_hash"]
    assert after["stages"]["train"]["key"] != before["stages"]["train"]["key"]
