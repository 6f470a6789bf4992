"""docker/compose.yaml agrees with qinstack/ and docker/.env.example, without a Docker engine.

The container test (tests/container) runs the stack for real; these catch a compose file that names a
command or a credential the rest of the project does not know, in `make test`'s time.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qinstack.settings import read_env_file, write_secrets

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
EXAMPLE = REPO / "docker" / ".env.example"
TEXT = COMPOSE_FILE.read_text()
SERVICES: dict[str, Any] = yaml.safe_load(TEXT)["services"]
QIN_SERVICES = sorted(name for name, service in SERVICES.items() if service.get("command"))


def test_every_credential_compose_requires_is_generated_by_secrets(tmp_path: Path) -> None:
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", TEXT))
    assert required, "compose.yaml should refuse to start without its credentials (${KEY:?...})"
    write_secrets(tmp_path / ".env")
    missing = required - set(read_env_file(tmp_path / ".env"))
    assert not missing, (
        f"`python -m qinstack secrets` does not write {sorted(missing)}, which compose.yaml requires"
    )


def test_every_variable_compose_reads_is_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", TEXT))
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", EXAMPLE.read_text(), flags=re.MULTILINE))
    assert used - documented == set(), f"docker/.env.example does not document {sorted(used - documented)}"


@pytest.mark.parametrize("name", QIN_SERVICES)
def test_each_service_runs_a_qinstack_command_and_checks_its_health_with_it(name: str) -> None:
    service = SERVICES[name]
    command = service["command"]
    out = subprocess.run(
        [sys.executable, "-m", "qinstack", *command, "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, (
        f"service {name}: `python -m qinstack {' '.join(command)}` is unknown:\n{out.stderr}"
    )
    if name != "data":  # one-shot: compose waits for it to complete instead
        assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "qinstack", "health", name]


def test_ports_are_published_on_loopback_only_and_workers_scale() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"service {name} publishes {port} beyond 127.0.0.1"
    worker = SERVICES["worker"]
    assert "container_name" not in worker and "ports" not in worker, "`--scale worker=2` needs neither"
    assert {"qin-artifacts:/app/artifacts", "qin-data:/app/data"} <= set(worker["volumes"])
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace and int(grace.group(1)) >= 15, (
        "the worker needs time to stop its flow runs (qinstack/worker.py)"
    )


def test_the_one_image_is_built_once() -> None:
    built = [name for name, service in SERVICES.items() if "build" in service]
    assert built == ["mlflow"], f"compose builds once per service with `build:` (five at once): {built}"
    images = {SERVICES[name]["image"] for name in QIN_SERVICES}
    assert len(images) == 1, f"every qin service should run the one image, found {images}"
