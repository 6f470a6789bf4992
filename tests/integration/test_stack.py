"""The pipeline against the team stack as local processes (`make stack`: PostgreSQL, the MLflow server with
basic auth, the Prefect server with API auth, under supervisord) and two workers (`python -m qinstack
worker`) sharing a scratch project on tiny data: deployment runs through the work pool, the registry over
HTTP, two runs at once, and the MLflow server killed in the middle of a `register`.

Run by `make integration-test` (`.ci/run`); needs PostgreSQL's server programs (`make postgres`)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from qinstack.postgres import postgres_bindir
from qinstack.settings import Settings, read_env_file, write_secrets
from tests.conftest import REPO, TINY_PARAMS
from tests.helpers import free_ports

pytestmark = pytest.mark.integration

T = TypeVar("T")
MODEL = "qin-ctr"
# A deployment run's training on tiny data: a few seconds; each run gets its own seed, so its own model.
FAST = {"train.epochs": 2}
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _poll(what: str, check: Callable[[], T | None], timeout: float, log: Callable[[], str] = str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s\n{log()}")
        time.sleep(0.3)


@dataclass
class Stack:
    settings: Settings
    client_env: dict[str, str]  # what a client of the stack sets (python -m qinstack env)
    state: Path
    log: Path

    def logs(self) -> str:
        parts = [f"--- {p}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:])
                 for p in [self.log, *sorted((self.state / "logs").glob("*.log"))] if p.exists()]  # fmt: skip
        return "\n".join(parts)

    def request(
        self, service: str, path: str, body: dict | None = None, auth: bool = True
    ) -> tuple[int, Any]:
        """(HTTP status, JSON body) of a GET (or, with `body`, a POST) to the service's REST API."""
        s = self.settings
        url = s.url(service) + path
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        if auth:
            login = f"{s.mlflow_user}:{s.mlflow_password}" if service == "mlflow" else s.prefect_auth
            req.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                text = response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:  # nothing listens there (yet, or any more)
            return 0, str(exc)
        try:
            return response.status, json.loads(text)
        except ValueError:  # e.g. /ping's empty line
            return response.status, text

    def mlflow(self, path: str, body: dict | None = None) -> Any:
        status, payload = self.request("mlflow", path, body)
        assert status == 200, f"MLflow {path}: HTTP {status}: {payload}"
        return payload


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """`python -m qinstack up` on free ports, its credentials and state in a folder of its own; stopped
    with SIGTERM at the end, which it must obey."""
    try:
        postgres_bindir()
    except Exception as exc:  # StackError: the message says what to install
        pytest.fail(f"PostgreSQL's server is needed (`make postgres`): {exc}")
    # PostgreSQL runs as the `postgres` user when we are root: its folder must be reachable by it, which
    # pytest's own temporary folders (mode 700) are not.
    base = Path(tempfile.mkdtemp(prefix="qin-stack-test-"))
    base.chmod(0o755)
    env_file = base / "env"
    write_secrets(env_file)
    names = ("POSTGRES_PORT", "MLFLOW_PORT", "PREFECT_PORT", "SERVING_PORT")
    ports = {k: str(port) for k, port in zip(names, free_ports(len(names)), strict=True)}
    env = {**os.environ, **ports, "QIN_STACK_DIR": str(base / "state")}
    log = base / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qinstack", "up", "--env-file", str(env_file)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    settings = Settings.from_env({**read_env_file(env_file), **ports, "QIN_STACK_DIR": env["QIN_STACK_DIR"]})
    client_env = {
        "MLFLOW_TRACKING_URI": settings.url("mlflow"),
        "MLFLOW_TRACKING_USERNAME": settings.mlflow_user,
        "MLFLOW_TRACKING_PASSWORD": settings.mlflow_password,
        "PREFECT_API_URL": settings.url("prefect") + "/api",
        "PREFECT_API_AUTH_STRING": settings.prefect_auth,
    }
    st = Stack(settings, client_env, base / "state", log)
    try:
        _poll("the stack up", lambda: proc.poll() is not None or "stack: up" in log.read_text(), 300, st.logs)
        assert proc.poll() is None, f"`python -m qinstack up` exited with {proc.returncode}\n{st.logs()}"
        yield st
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError(
                    f"`python -m qinstack up` still running 60 s after SIGTERM\n{st.logs()}"
                ) from None
    assert proc.returncode == 0, (
        f"`python -m qinstack up` exited with {proc.returncode} on SIGTERM\n{st.logs()}"
    )
    assert not list((st.state / "run").glob("*.pid")), "a service's pid file outlived the stack"
    assert not list((st.state / "run").iterdir()), "supervisord's socket outlived the stack"
    shutil.rmtree(base, ignore_errors=True)


@dataclass
class Team:
    stack: Stack
    project: Path
    env: dict[str, str]  # a client's environment in the project
    workers: list[subprocess.Popen[bytes]]

    def logs(self) -> str:
        worker_logs = [
            f"--- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-60:])
            for p in sorted(self.project.glob("worker-*.log"))
        ]
        return self.stack.logs() + "\n" + "\n".join(worker_logs)

    def deployment_run(self, *args: str) -> subprocess.Popen[str]:
        """`prefect deployment run qin-train/pool ... --watch`, as a user types it; waits for the run."""
        return subprocess.Popen(
            [PREFECT, "deployment", "run", "qin-train/pool", *args, "--watch"],
            cwd=self.project, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def finished(self, proc: subprocess.Popen[str], timeout: float = 300) -> str:
        """The flow run id of a `deployment_run` that completed (its output and the logs if not)."""
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(
                f"the deployment run did not finish in {timeout:.0f} s\n{out}\n{self.logs()}"
            ) from None
        found = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
        assert proc.returncode == 0 and found, (
            f"deployment run failed ({proc.returncode}):\n{out}\n{self.logs()}"
        )
        run_id = found.group(1)
        status, flow_run = self.stack.request("prefect", f"/api/flow_runs/{run_id}")
        assert status == 200 and flow_run["state_type"] == "COMPLETED", f"{status}: {flow_run}\n{self.logs()}"
        return run_id

    def record(self, flow_run_id: str) -> dict[str, Any]:
        """The run's record (qin/runs/records.py): run.json with its stage keys, and register.json."""
        folder = self.project / "artifacts" / "runs" / flow_run_id
        run = json.loads((folder / "run.json").read_text())
        return {
            "keys": {entry["stage"]: entry["key"] for entry in run["stages"]},
            "how": {entry["stage"]: entry["how"] for entry in run["stages"]},
            "register": json.loads((folder / "register.json").read_text()),
        }


def _worker(project: Path, env: dict[str, str], n: int) -> subprocess.Popen[bytes]:
    """`python -m qinstack worker` (the compose worker's command) in the project; log:
    worker-<n>.log."""
    with (project / f"worker-{n}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "qinstack", "worker"],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture(scope="module")
def team(stack: Stack, tiny_data: Path) -> Iterator[Team]:
    """A scratch project (tiny data, the repository's flows) and two workers on the stack's work pool,
    started as the compose services are; each stops on SIGTERM at the end."""
    project = Path(tempfile.mkdtemp(prefix="qin-team-"))
    (project / "params.yaml").write_text(TINY_PARAMS)
    shutil.copytree(tiny_data, project / "data")
    (project / "flows").symlink_to(REPO / "flows", target_is_directory=True)
    env = {
        **os.environ,
        **stack.client_env,
        "PYTHONPATH": str(REPO),
        "PREFECT_HOME": str(project / ".prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "QIN_POOL": "qin-pool",
    }
    workers = [_worker(project, env, n) for n in (1, 2)]
    t = Team(stack, project, env, workers)
    try:
        for n in (1, 2):
            log = project / f"worker-{n}.log"
            _poll(
                f"worker {n} polling",
                lambda log=log: (  # type: ignore[misc]
                    any(w.poll() is not None for w in workers)
                    or "' started!" in log.read_text(errors="replace")
                ),
                180,
                t.logs,
            )
        assert all(w.poll() is None for w in workers), f"a worker exited\n{t.logs()}"
        yield t
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        codes = []
        for w in workers:
            try:
                codes.append(w.wait(30))
            except subprocess.TimeoutExpired:
                w.kill()
                codes.append(None)
    assert codes == [0, 0], f"workers on SIGTERM: exit codes {codes}\n{t.logs()}"
    shutil.rmtree(project, ignore_errors=True)


def _supervised_pid(stack: Stack, service: str) -> int:
    """The pid supervisord runs `service` as, the leader of its process group (`supervisorctl pid`)."""
    config = stack.state / "supervisord.conf"
    out = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(config), "pid", service],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.stdout.strip().isdigit() and int(out.stdout) > 0, f"supervisorctl pid {service}: {out}"
    return int(out.stdout)


def _version(stack: Stack, version: str) -> dict[str, Any]:
    v = stack.mlflow(f"/api/2.0/mlflow/model-versions/get?name={MODEL}&version={version}")["model_version"]
    v["tags"] = {t["key"]: t["value"] for t in v.get("tags", [])}
    return dict(v)


def _assert_lineage(team: Team, record: dict[str, Any]) -> None:
    """The version the run registered came from the stage outputs its record names, and those outputs'
    own records (stage.json) chain back to the same upstream keys."""
    version = _version(team.stack, record["register"]["version"])
    assert version["tags"]["model_hash"] == record["register"]["model_hash"]
    assert json.loads(version["tags"]["stage_keys"]) == record["keys"], (version["tags"], record)
    stages = team.project / "artifacts" / "stages"
    for stage in ("train", "evaluate"):
        upstream = json.loads((stages / stage / record["keys"][stage] / "stage.json").read_text())["upstream"]
        for name, key in upstream.items():
            assert record["keys"][name] == key, f"{stage} {record['keys'][stage]} upstream {name}: {key}"


def test_servers_refuse_requests_without_a_login(stack: Stack) -> None:
    status, _ = stack.request("mlflow", "/api/2.0/mlflow/experiments/search?max_results=1", auth=False)
    assert status == 401
    status, _ = stack.request("prefect", "/api/flows/filter", body={}, auth=False)
    assert status == 401
    assert stack.request("prefect", "/api/flows/filter", body={})[0] == 200


def test_a_deployment_run_through_the_pool_registers_in_the_server(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from qin.serving.inference import load_package
    from qin.serving.request import example_request

    run_id = team.finished(
        team.deployment_run("--param", f"overrides={json.dumps({**FAST, 'train.seed': 11})}")
    )
    record = team.record(run_id)
    assert record["register"]["newly_registered"]
    _assert_lineage(team, record)
    version = _version(team.stack, record["register"]["version"])
    mlflow_run = team.stack.mlflow(f"/api/2.0/mlflow/runs/get?run_id={version['run_id']}")["run"]
    assert mlflow_run["info"]["status"] == "FINISHED"
    assert mlflow_run["info"]["artifact_uri"].startswith("mlflow-artifacts:"), (
        "artifacts not proxied by the server"
    )

    # Its alias, and the model under it loaded over HTTP: the same scores as the package the run trained.
    staging = team.stack.mlflow(f"/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias=staging")
    for key, value in team.stack.client_env.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(team.stack.client_env["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(team.stack.client_env["MLFLOW_TRACKING_URI"])
    package = (
        team.project
        / "artifacts"
        / "stages"
        / "train"
        / json.loads(_version(team.stack, staging["model_version"]["version"])["tags"]["stage_keys"])["train"]
        / "model"
    )
    rows = example_request(load_package(package).spec, rows=3)
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@staging").predict(rows)
    expected = load_package(package).predict_frame(rows)
    assert list(served) == pytest.approx(list(expected), abs=1e-6)

    # The serving service (no champion yet: it serves staging) answers /invocations with those scores.
    _assert_serving(team, rows, list(expected))


def _assert_serving(team: Team, rows: Any, expected: list[float]) -> None:
    s = team.stack.settings
    env = {**team.env, "SERVING_PORT": str(s.serving_port), "SERVING_POLL_S": "1"}
    with (team.project / "serving.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qinstack", "serving"], cwd=team.project, env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _poll(
            "the model server",
            lambda: proc.poll() is not None or team.stack.request("serving", "/ping", auth=False)[0] == 200,
            180,
            lambda: (team.project / "serving.log").read_text(errors="replace"),
        )
        assert proc.poll() is None, (team.project / "serving.log").read_text(errors="replace")
        body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
        status, answer = team.stack.request("serving", "/invocations", body, auth=False)
        assert status == 200, answer
        scores = answer["predictions"]
        assert [float(x) for x in scores] == pytest.approx(expected, abs=1e-6)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0
    assert team.stack.request("serving", "/ping", auth=False)[0] == 0, "the model server outlived serving"


def test_two_runs_at_once_on_two_workers_keep_their_lineage(team: Team) -> None:
    before = {
        v["version"]
        for v in team.stack.mlflow(f"/api/2.0/mlflow/model-versions/search?filter=name%3D%27{MODEL}%27")[
            "model_versions"
        ]
    }
    procs = [
        team.deployment_run("--param", f"overrides={json.dumps({**FAST, 'train.seed': seed})}")
        for seed in (21, 22)
    ]
    records = [team.record(team.finished(p)) for p in procs]
    for record in records:
        _assert_lineage(team, record)
    a, b = records
    assert a["keys"]["train"] != b["keys"]["train"], "two seeds, one model?"
    assert a["keys"]["featurize"] == b["keys"]["featurize"], "the same data featurized twice under two keys"
    # One computed the shared stages (or an earlier test did); never both.
    assert (
        "ran" not in (a["how"]["featurize"], b["how"]["featurize"])
        or a["how"]["featurize"] != b["how"]["featurize"]
    )
    after = {
        v["version"]
        for v in team.stack.mlflow(f"/api/2.0/mlflow/model-versions/search?filter=name%3D%27{MODEL}%27")[
            "model_versions"
        ]
    }
    assert after - before == {a["register"]["version"], b["register"]["version"]}, (before, after)
    logs = team.logs()
    assert "database is locked" not in logs


def test_the_mlflow_server_killed_during_register_leaves_no_version_without_artifacts(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.tracking import MlflowRegistry
    from qin.settings.sections import RegisterConfig

    stack = team.stack
    experiments = stack.mlflow("/api/2.0/mlflow/experiments/search?max_results=100")["experiments"]
    ids = [e["experiment_id"] for e in experiments]
    proc = team.deployment_run("--param", f"overrides={json.dumps({**FAST, 'train.seed': 31})}")

    def registering() -> bool:
        found = stack.mlflow(
            "/api/2.0/mlflow/runs/search",
            {"experiment_ids": ids or ["0"], "filter": "attributes.status = 'RUNNING'"},
        )
        return bool(found.get("runs"))

    # A run is open on the server only inside `register` (its MLflow run); kill the server there, with
    # everything it started, as a crash would. supervisord (`make stack`) starts it again, as compose's
    # restart does.
    _poll("register's MLflow run", lambda: proc.poll() is not None or registering(), 300, team.logs)
    assert proc.poll() is None, f"the run ended before register opened its MLflow run\n{team.logs()}"
    os.killpg(_supervised_pid(stack, "mlflow"), signal.SIGKILL)
    run_id = team.finished(proc, timeout=400)
    restarted = r"exited: mlflow \(terminated by SIGKILL; not expected\)[\s\S]*spawned: 'mlflow'"
    assert re.search(restarted, stack.log.read_text()), stack.logs()

    record = team.record(run_id)
    _assert_lineage(team, record)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, stack.client_env[key])
    registry = MlflowRegistry(RegisterConfig(tracking_uri=stack.client_env["MLFLOW_TRACKING_URI"]))
    missing = {v.version: registry.missing_artifacts(MODEL, v.version) for v in registry.versions(MODEL)}
    assert {v: why for v, why in missing.items() if why} == {}, missing
