"""Benchmark (prints, asserts nothing): the valid AUC of one model scored in fp32 and in bf16.

What decides qin.serving.inference.SCORING_PRECISION, the one precision of evaluate (and the valid scores
that drive
early stopping), predict, serving and bench/throughput.py: bf16 only if its valid AUC stays within 1e-4 of
fp32's on the small data. The model is the `train` section of --params (the cpu preset by default) trained
on --data (the default small synthetic data, generated into the work directory when --data does not exist),
or --model, a package already trained; both precisions score the same package on this machine's device.

    python bench/scoring_precision.py                       # train the cpu preset on the small data, compare
    python bench/scoring_precision.py --model artifacts/... # compare on a package already trained
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from common import parser, prepare

TOLERANCE = 1e-4  # the largest valid AUC loss that bf16 scoring may cost


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", type=Path, default=None, help="a model package (default: train one)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args()
    if not args.data.exists():
        from qin.data.synth import synthesize
        from qin.settings.sections import DataConfig

        args.data = Path(args.workdir or Path.cwd() / ".bench-data") / "data"
        if not (args.data / "train.parquet").exists():
            synthesize(args.data, DataConfig(), workers=2)
    _, cfg, work = prepare(args, "scoring-precision")

    from qin.featurize import Features
    from qin.serving.inference import SCORING_PRECISION, load_package
    from qin.training.metrics import log_loss, roc_auc

    model = args.model
    if model is None:
        from qin.train import train

        model = work / "model"
        if not (model / "model.json").exists():
            summary = train(work / "features", model, work / "train.json", cfg)
            print(f"trained {cfg.model.name} ({cfg.preset} preset): best epoch {summary.best_epoch}, "
                  f"valid AUC {summary.best_valid_auc:.5f}")  # fmt: skip
    valid = {k: np.asarray(v) for k, v in Features(work / "features").split("valid").items()}
    labels = valid.pop("label")
    scores = {}
    for precision in ("fp32", "bf16"):
        scorer = load_package(model, device=args.device, precision=precision)
        scorer.predict(valid)  # warm-up
        t = time.perf_counter()
        scores[precision] = probs = scorer.predict(valid)
        seconds = time.perf_counter() - t
        print(f"{precision}: valid AUC {roc_auc(labels, probs):.6f}, logloss {log_loss(labels, probs):.6f}, "
              f"{len(labels) / seconds:,.0f} rows/s on {scorer.device}")  # fmt: skip
    gap = roc_auc(labels, scores["fp32"]) - roc_auc(labels, scores["bf16"])
    worst = float(np.abs(scores["fp32"] - scores["bf16"]).max())
    verdict = "bf16 allowed" if abs(gap) <= TOLERANCE else "fp32"
    print(f"AUC fp32 - bf16 = {gap:+.2e} (tolerance {TOLERANCE:.0e}); largest probability difference "
          f"{worst:.2e}")  # fmt: skip
    print(f"by the rule: {verdict}; qin.serving.inference.SCORING_PRECISION is {SCORING_PRECISION} "
          f"({len(labels):,} valid rows)")  # fmt: skip


if __name__ == "__main__":
    main()
