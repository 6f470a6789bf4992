"""`qin data import`: copies the four challenge files into data/, never touches the source, replaces the
old dataset whole, updates data.dvc; a missing file is refused by name with nothing written."""

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qin.cli import main
from qin.data import schema
from qin.runs.io import file_hash, read_json


def _challenge_folder(
    tmp_path: Path, tiny_data: Path, skip: str | None = None, extra: tuple[str, ...] = ()
) -> Path:
    src = tmp_path / "challenge"
    src.mkdir()
    for name in (*schema.FILES, *extra):
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


def test_import_takes_item_feature_when_present(dvc_project: Path, tmp_path: Path, tiny_data: Path) -> None:
    src = _challenge_folder(tmp_path, tiny_data, extra=(schema.FEATURE_FILE,))

    assert main(["data", "import", str(src), "--no-dvc"]) == 0

    data = dvc_project / "data"
    assert file_hash(data / "item_feature.parquet") == file_hash(src / "item_feature.parquet")
    assert "item_feature.parquet" in read_json(data / "import.json")["files"]


def test_import_refuses_a_malformed_item_feature_by_name(
    dvc_project: Path, tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _challenge_folder(tmp_path, tiny_data, extra=(schema.FEATURE_FILE,))
    table = pq.read_table(src / "item_feature.parquet")
    vectors = table["img_emb_CLIPRN50"].to_pylist()
    vectors[3] = vectors[3][:1000]
    column = table.schema.get_field_index("img_emb_CLIPRN50")
    pq.write_table(
        table.set_column(column, "img_emb_CLIPRN50", pa.array(vectors, pa.list_(pa.float32()))),
        src / "item_feature.parquet",
    )
    old = {p.name: file_hash(p) for p in (dvc_project / "data").iterdir()}

    assert main(["data", "import", str(src)]) == 1

    err = capsys.readouterr().err
    for fragment in (
        str(src / "item_feature.parquet"),
        "nothing was imported",
        "column 'img_emb_CLIPRN50'",
        "in [1024, 1024]",
        "[1000]",
    ):
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert {p.name: file_hash(p) for p in (dvc_project / "data").iterdir()} == old


def test_import_outside_the_project_writes_the_files_and_leaves_them_untracked(
    dvc_project: Path, tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _challenge_folder(tmp_path, tiny_data)
    out = tmp_path / "elsewhere" / "data"
    assert main(["data", "import", str(src), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.parquet" for n in schema.FILES] + ["import.json"]
    )
    assert "outside this DVC project" in capsys.readouterr().out
    assert not (out.parent / "data.dvc").exists() and not (dvc_project / "data.dvc").exists()


def test_a_failing_dvc_add_is_refused_with_dvc_s_own_message(dvc_project: Path) -> None:
    from qin.cli import track_with_dvc

    (dvc_project / ".dvcignore").write_text("ignored\n")
    (dvc_project / "ignored").mkdir()
    with pytest.raises(RuntimeError) as err:
        track_with_dvc(Path("ignored"))
    message = str(err.value)
    assert message.startswith("dvc add ignored failed:\n") and "ignored" in message.splitlines()[1]
    assert len(message.splitlines()[1]) > 20  # DVC's own words, not an empty message
