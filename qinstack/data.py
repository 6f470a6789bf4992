"""The raw data the workers start from (`python -m qinstack data`, compose's one-shot `data` service)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from qinstack.process import tool


def run_data() -> int:
    """Raw data into the working directory's data/: `qin data synth` (preset QIN_DATA_PRESET, else
    params.yaml `data.preset`) unless data/ already holds a train.parquet (a previous start, or files
    imported with `qin data import`). Compose mounts the same volume there for every worker."""
    data = Path("data")
    if (data / "train.parquet").exists():
        print(f"data: keeping the data in {data}", flush=True)
        return 0
    preset = ["--preset", os.environ["QIN_DATA_PRESET"]] if os.environ.get("QIN_DATA_PRESET") else []
    if not os.path.ismount(data):
        command = [tool("qin"), "data", "synth", "--out", str(data), *preset]
        return subprocess.run(command, check=False).returncode
    # A volume's mount point (compose mounts one on data/) cannot be replaced whole, as `qin data synth`
    # replaces its output folder (and the folder above it, /app, is not the user's to write): synthesise
    # into a folder inside it, then move the files up one by one, train.parquet last, so that a start
    # interrupted halfway is not taken for data the next time.
    staging = data / ".synth"
    shutil.rmtree(staging, ignore_errors=True)
    command = [tool("qin"), "data", "synth", "--out", str(staging), "--no-dvc", *preset]
    status = subprocess.run(command, check=False).returncode
    if status == 0:
        for name in sorted((p.name for p in staging.iterdir()), key=lambda n: n == "train.parquet"):
            os.replace(staging / name, data / name)
        staging.rmdir()
    return status
