"""Atomic writes and content hashes.

Every stage writes its outputs under a temporary name and renames them into place only once they are
complete, so an interrupted run never leaves a half-written file that a later stage (or cache) would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def write_json(path: str | Path, obj: Any) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    return json.loads(path.read_text())


def file_hash(path: str | Path, chunk: int = 1 << 22) -> str:
    """md5 of a file's bytes (the digest DVC uses, so the two can be compared)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_hash(paths: Iterable[str | Path]) -> str:
    """One digest over files and directories (relative names and contents), in sorted order."""
    h = hashlib.sha256()
    for root in sorted(Path(p) for p in paths):
        if not root.exists():
            raise FileNotFoundError(f"{root}: not found")
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            rel = f.relative_to(root) if root.is_dir() else Path(f.name)
            h.update(str(rel).encode())
            h.update(file_hash(f).encode())
    return h.hexdigest()
