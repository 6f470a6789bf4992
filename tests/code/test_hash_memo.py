"""The md5 memo (qin/runs/io.py HashMemo): a new process reads no byte of an unchanged file; a changed file
(its
size, mtime or inode) is read again; QIN_HASH_MEMO=off reads every byte; concurrent processes share it."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

HASH = """
import json, sys
from qin.runs.io import hashing_spent, tree_hash
digest = tree_hash([sys.argv[1]])
print(json.dumps({"digest": digest, **hashing_spent()}))
"""


def _hash_in_a_new_process(folder: Path, memo: Path | str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "QIN_HASH_MEMO": str(memo)}
    out = subprocess.run([sys.executable, "-c", HASH, str(folder)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _settled(path: Path, seconds_ago: float = 60) -> None:
    """Date the file back: one written in the last seconds is never memoised."""
    then = time.time() - seconds_ago
    os.utime(path, (then, then))


def test_a_new_process_reads_no_byte_of_unchanged_files(tmp_path: Path) -> None:
    folder, memo = tmp_path / "data", tmp_path / "memo" / "md5.sqlite"
    folder.mkdir()
    for i in range(3):
        (folder / f"f{i}.bin").write_bytes(os.urandom(100_000))
        _settled(folder / f"f{i}.bin")
    first = _hash_in_a_new_process(folder, memo)
    assert (first["files"], first["bytes"], first["memo"]) == (3, 300_000, 0)
    second = _hash_in_a_new_process(folder, memo)
    assert (second["files"], second["bytes"], second["memo"]) == (0, 0, 3)
    assert second["digest"] == first["digest"]

    # A file rewritten (same size, other bytes, another mtime) is read again, and its new md5 kept.
    (folder / "f1.bin").write_bytes(os.urandom(100_000))
    _settled(folder / "f1.bin", seconds_ago=30)
    third = _hash_in_a_new_process(folder, memo)
    assert (third["files"], third["memo"]) == (1, 2) and third["digest"] != first["digest"]
    # A deep check: without the memo every byte is read, and the digest is the same.
    deep = _hash_in_a_new_process(folder, "off")
    assert (deep["files"], deep["memo"], deep["digest"]) == (3, 0, third["digest"])


def test_a_file_written_just_now_is_not_memoised(tmp_path: Path) -> None:
    folder, memo = tmp_path / "data", tmp_path / "md5.sqlite"
    folder.mkdir()
    (folder / "new.bin").write_bytes(b"x" * 1000)
    for _ in range(2):
        assert _hash_in_a_new_process(folder, memo)["files"] == 1


def test_concurrent_processes_share_the_memo(tmp_path: Path) -> None:
    folder, memo = tmp_path / "data", tmp_path / "md5.sqlite"
    folder.mkdir()
    for i in range(20):
        (folder / f"f{i}.bin").write_bytes(os.urandom(10_000))
        _settled(folder / f"f{i}.bin")
    env = {**os.environ, "PYTHONPATH": str(REPO), "QIN_HASH_MEMO": str(memo)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HASH, str(folder)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({r["digest"] for r in results}) == 1
    expected = hashlib.sha256()
    for i in sorted(range(20), key=lambda i: f"f{i}.bin"):
        expected.update(f"f{i}.bin".encode())
        expected.update(hashlib.md5((folder / f"f{i}.bin").read_bytes()).hexdigest().encode())
    assert results[0]["digest"] == expected.hexdigest()
    assert _hash_in_a_new_process(folder, memo)["files"] == 0  # every md5 is in the memo


def test_a_fresh_file_its_writer_vouches_for_is_memoised_and_survives_a_rename(tmp_path: Path) -> None:
    partial, memo = tmp_path / "key.partial", tmp_path / "md5.sqlite"
    partial.mkdir()
    (partial / "out.bin").write_bytes(os.urandom(5_000))
    vouched = f"""
import json, os
from qin.runs.io import hashing_spent, tree_hash, vouch
digest = tree_hash([{str(partial)!r}])
os.rename({str(partial)!r}, {str(tmp_path / "key")!r})  # as the store renames a finished key folder
vouch({str(tmp_path / "key")!r})
print(json.dumps({{"digest": digest, **hashing_spent()}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "QIN_HASH_MEMO": str(memo)}
    out = subprocess.run([sys.executable, "-c", vouched], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)
    assert first["files"] == 1
    again = _hash_in_a_new_process(tmp_path / "key", memo)
    assert (again["files"], again["memo"], again["digest"]) == (0, 1, first["digest"])
