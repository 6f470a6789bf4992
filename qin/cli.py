"""`qin` command line: one subcommand per stage, each a small main() around a pure stage function.

Heavy imports (torch, great_expectations, MLflow through the registry plug-in) happen inside the
subcommand that needs them, so `qin --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from qin import layout
from qin.config import Params, load_params


def _synth(args: argparse.Namespace, params: Params) -> None:
    from qin.data.synth import synthesize

    cfg = dataclasses.replace(
        params.data,
        preset=args.preset or params.data.preset,
        seed=params.data.seed if args.seed is None else args.seed,
    )
    s = synthesize(args.out, cfg)
    print(
        f"wrote {args.out}/: preset {cfg.preset}, seed {cfg.seed}; train positive rate "
        f"{s['train_positive_rate']:.3f}; valid AUC bounds: oracle {s['valid_oracle_auc']:.4f}, "
        f"without the history {s['valid_no_history_auc']:.4f}"
    )
    if not args.no_dvc:
        track_with_dvc(args.out)


def _import(args: argparse.Namespace, params: Params) -> None:
    from qin.data.importer import import_files

    record = import_files(args.src, args.out)
    print(f"imported {len(record['files'])} files from {args.src} into {args.out}/")
    if not args.no_dvc:
        track_with_dvc(args.out)


def track_with_dvc(path: Path) -> None:
    """`dvc add` the data folder when this project uses DVC, so data.dvc names the new version."""
    if not Path(".dvc").is_dir():
        return
    cmd = [sys.executable, "-m", "dvc", "add", "-q", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"dvc add {path} failed: {out.stderr.strip() or out.stdout.strip()}")
    print(f"{path}.dvc updated (commit it to record this data version)")


def _validate(args: argparse.Namespace, params: Params) -> None:
    from qin.validate import validate

    validate(args.data, args.out, params.validate)
    print(f"validation passed: report in {args.out}/")


def _featurize(args: argparse.Namespace, params: Params) -> None:
    from qin.featurize import featurize

    m = featurize(args.data, args.validation, args.out, params.featurize)
    print(f"features in {args.out}/ ({len(m['arrays'])} arrays)")


def _train(args: argparse.Namespace, params: Params) -> None:
    from qin.train import train

    s = train(args.features, args.out, args.metrics, params.train)
    if "model_hash" in s:  # the process that wrote the package (process 0 under torchrun)
        best = f"best epoch {s['best_epoch']}, valid AUC {s['best_valid_auc']:.4f}"
        print(f"model package in {args.out}/ ({best})")


def _evaluate(args: argparse.Namespace, params: Params) -> None:
    from qin.evaluate import evaluate

    m = evaluate(
        args.features, args.model, args.out, params.evaluate, args.plots, args.train_metrics, args.plot_data
    )
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))


def _register(args: argparse.Namespace, params: Params) -> None:
    from qin.register import register

    r = register(args.model, args.train_metrics, args.metrics, args.validation, args.out, params, args.plots)
    print(
        f"MLflow run {r['run_id']}; {r['model_name']} version {r['version']}"
        f"{'' if r['newly_registered'] else ' (already registered)'}; "
        f"'{r['alias']}': {'yes' if r['has_alias'] else 'no'} ({r['reason']})"
    )


def _promote(args: argparse.Namespace, params: Params) -> None:
    from qin.register import promote

    r = promote(params.register, args.to, args.version, force=args.force)
    if r["moved"]:
        previous = f"from version {r['previous']}" if r["previous"] else "(no previous holder)"
        print(
            f"{r['model_name']} version {r['version']} now holds '{r['alias']}' {previous}: {r['reason']}; "
            f"recorded as version tag {r['history_tag']}"
        )
    else:
        print(f"{r['model_name']}: {r['reason']}; nothing to do")


def _show_params(args: argparse.Namespace, params: Params) -> None:
    from qin.config import to_yaml

    print(to_yaml(params), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qin", description="QIN pipeline: data, validate, featurize, train, evaluate, register"
    )
    parser.add_argument(
        "--params", type=Path, default=layout.PARAMS, help="settings file (default: %(default)s)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(fn=fn)
        return p

    stage("params", _show_params, "print the resolved settings (presets applied, defaults filled in)")

    data = sub.add_parser("data", help="create or import the raw data in data/")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "synth", help="write synthetic MicroLens_1M_x1 data with known click probabilities"
    )
    p.add_argument("--out", type=Path, default=layout.DATA)
    p.add_argument("--preset", choices=["tiny", "small", "full"], help="default: params data.preset")
    p.add_argument("--seed", type=int, help="default: params data.seed")
    p.add_argument("--no-dvc", action="store_true", help="do not run `dvc add` on the output")
    p.set_defaults(fn=_synth)
    p = data_sub.add_parser("import", help="copy the real challenge files (four parquet files) into data/")
    p.add_argument("src", type=Path, help="folder holding train/valid/test/item_info.parquet")
    p.add_argument("--out", type=Path, default=layout.DATA)
    p.add_argument("--no-dvc", action="store_true", help="do not run `dvc add` on the output")
    p.set_defaults(fn=_import)

    p = stage("validate", _validate, "check the raw data against the contract (great-expectations)")
    p.add_argument("--data", type=Path, default=layout.DATA)
    p.add_argument("--out", type=Path, default=layout.VALIDATION)

    p = stage("featurize", _featurize, "validated parquet -> arrays for training")
    p.add_argument("--data", type=Path, default=layout.DATA)
    p.add_argument("--validation", type=Path, default=layout.VALIDATION)
    p.add_argument("--out", type=Path, default=layout.FEATURES)

    p = stage("train", _train, "train the model; write a self-contained model package")
    p.add_argument("--features", type=Path, default=layout.FEATURES)
    p.add_argument("--out", type=Path, default=layout.MODEL)
    p.add_argument("--metrics", type=Path, default=layout.TRAIN_METRICS)

    p = stage("evaluate", _evaluate, "AUC and logloss on valid (and the oracle AUC when known)")
    p.add_argument("--features", type=Path, default=layout.FEATURES)
    p.add_argument("--model", type=Path, default=layout.MODEL)
    p.add_argument("--out", type=Path, default=layout.EVAL_METRICS)
    p.add_argument("--plots", type=Path, default=layout.PLOTS)
    p.add_argument("--train-metrics", type=Path, default=layout.TRAIN_METRICS, help="for the learning curves")
    p.add_argument("--plot-data", type=Path, default=layout.PLOT_DATA, help="curves as CSV, for `dvc plots`")

    p = stage("register", _register, "log the run and register the model; move the alias if it is better")
    p.add_argument("--model", type=Path, default=layout.MODEL)
    p.add_argument("--train-metrics", type=Path, default=layout.TRAIN_METRICS)
    p.add_argument("--metrics", type=Path, default=layout.EVAL_METRICS)
    p.add_argument("--validation", type=Path, default=layout.VALIDATION)
    p.add_argument("--plots", type=Path, default=layout.PLOTS)
    p.add_argument("--out", type=Path, default=layout.REGISTRATION)

    p = stage(
        "promote",
        _promote,
        "give a registered version the staging alias (if it beats the holder by register.min_delta on the "
        "same data) or, explicitly, production (alias register.production_alias)",
    )
    p.add_argument("--to", required=True, choices=["staging", "production"])
    p.add_argument("--version", help="the model version (default: the newest)")
    p.add_argument(
        "--force",
        action="store_true",
        help="override the AUC and data-version rules (recorded in the history); never missing artifacts",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("qin").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        # `data import` reads no settings; every other command does.
        params = Params() if args.fn is _import else load_params(args.params)
        args.fn(args, params)
    except Exception as exc:  # a stage's own errors name the file/column/key; show them without a traceback
        if args.verbose or not isinstance(exc, ValueError | FileNotFoundError | KeyError | RuntimeError):
            raise
        command = " ".join(filter(None, [args.command, getattr(args, "data_command", None)]))
        print(f"qin {command}: error: {exc}", file=sys.stderr)
        return 1
    return 0
