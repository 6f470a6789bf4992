"""`qin data import`: copies the four challenge files into data/, never touches the source, replaces the
old dataset whole, updates data.dvc; a missing file is refused by name with nothing written."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qin.cli import main
from qin.data import schema
from qin.io import file_hash


def _challenge_folder(tmp_path: Path, tiny_data: Path, skip: str | None = None) -> Path:
    src = tmp_path / "challenge"
    src.mkdir()
    for name in schema.FILES:
        if name != skip:
            shutil.copy(tiny_data / f"{name}.parquet", src / f"{name}.parquet")
    return src


@pytest.fixture
def dvc_project(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], check=True)
    shutil.copytree(tiny_data, root / "data")  # an earlier synthetic dataset, truth files included
    return root


def test_import_copies_the_files_and_updates_data_dvc(
    dvc_project: Path, tmp_path: Path, tiny_data: Path
) -> None:
    src = _challenge_folder(tmp_path, tiny_data)
    before = {p.name: (file_hash(p), p.stat().st_mtime_ns) for p in src.iterdir()}

    assert main(["data", "import", str(src)]) == 0

    data = dvc_project / "data"
    assert sorted(p.name for p in data.iterdir()) == sorted(
        [f"{n}.parquet" for n in schema.FILES] + ["import.json"]
    )
    for name in schema.FILES:
        assert file_hash(data / f"{name}.parquet") == before[f"{name}.parquet"][0]
    assert {p.name: (file_hash(p), p.stat().st_mtime_ns) for p in src.iterdir()} == before
    assert "path: data" in (dvc_project / "data.dvc").read_text()


def test_import_refuses_a_missing_file_by_name(
    dvc_project: Path, tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _challenge_folder(tmp_path, tiny_data, skip="item_info")
    old = {p.name: file_hash(p) for p in (dvc_project / "data").iterdir()}

    assert main(["data", "import", str(src)]) == 1

    err = capsys.readouterr().err
    assert "missing item_info.parquet" in err and str(src) in err
    assert {p.name: file_hash(p) for p in (dvc_project / "data").iterdir()} == old
    assert not (dvc_project / "data.dvc").exists()
