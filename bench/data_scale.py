"""Benchmark (prints, asserts nothing): wall time and peak RSS of `qin data synth`, `validate`, `embed` (by
each method: given, and pca and learned, which make item_emb_d128 from the items' text and image) and
`featurize` at a given preset, each in its own process, measured with /usr/bin/time -v.

    python bench/data_scale.py --preset full --workdir /tmp/qin-bench
    taskset -c 0,1 python bench/data_scale.py ...     # as on the 2-core machine the targets are set for
Targets (2 cores): synth full < 5 min and 8 GB; validate + featurize full < 4 min and 6 GB (issue 3);
embed learned on the full item table (91,717 items) within 10 min (issue 15).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

EMBED_METHODS = ("given", "pca", "learned")  # featurize reads the given one


def timed(cmd: list[str]) -> tuple[float, float]:
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", out.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    assert wall and rss
    seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.group(1).split(":"))))
    return seconds, int(rss.group(1)) / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=["tiny", "small", "full"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qin-bench"))
    args = parser.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    qin = [sys.executable, "-m", "qin"]
    work.mkdir(parents=True)
    embed = {}
    for method in EMBED_METHODS:
        settings = work / f"embed-{method}.yaml"
        settings.write_text(f"embed:\n  method: {method}\n")
        embed[f"embed {method}"] = [
            *qin,
            "--params",
            str(settings),
            "embed",
            "--data",
            str(work / "data"),
            "--validation",
            str(work / "validate"),
            "--out",
            str(work / f"embed-{method}"),
        ]
    steps = {
        "synth": [*qin, "data", "synth", "--preset", args.preset, "--out", str(work / "data"), "--no-dvc"],
        "validate": [*qin, "validate", "--data", str(work / "data"), "--out", str(work / "validate")],
        **embed,
        "featurize": [
            *qin,
            "featurize",
            "--data",
            str(work / "data"),
            "--validation",
            str(work / "validate"),
            "--embedding",
            str(work / "embed-given"),
            "--out",
            str(work / "features"),
        ],
    }
    print(f"preset {args.preset}")
    print(f"{'step':<14} {'seconds':>8} {'peak GB':>8}")
    total = 0.0
    for name, cmd in steps.items():
        seconds, gb = timed(cmd)
        total += seconds if name in ("validate", "featurize") else 0.0
        print(f"{name:<14} {seconds:8.1f} {gb:8.2f}", flush=True)
    print(f"{'val+feat':<14} {total:8.1f}")
    for method in EMBED_METHODS:
        print(f"embed {method} report: {(work / f'embed-{method}' / 'report.json').read_text()}")
    print((work / "data" / "synth.json").read_text())


if __name__ == "__main__":
    main()
