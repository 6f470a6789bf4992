"""`make stack` (`python -m qinstack up`): PostgreSQL, the MLflow server and the Prefect server as local
processes, with the same commands and settings as docker/compose.yaml, under supervisord (pinned in
requirements.lock).

`up` writes the credentials file when it is missing, renders supervisord's config from
qinstack/supervisord.conf.j2 into QIN_STACK_DIR (.stack/), and then becomes supervisord, in the foreground:
Ctrl-C or SIGTERM stops every service (SIGTERM to its process group, SIGKILL STOP_GRACE_S later), the
servers before the database. A service that exits is started again, as compose's restart policy does.
Logs: .stack/logs/<service>.log; supervisord's own in .stack/logs/supervisord.log and on the terminal.
`ready`, a one-shot program of the same config, waits until every service is healthy and prints where they
are; if one never gets there it prints the end of that service's log and stops the stack.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shlex
import stat
import sys
from pathlib import Path

from flows import OFFLINE_ENV
from qin.runs.io import atomic_file
from qinstack.health import healthy, wait_until
from qinstack.process import STOP_GRACE_S
from qinstack.settings import DATABASES, ENV_FILE, ROOT, Settings, StackError, loaded_env, write_secrets

SERVICES = ("postgres", "mlflow", "prefect")  # started in this order, stopped in the reverse one
CONFIG = "supervisord.conf"
START_S = 10  # a service that exits sooner after its start counts as a failed start
START_RETRIES = 3  # failed starts in a row before supervisord gives the service up
READY_TIMEOUT_S = 300.0


def _value(text: object) -> str:
    """`text` as a supervisord setting, which expands '%(name)s' and ends at a newline: refused with them."""
    if "%" in str(text) or "\n" in str(text):
        raise StackError(
            f"supervisord's config: expected a value without '%' or newlines, found {str(text)!r}"
        )
    return str(text)


def _quoted(text: object) -> str:
    """A value of supervisord's `environment=` list, which splits at commas outside double quotes."""
    if '"' in str(text):
        raise StackError(f"supervisord's environment: expected a value without '\"', found {str(text)!r}")
    return f'"{_value(text)}"'


def render_config(state: Path, env_file: Path) -> Path:
    """supervisord's config for the stack, written to `state`/supervisord.conf (with its logs/ and run/
    folders); its path."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    jinja = Environment(
        loader=FileSystemLoader(Path(__file__).parent), undefined=StrictUndefined, keep_trailing_newline=True
    )
    jinja.filters.update(value=_value, quoted=_quoted, arg=lambda text: _value(shlex.quote(str(text))))
    logs, run = state / "logs", state / "run"
    text = jinja.get_template("supervisord.conf.j2").render(
        services=SERVICES,
        env=program_env(state),
        as_root=os.geteuid() == 0,
        python=sys.executable,
        root=ROOT,
        logs=logs,
        run=run,
        env_file=env_file.resolve(),
        start_s=START_S,
        start_retries=START_RETRIES,
        stop_wait_s=int(STOP_GRACE_S),
    )
    logs.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    run.chmod(0o700)
    path = state / CONFIG
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return path


def program_env(state: Path) -> dict[str, str]:
    """What every program gets besides supervisord's own environment: telemetry off, the local database,
    the state folder. No credential: those come from supervisord's environment."""
    return {**OFFLINE_ENV, "POSTGRES_HOST": "127.0.0.1", "QIN_STACK_DIR": str(state)}


def run_up(env_file: Path) -> int:
    """Render the config and become supervisord (`--nodaemon`), with the credentials file's keys filled
    into the environment where it does not set them."""
    if importlib.util.find_spec("supervisor") is None:
        raise StackError(f"supervisor is not installed beside {sys.executable} (`make install` installs it)")
    if write_secrets(env_file):
        print(f"stack: wrote {env_file} with generated passwords", flush=True)
    env = loaded_env(env_file)
    config = render_config(Settings.from_env(env).state_dir, env_file)
    print(f"stack: starting {', '.join(SERVICES)} under supervisord ({config})", flush=True)
    _append_to_stdout()
    command = [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "--configuration", str(config)]
    os.execve(sys.executable, command, env)
    return 1  # not reached


def _append_to_stdout() -> None:
    """Writes to this process's stdout, when it is a file, go to its end: supervisord writes the `ready`
    program's lines through /dev/stdout, a file description of their own, which would otherwise write over
    supervisord's own lines, and be written over by them."""
    if stat.S_ISREG(os.fstat(1).st_mode):
        fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) | os.O_APPEND)


def run_ready(env_file: Path) -> int:
    """The `ready` program: wait until each service is healthy, then print where they are. When one is not
    within READY_TIMEOUT_S, or supervisord gave it up, print the end of its log and stop supervisord."""
    from supervisor import childutils

    s = Settings.from_env()
    rpc = childutils.getRPCInterface(os.environ)
    for service in SERVICES:
        log = s.state_dir / "logs" / f"{service}.log"
        try:
            wait_until(
                f"{service} (log: {log})",
                lambda: healthy(service, s),  # noqa: B023 - called in this iteration
                timeout=READY_TIMEOUT_S,
                alive=lambda: rpc.supervisor.getProcessInfo(service)["statename"] != "FATAL",  # noqa: B023
            )
        except StackError as exc:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
            print(f"stack: {exc}\n--- {log}:\n{tail}\nstack: stopping", flush=True)
            rpc.supervisor.shutdown()
            return 1
    print(banner(s, env_file), flush=True)
    return 0


def banner(s: Settings, env_file: Path) -> str:
    """Where the services are, how to point a shell at them, how to stop them."""
    env_command = "python -m qinstack env" + (
        "" if env_file == ENV_FILE else f" {shlex.quote(str(env_file))}"
    )
    return (
        f"stack: up (state and logs in {s.state_dir})\n"
        f"  MLflow UI:  {s.url('mlflow')}  (login {s.mlflow_user}, password in {env_file})\n"
        f"  Prefect UI: {s.url('prefect')}  (login with PREFECT_API_AUTH_STRING from {env_file})\n"
        f"  PostgreSQL: {s.pg_host}:{s.pg_port}, databases {', '.join(DATABASES)}\n"
        f'In another shell: eval "$({env_command})"; then make worker, qin, prefect ...\n'
        f"Status: python -m supervisor.supervisorctl -c {s.state_dir / CONFIG} status; Ctrl-C here stops it"
    )
