"""What the training benchmarks share: their common arguments, and the data validated and featurized once."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from qin.featurize import featurize
from qin.settings.params import Params, TrainConfig, load_params
from qin.settings.sections import replace
from qin.validate import validate


def parser(doc: str | None) -> argparse.ArgumentParser:
    """--params, --data, --workdir and --epochs; the caller adds its own."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    p.add_argument("--epochs", type=int, default=None, help="default: params train.epochs")
    return p


def prepare(args: argparse.Namespace, name: str) -> tuple[Params, TrainConfig, Path]:
    """The settings (with --epochs applied) and a work directory holding `features/` made from --data.

    A work directory that already holds the features is reused as it is.
    """
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    cfg = params.train if args.epochs is None else replace(params.train, epochs=args.epochs)
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"qin-{name}-"))
    if not (work / "features" / "manifest.json").exists():
        validate(args.data, work / "validate", params.validate)
        featurize(args.data, work / "validate", work / "features", params.featurize)
    return params, cfg, work
