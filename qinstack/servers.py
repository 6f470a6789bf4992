"""The MLflow tracking server (with its model registry) and the Prefect server, both on PostgreSQL, each
replacing this process (exec) once its settings are checked."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from qinstack.health import postgres_ready, wait_until
from qinstack.process import server_env, tool
from qinstack.settings import Settings


def mlflow_allowed_hosts(s: Settings) -> list[str]:
    """Host headers the server answers (MLflow 3 refuses others with 403, a DNS-rebinding guard): loopback
    and the compose service name on any port, and MLFLOW_PUBLIC_HOSTS."""
    return ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "mlflow", "mlflow:*", *s.public_hosts]


def auth_config(s: Settings, folder: Path) -> Path:
    """MLflow's basic-auth settings (its user store in PostgreSQL, READ for users without a grant), as a
    file only its owner can read: it holds the database password."""
    path = folder / "basic_auth.ini"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {s.database('mlflow_auth', 'psycopg2')}\n"
            f"admin_username = {s.mlflow_user}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "grant_default_workspace_access = false\n"
        )
    return path


def mlflow_server_command(s: Settings) -> list[str]:
    return [
        tool("mlflow"), "server", "--app-name", "basic-auth",
        "--backend-store-uri", s.database("mlflow", "psycopg2"),
        "--serve-artifacts", "--artifacts-destination", s.artifacts,
        "--host", s.bind, "--port", str(s.mlflow_port),
        "--workers", os.environ.get("MLFLOW_WORKERS", "2"),
        "--allowed-hosts", ",".join(mlflow_allowed_hosts(s)),
    ]  # fmt: skip


def run_mlflow(s: Settings) -> int:
    """The tracking server and model registry: PostgreSQL backend (schema upgraded first), artifacts
    proxied onto MLFLOW_ARTIFACTS_DESTINATION, basic auth with the admin login from the environment."""
    s.require("mlflow", "POSTGRES_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
    wait_until(
        f"PostgreSQL's mlflow and mlflow_auth databases at {s.pg_host}:{s.pg_port}",
        lambda: postgres_ready(s, "mlflow") and postgres_ready(s, "mlflow_auth"),
        timeout=120,
    )
    if "://" not in s.artifacts:
        Path(s.artifacts).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="qin-mlflow-"))
    env = server_env({
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(s, folder)),
        "MLFLOW_AUTH_ADMIN_USERNAME": s.mlflow_user,
        "MLFLOW_AUTH_ADMIN_PASSWORD": s.mlflow_password,
    })  # fmt: skip
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    print("mlflow: upgrading the database schema", flush=True)
    subprocess.run([tool("mlflow"), "db", "upgrade", s.database("mlflow", "psycopg2")], check=True, env=env)
    print(f"mlflow: serving on {s.bind}:{s.mlflow_port}", flush=True)
    command = mlflow_server_command(s)
    os.execve(command[0], command, env)
    return 1  # not reached


def run_prefect(s: Settings) -> int:
    """The Prefect server: PostgreSQL (migrated on start), API basic auth from PREFECT_API_AUTH_STRING."""
    s.require("prefect", "POSTGRES_PASSWORD", "PREFECT_API_AUTH_STRING")
    wait_until(
        f"PostgreSQL's prefect database at {s.pg_host}:{s.pg_port}",
        lambda: postgres_ready(s, "prefect"),
        timeout=120,
    )
    env = server_env({
        "PREFECT_API_DATABASE_CONNECTION_URL": s.database("prefect", "asyncpg"),
        "PREFECT_SERVER_API_AUTH_STRING": s.prefect_auth,
    })  # fmt: skip
    # The UI, in the user's browser, calls the API where the user reaches it (compose: the published port).
    env.setdefault("PREFECT_UI_API_URL", s.url("prefect") + "/api")
    command = [tool("prefect"), "server", "start", "--host", s.bind, "--port", str(s.prefect_port)]
    print(f"prefect: serving on {s.bind}:{s.prefect_port}", flush=True)
    os.execve(command[0], command, env)
    return 1  # not reached
