"""`python -m qin ...` with a fault injected into one torchrun process (tests/models/test_train.py):
- QIN_TEST_FAIL_RANK, QIN_TEST_FAIL_STEP: that process raises while gathering its rows for that training
  step (counted from 1 in this run), while its peers go on into the step's all-reduce;
- QIN_TEST_BLIND_RANK: that process cannot read a checkpoint (as if its file system did not hold one)."""

import os

import torch

from qin import train
from qin.cli import main

if os.environ.get("RANK") == os.environ.get("QIN_TEST_BLIND_RANK", "none"):
    load = torch.load

    def blind_load(source, *args, **kwargs):  # torch also loads from bytes (a tensor sent by pickle)
        if isinstance(source, str | os.PathLike):
            raise FileNotFoundError(f"process {os.environ['RANK']} sees no {source}")
        return load(source, *args, **kwargs)

    torch.load = blind_load

if os.environ.get("RANK") == os.environ.get("QIN_TEST_FAIL_RANK", "none"):
    calls = {"n": 0}
    rows = train.host_rows

    def failing_rows(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(os.environ["QIN_TEST_FAIL_STEP"]):
            raise RuntimeError(f"injected failure in process {os.environ['RANK']}")
        return rows(*args, **kwargs)

    train.host_rows = failing_rows

raise SystemExit(main())
