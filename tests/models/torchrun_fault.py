"""`python -m qin ...` with a fault injected into one torchrun process (tests/models/test_train.py): the
process of rank QIN_TEST_FAIL_RANK raises while gathering its rows for training step QIN_TEST_FAIL_STEP,
while its peers go on into the step's all-reduce."""

import os

from qin import train
from qin.cli import main

if os.environ.get("RANK") == os.environ["QIN_TEST_FAIL_RANK"]:
    calls = {"n": 0}
    rows = train.host_rows

    def failing_rows(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(os.environ["QIN_TEST_FAIL_STEP"]):
            raise RuntimeError(f"injected failure in process {os.environ['RANK']}")
        return rows(*args, **kwargs)

    train.host_rows = failing_rows

raise SystemExit(main())
