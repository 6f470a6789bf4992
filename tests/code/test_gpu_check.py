"""The GPU check's own parts that run here: where the gpu tests live, the import record and the import check.
(The whole check is rehearsed on the CPU in .ci/run: `make gpu-rehearsal`.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


def test_every_gpu_marked_test_is_in_the_files_the_check_runs() -> None:
    marked = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if re.search(r"pytest\.mark\.gpu\b", path.read_text())
    }
    assert marked == set(gpu_check.GPU_TESTS)


def test_the_performance_page_lists_the_gpu_images_packages() -> None:
    assert {"torch", "numpy", "pandas", "pyarrow", "pyyaml", "scikit-learn"} <= gpu_check.image_packages()
    assert "great-expectations" not in gpu_check.image_packages()


def _record(tmp_path: Path, code: str) -> list[str]:
    """The import record of a process that runs `code` from a file of the project."""
    log = tmp_path / "imports.txt"
    script = ROOT / "bench" / f"_probe_{os.getpid()}.py"
    script.write_text(code)
    try:
        env = {
            **os.environ,
            "QIN_IMPORT_LOG": str(log),
            "PYTHONPATH": f"{ROOT / 'bench' / 'import_log'}:{ROOT}",
        }
        subprocess.run([sys.executable, str(script)], env=env, check=True, cwd=ROOT)
    finally:
        script.unlink()
    return log.read_text().splitlines() if log.exists() else []


def test_the_record_holds_what_the_projects_files_import_outside_the_standard_library(tmp_path: Path) -> None:
    lines = _record(
        tmp_path, "import json\nimport qin.settings.sections\n\ndef later():\n    import pyarrow\n\nlater()\n"
    )
    modules = {line.split()[0] for line in lines}
    assert "pydantic qin/settings/sections.py" in lines  # qin/settings/sections.py's own import
    assert "pyarrow" in modules  # an import inside a function, once it runs
    assert "json" not in modules and "qin" not in modules  # the standard library, the project itself
    assert not any(line.split()[1].startswith(".venv") for line in lines)  # packages' own imports


def test_the_import_check_fails_on_a_module_the_image_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "imports.txt"
    record.write_text("torch qin/train.py\nyaml qin/settings/sections.py\n")
    assert gpu_check.check_imports(record)
    record.write_text("torch qin/train.py\ngreat_expectations qin/validate.py\n")
    assert not gpu_check.check_imports(record)
    assert "MISSING on the GPU image: great_expectations" in capsys.readouterr().out
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "great_expectations-1.24.1-py3-none-any.whl").write_bytes(b"")
    monkeypatch.setattr(gpu_check, "WHEELS", wheels)
    assert gpu_check.check_imports(record)  # carried as a wheel
