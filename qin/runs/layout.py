"""Where things live, relative to the project root.

Each stage's own inputs and outputs (their workspace paths under DVC, their names in a flow run's
content-addressed folders) are declared in the stage table, qin/runs/pipeline.py.
"""

from pathlib import Path

PARAMS = Path("params.yaml")
DATA = Path("data")  # raw data: written only by `qin data synth` / `qin data import`
# Flow runs: each stage key's outputs in artifacts/stages/<stage>/<key>/ (qin/runs/store.py), and a record per
# flow run in artifacts/runs/<flow run id>/ (qin/runs/records.py). Nothing run-specific lives at a fixed path.
STORE = Path("artifacts/stages")
RUNS = Path("artifacts/runs")
LOCKS = Path("artifacts/locks")  # one lock file per shared thing (a model hash, an alias)
# Registered model packages `predict` downloaded, one folder per content hash (qin/predict.py).
MODELS = Path("artifacts/models")
# Models' AUCs on another data version's valid split, by package hash and data version
# (qin/registry/judge.py).
JUDGED = Path("artifacts/judged")
