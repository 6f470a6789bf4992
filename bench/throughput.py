"""Benchmark (prints, asserts nothing): training and scoring throughput of QIN, as the trainer runs it.

Two configurations on random arrays of the real shapes (91,717 items + padding, 11,740 tags, 5 tags per
item, a 128-wide multimodal vector; histories of random length, left-padded):
    paper  embedding 128, 4 QNN layers x 4 rows, attention 768, history 64, batch 8192 (31.2M parameters)
    small  embedding 32, 2 layers x 2 rows, history 32, batch 1024 (the `cpu` preset's model)
Each measurement runs in its own process (clean peak memory): a training step is the trainer's own
(the batch gathered by index as qin.train does it, then Trainer.step: autocast, loss + L2, backward,
clipping, Adam); scoring is the production path, `qin predict`'s and serving's: a frozen model package's
Scorer.predict from host arrays, in qin.serving.inference.SCORING_PRECISION. Reported: samples/s as the
median of
--reps timed repetitions with min-max, peak memory (RSS on CPU, torch.cuda.max_memory_allocated on GPU), and
the fraction of the compute limit: analytic matmul FLOPs per sample (training = 3x the forward) x samples/s
over the FLOP/s this device reaches on the QNN's matmul in the same dtype (%mm), and over its measured bf16
matmul rate on large square matrices (%bf16).

On CUDA the rows are either resident on the GPU (--placements device, what `data_placement: auto` does
when they fit) or gathered on the host into pinned memory one batch ahead (host, `data_placement: host`).

    python bench/throughput.py                                  # both configs, CPU (+ CUDA when present)
    python bench/throughput.py --configs small --precision fp32 --threads 1
    python bench/throughput.py --attention-order reference --no-distinct   # the textbook order
    python bench/throughput.py --compile
    python bench/throughput.py --devices cuda --placements device host

Targets (issue 5, CPU, 2 cores): paper >= 1,300 samples/s training, small >= 11,000 (FuxiCTR: 326, 2,800).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "paper": {"model": {"embedding_dim": 128, "num_layers": 4, "num_row": 4, "linear_dropout": 0.1,
                        "net_dropout": 0.1}, "batch": 8192, "history": 64},
    "small": {"model": {"embedding_dim": 32, "num_layers": 2, "num_row": 2}, "batch": 1024, "history": 32},
}  # fmt: skip
N_ITEMS, N_TAGS = 91_718, 11_740  # including 0 = padding


def forward_flops(cfg, history: int, distinct_per_row: float) -> dict[str, float]:
    """Matmul FLOPs of one row's forward pass, by block, in the order the model computes them."""
    e = cfg.embedding_dim
    i, d = 3 * e, 2 * e + 2 * 3 * e
    a = cfg.attention_dim or 2 * i
    if cfg.attention_order == "fused":  # W_q, W_k^T q, scores, pooling, W_v, W_o
        attention = 8 * i * a + 4 * history * i
    else:  # W_q, W_k and W_v on every item, scores, pooling, W_o
        attention = 4 * i * a + 4 * history * i * a + 4 * history * a
    return {
        "item projection": 2 * 128 * e * distinct_per_row,
        "attention": attention,
        "QNN": cfg.num_layers * 2 * d * cfg.num_row * d,
        "head": 2 * d,
    }


def bf16_peak(device) -> float:
    """The bf16 matmul FLOP/s this device reaches on large square matrices (8192 on CUDA, 2048 on CPU)."""
    import torch

    n = 8192 if device.type == "cuda" else 2048
    return matmul_flops(device, torch.bfloat16, n, n, n, reps=10 if device.type == "cuda" else 2)


def matmul_flops(device, dtype, rows: int, width: int, out: int, reps: int = 5) -> float:
    """FLOP/s of the QNN's (rows x width) @ (width x out) matmul on `device` in `dtype` (best of reps)."""
    import torch

    a = torch.randn(rows, width, device=device, dtype=dtype)
    w = torch.randn(out, width, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        sync(device)
        t = time.perf_counter()
        torch.nn.functional.linear(a, w)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * rows * width * out / best


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_rows(n: int, history: int, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS, (n, history), generator=g, dtype=torch.int32)
    lengths = torch.randint(1, history + 1, (n, 1), generator=g)
    seq[torch.arange(history).expand(n, -1) < history - lengths] = 0  # left padding, most recent last
    return {
        "item_seq": seq,
        "likes_level": torch.randint(0, 11, (n,), generator=g, dtype=torch.int32),
        "views_level": torch.randint(0, 11, (n,), generator=g, dtype=torch.int32),
        "item_id": torch.randint(1, N_ITEMS, (n,), generator=g, dtype=torch.int32),
        "label": (torch.rand(n, generator=g) < 0.25).float(),
    }


def measure(args: argparse.Namespace) -> dict:
    """One configuration on one device, in this process."""
    import torch

    from qin.data.features import default_spec
    from qin.models import build_model
    from qin.models.blocks import ItemEncoder
    from qin.models.qin import QINConfig
    from qin.serving.inference import Scorer
    from qin.settings.params import TrainConfig, preset
    from qin.settings.sections import replace
    from qin.train import Trainer, host_rows, on_device, prefetch
    from qin.training import runtime

    runtime.set_threads(args.threads)
    device = torch.device(args.device)
    setup = CONFIGS[args.config]
    model_cfg = QINConfig(**setup["model"], attention_order=args.attention_order)
    batch, history = int(setup["batch"]), int(setup["history"])
    base = preset("paper" if args.config == "paper" else "cpu")
    cfg: TrainConfig = replace(
        base, model=model_cfg, batch_size=batch, precision=args.precision,
        compile=args.compile, threads=args.threads, device=device.type,
    )  # fmt: skip
    ItemEncoder.distinct = not args.no_distinct
    torch.manual_seed(0)
    spec = default_spec(N_ITEMS, N_TAGS)
    g = torch.Generator().manual_seed(1)
    tags = torch.randint(0, N_TAGS, (N_ITEMS, 5), generator=g)
    tags[:, 3:] *= torch.rand(N_ITEMS, 2, generator=g) < 0.5  # 3 to 5 tags per item
    tags[0] = 0
    emb = torch.randn(N_ITEMS, 128, generator=g)
    emb[0] = 0
    model = build_model(model_cfg, spec, {"item_tags": tags, "item_emb_d128": emb}).to(device)
    trainer = Trainer(model, cfg, device)
    pool = 4 * batch
    resident = args.placement == "device" or device.type != "cuda"
    held = device if resident else torch.device("cpu")
    cols = {k: v.to(held) for k, v in random_rows(pool, history, seed=2).items()}
    perm = torch.randperm(pool, generator=g).to(held)

    with torch.no_grad():  # distinct items per batch, for the FLOP count
        ids = torch.cat([cols["item_id"][:batch, None], cols["item_seq"][:batch]], 1)
        distinct = int(torch.unique(ids).numel()) if not args.no_distinct else ids.numel()
    flops = forward_flops(model_cfg, history, distinct / batch)

    def train_steps(k: int) -> None:
        def load(s: int) -> dict:  # as qin.train's epoch loop: pinned and one batch ahead when host-held
            return host_rows(cols, perm[(s % 4) * batch : (s % 4 + 1) * batch], pin=not resident)

        for rows in prefetch(range(k), load, ahead=not resident):
            trainer.step(on_device(rows, device))
        sync(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    train_steps(args.warmup + (3 if args.compile else 0))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device.type == "cuda" else [])]
        with profile(activities=activities) as prof:
            train_steps(1)
        ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50)
        print(ops, file=sys.stderr)
    train_times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        train_steps(args.steps)
        train_times.append(time.perf_counter() - t)
    train_peak = peak_memory(device)

    # Scoring as `qin predict` and serving do it: a frozen scorer (the item table encoded once) fed from host
    # arrays, in the one scoring precision.
    eval_rows = {k: v.cpu().numpy() for k, v in cols.items() if k != "label"}
    scorer = Scorer(model, history, spec, device, frozen=True)

    def score_rates() -> list[float]:
        scorer.predict(eval_rows, args.eval_batch)
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            for _ in range(args.eval_passes):
                scorer.predict(eval_rows, args.eval_batch)
            sync(device)
            times.append(time.perf_counter() - t)
        return [pool * args.eval_passes / t for t in times]

    production = scorer.dtype
    eval_rates = score_rates()
    other = {}  # the other precisions asked for (--score-precisions), for the choice of SCORING_PRECISION
    for name in args.score_precisions:
        scorer.dtype = runtime.resolve_precision(name, device)
        other[name] = score_rates() if scorer.dtype != production else eval_rates
    scorer.dtype = production
    dtype = trainer.dtype or torch.float32
    d = 2 * model_cfg.embedding_dim + 6 * model_cfg.embedding_dim
    return {
        "config": args.config,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "placement": "device" if resident else "host",
        "threads": torch.get_num_threads(),
        "precision": runtime.precision_name(trainer.dtype),
        "score_precision": runtime.precision_name(scorer.dtype),
        "attention_order": args.attention_order,
        "distinct": not args.no_distinct,
        "compile": args.compile,
        "batch": batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train": [batch * args.steps / t for t in train_times],
        "eval": eval_rates,
        "eval_by_precision": other,
        "peak_gb": train_peak,
        "forward_flops": flops,
        "matmul_flops": matmul_flops(device, dtype, batch, d, model_cfg.num_row * d),
        "bf16_peak_flops": bf16_peak(device),
    }


def peak_memory(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    where = "CUDA: rows resident on the GPU (device) or pinned on the host, one batch ahead"
    parser.add_argument("--placements", nargs="+", default=["device"], choices=["device", "host"], help=where)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    also = "also time scoring in these (bf16: under autocast, the item table encoded per call)"
    parser.add_argument("--score-precisions", nargs="*", default=[], choices=["fp32", "bf16"], help=also)
    parser.add_argument("--attention-order", default="fused", choices=["fused", "reference"])
    parser.add_argument("--no-distinct", action="store_true", help="encode every history position")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-reuse-memory", action="store_true", help="glibc's default large allocations")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median, min-max)")
    parser.add_argument("--steps", type=int, default=None, help="steps per repetition (paper 2, small 16)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--eval-batch", type=int, default=8192)
    parser.add_argument("--eval-passes", type=int, default=None, help="passes over 4 batches per repetition")
    parser.add_argument("--profile", action="store_true", help="print the top operators of one step")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single measurement
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--placement", default="device", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        from qin.training import runtime

        args.steps = args.steps or (2 if args.config == "paper" else 16)
        args.eval_passes = args.eval_passes or (1 if args.config == "paper" else 4)
        with contextlib.nullcontext() if args.no_reuse_memory else runtime.reuse_freed_memory():
            print(json.dumps(measure(args)))
        return

    import torch

    devices = args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    results = []
    runs = [
        (c, d, p)
        for c in args.configs
        for d in devices
        for p in (args.placements if d == "cuda" else ["device"])
    ]
    for config, device, placement in runs:
        cmd = [sys.executable, __file__, "--one", "--config", config, "--device", device,
               "--placement", placement, "--precision", args.precision,
               "--attention-order", args.attention_order, "--threads", str(args.threads),
               "--reps", str(args.reps), "--warmup", str(args.warmup),
               "--eval-batch", str(args.eval_batch)]  # fmt: skip
        cmd += ["--score-precisions", *args.score_precisions] if args.score_precisions else []
        cmd += ["--steps", str(args.steps)] if args.steps else []
        cmd += ["--eval-passes", str(args.eval_passes)] if args.eval_passes else []
        cmd += ["--compile"] if args.compile else []
        cmd += ["--no-distinct"] if args.no_distinct else []
        cmd += ["--no-reuse-memory"] if args.no_reuse_memory else []
        cmd += ["--profile"] if args.profile else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{config} on {device} ({placement}) failed:\n{out.stderr[-4000:]}")
        if args.profile:
            print(out.stderr, file=sys.stderr)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"measured {config} on {device} ({placement})", file=sys.stderr, flush=True)
        if args.json:  # after each measurement: a run cut short still reports what it measured
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(results: list[dict]) -> None:
    print(f"{'config':<6} {'device':<6} {'rows on':<7} {'thr':>3} {'prec':<4} {'attn':<5} "
          f"{'train samples/s (min-max)':>26} {'score rows/s (min-max)':>25} {'peak GB':>7} "
          f"{'MFLOP/row':>9} {'mm TFLOP/s':>10} {'bf16 TFLOP/s':>12} {'train %mm':>9} {'%bf16':>6} "
          f"{'score %bf16':>11}")  # fmt: skip
    for r in results:
        fwd = sum(r["forward_flops"].values())
        tr, ev = statistics.median(r["train"]), statistics.median(r["eval"])
        train_s = f"{tr:,.0f} ({min(r['train']):,.0f}-{max(r['train']):,.0f})"
        eval_s = f"{ev:,.0f} ({min(r['eval']):,.0f}-{max(r['eval']):,.0f})"
        train_mm = 100 * 3 * fwd * tr / r["matmul_flops"]
        train_bf16 = 100 * 3 * fwd * tr / r["bf16_peak_flops"]
        eval_bf16 = 100 * fwd * ev / r["bf16_peak_flops"]
        print(f"{r['config']:<6} {r['device']:<6} {r['placement']:<7} {r['threads']:>3} {r['precision']:<4} "
              f"{r['attention_order'][:5]:<5} {train_s:>26} {eval_s:>25} {r['peak_gb']:7.2f} "
              f"{fwd / 1e6:9.1f} {r['matmul_flops'] / 1e12:10.3f} {r['bf16_peak_flops'] / 1e12:12.3f} "
              f"{train_mm:8.1f}% {train_bf16:5.1f}% {eval_bf16:10.2f}%")  # fmt: skip
    for r in results:
        for name, rates in r.get("eval_by_precision", {}).items():
            low, high = min(rates), max(rates)
            print(f"{r['config']} on {r['device']} ({r['placement']}): scoring in {name} "
                  f"{statistics.median(rates):,.0f} rows/s ({low:,.0f}-{high:,.0f})")  # fmt: skip
    for r in results:
        blocks = ", ".join(f"{k} {v / 1e6:.2f}" for k, v in r["forward_flops"].items())
        on = {True: "on", False: "off"}
        switches = f"distinct-item encoding {on[r['distinct']]}, compile {on[r['compile']]}"
        print(
            f"{r['config']} on {r['device_name']}: {switches}; scoring {r['score_precision']}, frozen item "
            f"table, from host arrays; forward MFLOP per row: {blocks}"
        )


if __name__ == "__main__":
    main()
