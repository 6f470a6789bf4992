"""What both deployments of `qin-train` share: the concurrency policy of params.yaml `deploy`."""

from __future__ import annotations

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from qin.config import DeployConfig


def concurrency_limit(config: DeployConfig) -> ConcurrencyLimitConfig | None:
    """The concurrency limit as a deployment takes it (`concurrency_limit=`); None for 0 (no limit)."""
    if config.concurrency_limit == 0:
        return None
    return ConcurrencyLimitConfig(
        limit=config.concurrency_limit,
        collision_strategy=ConcurrencyLimitStrategy(config.collision_strategy),
    )
