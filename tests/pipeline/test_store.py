"""The content-addressed store (qin/runs/store.py): a key's folder appears whole, is reused only while it
verifies, is computed once when several processes need it at once, records its lineage; `gc` removes what
nothing refers to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qin.runs import records as runs
from qin.runs import store
from qin.runs.io import file_lock
from tests.conftest import REPO, TINY_PARAMS

pytestmark = pytest.mark.slow

RUN = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from qin.runs import store
entry = store.run(sys.argv[1], "params.yaml", "data", json.loads(sys.argv[2]), record=sys.argv[3])
print(json.dumps(entry))
"""


def _in_process(project: Path, stage: str, upstream: dict[str, str], record: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", RUN, stage, json.dumps(upstream), record]
    err = open(project / f"{Path(record).name}.err", "w")  # noqa: SIM115 (the child writes it)
    return subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=err, text=True)


def test_two_processes_needing_one_key_compute_it_once(project: Path) -> None:
    from qin.runs import pipeline
    from qin.runs.io import tree_hash
    from qin.settings.params import load_params

    s = pipeline.stage("validate")
    key = pipeline.stage_key(s, load_params(project / "params.yaml"), {"data": tree_hash([project / "data"])})
    lock = project / "artifacts" / "stages" / "validate" / f"{key}.lock"
    with file_lock(lock):  # both start while the key is busy: both must wait, then one computes it
        procs = [_in_process(project, "validate", {}, f"artifacts/runs/r{i}") for i in range(2)]
        logs = [project / f"r{i}.err" for i in range(2)]
        deadline = time.monotonic() + 120
        while not all("another run computes it; waiting" in f.read_text() for f in logs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
                f.read_text()[-2000:] for f in logs
            ]
            time.sleep(0.2)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [f.read_text()[-2000:] for f in logs]
    entries = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    assert sorted(e["how"] for e in entries) == ["cached", "ran"]
    assert entries[0]["key"] == entries[1]["key"] == key
    folder = project / entries[0]["dir"]
    manifest = json.loads((folder / "stage.json").read_text())
    assert manifest["key"] == key and set(manifest["outputs"]) == {"validation"}
    assert store.verify(folder) is None
    for i in range(2):  # each process recorded the key it used in its own run's record
        (recorded,) = json.loads((project / f"artifacts/runs/r{i}/run.json").read_text())["stages"]
        assert recorded["key"] == key


def test_lineage_gc_and_dry_run(project: Path) -> None:
    os.chdir(project)
    record = "artifacts/runs/a"
    v = store.run("validate", "params.yaml", "data", {}, record)
    m = store.run("embed", "params.yaml", "data", {"validate": v["key"]}, record)
    f = store.run("featurize", "params.yaml", "data", {"validate": v["key"], "embed": m["key"]}, record)
    t = store.run("train", "params.yaml", "data", {"featurize": f["key"]}, record)
    keys = {"validate": v["key"], "embed": m["key"], "featurize": f["key"], "train": t["key"]}
    e = store.run("evaluate", "params.yaml", "data", keys, record)
    assert store.lineage(Path(e["dir"]) / "evaluate.json") == {**keys, "evaluate": e["key"]}
    assert store.lineage(project / "data") is None

    # Another run with other evaluate settings: a second evaluate key beside the first, same upstream.
    (project / "other.yaml").write_text(TINY_PARAMS.replace("batch_size: 1024", "batch_size: 512"))
    e2 = store.run("evaluate", "other.yaml", "data", keys, "artifacts/runs/b")
    assert e2["key"] != e["key"] and e2["how"] == "ran"
    # A partial folder left by a dead run, and one whose key a live run holds.
    dead = Path("artifacts/stages/train/deadbeef.partial")
    dead.mkdir()
    (dead / "model.checkpoint.pt").write_bytes(b"x" * 1000)
    busy = Path("artifacts/stages/train/cafe.partial")
    busy.mkdir()

    runs.update(project / "artifacts/runs/a", started="2026-01-01T00:00:01+00:00")
    runs.update(project / "artifacts/runs/b", started="2026-01-01T00:00:02+00:00")
    code = (
        "import json, sys; from qin.runs.store import gc; print(json.dumps([[str(p), n] for p, n in "
        "gc(json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == 'dry')]))"
    )
    cmd = [sys.executable, "-c", code]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def gc(registered: list[dict[str, str]], keep: int, dry: bool) -> set[str]:
        """gc in its own process: this process's own flock would not look busy to itself."""
        args = [json.dumps(registered), str(keep), "dry" if dry else "wet"]
        out = subprocess.run([*cmd, *args], env=env, cwd=project, capture_output=True, text=True, check=True)
        return {p for p, _ in json.loads(out.stdout)}

    lock = "artifacts/stages/evaluate/{}.lock"
    with file_lock(busy.with_name("cafe.lock")):
        # Nothing registered, keep the newest run (b): its evaluate key and all upstream of it stay.
        assert gc([], keep=1, dry=True) == {e["dir"], lock.format(e["key"]), str(dead)}
        # The registered version's keys stay, no run kept: run b's evaluate key goes.
        registered = [{"evaluate": e["key"], **keys}]
        dry = gc(registered, keep=0, dry=True)
        assert dry == {e2["dir"], lock.format(e2["key"]), str(dead)}
        assert Path(e2["dir"]).exists() and dead.exists()  # a dry run removes nothing
        assert gc(registered, keep=0, dry=False) == dry
    assert not Path(e2["dir"]).exists() and not dead.exists() and busy.exists()
    for kept in (v, f, t, e):
        assert store.verify(Path(kept["dir"])) is None
    # Once no process holds its key's lock, a partial folder is removable too.
    assert gc(registered, keep=0, dry=True) == {str(busy), "artifacts/stages/train/cafe.lock"}
