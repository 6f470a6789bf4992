"""Benchmark (prints, asserts nothing): the paper's model table on synthetic data.

Trains QIN, its five ablations, DIN, DCNv3 and SDCNv3 with the same budget (epochs, batch, learning rate,
history length, early stopping) on the featurized data and prints one table: valid AUC, logloss, gAUC, the
oracle AUC, parameters and seconds.

    python bench/accuracy.py       # data/ (the small preset) with the train settings of params.yaml
    python bench/accuracy.py --epochs 4 --only qin din
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

from qin.config import DCNv3Config, DINConfig, ModelConfig, load_params
from qin.evaluate import evaluate
from qin.featurize import featurize
from qin.io import read_json
from qin.train import train
from qin.validate import validate


def variants(qin: ModelConfig, din_challenge: bool) -> dict[str, ModelConfig]:
    assert qin.name == "qin"
    e = qin.embedding_dim
    # The challenge DIN (embedding 64, attention MLP 512-256 on every history item) costs ~30x QIN's
    # FLOPs per sample: on 2 CPU cores the bench scales it to QIN's width unless --din-challenge.
    din = DINConfig() if din_challenge else DINConfig(embedding_dim=e, attention_units=(64, 32))
    return {
        "QIN": qin,
        "w/o QNN": dataclasses.replace(qin, use_qnn=False),
        "w/o ASTA": dataclasses.replace(qin, history_pooling="mean"),
        "ASTA w/ SoftMax": dataclasses.replace(qin, attention_activation="softmax"),
        "QNN w/o PReLU": dataclasses.replace(qin, qnn_activation="relu"),
        "ASTA w/ Dropout": dataclasses.replace(qin, attention_dropout=0.1),
        "DIN": din,
        "DCNv3": DCNv3Config(embedding_dim=e),
        "SDCNv3": DCNv3Config(name="sdcnv3", embedding_dim=e),
    }


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

    todo = variants(cfg.model, args.din_challenge)
    if args.only:
        wanted = {w.lower() for w in args.only}
        todo = {k: v for k, v in todo.items() if k.lower() in wanted}
    print(f"data {args.data}, {cfg.epochs} epochs max, batch {cfg.batch_size}, lr {cfg.learning_rate}, "
          f"history {cfg.max_len or params.featurize.max_len}, early stop after {cfg.patience}")  # fmt: skip
    header = (
        f"{'model':<16} {'AUC':>7} {'logloss':>8} {'gAUC':>7} {'oracle':>7} {'params':>10} {'seconds':>8}"
    )
    rows = []
    for name, model in todo.items():
        slug = name.lower().replace(" ", "_").replace("/", "")
        t0 = time.perf_counter()
        summary = train(
            work / "features", work / slug, work / f"{slug}.train.json", dataclasses.replace(cfg, model=model)
        )
        seconds = time.perf_counter() - t0
        m = evaluate(work / "features", work / slug, work / f"{slug}.json", params.evaluate)
        rows.append(
            f"{name:<16} {m['valid_auc']:7.4f} {m['valid_logloss']:8.4f} {m['valid_gauc']:7.4f} "
            f"{m.get('valid_oracle_auc', float('nan')):7.4f} {summary['parameters']:10,d} {seconds:8.0f}"
        )
        print(rows[-1], flush=True)
    synth = args.data / "synth.json"
    print()
    print(header)
    print("\n".join(rows))
    if synth.exists():
        print(f"no-history bound: {read_json(synth)['valid_no_history_auc']:.4f}")


if __name__ == "__main__":
    main()
