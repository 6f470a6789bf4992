"""Benchmark (prints, asserts nothing): the paper's model table on synthetic data.

Trains QIN, its five ablations, DIN, DCNv3 and SDCNv3 with the same budget (epochs, batch, learning rate,
history length, early stopping) on the featurized data and prints one table: valid AUC, logloss, gAUC, the
oracle AUC, parameters and seconds. The models and the table come from qin/training/ablation.py, which the
`qin-ablation` flow uses too.

    python bench/accuracy.py       # data/ (the small preset) with the train settings of params.yaml
    python bench/accuracy.py --epochs 4 --only qin din
"""

from __future__ import annotations

from common import parser, prepare

from qin.training.ablation import no_history_bound, run_variant, select, slug, table_markdown, variants


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--only", nargs="*", help="names (case-insensitive) of the variants to run")
    cli.add_argument("--din-challenge", action="store_true", help="DIN at the challenge's full width")
    args = cli.parse_args()
    params, cfg, work = prepare(args, "accuracy")

    todo = select(variants(cfg.model, args.din_challenge), args.only)
    print(f"data {args.data}, {cfg.epochs} epochs max, batch {cfg.batch_size}, lr {cfg.learning_rate}, "
          f"history {params.featurize.max_len}, early stop after {cfg.patience}")  # fmt: skip
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
