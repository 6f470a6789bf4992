"""Deploy the `qin-train`, `qin-ablation`, `qin-embed-eval` and `qin-score` flows to the process work pool
`qin-pool` as deployments `qin-train/pool`, `qin-ablation/pool`, `qin-embed-eval/pool` and `qin-score/pool`.

The code source is this checkout (a local directory: no image, no registry, no network); a worker runs each
flow run in a subprocess started in the project root. At most params.yaml `deploy.concurrency_limit` runs at
once (the server holds the others back). Needs PREFECT_API_URL and the pool; `make worker` creates the pool
when it is absent, runs this and starts a worker:

    prefect work-pool create qin-pool --type process
    python -m flows.deploy_pool
    # stops its flow runs on SIGTERM / Ctrl-C (qinstack/worker.py)
    python -m qinstack.worker --pool qin-pool
    prefect deployment run qin-train/pool        # in another shell, with the same PREFECT_API_URL
    prefect deployment run qin-ablation/pool
    prefect deployment run qin-embed-eval/pool   # each item embedding judged by DIN and QIN
    prefect deployment run qin-score/pool        # the champion's (else staging's) submission
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flows.deployment import concurrency_limit, require_api
from flows.qin_ablation import qin_ablation
from flows.qin_embed_eval import qin_embed_eval
from flows.qin_score import qin_score
from flows.qin_train import qin_train
from qin.settings.params import load_params

POOL = "qin-pool"
DEPLOYMENT = "pool"
ROOT = Path(__file__).resolve().parents[1]
# The flows a worker runs: (flow, its entrypoint in the checkout).
FLOWS = (
    (qin_train, "flows/qin_train.py:qin_train"),
    (qin_ablation, "flows/qin_ablation.py:qin_ablation"),
    (qin_embed_eval, "flows/qin_embed_eval.py:qin_embed_eval"),
    (qin_score, "flows/qin_score.py:qin_score"),
)


def deploy(pool: str = POOL, name: str = DEPLOYMENT, root: Path = ROOT) -> dict[str, str]:
    """Deploy each flow from `root` (a checkout), where its runs then start; the concurrency policy is read
    from ./params.yaml. Deploying again updates the deployments in place. Returns {flow/deployment: id}."""
    limit = concurrency_limit(load_params().deploy)
    ids = {}
    for flow, entrypoint in FLOWS:
        source: Any = flow.from_source(source=str(root), entrypoint=entrypoint)
        deployment_id = source.deploy(
            name=name, work_pool_name=pool, concurrency_limit=limit, print_next_steps=False
        )
        ids[f"{flow.name}/{name}"] = str(deployment_id)
    return ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy_pool", description=__doc__.split("\n")[0])
    parser.add_argument("--pool", default=POOL, help=f"the process work pool (default: {POOL})")
    pool = parser.parse_args(argv).pool
    require_api("python -m flows.deploy_pool", "worker")
    for deployment, deployment_id in deploy(pool).items():
        print(f"deployed {deployment} to work pool {pool} (id {deployment_id}), source {ROOT}")


if __name__ == "__main__":
    main()
