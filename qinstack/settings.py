"""The stack's settings, read from the environment once, and its credentials file (docker/.env).

Standard library only (and qin.runs.io, itself standard library only): `python -m qinstack secrets` and
`env` run with a bare Python before any virtual environment exists.

    POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, POSTGRES_PASSWORD   one database each: mlflow,
        mlflow_auth (MLflow's users) and prefect, owned by POSTGRES_USER
    MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD  MLflow's admin login (the server creates it on its
        first start; clients send it)
    MLFLOW_FLASK_SERVER_SECRET_KEY   signs the MLflow UI's sessions and CSRF tokens (the server only)
    PREFECT_API_AUTH_STRING        user:password of the Prefect API (server and clients)
    STACK_BIND                     the address servers bind (127.0.0.1; 0.0.0.0 inside a container)
    MLFLOW_PORT, PREFECT_PORT, SERVING_PORT   5000, 4200, 5001
    SERVING_APP                    asgi (qinstack/scoring_app.py, the default: the same pyfunc and scores,
        in bench/serving.py a third of MLflow's server's latency and 4x its rows/s, 3.5 refused rather
        than cast to 3, no request echoed in a refusal) | mlflow (`mlflow models serve`)
    SERVING_WORKERS                the model server's processes (1)
    MLFLOW_ARTIFACTS_DESTINATION   where the MLflow server keeps the artifacts it proxies
    MLFLOW_PUBLIC_HOSTS            more Host headers the MLflow server accepts (comma-separated patterns)
    QIN_POOL                       the process work pool (qin-pool)
    QIN_STACK_DIR                  `make stack`'s state: PostgreSQL's data, MLflow's artifacts, logs (.stack)
"""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from qin.runs.io import atomic_file

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "docker" / ".env"
DATABASES = ("mlflow", "mlflow_auth", "prefect")
SERVING_APPS = ("asgi", "mlflow")


class StackError(RuntimeError):
    """A setting is missing or a service did not come up; the message says which and where to look."""


def _port(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key) or str(default)
    if not value.isdigit():
        raise StackError(f"{key}: expected a port number, found {value!r}")
    return int(value)


def _workers(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise StackError(f"SERVING_WORKERS: expected a number of processes (1 or more), found {value!r}")
    return int(value)


def serving_app(value: str) -> str:
    if value not in SERVING_APPS:
        raise StackError(f"SERVING_APP: expected one of {', '.join(SERVING_APPS)}, found {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    pg_host: str
    pg_port: int
    pg_user: str
    pg_password: str
    bind: str
    mlflow_port: int
    prefect_port: int
    serving_port: int
    serving_app: str
    serving_workers: int
    mlflow_user: str
    mlflow_password: str
    prefect_auth: str
    artifacts: str
    public_hosts: tuple[str, ...]
    pool: str
    state_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        state = Path(env.get("QIN_STACK_DIR") or ROOT / ".stack")
        return cls(
            pg_host=env.get("POSTGRES_HOST") or "127.0.0.1",
            pg_port=_port(env, "POSTGRES_PORT", 5432),
            pg_user=env.get("POSTGRES_USER") or "qin",
            pg_password=env.get("POSTGRES_PASSWORD", ""),
            bind=env.get("STACK_BIND") or "127.0.0.1",
            mlflow_port=_port(env, "MLFLOW_PORT", 5000),
            prefect_port=_port(env, "PREFECT_PORT", 4200),
            serving_port=_port(env, "SERVING_PORT", 5001),
            serving_app=serving_app(env.get("SERVING_APP") or "asgi"),
            serving_workers=_workers(env.get("SERVING_WORKERS") or "1"),
            mlflow_user=env.get("MLFLOW_TRACKING_USERNAME") or "admin",
            mlflow_password=env.get("MLFLOW_TRACKING_PASSWORD", ""),
            prefect_auth=env.get("PREFECT_API_AUTH_STRING", ""),
            artifacts=env.get("MLFLOW_ARTIFACTS_DESTINATION") or str(state / "mlflow-artifacts"),
            public_hosts=tuple(h.strip() for h in env.get("MLFLOW_PUBLIC_HOSTS", "").split(",") if h.strip()),
            pool=env.get("QIN_POOL") or "qin-pool",
            state_dir=state,
        )

    def require(self, command: str, *keys: str) -> None:
        values = {
            "POSTGRES_PASSWORD": self.pg_password,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_password,
            "PREFECT_API_AUTH_STRING": self.prefect_auth,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY", ""),
        }
        missing = [k for k in keys if not values[k]]
        if missing:
            raise StackError(
                f"python -m qinstack {command}: {', '.join(missing)} not set (expected in the environment; "
                f"`python -m qinstack secrets docker/.env` generates them)"
            )
        if "PREFECT_API_AUTH_STRING" in keys and ":" not in self.prefect_auth:
            raise StackError("PREFECT_API_AUTH_STRING: expected user:password, found no ':' in it")

    def database(self, name: str, driver: str) -> str:
        return f"postgresql+{driver}://{self.pg_user}:{self.pg_password}@{self.pg_host}:{self.pg_port}/{name}"

    def url(self, service: str) -> str:
        """Where a client on this machine reaches `service` (the bind address, or loopback for 0.0.0.0)."""
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "::") else self.bind
        port = {"mlflow": self.mlflow_port, "prefect": self.prefect_port, "serving": self.serving_port}[
            service
        ]
        return f"http://{host}:{port}"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blanks skipped), as docker compose reads an env file."""
    values = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise StackError(f"{path}:{n}: expected KEY=VALUE, found {line!r}")
        values[key.strip()] = value.strip()
    return values


def write_secrets(path: Path) -> bool:
    """Write `path` with generated passwords unless it exists; True when it was written. Written to a
    temporary name (atomic_file's: readable by its owner only, a mode the rename keeps), then renamed."""
    if path.exists():
        return False
    token = lambda: secrets.token_urlsafe(24)  # noqa: E731 - letters, digits, '-' and '_': safe in URLs
    lines = [
        "# The team stack's credentials, generated by `python -m qinstack secrets` (git-ignored).",
        "# Keys: docker/.env.example. Changing a password here after the first start does not change it",
        "# in PostgreSQL or MLflow's user store (README, team section).",
        "POSTGRES_USER=qin",
        f"POSTGRES_PASSWORD={token()}",
        "MLFLOW_TRACKING_USERNAME=admin",
        f"MLFLOW_TRACKING_PASSWORD={token()}",
        f"PREFECT_API_AUTH_STRING=qin:{token()}",
        f"MLFLOW_FLASK_SERVER_SECRET_KEY={token()}",
        "MLFLOW_PORT=5000",
        "PREFECT_PORT=4200",
        "SERVING_PORT=5001",
    ]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return True


def client_env(s: Settings) -> dict[str, str]:
    """What a client (`qin`, `prefect`, `mlflow`, a worker) needs to use the stack."""
    return {
        "MLFLOW_TRACKING_URI": s.url("mlflow"),
        "MLFLOW_TRACKING_USERNAME": s.mlflow_user,
        "MLFLOW_TRACKING_PASSWORD": s.mlflow_password,
        "PREFECT_API_URL": s.url("prefect") + "/api",
        "PREFECT_API_AUTH_STRING": s.prefect_auth,
    }


def loaded_env(env_file: Path | None) -> dict[str, str]:
    """The environment with `env_file`'s keys filled in where the environment does not set them."""
    env = dict(os.environ)
    if env_file is not None and env_file.exists():
        for key, value in read_env_file(env_file).items():
            env.setdefault(key, value)
    return env


def print_env(env_file: Path) -> int:
    """`python -m qinstack env`: the exports that point a shell's clients at the stack of `env_file`."""
    if not env_file.exists():
        raise StackError(f"{env_file}: not found (`make up` or `make stack` writes it)")
    s = Settings.from_env(
        {**read_env_file(env_file), **{k: v for k, v in os.environ.items() if k == "STACK_BIND"}}
    )
    for key, value in client_env(s).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0
