"""Benchmark (prints, asserts nothing): the paper's model table on synthetic data.

Trains QIN, its five ablations, DIN, DCNv3 and SDCNv3 with the same budget (epochs, batch, learning rate,
history length, early stopping) on the featurized data and prints one table: valid AUC, logloss, gAUC, the
oracle AUC, parameters and seconds. The models and the table come from qin/ablation.py, which the
`qin-ablation` flow uses too.

    python bench/accuracy.py       # data/ (the small preset) with the train settings of params.yaml
    python bench/accuracy.py --epochs 4 --only qin din
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from pathlib import Path

from qin.ablation import no_history_bound, run_variant, select, slug, table_markdown, variants
from qin.config import load_params
from qin.featurize import featurize
from qin.validate import validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="default: params train.epochs")
    parser.add_argument("--only", nargs="*", help="names (case-insensitive) of the variants to run")
    parser.add_argument("--din-challenge", action="store_true", help="DIN at the challenge's full width")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    cfg = params.train if args.epochs is None else dataclasses.replace(params.train, epochs=args.epochs)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qin-accuracy-"))
    validate(args.data, work / "validate", params.validate)
    featurize(args.data, work / "validate", work / "features", params.featurize)

    todo = select(variants(cfg.model, args.din_challenge), args.only)
    print(f"data {args.data}, {cfg.epochs} epochs max, batch {cfg.batch_size}, lr {cfg.learning_rate}, "
          f"history {cfg.max_len or params.featurize.max_len}, early stop after {cfg.patience}")  # fmt: skip
    rows = []
    for name, model in todo.items():
        rows.append(run_variant(name, work / "features", work / slug(name), cfg, model, params.evaluate))
        r = rows[-1]
        print(
            f"{name:<16} AUC {r['valid_auc']:.4f}  best epoch {r['best_epoch']}  {r['seconds']:.0f} s",
            flush=True,
        )
    print()
    print(table_markdown(rows, no_history_bound(args.data)))


if __name__ == "__main__":
    main()
