"""Benchmark (prints, asserts nothing): is weak scaling's valid AUC within the seed spread of the fixed
global batch? Under torchrun with N processes on CPU (gloo), trains the cpu preset on the same features
with `scaling: fixed` for each seed and with `scaling: weak` for the first seed, and prints each run's best
valid AUC, its seconds and its training samples/s.

    python bench/weak_scaling.py --preset small --epochs 3 --seeds 1 2 3 --workdir /tmp/qin-weak
    python bench/weak_scaling.py --data /path/to/data ...       # an existing data folder instead of synth
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def qin(work: Path, *args: str, settings: str = "params.yaml", processes: int = 0) -> None:
    launcher = [sys.executable]
    if processes:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = [*launcher, "-m", "qin", "--params", str(work / settings), *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def prepare(work: Path, preset: str, data: Path | None) -> Path:
    """validate, embed (given) and featurize the data (synthesized at `preset` unless given)."""
    if data is None:
        data = work / "data"
        qin(work, "data", "synth", "--preset", preset, "--out", str(data), "--no-dvc")
    qin(work, "validate", "--data", str(data), "--out", str(work / "validate"))
    qin(
        work,
        "embed",
        "--data",
        str(data),
        "--validation",
        str(work / "validate"),
        "--out",
        str(work / "embed"),
    )
    qin(work, "featurize", "--data", str(data), "--validation", str(work / "validate"),
        "--embedding", str(work / "embed"), "--out", str(work / "features"))  # fmt: skip
    return work / "features"


def train(work: Path, features: Path, scaling: str, seed: int, epochs: int, processes: int) -> dict:
    name = f"{scaling}-seed{seed}"
    settings = f"{name}.yaml"
    (work / settings).write_text(
        f"train:\n  preset: cpu\n  epochs: {epochs}\n  seed: {seed}\n  scaling: {scaling}\n  threads: 1\n"
    )
    t0 = time.perf_counter()
    qin(work, "train", "--features", str(features), "--out", str(work / name),
        "--metrics", str(work / f"{name}.json"), settings=settings, processes=processes)  # fmt: skip
    metrics = json.loads((work / f"{name}.json").read_text())
    last = metrics["history"][-1]
    return {"run": name, "auc": metrics["best_valid_auc"], "seconds": time.perf_counter() - t0,
            "samples_per_s": last["train_samples_per_second"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "full"])
    parser.add_argument("--data", type=Path, help="an existing data folder (default: synthesize --preset)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qin-weak"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "params.yaml").write_text("embed: {method: given}\n")
    features = prepare(work, args.preset, args.data)
    runs = [train(work, features, "fixed", s, args.epochs, args.processes) for s in args.seeds]
    runs.append(train(work, features, "weak", args.seeds[0], args.epochs, args.processes))
    print(f"{args.processes} processes, cpu preset, {args.epochs} epochs, data {args.data or args.preset}")
    print(f"{'run':<14} {'best valid AUC':>15} {'seconds':>8} {'samples/s':>10}")
    for r in runs:
        print(f"{r['run']:<14} {r['auc']:15.5f} {r['seconds']:8.1f} {r['samples_per_s']:10.0f}")
    fixed = [r["auc"] for r in runs[:-1]]
    inside = min(fixed) <= runs[-1]["auc"] <= max(fixed)
    print(f"fixed-batch seeds span [{min(fixed):.5f}, {max(fixed):.5f}]; weak {runs[-1]['auc']:.5f}: "
          f"{'inside' if inside else 'outside'} that spread")  # fmt: skip


if __name__ == "__main__":
    main()
