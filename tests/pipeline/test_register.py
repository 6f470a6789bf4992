"""The register stage's result: the record round-trips through register.json, one formatter words it for
the CLI, the flow's log and its summary; and the staging gate against the real MLflow registry: better
models move the alias, worse ones do not, and registering an unchanged package twice is idempotent. (The
rule itself: tests/pipeline/test_promote.py.)"""

import json
from pathlib import Path
from typing import Any

import pytest

from qin.evaluate import evaluate
from qin.featurize import featurize
from qin.register import register
from qin.registry.registration import (
    GateDecision,
    Registration,
    read_registration,
    registration_lines,
    write_registration,
)
from qin.runs import layout, pipeline
from qin.settings.params import load_params
from qin.train import train
from qin.validate import validate
from tests import helpers as ws
from tests.conftest import TINY_PARAMS
from tests.helpers import model_variant

MOVED = GateDecision("staging", True, "valid_auc 0.80000 beats version 1's", "1", "alias_history.1")
REFUSED = GateDecision("staging", False, "valid_auc 0.60000 does not beat version 1's", "1", None)
HOLDS = GateDecision("staging", True, "version 2 already holds 'staging'", "2", None)
RECORD = Registration("qin-ctr", "r" * 32, "2", True, 0.8, "h" * 64, MOVED)

# register.json as the stage wrote it before the records: the keys every reader relies on.
FILE_KEYS = {"model_name", "run_id", "version", "newly_registered", "valid_auc", "model_hash"}
GATE_KEYS = {"alias", "has_alias", "reason", "previous", "history_tag"}


@pytest.mark.parametrize("record", [RECORD, Registration("qin-ctr", "run1", "1", False, 0.7, "h", None)])
def test_a_registration_round_trips_through_register_json(tmp_path: Path, record: Registration) -> None:
    path = write_registration(tmp_path / "register.json", record)
    assert read_registration(path) == record
    on_disk = json.loads(path.read_text())
    assert set(on_disk) == (FILE_KEYS | GATE_KEYS if record.gate else FILE_KEYS)
    assert (on_disk["version"], on_disk["valid_auc"], on_disk.get("has_alias")) == (
        record.version,
        record.valid_auc,
        record.gate and record.gate.has_alias,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["register.json"]  # no temporary file left beside it


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"version": None}, "key 'version': expected str, found None"),
        ({"valid_auc": True}, "key 'valid_auc': expected float, found True"),
        ({"previous": 1}, "key 'previous': expected str | None, found 1"),
        ({"reason": "remove"}, r"keys \['alias', .*\] of a GateDecision, missing \['reason'\]"),
        ({"run_id": "remove"}, r"of a Registration, missing \['run_id'\]"),
    ],
)
def test_a_register_json_that_does_not_hold_a_record_is_refused_naming_the_key(
    tmp_path: Path, change: dict[str, Any], says: str
) -> None:
    raw = {**RECORD.to_json(), **change}
    raw = {k: v for k, v in raw.items() if v != "remove"}
    path = tmp_path / "register.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=rf"register\.json: .*{says}"):
        read_registration(path)


def test_an_auc_written_as_an_integer_reads_as_a_float(tmp_path: Path) -> None:
    path = tmp_path / "register.json"
    path.write_text(json.dumps({**RECORD.to_json(), "valid_auc": 1}))
    read = read_registration(path)
    assert (read.valid_auc, type(read.valid_auc)) == (1.0, float)


@pytest.mark.parametrize(
    ("gate", "alias"),
    [
        (MOVED, "alias 'staging': yes, moved from version 1: valid_auc 0.80000 beats"),
        (REFUSED, "alias 'staging': no (valid_auc 0.60000 does not beat version 1's)"),
        (HOLDS, "alias 'staging': yes (version 2 already holds 'staging')"),
        (None, "alias: not offered"),
    ],
)
def test_the_formatter_names_the_version_the_alias_decision_and_the_auc(
    gate: GateDecision | None, alias: str
) -> None:
    record = Registration("qin-ctr", "run9", "2", False, 0.80123456, "h", gate)
    lines = registration_lines(record, run_link="http://mlflow/#/runs/run9")
    assert lines[0] == "qin-ctr version 2 (already registered, unchanged), valid AUC 0.80123"
    assert lines[1] == "MLflow run [run9](http://mlflow/#/runs/run9)"
    assert lines[2].startswith(alias)
    assert registration_lines(record)[1] == "MLflow run run9"


def test_qin_register_prints_the_formatters_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qin.cli import main

    (tmp_path / "params.yaml").write_text(TINY_PARAMS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "call", lambda s, *args, **kwargs: RECORD)
    assert main(["register"]) == 0
    assert capsys.readouterr().out.splitlines() == registration_lines(RECORD)


def test_the_flow_logs_and_summarises_the_formatters_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The qin-train flow's body with its stages stubbed: what it prints and publishes about register."""
    import prefect.artifacts

    import flows.qin_train
    import flows.tracking

    settings = tmp_path / "params.yaml"
    settings.write_text(TINY_PARAMS)
    (tmp_path / "evaluate.json").write_text(json.dumps({"valid_auc": 0.8, "valid_logloss": 0.5}))
    link = "http://127.0.0.1:5000/#/experiments/1/runs/" + RECORD.run_id

    def stage(name: str, *args: Any) -> Any:
        if name == "register":
            return RECORD
        return {"key": f"{name}-key", "how": "cached", "dir": str(tmp_path)}

    published: dict[str, Any] = {}
    monkeypatch.setattr(flows.qin_train, "record_dir", lambda: str(tmp_path / "record"))
    monkeypatch.setattr(flows.qin_train, "start_run", lambda *args: str(settings))
    monkeypatch.setattr(flows.qin_train, "run_stage", stage)
    monkeypatch.setattr(flows.tracking, "run_link", lambda cfg, run_id: link)
    monkeypatch.setattr(flows.tracking, "ui_hint", lambda cfg: None)  # as when the MLflow UI answers
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", lambda **kw: published.update(kw))

    result = flows.qin_train.qin_train.fn(params=str(settings), data=str(tmp_path))
    lines = registration_lines(RECORD, link)
    logged = capsys.readouterr().out.splitlines()
    assert logged[-len(lines) :] == lines
    assert "".join(f"- {line}\n" for line in lines) in published["markdown"]
    assert "| valid_auc | 0.80000 |" in published["markdown"]
    assert set(result.pop("hashing")) == {"seconds", "files", "bytes", "memo"}  # what hashing cost the run
    assert result == {
        **RECORD.to_json(),
        "stages": {
            s.name: "cached" for s in pipeline.flow_stages(pipeline.TRAIN_FLOW) if s.content_addressed
        },
        "stage_keys": {
            s.name: f"{s.name}-key" for s in pipeline.flow_stages(pipeline.TRAIN_FLOW) if s.content_addressed
        },
        "record": str(tmp_path / "record"),
        "mlflow_run_link": link,
    }


@pytest.mark.slow
def test_gate_moves_the_alias_only_for_a_better_model(project: Path) -> None:
    params = load_params("params.yaml")
    validate(layout.DATA, ws.VALIDATION, params.validate)
    featurize(layout.DATA, ws.VALIDATION, ws.FEATURES, params.featurize)
    train(ws.FEATURES, ws.MODEL, ws.TRAIN_METRICS, params.train)
    evaluate(ws.FEATURES, ws.MODEL, ws.EVAL_METRICS, params.evaluate)

    def reg(model: Path, metrics: Path) -> tuple[Registration, GateDecision]:
        result = register(model, ws.TRAIN_METRICS, metrics, ws.VALIDATION, ws.REGISTRATION, params)
        assert read_registration(ws.REGISTRATION) == result  # what the stage returns is what it wrote
        assert result.gate is not None
        return result, result.gate

    first, decision = reg(*model_variant(project, "a", 0.70))
    assert (first.version, first.valid_auc) == ("1", 0.70)
    assert decision == GateDecision(
        "staging", True, "no version holds 'staging' yet", None, "alias_history.1"
    )
    again, decision = reg(project / "artifacts" / "a", project / "metrics" / "a.json")
    assert (again.version, again.newly_registered, again.run_id) == ("1", False, first.run_id)
    assert decision == GateDecision("staging", True, "version 1 already holds 'staging'", "1", None)

    worse, decision = reg(*model_variant(project, "b", 0.60))
    assert (worse.version, decision.has_alias, decision.previous) == ("2", False, "1")
    assert "does not beat version 1" in decision.reason

    better, decision = reg(*model_variant(project, "c", 0.80))
    assert (better.version, decision.has_alias, decision.history_tag) == ("3", True, "alias_history.1")

    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("qin-ctr", "staging").version) == "3"
    assert json.loads(ws.REGISTRATION.read_text())["version"] == "3"

    # What a user reads in the MLflow UI: the run's description is its model card, its dataset input the
    # data version it was trained on, and the version says what it is and where it came from.
    run = client.get_run(better.run_id)
    card = client.download_artifacts(better.run_id, "model_card.md", str(project / "card"))
    assert run.data.tags["mlflow.note.content"] == Path(card).read_text()
    assert run.data.tags["mlflow.note.content"].startswith("# Model card: qin-ctr version 3")
    (dataset,) = run.inputs.dataset_inputs
    data_folder = (project / layout.DATA).resolve()
    assert (dataset.dataset.name, dataset.dataset.digest) == ("data", run.data.tags["data_hash"])
    assert json.loads(dataset.dataset.source) == {"uri": data_folder.as_uri()}
    assert json.loads(dataset.dataset.profile)["rows"]["train"] > 0
    assert [(t.key, t.value) for t in dataset.tags] == [("mlflow.data.context", "training")]
    described = client.get_model_version("qin-ctr", "3").description
    assert described.startswith("qin-ctr version 3: a `qin` CTR model, trained on data ")
    assert str(data_folder) in described and better.run_id in described and "valid AUC 0.8000" in described
