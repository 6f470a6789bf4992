"""Where a registered version came from: its provenance tags (data, train settings and code hashes, git
commit, qin version) and, for a version a flow run registered, the stage keys behind it (`stage_keys_tag`;
`stage_keys` reads them back for `qin gc`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import qin
from qin.registry.judge import digest
from qin.registry.protocol import DataVersion, Registry
from qin.runs.io import read_json
from qin.runs.store import lineage
from qin.validate import SUMMARY

STAGE_KEYS_TAG = (
    "stage_keys"  # JSON {stage: key}: the stage outputs (qin/runs/store.py) the version came from
)


def provenance_tags(model_hash: str, data: DataVersion, params_hash: str) -> dict[str, str]:
    """Where the package `model_hash` came from: the data version it was validated as (`data`, from
    `validated_data`), its train settings' hash, the library's code hash, the git commit and the qin
    version."""
    return {
        "model_hash": model_hash,
        "data_hash": data.digest,
        "params_hash": params_hash,
        "code_hash": code_hash(),
        "git_commit": git_commit(),
        "qin_version": qin.__version__,
    }


def stage_keys_tag(output: str | Path) -> dict[str, str]:
    """The version tag naming the stage keys behind `output` when a flow run's store holds it (its inputs
    come from the store), else none."""
    keys = lineage(output)
    return {STAGE_KEYS_TAG: json.dumps(keys, sort_keys=True)} if keys else {}


def git_commit() -> str:
    """The checkout's commit; QIN_GIT_COMMIT when set (an image has no git: `make up` passes the commit it
    was built from)."""
    if os.environ.get("QIN_GIT_COMMIT"):
        return os.environ["QIN_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def code_hash() -> str:
    """Hash of the library's source: part of every cache key and of the provenance tags."""
    h = hashlib.sha256()
    root = Path(qin.__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def validated_data(validation_dir: str | Path) -> DataVersion:
    """The data version `validate` checked into `validation_dir`: the folder of its files, their digest (of
    the md5s `validate` recorded, by name: the `data_hash` tag) and their rows."""
    files = read_json(Path(validation_dir) / SUMMARY)["files"]
    folder = Path(next(iter(files.values()))["path"]).resolve().parent
    rows = {name: int(info["rows"]) for name, info in files.items() if "rows" in info}
    return DataVersion(folder, digest({name: info.get("md5") for name, info in files.items()}), rows)


def stage_keys(registry: Registry, model_name: str) -> list[dict[str, str]]:
    """The stage keys each registered version came from (those registered by a flow run): what `qin gc`
    must keep."""
    return [
        json.loads(v.tags[STAGE_KEYS_TAG]) for v in registry.versions(model_name) if STAGE_KEYS_TAG in v.tags
    ]
