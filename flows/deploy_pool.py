"""Deploy the `qin-train` flow to the process work pool `qin-pool` as deployment `qin-train/pool`.

The code source is this checkout (a local directory: no image, no registry, no network); a worker runs each
flow run in a subprocess started in the project root. Needs PREFECT_API_URL and the pool; `make worker`
creates the pool when it is absent, runs this and starts a worker:

    prefect work-pool create qin-pool --type process
    python -m flows.deploy_pool
    prefect worker start --pool qin-pool
    prefect deployment run qin-train/pool        # in another shell, with the same PREFECT_API_URL
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.qin_train import qin_train

POOL = "qin-pool"
DEPLOYMENT = "pool"
ROOT = Path(__file__).resolve().parents[1]


def deploy(pool: str = POOL, name: str = DEPLOYMENT) -> str:
    source: Any = qin_train.from_source(source=str(ROOT), entrypoint="flows/qin_train.py:qin_train")
    deployment_id = source.deploy(name=name, work_pool_name=pool, print_next_steps=False)
    return str(deployment_id)


if __name__ == "__main__":
    print(f"deployed {qin_train.name}/{DEPLOYMENT} to work pool {POOL} (id {deploy()}), source {ROOT}")
