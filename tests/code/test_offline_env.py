"""Telemetry off is written once, as flows/__init__.py's OFFLINE_ENV: the places that cannot import it (the
Makefile, docker/compose.yaml, docker/Dockerfile, bench/gpu_check.sh) set the same keys to the same values,
and no Python file writes one of its keys itself (qin/validate.py's GX setting aside: qin imports no flows).
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from flows import OFFLINE_ENV

REPO = Path(__file__).resolve().parents[2]
# What names a telemetry setting, in any tool: a key written outside OFFLINE_ENV must not match it.
TELEMETRY = re.compile(r"TRACK|TELEMETRY|ANALYTICS")


def _telemetry(settings: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in settings.items() if TELEMETRY.search(key)}


def _makefile() -> dict[str, str]:
    text = (REPO / "Makefile").read_text()
    return dict(re.findall(r"^export (\w+) := (.*)$", text, flags=re.MULTILINE))


def _compose() -> dict[str, str]:
    return {
        key: str(value)
        for key, value in yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["x-env"].items()
    }


def _dockerfile() -> dict[str, str]:
    text = (REPO / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    words = [w for line in text.splitlines() if line.startswith("ENV ") for w in shlex.split(line)[1:]]
    return dict(word.split("=", 1) for word in words)


def _gpu_check() -> dict[str, str]:
    text = (REPO / "bench" / "gpu_check.sh").read_text().replace("\\\n", " ")
    words = [w for line in text.splitlines() if line.startswith("export ") for w in shlex.split(line)[1:]]
    return dict(word.split("=", 1) for word in words if "=" in word)


def test_the_source_names_telemetry_settings_only() -> None:
    assert OFFLINE_ENV and _telemetry(OFFLINE_ENV) == OFFLINE_ENV


@pytest.mark.parametrize(
    "where",
    [_makefile, _compose, _dockerfile, _gpu_check],
    ids=["Makefile", "compose", "Dockerfile", "gpu_check"],
)
def test_each_place_that_cannot_import_it_sets_the_same_keys_and_values(
    where: Callable[[], dict[str, str]],
) -> None:
    found = _telemetry(where())
    assert found == OFFLINE_ENV, (
        f"{where.__name__.strip('_')}: telemetry settings {found}, expected flows/__init__.py's OFFLINE_ENV "
        f"{OFFLINE_ENV}"
    )


def test_no_python_file_writes_a_key_of_its_own() -> None:
    allowed = {
        REPO / "flows" / "__init__.py": set(OFFLINE_ENV),
        REPO / "qin" / "validate.py": {"GX_ANALYTICS_ENABLED"},
    }
    found = []
    for folder in ("qin", "flows", "qinstack", "tests", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                written = isinstance(node, ast.Constant) and node.value in OFFLINE_ENV
                if written and node.value not in allowed.get(path, set()):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value}")
    assert found == [], "write these as flows.OFFLINE_ENV (import it) instead"


def test_qin_validate_sets_gx_telemetry_as_the_source_does() -> None:
    text = (REPO / "qin" / "validate.py").read_text()
    (value,) = re.findall(r'setdefault\("GX_ANALYTICS_ENABLED", "([^"]*)"\)', text)
    assert value == OFFLINE_ENV["GX_ANALYTICS_ENABLED"]
