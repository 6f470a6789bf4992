"""What the deployments take from params.yaml `deploy`: the concurrency policy, and each run's share of the
cores."""

from __future__ import annotations

import os

import pytest

from flows.deployment import concurrency_limit, share_cores
from qin.settings.sections import DeployConfig


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
