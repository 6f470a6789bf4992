"""`qin data import SRC`: bring the real MicroLens_1M_x1 files into data/.

The four parquet files are copied (the source is only read), together with item_feature.parquet and any
`*_truth.parquet` beside them, into a fresh data directory that replaces the old one whole, so no file of
an earlier dataset (a synthetic truth file, say) survives next to the imported ones. Validating the four
files is the `validate` stage's job; item_feature.parquet, which no stage reads yet, is checked here by the
same gate, so that a malformed one is refused by name before anything is imported.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from qin.data import schema
from qin.runs.io import atomic_dir, file_hash, write_json


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
            f"{src}: missing {', '.join(missing)} (expected all of {', '.join(expected)}); "
            "nothing was imported"
        )
    optional = [f"{name}.parquet" for name in schema.OPTIONAL_FILES if (src / f"{name}.parquet").is_file()]
    for name in optional:
        _check_optional(src, name.removesuffix(".parquet"))
    truth_names = [schema.truth_file(s) for s in schema.SPLITS] + [schema.ITEM_TRUTH_FILE]
    truths = [name for name in truth_names if (src / name).is_file()]
    hashes: dict[str, str] = {}
    with atomic_dir(out) as tmp:
        for name in [*expected, *optional, *truths]:
            shutil.copyfile(src / name, tmp / name)
            hashes[name] = file_hash(tmp / name)
        record = {"source": str(src.resolve()), "files": hashes}
        write_json(tmp / "import.json", record)
    return record


def _check_optional(src: Path, name: str) -> None:
    """Refuse an optional file that breaks the contract (the gate's message for each failure)."""
    from qin.settings.sections import ValidateConfig
    from qin.validate import ValidationError, file_failures

    try:
        n_items = pq.read_metadata(src / f"{schema.ITEM_FILE}.parquet").num_rows - 1
    except Exception as exc:
        raise ValueError(
            f"{src / f'{schema.ITEM_FILE}.parquet'}: expected a readable parquet file (the item ids that "
            f"{name}.parquet must match), found {type(exc).__name__}: {exc}; nothing was imported"
        ) from exc
    failures = file_failures(src, name, n_items, ValidateConfig())
    if failures:
        raise ValidationError(
            f"{src / f'{name}.parquet'}: refused, nothing was imported:\n"
            + "\n".join(f"  - {x}" for x in failures)
        )
