"""A new data version judged fairly (qin/registry/judge.py): the staging gate re-scores the holder, trained
on older
data, on the candidate's valid split, promotes a better candidate and refuses a worse one without
`--force`, records both AUCs, the rows compared and the data version, and scores a pair only once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qin.evaluate import evaluate
from qin.featurize import featurize
from qin.register import register
from qin.registry.judge import compare, data_hash_of
from qin.registry.promotion import alias_history
from qin.registry.provenance import validated_data
from qin.runs import layout
from qin.settings.params import Params, load_params
from qin.train import train
from qin.validate import validate


def _edit_train(src: Path, out: Path, edit) -> Path:
    shutil.copytree(src, out)
    table = pq.read_table(out / "train.parquet")
    pq.write_table(edit(table), out / "train.parquet")
    return out


def _trained(data: Path, root: Path, params: Params) -> dict[str, Path]:
    p = {k: root / k for k in ("validation", "features", "model")}
    p |= {"train": root / "train.json", "metrics": root / "evaluate.json"}
    validate(data, p["validation"], params.validate)
    featurize(data, p["validation"], p["features"], params.featurize)
    train(p["features"], p["model"], p["train"], params.train)
    evaluate(p["features"], p["model"], p["metrics"], params.evaluate)
    return p


@pytest.mark.slow
def test_a_new_data_version_takes_staging_only_when_better_on_its_own_valid_split(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.tracking import MlflowRegistry
    from qin.cli import main

    # Enough epochs that the tiny data's models differ clearly (valid AUC about 0.69 on all of its rows).
    Path("params.yaml").write_text(Path("params.yaml").read_text().replace("epochs: 2", "epochs: 6"))
    params = load_params("params.yaml")
    # Two data versions with the same items, valid and test rows: v1 trains on a tenth of the rows, v2 on
    # all of them (a better model).
    v1 = _edit_train(layout.DATA, project / "v1", lambda t: t.slice(0, t.num_rows // 10))
    v2 = layout.DATA
    out = project / "artifacts" / "register.json"
    decisions, runs = [], {}
    for name, data in (("v1", v1), ("v2", v2)):
        runs[name] = run = _trained(data, project / "runs" / name, params)
        registration = register(
            run["model"], run["train"], run["metrics"], run["validation"], out, params, data_dir=data
        )
        assert registration.gate is not None
        decisions.append(registration.gate)
    first, better = decisions
    assert first.has_alias and first.reason == "no version holds 'staging' yet"

    # Version 2 (data v2) beats the holder, version 1 (data v1), on v2's valid split: it takes staging.
    assert better.moved and better.previous == "1", better.reason
    hash1, hash2 = (validated_data(runs[v]["validation"]).digest for v in ("v1", "v2"))
    assert hash2 == data_hash_of(v2) != hash1 == data_hash_of(v1)
    assert f"on data version {hash2}'s valid rows that both can score (600, 100.0%)" in better.reason
    assert "(re-scored)" in better.reason
    version2 = MlflowRegistry(params.register).get_version("qin-ctr", "2")
    assert version2 is not None
    (entry,) = alias_history(version2)
    compared = entry["compared"]
    assert compared["data_hash"] == hash2 and compared["rows"] == 600 and compared["share"] == 1.0
    assert compared["valid_auc"] > compared["from_valid_auc"] + params.register.min_delta
    assert not entry["forced"]
    # The candidate's AUC on the whole split is its evaluate figure (the same rows, the same scoring path).
    assert compared["valid_auc"] == pytest.approx(float(version2.tags["valid_auc"]), abs=1e-9)

    # Version 1 offered again, on its own data v1, against the holder version 2: worse there, refused.
    def offer() -> tuple[int, str]:
        code = main(["promote", "--to", "staging", "--version", "1", "--data", str(v1)])
        said = capsys.readouterr()
        return code, next(x for x in (said.out + said.err).splitlines() if "may not take" in x)

    code, said = offer()
    assert code == 1 and "version 1 may not take 'staging'" in said, said
    assert f"on data version {hash1}'s valid rows" in said and "does not beat version 2's" in said
    # Each (package, data version) was scored once: offering it again reads the cached figures.
    cached = sorted(layout.JUDGED.glob("*.json"))
    assert len(cached) == 4  # versions 1 and 2 on v2, and on v1
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert offer() == (code, said)
    assert [p.stat().st_mtime_ns for p in sorted(layout.JUDGED.glob("*.json"))] == stamps
    # Without the candidate's data the offer is refused, saying why.
    code, said = (
        main(["promote", "--to", "staging", "--version", "1", "--data", str(v2)]),
        capsys.readouterr(),
    )
    assert code == 1 and f"holds data version {hash2}, not the candidate's" in said.out + said.err


def test_rows_with_items_outside_either_item_table_are_left_out_and_counted(
    tiny_data: Path, tmp_path: Path
) -> None:
    from tests.conftest import TINY_PARAMS

    (tmp_path / "params.yaml").write_text(TINY_PARAMS.replace("epochs: 2", "epochs: 1"))
    params = load_params(tmp_path / "params.yaml")
    run = _trained(tiny_data, tmp_path / "run", params)
    n_items = int(np.load(run["model"] / "items.item_tags.npy").shape[0])
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    valid = pq.read_table(data / "valid.parquet")
    target = valid["item_id"].to_numpy().copy()
    target[:100] = n_items + 3  # items the model has no id for (a newer version's items)
    seq = np.stack(valid["item_seq"].to_numpy(zero_copy_only=False))
    seq[100:150, -1] = n_items  # in the history too
    valid = valid.set_column(valid.schema.get_field_index("item_id"), "item_id", pa.array(target))
    valid = valid.set_column(
        valid.schema.get_field_index("item_seq"), "item_seq", pa.array(list(seq), pa.list_(pa.int64()))
    )
    pq.write_table(valid, data / "valid.parquet")
    package = (run["model"], "h" * 64)
    result = compare(data, "dv", package, package, 256, cache=tmp_path / "judged")
    assert not isinstance(result, str)
    assert result.rows == 450 and result.share == pytest.approx(450 / 600)
    assert result.candidate_auc == result.holder_auc
    assert 0.5 < result.candidate_auc < 1.0
