"""Benchmark (prints, asserts nothing): the fast paths train to the same model as the reference paths.

Trains the same settings (params.yaml `train`) on the featurized data three times and prints the valid AUC
and logloss of each, their difference from the reference, and the training throughput:
    reference  attention in the textbook order, every history position encoded, float32
    fast fp32  attention in the fused order, each distinct item of a batch encoded once, float32
    fast       the same with the configured precision (auto: bf16 where the device has native bf16)
Target (issue 5): fast paths on and off give the same valid AUC within +-0.002.

    python bench/fastpaths.py --data data --epochs 4        # data/: the small preset
"""

from __future__ import annotations

from common import parser, prepare

from qin.models.blocks import ItemEncoder
from qin.models.qin import QINConfig
from qin.settings.sections import replace
from qin.train import train


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--threads", type=int, default=None, help="default: params train.threads")
    args = cli.parse_args()
    _, cfg, work = prepare(args, "fastpaths")
    cfg = cfg if args.threads is None else replace(cfg, threads=args.threads)
    assert isinstance(cfg.model, QINConfig), "the fast paths are QIN's"

    variants = {
        "reference": (False, "reference", "fp32"),
        "fast fp32": (True, "fused", "fp32"),
        "fast": (True, "fused", cfg.precision),
    }
    print(f"data {args.data}, {cfg.epochs} epochs max, batch {cfg.batch_size}, seed {cfg.seed}", flush=True)
    results = {}
    for name, (distinct, order, precision) in variants.items():
        ItemEncoder.distinct = distinct
        run_cfg = replace(cfg, precision=precision, model=replace(cfg.model, attention_order=order))
        slug = name.replace(" ", "_")
        s = train(work / "features", work / slug, work / f"{slug}.json", run_cfg)
        best = next(h for h in s.history if h["epoch"] == s.best_epoch)
        speed = sum(h["train_samples_per_second"] for h in s.history) / len(s.history)
        results[name] = (best["valid_auc"], best["valid_logloss"], s.best_epoch, s.precision, speed)
        print(f"done: {name}", flush=True)
    ItemEncoder.distinct = True
    ref_auc = results["reference"][0]
    print(f"\n{'paths':<10} {'precision':<9} {'best epoch':>10} {'valid AUC':>9} {'logloss':>8} "
          f"{'AUC - ref':>10} {'train samples/s':>15}")  # fmt: skip
    for name, (auc, ll, epoch, precision, speed) in results.items():
        diff = auc - ref_auc
        print(f"{name:<10} {precision:<9} {epoch:>10} {auc:9.4f} {ll:8.4f} {diff:+10.4f} {speed:15,.0f}")


if __name__ == "__main__":
    main()
