"""`qin` command line: one subcommand per stage, each a small main() around a pure stage function.

Heavy imports (torch, great_expectations, MLflow through the registry plug-in) happen inside the
subcommand that needs them, so `qin --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from qin import layout
from qin.config import Params, load_params


def _synth(args: argparse.Namespace, params: Params) -> None:
    from qin.data.synth import synthesize

    summary = synthesize(args.out, args.preset or params.data.preset, args.seed or params.data.seed)
    print(
        f"wrote {args.out}/: preset {summary['preset']}, seed {summary['seed']}, "
        f"valid oracle AUC {summary['valid_oracle_auc']:.4f}, "
        f"train positive rate {summary['train_positive_rate']:.3f}"
    )


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
    print(f"model package in {args.out}/ (best epoch {s['best_epoch']}, valid AUC {s['best_valid_auc']:.4f})")


def _evaluate(args: argparse.Namespace, params: Params) -> None:
    from qin.evaluate import evaluate

    m = evaluate(args.features, args.model, args.out, params.evaluate)
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))


def _register(args: argparse.Namespace, params: Params) -> None:
    from qin.register import register

    r = register(args.model, args.train_metrics, args.metrics, args.validation, args.out, params)
    print(
        f"MLflow run {r['run_id']}; {r['model_name']} version {r['version']}"
        f"{'' if r['newly_registered'] else ' (already registered)'}; "
        f"'{r['alias']}': {'yes' if r['has_alias'] else 'no'} ({r['reason']})"
    )


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

    data = sub.add_parser("data", help="create or import the raw data in data/")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "synth", help="write synthetic MicroLens_1M_x1 data with known click probabilities"
    )
    p.add_argument("--out", type=Path, default=layout.DATA)
    p.add_argument("--preset", choices=["tiny", "small", "full"], help="default: params data.preset")
    p.add_argument("--seed", type=int, help="default: params data.seed")
    p.set_defaults(fn=_synth)

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

    p = stage("register", _register, "log the run and register the model; move the alias if it is better")
    p.add_argument("--model", type=Path, default=layout.MODEL)
    p.add_argument("--train-metrics", type=Path, default=layout.TRAIN_METRICS)
    p.add_argument("--metrics", type=Path, default=layout.EVAL_METRICS)
    p.add_argument("--validation", type=Path, default=layout.VALIDATION)
    p.add_argument("--out", type=Path, default=layout.REGISTRATION)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("qin").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        params = load_params(args.params)
        args.fn(args, params)
    except Exception as exc:  # a stage's own errors name the file/column/key; show them without a traceback
        if args.verbose or not isinstance(exc, ValueError | FileNotFoundError | KeyError | RuntimeError):
            raise
        print(f"qin {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0
