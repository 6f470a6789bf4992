"""The team stack's processes, each defined once: PostgreSQL, the MLflow tracking server, the Prefect server,
a Prefect worker, model serving, and the data they start from.

docker/compose.yaml runs one service per command in the project's image (`python -m qinstack.stack mlflow`,
...); `make stack` runs `python -m qinstack.stack up`: PostgreSQL, MLflow and Prefect as local processes with
the same commands and settings, for a workstation and for the integration tests.

    python -m qinstack.stack up                  # make stack: postgres + mlflow + prefect here, until Ctrl-C
    python -m qinstack.stack postgres|mlflow|prefect|worker|serving   # one service, in the foreground
    python -m qinstack.stack data                # raw data into ./data unless it holds some (one-shot)
    python -m qinstack.stack health SERVICE      # exit 0 when SERVICE is healthy (compose health checks)
    python -m qinstack.stack secrets docker/.env # write the credentials file when it is missing
    python -m qinstack.stack env [docker/.env]   # the exports that point a laptop's qin/prefect/mlflow at it

Settings come from the environment (docker/.env holds the credentials; `up` reads it itself):
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
    QIN_STACK_DIR                  `up`'s state: PostgreSQL's data, MLflow's artifacts, logs (./.stack)

Every command stops cleanly on SIGTERM as on Ctrl-C. This module imports only the standard library and
qin.runs.io (itself standard library only) at the top, so `secrets` and `env` run with a bare Python before
any
virtual environment exists.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from qin.runs.io import atomic_file, read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "docker" / ".env"
DATABASES = ("mlflow", "mlflow_auth", "prefect")
OFFLINE = {  # telemetry off (STACK.md), for every process the stack starts
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}
STOP_GRACE_S = 15.0  # what a service gets between SIGTERM and SIGKILL when `up` stops it


class StackError(RuntimeError):
    """A setting is missing or a service did not come up; the message says which and where to look."""


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
        def port(key: str, default: int) -> int:
            value = env.get(key) or str(default)
            if not value.isdigit():
                raise StackError(f"{key}: expected a port number, found {value!r}")
            return int(value)

        def workers(value: str) -> int:
            if not value.isdigit() or int(value) < 1:
                raise StackError(
                    f"SERVING_WORKERS: expected a number of processes (1 or more), found {value!r}"
                )
            return int(value)

        state = Path(env.get("QIN_STACK_DIR") or ROOT / ".stack")
        return cls(
            pg_host=env.get("POSTGRES_HOST") or "127.0.0.1",
            pg_port=port("POSTGRES_PORT", 5432),
            pg_user=env.get("POSTGRES_USER") or "qin",
            pg_password=env.get("POSTGRES_PASSWORD", ""),
            bind=env.get("STACK_BIND") or "127.0.0.1",
            mlflow_port=port("MLFLOW_PORT", 5000),
            prefect_port=port("PREFECT_PORT", 4200),
            serving_port=port("SERVING_PORT", 5001),
            serving_app=serving_app(env.get("SERVING_APP") or "asgi"),
            serving_workers=workers(env.get("SERVING_WORKERS") or "1"),
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
                f"qinstack.stack {command}: {', '.join(missing)} not set (expected in the environment; "
                f"`python -m qinstack.stack secrets docker/.env` generates them)"
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


# --- the credentials file and a client's environment -------------------------------------------------------


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
        "# The team stack's credentials, generated by `python -m qinstack.stack secrets` (git-ignored).",
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


def _loaded(env_file: Path | None) -> dict[str, str]:
    """The environment with `env_file`'s keys filled in where the environment does not set them."""
    env = dict(os.environ)
    if env_file is not None and env_file.exists():
        for key, value in read_env_file(env_file).items():
            env.setdefault(key, value)
    return env


# --- health ------------------------------------------------------------------------------------------------


def _get(url: str, auth: str | None = None, timeout: float = 5.0) -> int:
    """The HTTP status of GET `url` (0 when nothing answers)."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def postgres_ready(s: Settings, database: str = "postgres") -> bool:
    import psycopg2

    try:
        psycopg2.connect(
            host=s.pg_host,
            port=s.pg_port,
            user=s.pg_user,
            password=s.pg_password,
            dbname=database,
            connect_timeout=3,
        ).close()
    except psycopg2.OperationalError:
        return False
    return True


def healthy(service: str, s: Settings) -> bool:
    if service == "postgres":  # up, and its databases made
        return all(postgres_ready(s, name) for name in DATABASES)
    if service == "mlflow":
        return _get(s.url("mlflow") + "/health") == 200
    if service == "prefect":
        return _get(s.url("prefect") + "/api/health", s.prefect_auth) == 200
    if service == "serving":
        status = _serving_status(s.serving_port)
        if status.get("state") == "serving":
            return _get(s.url("serving") + "/ping") == 200
        return status.get("state") == "waiting"  # no version holds the aliases yet: serving nothing is right
    if service == "worker":  # its worker process runs (started once the deployments exist), its API answers
        return _running("qinstack.worker") and (
            _get(os.environ.get("PREFECT_API_URL", s.url("prefect") + "/api") + "/health", s.prefect_auth)
            == 200
        )
    raise StackError(f"health: expected one of postgres, mlflow, prefect, serving, worker, found {service!r}")


def _running(module: str) -> bool:
    """Whether a `python -m <module>` process runs on this machine (in a container: in this container)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if b"-m" in argv and module.encode() in argv:
                return True
    return False


def wait_until(
    what: str, ready: Callable[[], bool], timeout: float = 180.0, alive: Callable[[], bool] = lambda: True
) -> None:
    """Poll `ready()` until it is true; StackError naming `what` after `timeout` s or once `alive()` fails."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise StackError(f"{what}: a process exited before it was ready")
        if time.monotonic() > deadline:
            raise StackError(f"{what} was not ready after {timeout:.0f} s")
        time.sleep(1.0)


class Stop:
    """SIGTERM and SIGINT set `requested` (and call `on_stop`) instead of raising: the caller stops its
    children in order. A second signal calls `on_second`, which should stop at once."""

    def __init__(
        self, on_stop: Callable[[], None] = lambda: None, on_second: Callable[[], None] = lambda: None
    ) -> None:
        self.requested = False
        self.on_stop, self.on_second = on_stop, on_second
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            self.on_second()
            return
        self.requested = True
        # os.write, not print: a handler may interrupt a print, which is not reentrant (flows/shutdown.py)
        os.write(2, f"qinstack.stack: {signal.Signals(signum).name}: stopping\n".encode())
        self.on_stop()

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(0.2, seconds))


SERVING_APPS = ("asgi", "mlflow")


def serving_app(value: str) -> str:
    if value not in SERVING_APPS:
        raise StackError(f"SERVING_APP: expected one of {', '.join(SERVING_APPS)}, found {value!r}")
    return value


def serving_command(s: Settings, uri: str) -> list[str]:
    """The model server for `uri` on STACK_BIND:SERVING_PORT: qinstack/scoring_app.py (SERVING_APP=asgi) or
    `mlflow models serve` (mlflow). Both load the same pyfunc and answer the same /invocations JSON."""
    if s.serving_app == "asgi":
        return [sys.executable, "-m", "qinstack.scoring_app", "--model", uri, "--host", s.bind,
                "--port", str(s.serving_port), "--workers", str(s.serving_workers)]  # fmt: skip
    return [_tool("mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
            "-h", s.bind, "-p", str(s.serving_port), "-w", str(s.serving_workers)]  # fmt: skip


def _tool(name: str) -> str:
    """A console script of this environment (beside the running Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name}: not found beside {sys.executable} nor on PATH (run `make install`)")
    return found


def _server_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A server's environment: telemetry off, and none of the client settings that would point the server
    at itself (or at another stack)."""
    env = {**os.environ, **OFFLINE, **extra}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        env.pop(key, None)
    return env


# --- PostgreSQL (local processes only: compose runs the postgres image) ------------------------------------


def postgres_bindir() -> Path:
    """Where the PostgreSQL server's programs are: POSTGRES_BIN, PATH, or Debian's /usr/lib/postgresql."""
    if os.environ.get("POSTGRES_BIN"):
        return Path(os.environ["POSTGRES_BIN"])
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    raise StackError(
        "PostgreSQL's server (postgres, initdb) was not found on PATH nor in /usr/lib/postgresql: install it "
        "(Debian: apt-get install postgresql; `make stack` does this as root) or set POSTGRES_BIN"
    )


def _as_postgres() -> dict[str, object]:
    """Popen arguments that run PostgreSQL's programs as the `postgres` user when we are root (initdb and
    postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise StackError("running as root, but there is no `postgres` user to run PostgreSQL as") from exc
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _initdb(bindir: Path, data: Path, s: Settings) -> None:
    """A new cluster in `data`, made in `<data>.partial` and renamed: an initdb that fails half-way leaves
    nothing that the next start would take for a cluster."""
    who = _as_postgres()
    final, data = data, data.with_name(data.name + ".partial")
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    with tempfile.NamedTemporaryFile("w", prefix="qin-pg-", delete=False) as f:
        f.write(s.pg_password + "\n")
    try:
        if who:
            for path in (data, Path(f.name)):
                os.chown(path, int(who["user"]), int(who["group"]))  # type: ignore[call-overload]
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                s.pg_user,
                f"--pwfile={f.name}",
                "-E",
                "UTF8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-instructions",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            **who,  # type: ignore[call-overload]
        )
        os.replace(data, final)
    finally:
        os.unlink(f.name)


def create_databases(s: Settings) -> None:
    """One database per service (DATABASES), owned by POSTGRES_USER; those that exist are kept."""
    import psycopg2

    conn = psycopg2.connect(
        host=s.pg_host, port=s.pg_port, user=s.pg_user, password=s.pg_password, dbname="postgres"
    )
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction (nor in psycopg2's `with conn`)
    try:
        with conn.cursor() as cur:
            for name in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}" OWNER "{s.pg_user}"')
    finally:
        conn.close()


def run_postgres(s: Settings) -> int:
    """A local PostgreSQL for `up`: its cluster in QIN_STACK_DIR/postgres (made on the first start, the
    superuser POSTGRES_USER with POSTGRES_PASSWORD), TCP on STACK_BIND:POSTGRES_PORT only."""
    s.require("postgres", "POSTGRES_PASSWORD")
    bindir = postgres_bindir()
    data = s.state_dir / "postgres"
    if not (data / "PG_VERSION").exists():
        print(f"postgres: a new cluster in {data}", flush=True)
        _initdb(bindir, data, s)
    proc = subprocess.Popen(
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(s.pg_port),
            "-c",
            f"listen_addresses={s.bind}",
            "-c",
            "unix_socket_directories=",
        ],
        **_as_postgres(),  # type: ignore[call-overload]
    )
    # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to disconnect).
    Stop(on_stop=lambda: proc.send_signal(signal.SIGINT), on_second=proc.kill)
    try:
        wait_until("PostgreSQL", lambda: postgres_ready(s), timeout=60, alive=lambda: proc.poll() is None)
        create_databases(s)
        print(f"postgres: ready on {s.pg_host}:{s.pg_port}, databases {', '.join(DATABASES)}", flush=True)
    except BaseException:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    return proc.wait()


# --- MLflow and Prefect servers ----------------------------------------------------------------------------


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
        _tool("mlflow"), "server", "--app-name", "basic-auth",
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
    wait_until(f"PostgreSQL at {s.pg_host}:{s.pg_port}", lambda: postgres_ready(s), timeout=120)
    if "://" not in s.artifacts:
        Path(s.artifacts).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="qin-mlflow-"))
    env = _server_env({
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(s, folder)),
        "MLFLOW_AUTH_ADMIN_USERNAME": s.mlflow_user,
        "MLFLOW_AUTH_ADMIN_PASSWORD": s.mlflow_password,
    })  # fmt: skip
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    print("mlflow: upgrading the database schema", flush=True)
    subprocess.run([_tool("mlflow"), "db", "upgrade", s.database("mlflow", "psycopg2")], check=True, env=env)
    print(f"mlflow: serving on {s.bind}:{s.mlflow_port}", flush=True)
    command = mlflow_server_command(s)
    os.execve(command[0], command, env)
    return 1  # not reached


def run_prefect(s: Settings) -> int:
    """The Prefect server: PostgreSQL (migrated on start), API basic auth from PREFECT_API_AUTH_STRING."""
    s.require("prefect", "POSTGRES_PASSWORD", "PREFECT_API_AUTH_STRING")
    wait_until(f"PostgreSQL at {s.pg_host}:{s.pg_port}", lambda: postgres_ready(s), timeout=120)
    env = _server_env({
        "PREFECT_API_DATABASE_CONNECTION_URL": s.database("prefect", "asyncpg"),
        "PREFECT_SERVER_API_AUTH_STRING": s.prefect_auth,
    })  # fmt: skip
    # The UI, in the user's browser, calls the API where the user reaches it (compose: the published port).
    env.setdefault("PREFECT_UI_API_URL", s.url("prefect") + "/api")
    command = [_tool("prefect"), "server", "start", "--host", s.bind, "--port", str(s.prefect_port)]
    print(f"prefect: serving on {s.bind}:{s.prefect_port}", flush=True)
    os.execve(command[0], command, env)
    return 1  # not reached


# --- the worker, serving and data --------------------------------------------------------------------------


def _ensure_pool(name: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another worker created it since we looked
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
                print(f"worker: created the process work pool {name}", flush=True)


def run_worker(s: Settings) -> int:
    """A Prefect worker on the process work pool QIN_POOL, after (re)deploying qin-train/pool,
    qin-ablation/pool and qin-score/pool from the working directory (a checkout: flows/, params.yaml,
    data/), where their runs then start. Start as many as you like against the same servers: they share the
    stage store (artifacts/) and data/ when they share this folder (compose: the same volumes)."""
    s.require("worker", "PREFECT_API_AUTH_STRING")
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        raise StackError("qinstack.stack worker: PREFECT_API_URL is not set (the Prefect server's API)")
    wait_until(f"the Prefect API at {api}", lambda: _get(api + "/health", s.prefect_auth) == 200)
    from flows.deploy_pool import deploy

    _ensure_pool(s.pool)
    for deployment, deployment_id in deploy(s.pool, root=Path.cwd()).items():
        print(f"worker: deployed {deployment} ({deployment_id}) to {s.pool}", flush=True)
    command = [sys.executable, "-m", "qinstack.worker", "--pool", s.pool]
    os.execv(command[0], command)
    return 1  # not reached


def _status_file(port: int) -> Path:
    """What `serving` on `port` is doing, for its health check: one file per port, so that two serving
    processes on one machine never read each other's."""
    return Path(tempfile.gettempdir()) / f"qin-serving-{port}.json"


def _serving_status(port: int) -> dict[str, str]:
    try:
        return dict(read_json(_status_file(port)))
    except (OSError, ValueError):
        return {}


def _write_serving_status(port: int, **status: str) -> None:
    write_json(_status_file(port), status)


def _alias_holder(registry: object, name: str, aliases: tuple[str, ...]) -> tuple[str, str] | None:
    """(alias, version) of the first alias some version of `name` holds; None when none does."""
    for alias in aliases:
        holder = registry.alias_holder(name, alias)  # type: ignore[attr-defined]
        if holder is not None:
            return alias, str(holder.version)
    return None


class _ModelServer:
    """The model server of `run_serving`: one child in a process group of its own, started on a models:/
    URI and stopped with SIGTERM, then SIGKILL after STOP_GRACE_S."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        # `mlflow models serve` runs `uvicorn` from PATH: this environment's, also when it is not activated.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        # qinstack.scoring_app imports from this checkout whatever the working directory.
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, **OFFLINE, "PATH": path, "PYTHONPATH": pythonpath}
        self.child: subprocess.Popen[bytes] | None = None

    def start(self, uri: str) -> None:
        self.child = subprocess.Popen(serving_command(self.s, uri), env=self.env, start_new_session=True)

    def exited(self) -> bool:
        return self.child is not None and self.child.poll() is not None

    def stop(self) -> None:
        if self.child is not None and self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGTERM)
            try:
                self.child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.child.pid, signal.SIGKILL)
                self.child.wait()
        self.child = None

    def kill(self) -> None:
        if self.child is not None:
            os.killpg(self.child.pid, signal.SIGKILL)


def run_serving(s: Settings) -> int:
    """Serve the registry's champion (params register.production_alias), else its staging version
    (register.alias), on STACK_BIND:SERVING_PORT with the model server SERVING_APP names (serving_command:
    qinstack/scoring_app.py by default, else `mlflow models serve`). Until a version holds either
    it waits (healthy: nothing to serve yet); when the alias moves it restarts the model server on the new
    version (the registry is read every SERVING_POLL_S, 10 s). The model server runs in a process group of
    its own, stopped with this process."""
    from flows.tracking import MlflowRegistry
    from qin.settings.params import load_params

    register = load_params("params.yaml").register
    poll_s = float(os.environ.get("SERVING_POLL_S", "10"))
    aliases = (register.production_alias, register.alias)
    registry, server = MlflowRegistry(register), _ModelServer(s)
    serving: tuple[str, str] | None = None
    stop = Stop(on_second=server.kill)
    _write_serving_status(s.serving_port, state="waiting", aliases=",".join(aliases))
    print(
        f"serving: waiting for a version of {register.model_name} with alias {' or '.join(aliases)}",
        flush=True,
    )
    try:
        while not stop.requested:
            holder = _holder_or(serving, registry, register.model_name, aliases)
            if holder != serving or server.exited():
                server.stop()
                serving = holder
                _serve(s, server, register.model_name, holder, aliases)
            stop.sleep(poll_s)
    finally:
        server.stop()
        _status_file(s.serving_port).unlink(missing_ok=True)  # stopped: not healthy, whatever it was
    return 0


def _holder_or(
    serving: tuple[str, str] | None, registry: object, name: str, aliases: tuple[str, ...]
) -> tuple[str, str] | None:
    """The alias holder now; what is served when the registry cannot be read (the server is away)."""
    from mlflow.exceptions import MlflowException

    from qin.registry.protocol import RegistryError

    try:
        return _alias_holder(registry, name, aliases)
    except (RegistryError, MlflowException, OSError) as exc:
        print(f"serving: cannot read the registry ({exc}); keeping {serving}", flush=True)
        return serving


def _serve(
    s: Settings, server: _ModelServer, name: str, holder: tuple[str, str] | None, aliases: tuple[str, ...]
) -> None:
    """Start the model server on `holder` (alias, version) and say so in the status file; None: wait."""
    if holder is None:
        _write_serving_status(s.serving_port, state="waiting", aliases=",".join(aliases))
        return
    uri = f"models:/{name}/{holder[1]}"
    print(f"serving: {uri} ('{holder[0]}') on {s.bind}:{s.serving_port}", flush=True)
    server.start(uri)
    _write_serving_status(s.serving_port, state="serving", alias=holder[0], version=holder[1], uri=uri)


def run_data() -> int:
    """Raw data into the working directory's data/: `qin data synth` (preset QIN_DATA_PRESET, else
    params.yaml `data.preset`) unless data/ already holds a train.parquet (a previous start, or files
    imported with `qin data import`). Compose mounts the same volume there for every worker."""
    data = Path("data")
    if (data / "train.parquet").exists():
        print(f"data: keeping the data in {data}", flush=True)
        return 0
    preset = ["--preset", os.environ["QIN_DATA_PRESET"]] if os.environ.get("QIN_DATA_PRESET") else []
    if not os.path.ismount(data):
        command = [_tool("qin"), "data", "synth", "--out", str(data), *preset]
        return subprocess.run(command, check=False).returncode
    # A volume's mount point (compose mounts one on data/) cannot be replaced whole, as `qin data synth`
    # replaces its output folder (and the folder above it, /app, is not the user's to write): synthesise
    # into a folder inside it, then move the files up one by one, train.parquet last, so that a start
    # interrupted halfway is not taken for data the next time.
    staging = data / ".synth"
    shutil.rmtree(staging, ignore_errors=True)
    command = [_tool("qin"), "data", "synth", "--out", str(staging), "--no-dvc", *preset]
    status = subprocess.run(command, check=False).returncode
    if status == 0:
        for name in sorted((p.name for p in staging.iterdir()), key=lambda n: n == "train.parquet"):
            os.replace(staging / name, data / name)
        staging.rmdir()
    return status


# --- `up`: the stack as local processes --------------------------------------------------------------------


class Supervisor:
    """Runs services as `python -m qinstack.stack <service>` children, each in a process group of its own
    (a terminal's Ctrl-C reaches only the supervisor, which stops them in order), logging to
    QIN_STACK_DIR/logs/<service>.log, its pid in QIN_STACK_DIR/run/<service>.pid. A service that exits is
    started again, as compose's `restart: unless-stopped` does, unless it exits again within RESTART_WINDOW_S
    of its start: then the stack stops, showing its log."""

    RESTART_WINDOW_S = 20.0

    def __init__(self, env: dict[str, str], state: Path) -> None:
        self.env, self.state = env, state
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started: dict[str, float] = {}
        (state / "logs").mkdir(parents=True, exist_ok=True)
        (state / "run").mkdir(parents=True, exist_ok=True)

    def log(self, service: str) -> Path:
        return self.state / "logs" / f"{service}.log"

    def start(self, service: str) -> None:
        with self.log(service).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "qinstack.stack", service], cwd=ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.procs[service], self.started[service] = proc, time.monotonic()
        (self.state / "run" / f"{service}.pid").write_text(f"{proc.pid}\n")

    def alive(self, service: str) -> bool:
        return self.procs[service].poll() is None

    def tail(self, service: str, lines: int = 30) -> str:
        text = self.log(service).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def check(self) -> None:
        """Start again any service that exited; StackError if it had not stayed up for RESTART_WINDOW_S."""
        for service, proc in list(self.procs.items()):
            if proc.poll() is None:
                continue
            lived = time.monotonic() - self.started[service]
            if lived < self.RESTART_WINDOW_S:
                raise StackError(
                    f"{service} exited (status {proc.returncode}) {lived:.0f} s after it started; "
                    f"its log ({self.log(service)}):\n{self.tail(service)}"
                )
            print(f"stack: {service} exited (status {proc.returncode}); starting it again", flush=True)
            self.start(service)

    def stop(self, service: str, signum: int = signal.SIGTERM) -> None:
        proc = self.procs.get(service)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            print(
                f"stack: {service} still running {STOP_GRACE_S:.0f} s after SIGTERM: killing it", flush=True
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for service in reversed(list(self.procs)):  # the servers before the database they use
            self.stop(service)
            (self.state / "run" / f"{service}.pid").unlink(missing_ok=True)


def run_up(env_file: Path) -> int:
    """PostgreSQL, the MLflow server and the Prefect server as local processes, until SIGTERM or Ctrl-C."""
    if write_secrets(env_file):
        print(f"stack: wrote {env_file} with generated passwords", flush=True)
    env = {**_loaded(env_file), **OFFLINE, "POSTGRES_HOST": "127.0.0.1"}
    env.setdefault("QIN_STACK_DIR", str(ROOT / ".stack"))
    s = Settings.from_env(env)
    sup = Supervisor(env, s.state_dir)
    stop = Stop(on_second=sup.kill_all)
    try:
        for group in (("postgres",), ("mlflow", "prefect")):
            for service in group:
                sup.start(service)
            for service in group:
                wait_until(
                    f"{service} (log: {sup.log(service)})",
                    lambda: stop.requested or healthy(service, s),  # noqa: B023 - called in this iteration
                    timeout=300,
                    alive=lambda: all(sup.alive(name) for name in sup.procs),
                )
                if stop.requested:
                    return 130
        print(
            f"stack: up (state and logs in {s.state_dir})\n"
            f"  MLflow UI:  {s.url('mlflow')}  (login {s.mlflow_user}, password in {env_file})\n"
            f"  Prefect UI: {s.url('prefect')}  (login with PREFECT_API_AUTH_STRING from {env_file})\n"
            f"  PostgreSQL: {s.pg_host}:{s.pg_port}, databases {', '.join(DATABASES)}\n"
            f'In another shell: eval "$(python -m qinstack.stack env)"; then make worker, qin, prefect ...',
            flush=True,
        )
        while not stop.requested:
            sup.check()
            stop.sleep(1.0)
        return 0
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr, flush=True)
        for service in sup.procs:
            if not sup.alive(service):
                print(f"--- {sup.log(service)}:\n{sup.tail(service)}", file=sys.stderr, flush=True)
        return 1
    finally:
        sup.stop_all()
        print("stack: stopped", flush=True)


def print_env(env_file: Path) -> int:
    import shlex

    if not env_file.exists():
        raise StackError(f"{env_file}: not found (`make up` or `make stack` writes it)")
    s = Settings.from_env(
        {**read_env_file(env_file), **{k: v for k, v in os.environ.items() if k == "STACK_BIND"}}
    )
    for key, value in client_env(s).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qinstack.stack", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("postgres", "mlflow", "prefect", "worker", "serving", "data"):
        sub.add_parser(name, help=f"run the {name} service in the foreground")
    sub.add_parser("up", help="postgres, mlflow and prefect as local processes (make stack)").add_argument(
        "--env-file", type=Path, default=ENV_FILE
    )
    sub.add_parser("health", help="exit 0 when the service is healthy").add_argument(
        "service", choices=["postgres", "mlflow", "prefect", "serving", "worker"]
    )
    sub.add_parser("secrets", help="write the credentials file when it is missing").add_argument(
        "path", type=Path, nargs="?", default=ENV_FILE
    )
    sub.add_parser("env", help="print the exports that point clients at the stack").add_argument(
        "env_file", type=Path, nargs="?", default=ENV_FILE
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "secrets":
            print(f"{'wrote' if write_secrets(args.path) else 'keeping'} {args.path}")
            return 0
        if args.command == "env":
            return print_env(args.env_file)
        if args.command == "up":
            return run_up(args.env_file)
        s = Settings.from_env()
        if args.command == "health":
            return 0 if healthy(args.service, s) else 1
        if args.command == "data":
            return run_data()
        run = {"postgres": run_postgres, "mlflow": run_mlflow, "prefect": run_prefect, "worker": run_worker,
               "serving": run_serving}[args.command]  # fmt: skip
        return run(s)
    except StackError as exc:
        print(f"qinstack.stack {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
