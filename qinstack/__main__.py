"""The team stack's command line: one command per service, each defined once (docker/compose.yaml runs one
per container of the project's image; `make stack` runs postgres, mlflow and prefect under supervisord).

    python -m qinstack up                  # make stack: postgres + mlflow + prefect here, until Ctrl-C
    python -m qinstack postgres|mlflow|prefect|worker|serving   # one service, in the foreground
    python -m qinstack data                # raw data into ./data unless it holds some (one-shot)
    python -m qinstack health SERVICE      # exit 0 when SERVICE is healthy (compose health checks)
    python -m qinstack secrets docker/.env # write the credentials file when it is missing
    python -m qinstack env [docker/.env]   # the exports that point a laptop's qin/prefect/mlflow at it

Settings come from the environment (qinstack/settings.py lists them; docker/.env holds the credentials,
which `up` reads itself). Every command stops cleanly on SIGTERM as on Ctrl-C. A command imports only what
it needs: `secrets` and `env` run with a bare Python, before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qinstack.health import SERVICES
from qinstack.settings import ENV_FILE, Settings, StackError, print_env, write_secrets


def parser() -> argparse.ArgumentParser:
    first_line = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m qinstack", description=first_line)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in (*SERVICES, "data"):
        sub.add_parser(name, help=f"run the {name} service in the foreground")
    sub.add_parser("up", help="postgres, mlflow and prefect as local processes (make stack)").add_argument(
        "--env-file", type=Path, default=ENV_FILE
    )
    sub.add_parser(
        "ready", help="wait until `up`'s services are healthy, then say where they are"
    ).add_argument("--env-file", type=Path, default=ENV_FILE)
    sub.add_parser("health", help="exit 0 when the service is healthy").add_argument(
        "service", choices=SERVICES
    )
    sub.add_parser("secrets", help="write the credentials file when it is missing").add_argument(
        "path", type=Path, nargs="?", default=ENV_FILE
    )
    sub.add_parser("env", help="print the exports that point clients at the stack").add_argument(
        "env_file", type=Path, nargs="?", default=ENV_FILE
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """The command `args` names; each module is imported here, only for its own command."""
    if args.command == "secrets":
        print(f"{'wrote' if write_secrets(args.path) else 'keeping'} {args.path}")
        return 0
    if args.command == "env":
        return print_env(args.env_file)
    if args.command in ("up", "ready"):
        from qinstack import up

        return up.run_up(args.env_file) if args.command == "up" else up.run_ready(args.env_file)
    if args.command == "data":
        from qinstack.data import run_data

        return run_data()
    s = Settings.from_env()
    if args.command == "health":
        from qinstack.health import healthy

        return 0 if healthy(args.service, s) else 1
    if args.command == "postgres":
        from qinstack.postgres import run_postgres

        return run_postgres(s)
    if args.command in ("mlflow", "prefect"):
        from qinstack import servers

        return servers.run_mlflow(s) if args.command == "mlflow" else servers.run_prefect(s)
    if args.command == "worker":
        from qinstack.worker import run_worker

        return run_worker(s)
    from qinstack.serving import run_serving

    return run_serving(s)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except StackError as exc:
        print(f"python -m qinstack {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
