"""What the deployments take from params.yaml `deploy`: the concurrency policy, and each run's share of the
cores; and a Prefect API that does not answer is said in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.deployment import concurrency_limit, share_cores
from qin.settings.sections import DeployConfig
from tests.conftest import REPO
from tests.helpers import free_ports


def test_the_policy_as_prefect_takes_it() -> None:
    limit = concurrency_limit(DeployConfig(concurrency_limit=3, collision_strategy="CANCEL_NEW"))
    assert limit is not None and (limit.limit, limit.collision_strategy.value) == (3, "CANCEL_NEW")
    assert concurrency_limit(DeployConfig(concurrency_limit=0)) is None


@pytest.mark.parametrize(("limit", "cores", "given", "expected"), [
    (2, 8, None, "4"),    # each of two runs at once gets half the cores
    (3, 2, None, "1"),    # never less than one thread
    (2, 8, "6", "6"),     # the user's own setting stands
    (0, 8, None, None),   # no limit: no share to compute
])  # fmt: skip
def test_runs_at_once_share_the_cores(
    monkeypatch: pytest.MonkeyPatch, limit: int, cores: int, given: str | None, expected: str | None
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    if given is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", given)
    share_cores(DeployConfig(concurrency_limit=limit))
    assert os.environ.get("OMP_NUM_THREADS") == expected


def test_the_pool_deploys_each_flow_from_its_own_entrypoint() -> None:
    import importlib

    from flows.deploy_pool import FLOWS

    assert [flow.name for flow, _ in FLOWS] == ["qin-train", "qin-ablation", "qin-embed-eval", "qin-score"]
    for flow, entrypoint in FLOWS:
        path, name = entrypoint.split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, name) is flow, entrypoint


def test_serve_says_in_one_line_that_the_prefect_api_does_not_answer(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    url = f"http://127.0.0.1:{port}/api"
    out = subprocess.run(
        [sys.executable, "-m", "flows.serve"],
        cwd=tmp_path, env={**os.environ, "PREFECT_API_URL": url, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, found {len(lines)}:\n{out.stderr}"
    assert f"the Prefect API at {url} does not answer" in lines[0]
    assert "make stack" in lines[0] and "unset PREFECT_API_URL" in lines[0]
