"""Content-addressed stage outputs: what flow runs share, and the only thing they share.

A stage's outputs live in `artifacts/stages/<stage>/<key>/` (the key: qin/runs/pipeline.py), beside a
`stage.json` that records the key, the identities of its inputs, the keys of every stage upstream of it,
and the content hash of each output. The folder appears whole or not at all: the stage writes into
`<key>.partial/`, which is renamed to `<key>/` once every output is there. A cache hit is "the key's folder
exists and its outputs still hash to what stage.json says".

Runs with different settings have different keys, so they never share a folder; runs with the same
settings share one, and one of them computes it: `run` holds a lock per key (`<key>.lock`, an flock the
kernel releases if its holder dies), checks the folder again once it holds it, and only then runs the
stage. The others wait for the lock and find the folder. A killed run leaves `<key>.partial/` behind; the
next run of that key continues in it (the trainer resumes its checkpoint there).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qin.runs import layout, pipeline
from qin.runs import records as runs
from qin.runs.io import file_lock, is_locked, read_json, tree_hash, vouch, write_json
from qin.settings.params import Params, load_params

log = logging.getLogger(__name__)

MANIFEST = "stage.json"


def key_dir(stage: str, key: str, root: str | Path = layout.STORE) -> Path:
    return Path(root) / stage / key


def verify(folder: Path) -> str | None:
    """Why `folder` (a key's folder) cannot be trusted, or None when every output hashes as recorded."""
    if not (folder / MANIFEST).is_file():
        return f"{folder}: no {MANIFEST}" if folder.exists() else f"{folder}: not found"
    manifest = read_json(folder / MANIFEST)
    for name, expected in manifest["outputs"].items():
        path = folder / name
        if not path.exists():
            return f"{path}: missing"
        if tree_hash([path]) != expected:
            return f"{path}: changed since it was written (content hash differs from {MANIFEST})"
    return None


def run(
    name: str,
    params_file: str | Path,
    data_dir: str | Path,
    upstream: dict[str, str],
    record: str | Path | None = None,
    root: str | Path = layout.STORE,
    model_dir: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Run stage `name` for a flow run, or reuse its key's outputs; return what happened.

    `upstream`: the keys of the stages already run (by stage name). `model_dir`: the model package of a
    stage that reads one (`predict`), identified by its content hash; `extra`: more arguments for the stage
    function (pipeline.call). A content-addressed stage returns
    {"stage", "key", "dir", "how": "ran" | "cached", "seconds"}; one that is not (register) writes its
    outputs into `record` and returns the stage function's result (register: a `Registration`). With
    `record` (the flow run's record folder) the stage's entry is added to it.
    """
    s = pipeline.stage(name)
    params = load_params(params_file)
    sources = {pipeline.DATA: Path(data_dir), **({pipeline.MODEL: Path(model_dir)} if model_dir else {})}
    identities, paths = _inputs(s, sources, upstream, Path(root))
    if not s.content_addressed:
        if record is None:
            raise ValueError(f"stage '{name}' writes outside the store: it needs the run's record folder")
        paths |= {o.arg: Path(record) / o.name for o in s.outputs}
        return pipeline.call(s, paths, params, extra=extra)
    key = pipeline.stage_key(s, params, identities, extra)
    folder = key_dir(name, key, root)
    if verify(folder) is None:
        entry = _entry(s, key, folder, "cached")
    else:
        lock = folder.with_name(f"{key}.lock")
        with file_lock(lock, waiting=lambda: log.info("%s %s: another run computes it; waiting", name, key)):
            if verify(folder) is None:  # the run that held the lock wrote it
                entry = _entry(s, key, folder, "cached")
            else:
                entry = _compute(s, key, folder, params, identities, paths, upstream, extra)
    if record is not None:
        runs.add_stage(Path(record), entry)
    return entry


def _inputs(
    s: pipeline.Stage, sources: dict[str, Path], upstream: dict[str, str], root: Path
) -> tuple[dict[str, str], dict[str, Path]]:
    """Each input's identity (by source) and path: the raw data and a model package (`sources`) by content
    hash, a stage's output by key."""
    identities: dict[str, str] = {}
    paths: dict[str, Path] = {}
    for i in s.inputs:
        if i.stage in (pipeline.DATA, pipeline.MODEL):
            if i.stage not in sources:
                raise ValueError(f"stage '{s.name}' reads a model package: expected its path, found none")
            identities[i.stage] = tree_hash(i.identity_paths(sources[i.stage]))
            paths[i.arg] = sources[i.stage]
            continue
        if i.stage not in upstream:
            raise ValueError(
                f"stage '{s.name}' reads '{i.stage}/{i.output}': expected the key of stage '{i.stage}' "
                f"among the upstream keys, found {sorted(upstream)}"
            )
        identities[f"{i.stage}/{i.output}"] = upstream[i.stage]
        paths[i.arg] = key_dir(i.stage, upstream[i.stage], root) / i.output
    return identities, paths


def _compute(
    s: pipeline.Stage,
    key: str,
    folder: Path,
    params: Params,
    identities: dict[str, str],
    paths: dict[str, Path],
    upstream: dict[str, str],
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    if folder.exists():  # outputs that no longer verify: recompute rather than trust them
        log.warning("%s %s: %s; computing it again", s.name, key, verify(folder))
        _remove(folder)
    partial = folder.with_name(f"{key}.partial")
    resumed = partial.exists()
    partial.mkdir(parents=True, exist_ok=True)
    log.info("%s %s: %s", s.name, key, f"continuing in {partial}" if resumed else "running")
    t0 = time.perf_counter()
    pipeline.call(s, paths | {o.arg: partial / o.name for o in s.outputs}, params, key=key, extra=extra)
    seconds = time.perf_counter() - t0
    declared = {o.name for o in s.outputs}
    for leftover in {p.name for p in partial.iterdir()} - declared:  # temporaries, a finished checkpoint
        _remove(partial / leftover)
    missing = sorted(declared - {p.name for p in partial.iterdir()})
    if missing:
        raise RuntimeError(f"stage '{s.name}' did not write its outputs {missing} into {partial}")
    lineage = {i.stage: upstream[i.stage] for i in s.inputs if i.stage not in (pipeline.DATA, pipeline.MODEL)}
    for upstream_stage, upstream_key in list(lineage.items()):
        lineage |= read_json(key_dir(upstream_stage, upstream_key, folder.parents[1]) / MANIFEST)["upstream"]
    write_json(
        partial / MANIFEST,
        {
            "stage": s.name,
            "key": key,
            "inputs": identities,
            "upstream": lineage,
            "outputs": {name: tree_hash([partial / name]) for name in sorted(declared)},
            "code": pipeline.code_hash(s),
            "settings": pipeline.settings(s, params),
            "seconds": round(seconds, 3),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "by": f"{socket.gethostname()}:{os.getpid()}",
        },
    )
    os.rename(partial, folder)
    vouch(folder)  # its files are final: a later run need not read them again to verify them
    return _entry(s, key, folder, "ran")


def _entry(s: pipeline.Stage, key: str, folder: Path, how: str) -> dict[str, Any]:
    manifest = read_json(folder / MANIFEST)
    return {"stage": s.name, "key": key, "dir": str(folder), "how": how, "seconds": manifest["seconds"]}


def lineage(path: str | Path) -> dict[str, str] | None:
    """The stage keys behind a path inside a key's folder ({stage: key}, its own and every upstream one),
    or None when the path does not come from the store (a DVC workspace path)."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        manifest = folder / MANIFEST
        if manifest.is_file():
            info = read_json(manifest)
            return {info["stage"]: info["key"], **info["upstream"]}
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def gc(
    referenced: list[dict[str, str]],
    keep: int,
    dry_run: bool = False,
    root: str | Path = layout.STORE,
    runs_root: str | Path = layout.RUNS,
) -> list[tuple[Path, int]]:
    """Remove the key folders nothing refers to; return each removed (or, with `dry_run`, removable) path
    with its size in bytes.

    Kept: the keys in `referenced` (the registered versions' stage keys; an alias always names a
    registered version), those the `keep` most recently started flow runs used, and every key upstream of
    a kept one. A `<key>.partial/` folder is removed unless a run holds its key's lock, and a lock file
    once its key has no folder left.
    """
    root = Path(root)
    live = {(stage, key) for keys in referenced for stage, key in keys.items()}
    for record in runs.recent(keep, runs_root):
        live |= {(e["stage"], e["key"]) for e in record.get("stages", []) if "key" in e}
    for stage, key in list(live):
        manifest = key_dir(stage, key, root) / MANIFEST
        if manifest.is_file():
            live |= set(read_json(manifest)["upstream"].items())
    removed: list[tuple[Path, int]] = []
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        stage, key = folder.parent.name, folder.name.removesuffix(".partial")
        if (stage, key) in live or is_locked(folder.with_name(f"{key}.lock")):
            continue
        removed.append((folder, _size(folder)))
    gone = {path for path, _ in removed}
    for lock in sorted(root.glob("*/*.lock")):
        key = lock.name.removesuffix(".lock")
        remains = [p for p in (lock.with_name(key), lock.with_name(f"{key}.partial")) if p.exists()]
        if not set(remains) - gone and not is_locked(lock):
            removed.append((lock, 0))
    if not dry_run:
        for path, _ in removed:
            _remove(path)
    return removed


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
