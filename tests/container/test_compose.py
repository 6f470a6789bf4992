"""The team stack in containers: the image, docker/compose.yaml up, a training through the compose worker.

Everything runs under a compose project, env file and free host ports of its own, so neither the stack that
`make up` runs nor a user's docker/.env is touched; the test removes its containers, volumes and image tag
at the end (the image's layers stay in the builder's cache). Needs a Docker engine with the base images the
Dockerfile and compose file name (.ci/container starts one and builds local stand-ins for them):

    make container-test          # pytest -m container tests/container

From the host, as a user would: `prefect deployment run qin-train/pool` on tiny data, the run and the
registered version read back through the MLflow REST API with the stack's credentials (and refused
without), `qin promote --to production`, the serving container's scores compared with the registry's
model loaded here, then `down` and `up` again keeping every run, version and alias.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
import requests

from tests.helpers import free_ports

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
MODEL = "qin-ctr"  # params.yaml register.model_name
# A tiny training: the data service synthesises the tiny preset (QIN_DATA_PRESET below).
TINY = {
    "train.epochs": 1,
    "train.batch_size": 256,
    "train.model.embedding_dim": 8,
    "train.model.num_layers": 2,
    "train.model.num_row": 2,
    "featurize.max_len": 16,
    "evaluate.batch_size": 1024,
}
BUILD_TIMEOUT_S = 1200  # a build without cache: ~3.5 min on 2 cores, most of it pip
UP_TIMEOUT_S = 300  # every service healthy: ~40 s
RUN_TIMEOUT_S = 600  # the tiny flow run: ~1 min
SERVE_TIMEOUT_S = 180  # serving notices an alias within 10 s; its model server starts in ~10 s
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# Host-side settings compose would otherwise take from this shell instead of the test's env file.
SETTING_PREFIXES = ("POSTGRES_", "MLFLOW_", "PREFECT_", "SERVING_", "QIN_")

# Loads the champion from the registry through the tracking server, as any client would, and scores
# the model's own input example: {"rows": <the rows, split orient>, "scores": [...]}.
HOST_SCORES = """
import json, sys
import mlflow, numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1], dst_path=sys.argv[2])
rows = model.input_example
if rows is None:
    sys.exit("the model was logged without an input example")
scores = np.asarray(model.predict(rows), dtype=float).ravel().tolist()
print(json.dumps({"rows": json.loads(rows.to_json(orient="split", index=False)), "scores": scores}))
"""


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


@dataclass
class Stack:
    project: str
    env_file: Path
    settings: dict[str, str]
    home: Path  # scratch space for host-side clients (their PREFECT_HOME, downloaded models)

    @property
    def mlflow(self) -> str:
        return f"http://127.0.0.1:{self.settings['MLFLOW_PORT']}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.settings['PREFECT_PORT']}/api"

    @property
    def serving(self) -> str:
        return f"http://127.0.0.1:{self.settings['SERVING_PORT']}"

    @property
    def mlflow_auth(self) -> tuple[str, str]:
        return self.settings["MLFLOW_TRACKING_USERNAME"], self.settings["MLFLOW_TRACKING_PASSWORD"]

    @property
    def prefect_headers(self) -> dict[str, str]:
        token = base64.b64encode(self.settings["PREFECT_API_AUTH_STRING"].encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def compose_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}

    def client_env(self) -> dict[str, str]:
        """A host client's environment pointed at this stack (what `python -m qinstack env` prints)."""
        return {
            **self.compose_env(),
            "MLFLOW_TRACKING_URI": self.mlflow,
            "MLFLOW_TRACKING_USERNAME": self.mlflow_auth[0],
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_auth[1],
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_API_AUTH_STRING": self.settings["PREFECT_API_AUTH_STRING"],
            "PREFECT_HOME": str(self.home / "prefect"),
        }

    def compose(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["docker", "compose", "-p", self.project, "--env-file", str(self.env_file)]
        cmd += ["-f", str(COMPOSE_FILE), *args]
        try:
            out = subprocess.run(
                cmd, env=self.compose_env(), capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            self.fail(f"`docker compose {' '.join(args)}` did not finish within {timeout:.0f} s")
        if check and out.returncode != 0:
            self.fail(
                f"`docker compose {' '.join(args)}` exited {out.returncode}:\n{out.stdout[-3000:]}\n"
                f"{out.stderr[-3000:]}"
            )
        return out

    def logs(self, *services: str) -> str:
        cmd = ["docker", "compose", "-p", self.project, "--env-file", str(self.env_file)]
        cmd += ["-f", str(COMPOSE_FILE), "logs", "--no-color", "--tail", "150", *services]
        out = subprocess.run(cmd, env=self.compose_env(), capture_output=True, text=True, timeout=60)
        ps = subprocess.run(
            [*cmd[: cmd.index("logs")], "ps", "-a"], env=self.compose_env(), capture_output=True, text=True
        )
        named = " ".join(services) or "(every service)"
        return f"--- docker compose ps -a:\n{ps.stdout}\n--- docker compose logs {named}:\n{out.stdout}"

    def fail(self, message: str, *services: str) -> NoReturn:
        pytest.fail(f"{message}\n{self.logs(*services)}", pytrace=False)

    def up(self) -> float:
        """`up --wait` until every service is healthy (the data service: completed); its seconds."""
        started = time.monotonic()
        wait = ["--wait", "--wait-timeout", str(UP_TIMEOUT_S)]
        out = self.compose("up", "-d", *wait, timeout=UP_TIMEOUT_S + 60, check=False)
        if out.returncode != 0:
            self.fail(f"`docker compose up --wait` failed ({out.returncode}):\n{out.stderr[-3000:]}")
        return time.monotonic() - started

    def mlflow_get(self, endpoint: str, **params: str) -> dict[str, Any]:
        response = requests.get(f"{self.mlflow}/api/2.0/mlflow/{endpoint}", params=params,
                                auth=self.mlflow_auth, timeout=30)  # fmt: skip
        if response.status_code != 200:
            self.fail(
                f"MLflow GET {endpoint} {params}: {response.status_code} {response.text[:500]}", "mlflow"
            )
        return dict(response.json())

    def alias(self, name: str) -> str:
        found = self.mlflow_get("registered-models/alias", name=MODEL, alias=name)
        return str(found["model_version"]["version"])

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        response = requests.get(f"{self.prefect_api}/flow_runs/{flow_run_id}", headers=self.prefect_headers,
                                timeout=30)  # fmt: skip
        if response.status_code != 200:
            self.fail(f"Prefect GET flow_runs/{flow_run_id}: {response.status_code} {response.text[:500]}")
        return dict(response.json())


def _engine_or_fail() -> None:
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is not installed (.ci/container explains the setup)", pytrace=False)
    for cmd in (["docker", "info"], ["docker", "compose", "version"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            pytest.fail(
                f"`{' '.join(cmd)}` failed: no Docker engine or compose plugin (DOCKER_HOST="
                f"{os.environ.get('DOCKER_HOST', '')!r}); .ci/container starts both\n{out.stderr[-1500:]}",
                pytrace=False,
            )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The image built and the compose stack up (project, env file and ports of its own); `down -v` and
    the image tag removed afterwards."""
    _engine_or_fail()
    home = tmp_path_factory.mktemp("stack")
    env_file = home / "stack.env"
    # The credentials as `make up` writes them (generated passwords), then this test's ports and data.
    subprocess.run([sys.executable, "-m", "qinstack", "secrets", str(env_file)], cwd=REPO, check=True)
    settings = read_env_file(env_file)
    project = f"qin-ct-{os.getpid()}"
    mlflow_port, prefect_port, serving_port = free_ports(3)
    settings.update(
        MLFLOW_PORT=str(mlflow_port),
        PREFECT_PORT=str(prefect_port),
        SERVING_PORT=str(serving_port),
        QIN_DATA_PRESET="tiny",
        QIN_IMAGE="qin-container-test",
        QIN_TAG=project,
    )
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    s = Stack(project, env_file, settings, home)
    try:
        started = time.monotonic()
        s.compose("build", timeout=BUILD_TIMEOUT_S)
        print(f"image built in {time.monotonic() - started:.0f} s")
        print(f"stack up (healthy) in {s.up():.0f} s")
        yield s
    finally:
        started = time.monotonic()
        s.compose("down", "-v", "--remove-orphans", "--timeout", "30", timeout=180, check=False)
        print(f"down -v in {time.monotonic() - started:.0f} s")
        image = f"{settings['QIN_IMAGE']}:{settings['QIN_TAG']}"
        subprocess.run(["docker", "image", "rm", image], capture_output=True, timeout=120, check=False)


@dataclass(frozen=True)
class Trained:
    flow_run_id: str
    version: str
    run_id: str


@pytest.fixture(scope="module")
def trained(stack: Stack) -> Trained:
    """`prefect deployment run qin-train/pool` from the host, completed by the compose worker."""
    prefect = str(Path(sys.executable).with_name("prefect"))
    cmd = [prefect, "deployment", "run", "qin-train/pool", "--param", f"overrides={json.dumps(TINY)}"]
    out = subprocess.run(
        cmd, env=stack.client_env(), capture_output=True, text=True, timeout=120, check=False
    )
    found = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout)
    if out.returncode != 0 or found is None:
        stack.fail(
            f"`{' '.join(cmd)}` exited {out.returncode}:\n{out.stdout}\n{out.stderr}", "worker", "prefect"
        )
    flow_run_id = found.group(1)
    started = time.monotonic()
    deadline = started + RUN_TIMEOUT_S
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = stack.flow_run(flow_run_id).get("state") or {}
        if state.get("type") in FINAL:
            break
        time.sleep(2)
    if state.get("type") != "COMPLETED":
        stack.fail(
            f"flow run {flow_run_id} of qin-train/pool: {state.get('type') or 'no state'} after "
            f"{time.monotonic() - started:.0f} s ({state.get('message')})",
            "worker",
        )
    print(f"qin-train/pool completed in {time.monotonic() - started:.0f} s")
    versions = stack.mlflow_get("model-versions/search", filter=f"name='{MODEL}'")["model_versions"]
    assert len(versions) == 1, f"expected one version of {MODEL} after one training, found {versions}"
    return Trained(flow_run_id, str(versions[0]["version"]), str(versions[0]["run_id"]))


def test_mlflow_and_prefect_refuse_requests_without_credentials(stack: Stack) -> None:
    url = f"{stack.mlflow}/api/2.0/mlflow/experiments/search"
    assert requests.get(url, params={"max_results": "1"}, timeout=30).status_code == 401
    wrong = (stack.mlflow_auth[0], "not-the-password")
    assert requests.get(url, params={"max_results": "1"}, auth=wrong, timeout=30).status_code == 401
    allowed = requests.get(url, params={"max_results": "1"}, auth=stack.mlflow_auth, timeout=30)
    assert allowed.status_code == 200, allowed.text[:500]
    refused = requests.post(f"{stack.prefect_api}/flow_runs/filter", json={"limit": 1}, timeout=30)
    assert refused.status_code == 401, f"Prefect API without its auth string: {refused.status_code}"


def test_a_deployment_run_from_the_host_registers_a_version_through_the_server(
    stack: Stack, trained: Trained
) -> None:
    version = stack.mlflow_get("model-versions/get", name=MODEL, version=trained.version)["model_version"]
    assert version["status"] == "READY", version
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert {"model_hash", "valid_auc", "data_hash", "stage_keys"} <= set(tags), tags
    run = stack.mlflow_get("runs/get", run_id=trained.run_id)["run"]
    assert run["info"]["status"] == "FINISHED", run["info"]
    # Uploaded through the server's proxy (onto its volume), not into the worker's own folder.
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/"), run["info"]["artifact_uri"]
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    assert params.get("train.epochs") == "1" and params.get("featurize.max_len") == "16", (
        "the run's params should hold the flow run's overrides",
        {k: params.get(k) for k in ("train.epochs", "featurize.max_len")},
    )
    # The first version passes the gate: it holds `staging`.
    assert stack.alias("staging") == trained.version

    # The UI on 127.0.0.1: its page and the call it makes to show the run, refused without the login.
    page = f"{stack.mlflow}/"
    assert requests.get(page, timeout=30).status_code == 401
    ui = requests.get(page, auth=stack.mlflow_auth, timeout=30)
    assert ui.status_code == 200 and "<html" in ui.text.lower(), ui.text[:300]
    shown = requests.get(
        f"{stack.mlflow}/ajax-api/2.0/mlflow/runs/get", params={"run_id": trained.run_id},
        auth=stack.mlflow_auth, timeout=30,
    )  # fmt: skip
    assert shown.status_code == 200, shown.text[:300]
    assert shown.json()["run"]["info"]["run_id"] == trained.run_id


@pytest.fixture(scope="module")
def champion(stack: Stack, trained: Trained) -> str:
    """The trained version promoted with `qin promote --to production` from the host."""
    project = stack.home / "client"  # its own params.yaml and lock folder, not the checkout's
    project.mkdir(exist_ok=True)
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    cmd = [sys.executable, "-m", "qin", "promote", "--to", "production", "--version", trained.version]
    env = {**stack.client_env(), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=180, check=False)
    if out.returncode != 0:
        stack.fail(f"`qin promote` exited {out.returncode}:\n{out.stdout}\n{out.stderr}", "mlflow")
    assert stack.alias("champion") == trained.version
    return trained.version


def host_scores(stack: Stack) -> dict[str, Any]:
    """The champion loaded from the registry on the host, and its scores for its input example."""
    env = {**stack.client_env(), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    dst = stack.home / f"model-{time.monotonic_ns()}"
    dst.mkdir()
    cmd = [sys.executable, "-c", HOST_SCORES, f"models:/{MODEL}@champion", str(dst)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    if out.returncode != 0:
        stack.fail(f"loading models:/{MODEL}@champion on the host failed:\n{out.stderr[-3000:]}", "mlflow")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def serving_scores(stack: Stack, rows: dict[str, Any]) -> list[float]:
    """The serving container's scores for `rows`, once it answers (it restarts its model server when an
    alias moves)."""
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = requests.post(
                f"{stack.serving}/invocations", json={"dataframe_split": rows}, timeout=30
            )
        except requests.ConnectionError as exc:
            last = f"connection: {exc}"
        else:
            if response.status_code == 200:
                return [float(x) for x in np.asarray(response.json()["predictions"], dtype=float).ravel()]
            last = f"{response.status_code} {response.text[:500]}"
        time.sleep(2)
    stack.fail(f"serving did not answer /invocations within {SERVE_TIMEOUT_S} s (last: {last})", "serving")


def test_serving_answers_with_the_champions_scores(stack: Stack, champion: str) -> None:
    expected = host_scores(stack)
    served = serving_scores(stack, expected["rows"])
    assert len(served) == len(expected["scores"]) > 0
    np.testing.assert_allclose(served, expected["scores"], rtol=1e-5, atol=1e-6)


def test_down_and_up_keep_runs_versions_and_aliases(stack: Stack, trained: Trained, champion: str) -> None:
    started = time.monotonic()
    stack.compose("down", "--timeout", "30", timeout=180)
    print(f"down in {time.monotonic() - started:.0f} s; up again (healthy) in {stack.up():.0f} s")
    versions = stack.mlflow_get("model-versions/search", filter=f"name='{MODEL}'")["model_versions"]
    assert [v["version"] for v in versions] == [trained.version], versions
    assert stack.mlflow_get("runs/get", run_id=trained.run_id)["run"]["info"]["status"] == "FINISHED"
    assert stack.alias("champion") == champion
    assert stack.alias("staging") == trained.version
    assert (stack.flow_run(trained.flow_run_id).get("state") or {}).get("type") == "COMPLETED"
    # The model's artifacts are still on the server's volume: the host loads it, serving serves it.
    expected = host_scores(stack)
    np.testing.assert_allclose(
        serving_scores(stack, expected["rows"]), expected["scores"], rtol=1e-5, atol=1e-6
    )
