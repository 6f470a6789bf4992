"""A data folder rewritten in the storage the challenge's own files use, to rehearse real data without it.

The released MicroLens_1M_x1 files hold the same columns as the contract (qin/data/schema.py) but not the
same storage: test.parquet carries the submission's key `ID` (unique, not the row position) and perhaps a
dummy `label`; list columns may be written as fixed-size lists (polars does so); integers may be narrower.
`reshape_as_shipped` writes such files from a folder in the contract's storage (the synthetic generator's),
one row group at a time, so the full-size data fits in little memory. The truth files (synthetic only) are
not written: real data has none. The pipeline's readers must take either storage and give the same arrays.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qin.data import schema
from qin.runs.io import atomic_dir, write_tables

# How each column is stored in the rewritten files (a list column becomes a fixed-size list of this type).
NARROW: dict[str, pa.DataType] = {
    schema.USER: pa.int32(),
    **{level: pa.int8() for level in schema.LEVELS},
    schema.TARGET: pa.int32(),
    schema.LABEL: pa.int8(),
    schema.HISTORY: pa.int32(),
    schema.TAGS: pa.int16(),
}


def reshape_as_shipped(src: str | Path, out: str | Path, *, test_label: bool = False, seed: int = 0) -> dict:
    """Write the data files of `src` into `out` as the challenge stores them (see the module's text): a
    shuffled, non-contiguous `ID` column first in test.parquet, a 0/1 `label` of zeros there when
    `test_label`, fixed-size lists, narrower integers. Returns {"ids": test's ID column, "files": names}."""
    src, out = Path(src), Path(out)
    names = [*schema.FILES, *(n for n in schema.OPTIONAL_FILES if (src / f"{n}.parquet").exists())]
    ids = np.array([], dtype=np.int64)
    with atomic_dir(out) as tmp:
        for name in names:
            pf = pq.ParquetFile(src / f"{name}.parquet")
            if name == "test":
                n = pf.metadata.num_rows
                rng = np.random.default_rng(seed)
                ids = np.sort(rng.choice(10 * n + 10, size=n, replace=False))[rng.permutation(n)] + 1
            _rewrite(pf, tmp / f"{name}.parquet", ids if name == "test" else None, test_label)
    return {"ids": ids, "files": [f"{n}.parquet" for n in names]}


def _rewrite(pf: pq.ParquetFile, path: Path, ids: np.ndarray | None, label: bool) -> None:
    write_tables(path, _reshaped(pf, ids, label))


def _reshaped(pf: pq.ParquetFile, ids: np.ndarray | None, label: bool) -> Iterator[pa.Table]:
    row = 0
    for group in range(pf.metadata.num_row_groups):
        table = _narrow(pf.read_row_group(group))
        if ids is not None:
            table = table.add_column(0, schema.SUBMISSION_ID, pa.array(ids[row : row + table.num_rows]))
            if label:
                table = table.append_column(schema.LABEL, pa.array(np.zeros(table.num_rows, np.int8)))
        row += table.num_rows
        yield table


def _narrow(table: pa.Table) -> pa.Table:
    """Each list column as a fixed-size list (every row of a column has one length: the contract's), and
    the integer columns in NARROW at their narrower type."""
    for i, field in enumerate(table.schema):
        col = table.column(i).combine_chunks()
        if pa.types.is_list(field.type):
            lengths = np.unique(pc.list_value_length(col).to_numpy())
            if len(lengths) != 1:
                continue  # not one length: stays a variable-size list
            values = pc.list_flatten(col)
            values = values.cast(NARROW.get(field.name, values.type))
            col = pa.FixedSizeListArray.from_arrays(values, int(lengths[0]))
        elif field.name in NARROW:
            col = col.cast(NARROW[field.name])
        table = table.set_column(i, field.name, col)
    return table


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m qin.data.shipped",
        description="Rewrite a data folder as the challenge stores its files.",
    )
    parser.add_argument("src", type=Path, help="a data folder in the contract's storage (e.g. data/)")
    parser.add_argument("out", type=Path, help="the folder to write (replaced whole)")
    parser.add_argument("--test-label", action="store_true", help="give test.parquet a dummy label column")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the shuffled ID column")
    args = parser.parse_args(argv)
    done = reshape_as_shipped(args.src, args.out, test_label=args.test_label, seed=args.seed)
    print(f"wrote {', '.join(done['files'])} into {args.out} ({len(done['ids']):,} test IDs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
