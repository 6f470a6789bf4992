"""The team stack's settings without starting it (qinstack/): the credentials file, a client's
exports, what a service refuses to start without, the MLflow server's command line; and a registry call to
a tracking server that is not there fails naming it. The servers themselves: tests/integration."""

from __future__ import annotations

import configparser
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qinstack.__main__ import main
from qinstack.servers import mlflow_allowed_hosts, mlflow_server_command
from qinstack.serving import serving_command
from qinstack.settings import Settings, StackError, read_env_file, write_secrets
from tests.conftest import REPO
from tests.helpers import free_ports


def test_secrets_are_generated_once_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "docker" / ".env"
    assert write_secrets(path)
    first = read_env_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for key in ("POSTGRES_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert len(first[key]) >= 24, key
    user, _, password = first["PREFECT_API_AUTH_STRING"].partition(":")
    assert user and len(password) >= 24
    assert len({first["POSTGRES_PASSWORD"], first["MLFLOW_TRACKING_PASSWORD"], password}) == 3

    assert not write_secrets(path), "an existing credentials file was rewritten"
    assert read_env_file(path) == first
    assert not list(path.parent.glob(".env.tmp-*")), (
        "a temporary file was left (qin.runs.io.atomic_file's name)"
    )


def test_the_secrets_command_runs_with_a_bare_python(tmp_path: Path) -> None:
    """`make up` writes docker/.env before any virtual environment exists: the module's top imports only
    the standard library (site packages off: -S)."""
    out = subprocess.run(
        [sys.executable, "-S", "-m", "qinstack", "secrets", str(tmp_path / ".env")],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "POSTGRES_PASSWORD=" in (tmp_path / ".env").read_text()


def test_env_prints_a_clients_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / ".env"
    write_secrets(path)
    with path.open("a") as f:
        f.write("MLFLOW_PORT=15000\n")
    values = read_env_file(path)
    assert main(["env", str(path)]) == 0
    lines = dict(line.removeprefix("export ").split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15000"
    assert lines["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert lines["MLFLOW_TRACKING_PASSWORD"] == values["MLFLOW_TRACKING_PASSWORD"]
    assert lines["PREFECT_API_AUTH_STRING"] == values["PREFECT_API_AUTH_STRING"]


def test_a_malformed_env_file_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("# comment\nPOSTGRES_USER=qin\nthis is not a setting\n")
    with pytest.raises(StackError, match=r"\.env:3: expected KEY=VALUE, found 'this is not a setting'"):
        read_env_file(path)


def test_a_service_refuses_to_start_without_its_credentials() -> None:
    with pytest.raises(StackError, match="POSTGRES_PASSWORD, MLFLOW_TRACKING_PASSWORD"):
        Settings.from_env({}).require("mlflow", "POSTGRES_PASSWORD", "MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(StackError, match="PREFECT_API_AUTH_STRING: expected user:password"):
        Settings.from_env({"PREFECT_API_AUTH_STRING": "nocolon"}).require(
            "prefect", "PREFECT_API_AUTH_STRING"
        )
    with pytest.raises(StackError, match="MLFLOW_PORT: expected a port number, found 'http'"):
        Settings.from_env({"MLFLOW_PORT": "http"})


def test_the_mlflow_server_command() -> None:
    s = Settings.from_env(
        {
            "POSTGRES_HOST": "postgres",
            "POSTGRES_PASSWORD": "pw",
            "STACK_BIND": "0.0.0.0",
            "MLFLOW_ARTIFACTS_DESTINATION": "/var/lib/qin/mlflow-artifacts",
            "MLFLOW_PUBLIC_HOSTS": "mlflow.team.example:443, ",
        }
    )
    command = mlflow_server_command(s)
    option = {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}
    assert option["--app-name"] == "basic-auth"
    assert option["--backend-store-uri"] == "postgresql+psycopg2://qin:pw@postgres:5432/mlflow"
    assert "--serve-artifacts" in command
    assert option["--artifacts-destination"] == "/var/lib/qin/mlflow-artifacts"
    assert (option["--host"], option["--port"]) == ("0.0.0.0", "5000")
    assert option["--allowed-hosts"].split(",") == mlflow_allowed_hosts(s)
    assert "mlflow.team.example:443" in mlflow_allowed_hosts(s)
    assert s.url("mlflow") == "http://127.0.0.1:5000"  # a client on this machine, not 0.0.0.0


def test_the_serving_command_runs_the_app_serving_app_names() -> None:
    uri = "models:/qin-ctr/3"
    asgi = serving_command(Settings.from_env({"STACK_BIND": "0.0.0.0", "SERVING_WORKERS": "2"}), uri)
    assert asgi[1:5] == ["-m", "qinstack.scoring_app", "--model", uri]  # the default
    option = {asgi[i]: asgi[i + 1] for i in range(len(asgi) - 1) if asgi[i].startswith("--")}
    assert (option["--host"], option["--port"], option["--workers"]) == ("0.0.0.0", "5001", "2")
    mlflow = serving_command(Settings.from_env({"SERVING_APP": "mlflow"}), uri)
    assert mlflow[1:5] == ["models", "serve", "-m", uri] and mlflow[-2:] == ["-w", "1"]
    with pytest.raises(StackError, match="SERVING_APP: expected one of asgi, mlflow, found 'flask'"):
        Settings.from_env({"SERVING_APP": "flask"})
    with pytest.raises(StackError, match="SERVING_WORKERS: expected a number of processes"):
        Settings.from_env({"SERVING_WORKERS": "0"})


def test_a_tracking_server_that_is_not_there_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.tracking import MlflowRegistry, TrackingServerUnavailable
    from qin.settings.sections import RegisterConfig

    (port,) = free_ports(1)  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{port}"
    registry = MlflowRegistry(RegisterConfig(tracking_uri=uri))
    with pytest.raises(TrackingServerUnavailable, match=f"tracking server at {uri} did not answer"):
        registry.find("qin-ctr", "0" * 64)


def test_serving_health_reads_its_own_ports_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting for a version to serve counts as healthy; another serving process's status does not."""
    from qinstack import health

    monkeypatch.setattr(health.tempfile, "gettempdir", lambda: str(tmp_path))
    mine, theirs = Settings.from_env({"SERVING_PORT": "6001"}), Settings.from_env({"SERVING_PORT": "6002"})
    assert not health.healthy("serving", mine)  # not started
    health.write_serving_status(theirs.serving_port, state="waiting")
    assert not health.healthy("serving", mine)
    health.write_serving_status(mine.serving_port, state="waiting")
    assert health.healthy("serving", mine)
    health.write_serving_status(mine.serving_port, state="serving", version="3")
    assert not health.healthy("serving", mine), "healthy while its model server does not answer"


def test_make_stack_supervises_each_service_and_writes_no_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qinstack.up import SERVICES, render_config

    password = "not-to-be-written-anywhere"
    monkeypatch.setenv("POSTGRES_PASSWORD", password)
    state = tmp_path / "state"
    text = render_config(state, tmp_path / ".env").read_text()
    assert password not in text
    config = configparser.RawConfigParser()
    config.read_string(text)
    assert config["supervisord"]["nodaemon"] == "true"
    assert 'DO_NOT_TRACK="true"' in config["supervisord"]["environment"]
    for service in SERVICES:
        program = config[f"program:{service}"]
        assert program["command"].endswith(f" -m qinstack {service}")
        assert (program["autorestart"], program["stopsignal"], program["stopasgroup"]) == (
            "true",
            "TERM",
            "true",
        )
        assert int(program["stopwaitsecs"]) >= 10
        assert Path(program["stdout_logfile"]) == state / "logs" / f"{service}.log"
    # Started in this order, stopped in the reverse one: the servers before the database.
    priorities = [int(config[f"program:{service}"]["priority"]) for service in SERVICES]
    assert SERVICES[0] == "postgres" and priorities == sorted(priorities) and len(set(priorities)) == 3
    with pytest.raises(StackError, match="expected a value without '%'"):
        render_config(tmp_path / "50%", tmp_path / ".env")


def test_supervisord_reads_the_rendered_config(tmp_path: Path) -> None:
    options = pytest.importorskip("supervisor.options", reason="supervisor: make install (requirements.lock)")
    from qinstack.up import SERVICES, render_config

    server = options.ServerOptions()
    server.realize(args=["-c", str(render_config(tmp_path / "state", tmp_path / ".env"))])
    programs = {c.name: c for group in server.process_group_configs for c in group.process_configs}
    assert set(programs) == {*SERVICES, "ready"}
    assert programs["ready"].autorestart is False and programs["mlflow"].stopwaitsecs == 15
