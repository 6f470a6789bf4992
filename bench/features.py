"""Benchmark (prints, asserts nothing): the shipped feature tables against each other.

For each table (params/features/<name>.yaml: default, user_id, modalities unless --tables says otherwise)
it validates and featurizes --data with that table, trains the model of params.yaml's train section with
the same budget, and prints one row: valid AUC, logloss and gAUC, the oracle AUC, parameters, the size of
the model package on disk, and seconds. Only the `features` setting differs between the rows.

    python bench/features.py                         # data/ (the small preset), params.yaml's train
    python bench/features.py --epochs 4 --tables default user_id
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import yaml
from common import parser

from qin.evaluate import evaluate
from qin.featurize import featurize
from qin.settings.params import load_params
from qin.train import train
from qin.validate import validate

TABLES = Path(__file__).resolve().parents[1] / "params" / "features"


def run_table(table: Path, args: argparse.Namespace, work: Path) -> dict:
    """Validate, featurize, train and evaluate with `table`; the row of figures."""
    raw = yaml.safe_load(args.params.read_text()) or {}
    raw["features"] = str(table)
    if args.epochs is not None:
        raw.setdefault("train", {})["epochs"] = args.epochs
    out = work / table.stem
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(out / "params.yaml")
    started = time.perf_counter()
    validate(args.data, out / "validate", params.validate, params.features)
    featurize(args.data, out / "validate", out / "features", params.featurize, features=params.features)
    summary = train(out / "features", out / "model", out / "train.json", params.train)
    metrics = evaluate(out / "features", out / "model", out / "evaluate.json", params.evaluate)
    size = sum(p.stat().st_size for p in (out / "model").rglob("*") if p.is_file())
    return {
        "table": table.stem,
        **metrics.to_json(),
        "parameters": summary.parameters,
        "package_mb": size / 1e6,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--tables", nargs="*", default=["default", "user_id", "modalities"])
    args = cli.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qin-features-"))
    rows = []
    for name in args.tables:
        rows.append(run_table(TABLES / f"{name}.yaml", args, work))
        r = rows[-1]
        print(
            f"{name:<12} AUC {r['valid_auc']:.4f}  {r['package_mb']:.1f} MB  {r['seconds']:.0f} s", flush=True
        )
    print()
    print("| table | valid AUC | logloss | gAUC | oracle AUC | parameters | package MB | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        oracle = f"{r['valid_oracle_auc']:.4f}" if "valid_oracle_auc" in r else "n/a"
        figures = f"{r['valid_auc']:.4f} | {r['valid_logloss']:.4f} | {r['valid_gauc']:.4f} | {oracle}"
        print(
            f"| {r['table']} | {figures} | {r['parameters']} | {r['package_mb']:.1f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
