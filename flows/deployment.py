"""What both deployments of `qin-train` share: the concurrency policy of params.yaml `deploy`."""

from __future__ import annotations

import os

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from qin.settings.sections import DeployConfig


def concurrency_limit(config: DeployConfig) -> ConcurrencyLimitConfig | None:
    """The concurrency limit as a deployment takes it (`concurrency_limit=`); None for 0 (no limit)."""
    if config.concurrency_limit == 0:
        return None
    return ConcurrencyLimitConfig(
        limit=config.concurrency_limit,
        collision_strategy=ConcurrencyLimitStrategy(config.collision_strategy),
    )


def share_cores(config: DeployConfig) -> None:
    """Give each of the `concurrency_limit` flow runs at once its share of the CPU cores: OMP_NUM_THREADS,
    which the flow-run processes inherit and torch reads when `train.threads` is 0 (its default: one thread
    per core). N trainings that each take every core are slower together than one after the other (2 cores,
    two at once: 85 s with 2 threads each, 31 s with 1 each, 23 s for one alone). A value the user set, a
    `train.threads` override and "no limit" are left alone; `threads` is a speed-only setting, so this
    changes no stage key."""
    if config.concurrency_limit and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // config.concurrency_limit))
