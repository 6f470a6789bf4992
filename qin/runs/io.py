"""Atomic writes, content hashes, inter-process locks, and the JSON form of the stages' result records.

Every stage writes its outputs under a temporary name and renames them into place only once they are
complete, so an interrupted run never leaves a half-written file that a later stage (or cache) would trust.
`file_lock` serialises processes (and threads) that touch one shared thing: a stage key's output, a model
hash being registered, an alias being moved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)
R = TypeVar("R", bound="DataclassInstance")


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


def write_tables(path: str | Path, tables: Iterable[Any]) -> int:
    """Write a stream of pyarrow tables of one schema into one parquet file (opened at the first table,
    closed when the stream ends or fails); returns the rows written. An empty stream writes no file."""
    import pyarrow.parquet as pq

    writer = None
    rows = 0
    try:
        for table in tables:
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def read_batches(pf: Any, rows: int, columns: list[str] | None = None) -> Iterator[Any]:
    """A parquet file (`pq.ParquetFile`) as pyarrow tables of at most `rows` rows, in file order, row group
    by row group: the batch reader, given the whole file, buffers far more than one batch."""
    import pyarrow as pa

    for group in range(pf.metadata.num_row_groups):
        for b in pf.iter_batches(batch_size=rows, row_groups=[group], columns=columns):
            yield pa.Table.from_batches([b])


def write_json(path: str | Path, obj: Any) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    return json.loads(path.read_text())


def record_json(record: DataclassInstance, optional: Iterable[str] = ()) -> dict[str, Any]:
    """A stage's result (a frozen dataclass) as the JSON object the stage writes: its fields in order, their
    mappings and sequences copied, the fields named in `optional` left out when None."""
    return {k: v for k, v in dataclasses.asdict(record).items() if v is not None or k not in optional}


def read_record(path: str | Path, record: type[R]) -> R:
    """The JSON object a stage wrote (`record_json`) back into its result: its keys must be the record's
    fields, every field without a default among them."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object (a {record.__name__}), found {type(raw).__name__}")
    fields = dataclasses.fields(record)
    names = [f.name for f in fields]
    unset = dataclasses.MISSING
    required = [f.name for f in fields if f.default is unset and f.default_factory is unset]
    missing, unknown = [k for k in required if k not in raw], sorted(set(raw) - set(names))
    if missing or unknown:
        raise ValueError(
            f"{path}: expected the keys of a {record.__name__} ({', '.join(names)}), found {sorted(raw)}: "
            f"missing {missing}, unknown {unknown}"
        )
    return record(**raw)


# md5s by (device, inode, size, mtime): a flow run hashes the raw data for the root key, validation and
# featurize, and each file is read once, not once per stage or per process. They are kept in this process
# (`_md5s`) and, across processes and runs, in a SQLite file (`HashMemo`), as DVC keeps its own state
# database. The key holds no path: a rename keeps it, and DVC's hard links share it. A file modified in the
# last seconds is not memoised (file times are coarser than a fast rewrite) unless its writer vouches that
# it is final (`vouch`: the store's key folders, which nothing writes again).
Key = tuple[int, int, int, int]
_md5s: dict[Key, str] = {}
_fresh: dict[Key, str] = {}  # hashed while still unsettled: memoised only once vouched for
_SETTLED_NS = 2_000_000_000
MEMO_ENV = "QIN_HASH_MEMO"  # the memo's file; "off": none, every hash reads the bytes (a deep check)


class HashMemo:
    """md5s of files by (device, inode, size, mtime_ns) in a SQLite file shared by every process of this
    user: concurrent runs read and write it safely (SQLite's locking, WAL journal). A memo that cannot be
    opened or written (a read-only home) is left out: the hashes are then read from the bytes."""

    def __init__(self, path: Path) -> None:
        self.path: Path | None = path
        self._conn: Any = None
        self._pid = -1
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        import sqlite3

        assert self.path is not None
        if self._conn is None or self._pid != os.getpid():  # a forked child opens its own
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS md5 (device INTEGER, inode INTEGER, size INTEGER,"
                " mtime_ns INTEGER, md5 TEXT NOT NULL, PRIMARY KEY (device, inode))"
            )
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get(self, key: Key) -> str | None:
        return self._do("SELECT md5 FROM md5 WHERE device=? AND inode=? AND size=? AND mtime_ns=?", key)

    def put(self, key: Key, md5: str) -> None:
        """Keep `md5` for the file `key` names (one row per file: its older version's row is replaced)."""
        self._do("INSERT OR REPLACE INTO md5 VALUES (?, ?, ?, ?, ?)", (*key, md5))

    def _do(self, sql: str, args: tuple) -> Any:
        import sqlite3

        with self._lock:
            if self.path is None:
                return None
            try:
                row = self._connect().execute(sql, args).fetchone()
            except (sqlite3.Error, OSError) as exc:
                log.debug("hash memo %s left out: %s", self.path, exc)
                self.path = None
                return None
            return row[0] if row else None


def _memo() -> HashMemo | None:
    where = os.environ.get(MEMO_ENV)
    if where == "off":
        return None
    if not where:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        where = str(Path(cache) / "qin" / "md5.sqlite")
    if _memos.get(where) is None:
        _memos[where] = HashMemo(Path(where))
    return _memos[where]


_memos: dict[str, HashMemo] = {}
# What hashing cost this process: seconds reading bytes, files and bytes read, hashes the memos gave.
_spent = {"seconds": 0.0, "files": 0, "bytes": 0, "memo": 0}


def hashing_spent() -> dict[str, float]:
    """Seconds spent hashing in this process (reading bytes and asking the memo), files and bytes read,
    and the hashes the memo gave without reading."""
    return dict(_spent)


def _key(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_hash(path: str | Path, chunk: int = 1 << 22) -> str:
    """md5 of a file's bytes (the digest DVC uses, so the two can be compared); from the memo when the
    file's device, inode, size and mtime are those it was hashed with."""
    t0 = time.perf_counter()
    try:
        return _file_hash(path, chunk)
    finally:
        _spent["seconds"] += time.perf_counter() - t0


def _file_hash(path: str | Path, chunk: int) -> str:
    st = os.stat(path)
    key, memo = _key(st), _memo()
    known = _md5s.get(key) or (memo.get(key) if memo else None)
    if known is not None:
        _spent["memo"] += 1
        _md5s[key] = known
        return known
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _spent["files"] += 1
    _spent["bytes"] += st.st_size
    if time.time_ns() - st.st_mtime_ns > _SETTLED_NS:
        _remember(key, h.hexdigest(), memo)
    else:
        _fresh[key] = h.hexdigest()
    return h.hexdigest()


def _remember(key: Key, md5: str, memo: HashMemo | None) -> None:
    _md5s[key] = md5
    if memo is not None:
        memo.put(key, md5)


def vouch(folder: str | Path) -> None:
    """Memoise the md5s this process took of `folder`'s files while they were still fresh: its writer
    vouches that nothing writes them again (the store's key folders, renamed into place once complete)."""
    memo = _memo()
    for f in Path(folder).rglob("*"):
        if f.is_file() and (md5 := _fresh.pop(key := _key(f.stat()), None)) is not None:
            _remember(key, md5, memo)


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


# Per lock file: (a re-entrant lock for this process's threads, the open file holding the flock, depth).
_held: dict[str, list[Any]] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def file_lock(
    path: str | Path, waiting: Callable[[], None] | None = None, poll_seconds: float = 0.5
) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent) while the block runs.

    An advisory `flock`: the kernel releases it when its holder exits, killed or not, so a crashed run never
    leaves a lock behind for others to wait on (a lock *file* with an expiry, Prefect's FileSystemLockManager,
    would). It works between processes on one machine and on network filesystems that support flock (NFSv4).
    Re-entrant within a process: a thread that holds it may take it again; other threads wait. `waiting`
    is called once if the lock is busy, before blocking (to log who waits for what).
    """
    import fcntl

    path = Path(path).resolve()
    key = str(path)
    with _held_guard:
        entry = _held.setdefault(key, [threading.RLock(), None, 0])
    rlock: threading.RLock = entry[0]
    rlock.acquire()
    try:
        if entry[2] == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")  # noqa: SIM115 (held open for as long as the lock is)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting()
                while True:  # poll rather than block, so a signal (SIGTERM) can still stop the process
                    time.sleep(poll_seconds)
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        continue
            except BaseException:
                f.close()
                raise
            entry[1] = f
        entry[2] += 1
        try:
            yield
        finally:
            entry[2] -= 1
            if entry[2] == 0:
                entry[1].close()  # closing the file releases the flock
                entry[1] = None
    finally:
        rlock.release()


def is_locked(path: str | Path) -> bool:
    """Whether some process holds `file_lock(path)` right now (False if the file does not exist)."""
    import fcntl

    path = Path(path)
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
