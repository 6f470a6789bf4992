"""Benchmark (prints, asserts nothing): every stage at a data size, each in its own process: `qin data synth`,
`validate`, `embed` (given, and with --all-embeds pca and learned), `featurize`, one epoch of `train` (the
cpu preset), `evaluate` and `predict`; for each its wall seconds, peak RSS, peak anonymous memory (RssAnon:
the page cache of memory-mapped features left out) of the process and its children, sampled every 0.2 s,
and the disk the work folder then uses.

    python bench/data_scale.py --preset full --workdir /tmp/qin-bench
    python bench/data_scale.py --preset x10 --workdir /big/disk/qin-x10     # 36M training rows: 16 GB, ~2 h
    taskset -c 0,1 python bench/data_scale.py ...     # as on the 2-core machine the targets are set for
    python bench/data_scale.py --preset x10 --workdir /big/disk/qin-x10 --from train   # after a stop: resumes
Targets (2 cores): synth full < 5 min and 8 GB; validate + featurize full < 4 min and 6 GB (issue 3);
embed learned on the full item table (91,717 items) within 10 min (issue 15); x10: every stage under 12 GB
of peak anonymous memory (issue 26).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

EMBED_METHODS = ("given", "pca", "learned")  # featurize reads the given one
SAMPLE_SECONDS = 0.2


def _memory(proc: psutil.Process) -> tuple[int, int]:
    """RSS and RssAnon (bytes) of a process and its children, now."""
    rss = anon = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except OSError:  # it ended meanwhile
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        anon += int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
    return rss, anon


def timed(cmd: list[str], log: Path) -> tuple[float, float, float]:
    """Run `cmd` (its output into `log`); its seconds and peak RSS / RssAnon in GB."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        proc, peak_rss, peak_anon = psutil.Process(child.pid), 0, 0
        while child.poll() is None:
            rss, anon = _memory(proc)
            peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
            time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - t0
    if child.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {child.returncode}); its output: {log}")
    return seconds, peak_rss / 1e9, peak_anon / 1e9


def disk_gb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e9


def steps(work: Path, preset: str, methods: tuple[str, ...]) -> dict[str, list[str]]:
    """Each step's command, in order, on the work folder."""
    qin = [sys.executable, "-m", "qin", "--params", str(work / "params.yaml")]
    data, validation, features = str(work / "data"), str(work / "validate"), str(work / "features")
    model = str(work / "model")
    out: dict[str, list[str]] = {
        "synth": [*qin, "data", "synth", "--preset", preset, "--out", data, "--no-dvc"],
        "validate": [*qin, "validate", "--data", data, "--out", validation],
    }
    for method in methods:
        settings = work / f"embed-{method}.yaml"
        settings.write_text(f"embed:\n  method: {method}\n")
        out[f"embed {method}"] = [sys.executable, "-m", "qin", "--params", str(settings), "embed",
                                  "--data", data, "--validation", validation,
                                  "--out", str(work / f"embed-{method}")]  # fmt: skip
    out["featurize"] = [*qin, "featurize", "--data", data, "--validation", validation,
                        "--embedding", str(work / "embed-given"), "--out", features]  # fmt: skip
    out["train 1 epoch"] = [*qin, "train", "--features", features, "--out", model,
                            "--metrics", str(work / "train.json")]  # fmt: skip
    out["evaluate"] = [*qin, "evaluate", "--features", features, "--model", model,
                       "--train-metrics", str(work / "train.json"), "--out", str(work / "evaluate.json"),
                       "--plots", str(work / "plots"), "--plot-data", str(work / "plot-data")]  # fmt: skip
    out["predict"] = [*qin, "predict", "--data", data, "--model", model, "--out", str(work / "predict")]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=["tiny", "small", "full", "x10"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qin-bench"))
    parser.add_argument("--all-embeds", action="store_true", help="time embed pca and learned too")
    parser.add_argument("--from", dest="start", metavar="STEP",
                        help="keep the work folder; start at this step (train resumes)")  # fmt: skip
    args = parser.parse_args()
    work = args.workdir
    if args.start is None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "params.yaml").write_text("train:\n  preset: cpu\n  epochs: 1\npredict:\n  device: cpu\n")
    elif not (work / "params.yaml").exists():
        sys.exit(f"--from {args.start}: expected {work} to hold an earlier run (its params.yaml); found none")
    methods = EMBED_METHODS if args.all_embeds else EMBED_METHODS[:1]
    todo = list(steps(work, args.preset, methods).items())
    if args.start is not None:
        names = [name for name, _ in todo]
        first = next((i for i, name in enumerate(names) if name.startswith(args.start)), None)
        if first is None:
            sys.exit(f"--from {args.start}: expected the start of a step's name, one of {names}")
        todo = todo[first:]
    print(f"preset {args.preset}, work folder {work}")
    print(f"{'step':<14} {'seconds':>8} {'peak RSS GB':>12} {'peak anon GB':>13} {'disk GB':>8}")
    for name, cmd in todo:
        seconds, rss, anon = timed(cmd, work / f"{name.replace(' ', '-')}.log")
        print(f"{name:<14} {seconds:8.1f} {rss:12.2f} {anon:13.2f} {disk_gb(work):8.1f}", flush=True)
    for method in methods:
        print(f"embed {method} report: {(work / f'embed-{method}' / 'report.json').read_text()}")
    print((work / "data" / "synth.json").read_text())


if __name__ == "__main__":
    main()
