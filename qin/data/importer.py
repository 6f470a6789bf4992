"""`qin data import SRC`: bring the real MicroLens_1M_x1 files into data/.

The four parquet files are copied (the source is only read), together with any `*_truth.parquet` beside
them, into a fresh data directory that replaces the old one whole, so no file of an earlier dataset (a
synthetic truth file, say) survives next to the imported ones. Validation is the `validate` stage's job.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qin.data import schema
from qin.io import atomic_dir, file_hash, write_json


def import_files(src: str | Path, out: str | Path) -> dict:
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a directory (expected the folder holding the challenge files)")
    if src.resolve() == out.resolve():
        raise ValueError(f"{src}: source and destination are the same folder")
    expected = [f"{name}.parquet" for name in schema.FILES]
    missing = [name for name in expected if not (src / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{src}: missing {', '.join(missing)} (expected all of {', '.join(expected)}); nothing was imported"
        )
    truths = [schema.truth_file(s) for s in schema.SPLITS if (src / schema.truth_file(s)).is_file()]
    hashes: dict[str, str] = {}
    with atomic_dir(out) as tmp:
        for name in [*expected, *truths]:
            shutil.copyfile(src / name, tmp / name)
            hashes[name] = file_hash(tmp / name)
        record = {"source": str(src.resolve()), "files": hashes}
        write_json(tmp / "import.json", record)
    return record
