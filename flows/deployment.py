"""What both deployments of `qin-train` share: the concurrency policy of params.yaml `deploy`, each run's
share of the cores, and a Prefect API that answers."""

from __future__ import annotations

import os
import sys

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


def require_api(program: str, make_target: str) -> None:
    """Exit with one line on stderr when PREFECT_API_URL names a server that does not answer: otherwise the
    first deployment call fails in a long traceback of the HTTP client's. Nothing to check without it."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        print(
            f"{program}: the Prefect API at {url} does not answer ({type(error).__name__}: {error}); start "
            f"its server (the team stack's: `make stack` or `make up`), or unset PREFECT_API_URL and `make "
            f"{make_target}` starts a local one",
            file=sys.stderr,
        )
        sys.exit(2)
