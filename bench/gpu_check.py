"""The GPU check: what a lent GPU machine runs first, one command (bench/gpu_check.sh), in at most 5 minutes.

Each phase runs in its own process under its own time limit (and all of them under --budget); the JSON
report is written after every phase, and a phase writes its figures as it goes, so a run cut short still
reports what it measured. Phases:

    data        synthetic data of --size (full: 3.6M training rows) generated on the machine, in the
                background while the next phases run (on all but 4 cores), the gate left out
    env         the image's packages (pip freeze, into pip_freeze.txt), torch, CUDA and the device, and the
                device's bf16 matmul rate on large square matrices: the 100% of every "% bf16" figure
    tests       the gpu-marked tests (tests/models/test_cuda.py)
    throughput  bench/throughput.py, the paper and small configs, rows resident on the GPU and through pinned
                memory (data_placement: host): training samples/s, scoring rows/s, GPU memory, % bf16
    full        that data featurized (the great-expectations gate left out: it is not on the image), one
                epoch of the paper preset under sync_debug "error", valid scored through the model package
                in fp32 and in bf16
    predict     `qin predict`'s batch scoring of the whole test split with that model (the gate left out)

It runs from the source tree with the image's packages (the project's pins are for Python 3.11 and torch
2.13; the image has Python 3.12 and torch 2.11), plus the wheels `make gpu-wheels` puts in .gpu-wheels/.

    bench/gpu_check.sh --out OUT                   # on the GPU machine
    bench/gpu_check.sh --device cpu --check-imports --out OUT   # the rehearsal (.ci/run, make gpu-rehearsal)

--check-imports records, in every process of every phase, the top-level modules the project's own files
import (bench/import_log/sitecustomize.py) and fails unless each one's distribution is in the list of the
GPU image's packages in docs/performance.md or among .gpu-wheels/: a missing wheel fails here, not there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]
REPORT = "gpu_check.json"
LOG = "gpu_check.log"
GPU_TESTS = ("tests/models/test_cuda.py",)
WHEELS = ROOT / ".gpu-wheels"
# The page that lists the GPU image's packages between these two markers.
PACKAGES_PAGE = ROOT / "docs" / "performance.md"
PACKAGES_BEGIN, PACKAGES_END = "<!-- gpu-image-packages -->", "<!-- /gpu-image-packages -->"
# Per phase: its own time limit in seconds on CUDA; on the CPU rehearsal (tiny sizes) a generous one.
LIMITS = {"data": 200, "env": 30, "tests": 50, "throughput": 80, "full": 90, "predict": 35}
CPU_LIMITS = {"data": 200, "env": 120, "tests": 120, "throughput": 300, "full": 300, "predict": 120}
BACKGROUND = "data"  # started first, in the background; the phases after it that need its data wait for it
NEEDS_DATA = ("full", "predict")


# ---- the phases (each in its own process: python bench/gpu_check.py --phase NAME) -------------------------


class Figures:
    """A phase's figures, written to its JSON file after each update."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self[f"{key}_seconds"] = round(time.perf_counter() - t, 2)


def phase_env(args: argparse.Namespace, out: Figures) -> None:
    import numpy
    import pandas
    import pyarrow
    import torch
    from throughput import bf16_peak

    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True)
    (args.out / "pip_freeze.txt").write_text(freeze.stdout)
    out["python"] = sys.version.split()[0]
    out["packages"] = {m.__name__: m.__version__ for m in (torch, numpy, pandas, pyarrow)}
    out["pip_freeze_lines"] = len(freeze.stdout.splitlines())
    device = torch.device(args.device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out["device"] = props.name
        out["cuda"] = torch.version.cuda
        out["capability"] = f"{props.major}.{props.minor}"
        out["memory_gb"] = round(props.total_memory / 1e9, 1)
        out["native_bf16"] = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        out["device"] = "cpu"
    out["bf16_peak_tflops"] = round(bf16_peak(device) / 1e12, 2)


def phase_tests(args: argparse.Namespace, out: Figures) -> None:
    junit = args.work / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "gpu",
           "--junitxml", str(junit), *GPU_TESTS]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(run.stdout[-6000:], run.stderr[-3000:], sep="\n")
    if junit.exists():
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        for key in ("tests", "failures", "errors", "skipped"):
            out[key] = int(suite.get(key, 0)) if suite is not None else 0
    out["exit_code"] = run.returncode
    if run.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest -m gpu exited {run.returncode}")


def phase_throughput(args: argparse.Namespace, out: Figures) -> None:
    result = args.work / "throughput.json"
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--devices", args.device,
           "--placements", "device", "host", "--json", str(result)]  # fmt: skip
    if args.device == "cpu":  # the rehearsal: the small config, few steps
        cmd += ["--configs", "small", "--reps", "1", "--steps", "2", "--warmup", "1", "--eval-passes", "1"]
    else:
        cmd += ["--reps", "3", "--warmup", "3", "--score-precisions", "fp32", "bf16"]
    try:
        run = subprocess.run(cmd, cwd=ROOT)
    finally:  # what it measured, also when stopped part-way
        runs = json.loads(result.read_text()) if result.exists() else []
        out["runs"] = [_throughput_row(r) for r in runs]
    if run.returncode:
        raise RuntimeError(f"bench/throughput.py exited {run.returncode}")


def _throughput_row(r: dict) -> dict:
    fwd = sum(r["forward_flops"].values())
    train, score = statistics.median(r["train"]), statistics.median(r["eval"])
    return {
        "config": r["config"],
        "rows_on": r["placement"],
        "precision": r["precision"],
        "train_samples_s": round(train),
        "score_rows_s": round(score),
        "score_precision": r["score_precision"],
        **{
            f"score_{p}_rows_s": round(statistics.median(v))
            for p, v in r.get("eval_by_precision", {}).items()
        },
        "peak_gb": round(r["peak_gb"], 2),
        "train_pct_bf16": round(100 * 3 * fwd * train / r["bf16_peak_flops"], 2),
        "score_pct_bf16": round(100 * fwd * score / r["bf16_peak_flops"], 2),
        "bf16_peak_tflops": round(r["bf16_peak_flops"] / 1e12, 1),
    }


def phase_data(args: argparse.Namespace, out: Figures) -> None:
    """The synthetic data of --size, generated in the background while the GPU phases run (on all but 4
    cores, left to them), with the gate left out: great-expectations is not on the image."""
    from qin.data.synth import synthesize
    from qin.settings.sections import DataConfig
    from qin.validate import skip_gate

    workers = max(1, (os.cpu_count() or 1) - 4)
    out["size"], out["workers"] = args.size, workers
    with out.timed("synth"):
        synthesize(args.work / "data", DataConfig(preset=args.size), workers=workers, item_feature=False)
    skip_gate(args.work / "data", args.work / "validation", "bench/gpu_check.py: no great-expectations there")


def phase_full(args: argparse.Namespace, out: Figures) -> None:
    from qin.featurize import featurize
    from qin.settings.params import preset
    from qin.settings.sections import EvaluateConfig, FeaturizeConfig, replace

    data, feats = args.work / "data", args.work / "features"
    out["size"] = args.size
    with out.timed("featurize"):
        manifest = featurize(data, args.work / "validation", feats, FeaturizeConfig(max_len=64))
    out["train_rows"] = manifest.arrays["train_item_id"]["shape"][0]

    import numpy as np

    from qin.evaluate import evaluate
    from qin.featurize import Features
    from qin.serving.inference import load_package
    from qin.train import train
    from qin.training.metrics import roc_auc

    cfg = replace(preset("paper"), epochs=1, device=args.device, sync_debug="error")
    model, metrics = args.work / "model", args.work / "train.json"
    try:
        with out.timed("train"):
            summary = train(feats, model, metrics, cfg)
    except RuntimeError as exc:  # a host sync inside a step: recorded, then the epoch again to get figures
        if "synchroniz" not in str(exc):
            raise
        out["sync_error"] = str(exc).splitlines()[0]
        traceback.print_exc()
        with out.timed("train_sync_warn"):
            summary = train(feats, model, metrics, replace(cfg, sync_debug="warn"))
    epoch = summary.history[-1]
    out["parameters"] = summary.parameters
    out["train_precision"] = summary.precision
    out["train_samples_s"] = round(epoch["train_samples_per_second"])
    out["train_epoch_seconds"] = round(epoch["train_seconds"], 2)
    out["gpu_peak_gb"] = round(epoch.get("gpu_peak_mb", 0) / 1024, 2)
    out["peak_rss_gb"] = round(epoch["peak_rss_mb"] / 1024, 2)
    out["valid_auc_in_training"] = round(epoch["valid_auc"], 5)
    out["checkpoints"] = dict(summary.checkpoints)
    with out.timed("evaluate"):  # the production path: the package, frozen item table, SCORING_PRECISION
        scored = evaluate(feats, model, args.work / "evaluate.json", EvaluateConfig())
    out["valid_auc"] = round(scored.valid_auc, 5)
    oracle = scored.valid_oracle_auc
    out["valid_oracle_auc"] = round(float("nan") if oracle is None else oracle, 5)
    valid = {k: np.asarray(v) for k, v in Features(feats).split("valid").items()}
    labels = valid.pop("label")
    for precision in ("fp32", "bf16"):  # the same package scored in each
        scorer = load_package(model, device=args.device, precision=precision)
        out[f"valid_auc_{precision}"] = round(roc_auc(labels, scorer.predict(valid, 8192)), 6)


def phase_predict(args: argparse.Namespace, out: Figures) -> None:
    import torch

    from qin.predict import score_file, write_submission
    from qin.serving.inference import load_package

    model, test = args.work / "model", args.work / "data" / "test.parquet"
    if not (model / "model.json").exists():
        raise FileNotFoundError(f"{model}: no model package (the full phase did not finish)")
    with out.timed("load"):
        scorer = load_package(model, device=args.device)
    if scorer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(scorer.device)
    score_file(test, scorer, 16384)  # warm-up: CUDA's kernels and the page cache
    t = time.perf_counter()
    probs = score_file(test, scorer, 16384)
    seconds = time.perf_counter() - t
    out["rows"] = len(probs)
    out["score_seconds"] = round(seconds, 2)
    out["rows_s"] = round(len(probs) / seconds)
    out["precision"] = "fp32" if scorer.dtype is None else str(scorer.dtype)
    if scorer.device.type == "cuda":
        out["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated(scorer.device) / 1e9, 2)
    with out.timed("write"):
        write_submission(probs, args.work / "prediction.csv", args.work / "submission.zip")
    out["mean_probability"] = round(float(probs.mean()), 4)


PHASES: dict[str, Callable[[argparse.Namespace, Figures], None]] = {
    "data": phase_data,
    "env": phase_env,
    "tests": phase_tests,
    "throughput": phase_throughput,
    "full": phase_full,
    "predict": phase_predict,
}


def run_phase(args: argparse.Namespace) -> int:
    """One phase, in this process; its figures in work/<phase>.json."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Figures(args.work / f"{args.phase}.json")
    try:
        PHASES[args.phase](args, out)
    except Exception as exc:
        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        return 1
    return 0


# ---- the driver -----------------------------------------------------------------------------------------


def commit() -> str:
    if os.environ.get("QIN_COMMIT"):
        return os.environ["QIN_COMMIT"]
    found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


class Child:
    """A phase in a child process (its own session, output to the log) under a time limit: SIGTERM at the
    limit, SIGKILL 5 s later."""

    def __init__(self, phase: str, args: argparse.Namespace, limit: float, log) -> None:
        cmd = [sys.executable, __file__, "--phase", phase, "--work", str(args.work), "--out", str(args.out),
               "--device", args.device, "--size", args.size]  # fmt: skip
        self.started = time.perf_counter()
        self.deadline = self.started + limit
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait(self) -> tuple[str, float]:
        try:
            code = self.proc.wait(timeout=max(0.0, self.deadline - time.perf_counter()))
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
                    break
        return status, time.perf_counter() - self.started


def write_report(path: Path, report: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def drive(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for phase in PHASES:  # an earlier run's figures must not pass for this run's
        (args.work / f"{phase}.json").unlink(missing_ok=True)
    if args.check_imports:
        record = args.work / "imports.txt"
        record.write_text("")
        os.environ["QIN_IMPORT_LOG"] = str(record)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "bench" / "import_log"), os.environ.get("PYTHONPATH", "")]
        )
    limits = LIMITS if args.device == "cuda" else CPU_LIMITS
    started = time.monotonic()
    report: dict[str, Any] = {"commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "device": args.device, "size": args.size, "budget_s": args.budget,
                              "phases": {}}  # fmt: skip
    path = args.out / REPORT
    write_report(path, report)

    def record(phase: str, status: str, seconds: float) -> None:
        figures = args.work / f"{phase}.json"
        found = json.loads(figures.read_text()) if figures.exists() else {}
        report["phases"][phase] = {"status": status, "seconds": round(seconds, 1), **found}
        write_report(path, report)
        print(
            f"    {phase}: {status} in {seconds:.1f} s: {json.dumps(found, default=str)[:1500]}", flush=True
        )

    with open(args.out / LOG, "a") as log:
        background: Child | None = None
        for phase in args.phases:
            if phase in NEEDS_DATA and background is not None:
                print(f"=== waiting for {BACKGROUND}", flush=True)
                record(BACKGROUND, *background.wait())
                background = None
            left = args.budget - (time.monotonic() - started)
            if phase in NEEDS_DATA and report["phases"].get(BACKGROUND, {}).get("status") != "ok":
                report["phases"][phase] = {"status": f"skipped (no {BACKGROUND})"}
            elif left < 5:
                report["phases"][phase] = {"status": "skipped (no time left)"}
            else:
                limit = min(limits[phase], left)
                how = ", in the background" if phase == BACKGROUND else ""
                print(f"=== {phase} (limit {limit:.0f} s{how})", flush=True)
                child = Child(phase, args, limit, log)
                if phase == BACKGROUND:
                    background = child
                    continue
                record(phase, *child.wait())
            write_report(path, report)
        if background is not None:
            record(BACKGROUND, *background.wait())
    report["seconds"] = round(time.monotonic() - started, 1)
    write_report(path, report)
    print_summary(report)
    failed = [p for p, r in report["phases"].items() if r["status"] != "ok"]
    if args.check_imports:
        failed += [] if check_imports(args.work / "imports.txt") else ["imports"]
    print(f"report: {path}; log: {args.out / LOG}; {'all phases ok' if not failed else f'not ok: {failed}'}")
    return 1 if failed else 0


def print_summary(report: dict) -> None:
    phases = report["phases"]
    env, full, pred = phases.get("env", {}), phases.get("full", {}), phases.get("predict", {})
    print(f"\nGPU check of {report['commit'][:12]} on {env.get('device', report['device'])} "
          f"({report['date']}); torch {env.get('packages', {}).get('torch')}, CUDA {env.get('cuda')}; "
          f"bf16 matmul {env.get('bf16_peak_tflops')} TFLOP/s; {report['seconds']} s")  # fmt: skip
    for r in phases.get("throughput", {}).get("runs", []):
        print(f"  throughput {r['config']:<5} rows on {r['rows_on']:<6} train {r['train_samples_s']:>10,} "
              f"samples/s ({r['precision']}, {r['train_pct_bf16']}% of bf16)  score {r['score_rows_s']:>10,} "
              f"rows/s ({r['score_precision']}, {r['score_pct_bf16']}%)  peak {r['peak_gb']} GB")  # fmt: skip
    if "train_samples_s" in full:
        synth = phases.get("data", {}).get("synth_seconds")
        print(f"  full: {full.get('train_rows'):,} rows, synth {synth} s, featurize "
              f"{full.get('featurize_seconds')} s; one paper epoch {full['train_epoch_seconds']} s = "
              f"{full['train_samples_s']:,} samples/s ({full['train_precision']}), GPU peak "
              f"{full['gpu_peak_gb']} GB; "
              f"valid AUC {full.get('valid_auc')} (fp32 {full.get('valid_auc_fp32')}, bf16 "
              f"{full.get('valid_auc_bf16')}; oracle {full.get('valid_oracle_auc')})"
              f"{'; SYNC ERROR: ' + full['sync_error'] if 'sync_error' in full else ''}")  # fmt: skip
    if "rows_s" in pred:
        print(f"  predict: {pred['rows']:,} test rows at {pred['rows_s']:,} rows/s ({pred['precision']}), "
              f"GPU peak {pred.get('gpu_peak_gb', '-')} GB")  # fmt: skip
    for name, r in phases.items():
        print(f"  {name:<10} {r['status']:<8} {r.get('seconds', '-')} s  {r.get('error', '')[:300]}")


# ---- the import check -----------------------------------------------------------------------------------


def image_packages() -> set[str]:
    """The GPU image's packages the check relies on, as docs/performance.md lists them (normalised names)."""
    text = PACKAGES_PAGE.read_text()
    if PACKAGES_BEGIN not in text or PACKAGES_END not in text:
        raise SystemExit(
            f"{PACKAGES_PAGE.relative_to(ROOT)}: no list of the GPU image's packages between "
            f"{PACKAGES_BEGIN} and {PACKAGES_END}"
        )
    block = text.split(PACKAGES_BEGIN, 1)[1].split(PACKAGES_END, 1)[0]
    return {normalise(name) for name in re.findall(r"`([A-Za-z0-9_.\-]+)`", block)}


def wheel_packages() -> set[str]:
    return {normalise(w.name.split("-")[0]) for w in WHEELS.glob("*.whl")}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_imports(record: Path) -> bool:
    """Every top-level module the phases' own files imported: from the standard library, the project, the
    list of the image's packages in docs/performance.md, or .gpu-wheels/. Prints what is missing."""
    from importlib.metadata import packages_distributions

    modules = {line.split()[0] for line in record.read_text().splitlines() if line.strip()}
    owners = packages_distributions()
    have, wheels = image_packages(), wheel_packages()
    missing, used = [], {}
    for module in sorted(modules):
        dists = owners.get(module)
        if not dists:
            missing.append(f"{module} (no installed distribution provides it)")
            continue
        dist = normalise(dists[0])
        used[module] = dist
        if dist not in have and dist not in wheels:
            missing.append(
                f"{module} (distribution {dists[0]}: not in docs/performance.md's GPU image list nor in "
                ".gpu-wheels/)"
            )
    print(f"imports of the device phases: {', '.join(f'{m} ({d})' for m, d in used.items())}")
    for line in missing:
        print(f"MISSING on the GPU image: {line}")
    return not missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", default=None, choices=["tiny", "small", "full"],
                        help="the full phase's data (default: full on cuda, tiny on cpu)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="the report, the log, pip freeze")
    parser.add_argument(
        "--work", type=Path, default=None, help="data, features, model (default: OUT/../.work)"
    )
    parser.add_argument("--budget", type=float, default=295.0, help="seconds for all phases together")
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    parser.add_argument("--check-imports", action="store_true", help="record and check the phases' imports")
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size = args.size or ("full" if args.device == "cuda" else "tiny")
    args.out = args.out.resolve()
    args.work = (args.work or Path(f"{args.out}.work")).resolve()
    if args.phase:
        return run_phase(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
