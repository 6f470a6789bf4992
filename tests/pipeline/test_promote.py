"""Promotion: the rules (`decide`), `promote` against an in-memory registry, and `qin promote` end to end
against the real MLflow registry (history tags read back, champion only on request, refusals exit 1)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from qin.registry.judge import Comparison
from qin.registry.promotion import (
    ALIAS_TRIES,
    AliasContended,
    PromotionRefused,
    alias_history,
    decide,
    gate,
    promote,
)
from qin.registry.protocol import Candidate, Registered, VersionInfo
from qin.registry.registration import GateDecision, Registration, read_registration, write_registration
from qin.settings.sections import RegisterConfig
from tests import helpers as ws
from tests.helpers import model_variant

CFG = RegisterConfig(min_delta=0.001)


def v(version: str, auc: float | None, data: str | None = "d1") -> VersionInfo:
    tags = {k: str(x) for k, x in (("valid_auc", auc), ("data_hash", data)) if x is not None}
    return VersionInfo(version=version, run_id=f"run{version}", tags=tags)


@pytest.mark.parametrize(
    ("candidate", "holder", "expected", "says"),
    [
        (v("2", 0.70), None, "move", "no version holds 'staging' yet"),
        (v("2", 0.70), v("2", 0.70), "holds", "version 2 already holds 'staging'"),
        (v("2", 0.702), v("1", 0.70), "move", "beats version 1's 0.70000 by 0.00200"),
        (v("2", 0.701), v("1", 0.70), "move", "beats version 1's"),  # exactly min_delta
        (v("2", 0.7005), v("1", 0.70), "refused", "does not beat version 1's 0.70000 by min_delta 0.001"),
        (v("2", 0.60), v("1", 0.70), "refused", "(difference -0.10000)"),
        (
            v("2", 0.90, data="d2"),
            v("1", 0.70),
            "refused",
            "data version d2, version 1 (holding 'staging') on d1",
        ),
        (v("2", 0.90, data=None), v("1", 0.70), "refused", "data version None"),
        (v("2", None), v("1", 0.70), "refused", "no valid_auc tag"),
    ],
)
def test_decide(candidate: VersionInfo, holder: VersionInfo | None, expected: str, says: str) -> None:
    status, reason = decide(candidate, holder, "staging", 0.001)
    assert status == expected
    assert says in reason


@pytest.mark.parametrize(
    ("judged", "expected", "says"),
    [
        (
            Comparison("d2", 450, 0.75, candidate_auc=0.712, holder_auc=0.71),
            "move",
            "on data version d2's valid rows that both can score (450, 75.0%), valid_auc 0.71200 beats "
            "version 1's 0.71000 (re-scored) by 0.00200",
        ),
        (
            Comparison("d2", 450, 0.75, candidate_auc=0.7105, holder_auc=0.71),
            "refused",
            "does not beat version 1's 0.71000 (re-scored) by min_delta 0.001",
        ),
        (
            "data/ holds data version d9",
            "refused",
            "do not compare, and they were not compared on the candidate's data: data/ holds data version d9",
        ),
    ],
    ids=["better there", "not better by min_delta there", "not comparable"],
)
def test_decide_on_new_data_compares_both_on_the_candidates_data(
    judged: Comparison | str, expected: str, says: str
) -> None:
    # The tags' own valid AUCs (0.60 against 0.90, on different data) play no part.
    status, reason = decide(v("2", 0.60, data="d2"), v("1", 0.90), "staging", 0.001, judged)
    assert status == expected
    assert says in reason
    # Same data: the judge's figures are not used.
    assert decide(v("2", 0.60), v("1", 0.90), "staging", 0.001, judged)[0] == "refused"


def test_promote_asks_the_judge_only_across_data_versions_and_records_its_figures() -> None:
    reg = FakeRegistry([v("1", 0.90), v("2", 0.95), v("3", 0.60, data="d2"), v("4", 0.50, data="d2")])
    asked: list[tuple[str, str]] = []

    def judge(candidate: VersionInfo, holder: VersionInfo) -> Comparison:
        asked.append((candidate.version, holder.version))
        auc = {"3": 0.80, "4": 0.70}[candidate.version]
        return Comparison("d2", 300, 0.5, candidate_auc=auc, holder_auc=0.75)

    promote(CFG, "staging", "1", registry=reg, judge=judge)
    assert promote(CFG, "staging", "2", registry=reg, judge=judge).moved
    assert asked == []  # same data version: the tags' AUCs decide
    moved = promote(CFG, "staging", "3", registry=reg, judge=judge)
    assert moved.moved and moved.compared is not None and moved.compared.rows == 300 and asked == [("3", "2")]
    entry = alias_history(reg.by_number["3"])[-1]
    assert entry["compared"] == {
        "data_hash": "d2",
        "rows": 300,
        "share": 0.5,
        "valid_auc": 0.80,
        "from_valid_auc": 0.75,
    }
    assert not entry["forced"] and "re-scored" in entry["reason"]
    # Version 4 (d2) against the holder version 3 (d2): the same data again, the tags decide (0.50 < 0.60).
    with pytest.raises(PromotionRefused, match=r"valid_auc 0\.50000 does not beat version 3's 0\.60000"):
        promote(CFG, "staging", "4", registry=reg, judge=judge)
    assert asked == [("3", "2")]


@pytest.fixture(autouse=True)
def scratch_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`promote` takes its locks under artifacts/locks in the working directory: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)


class FakeRegistry:
    """The Registry protocol in memory."""

    def __init__(self, versions: list[VersionInfo], missing: dict[str, str] | None = None) -> None:
        self.by_number = {x.version: VersionInfo(x.version, x.run_id, dict(x.tags)) for x in versions}
        self.aliases: dict[str, str] = {}
        self.missing = missing or {}
        self.deleted: list[str] = []

    def find(self, model_name: str, model_hash: str) -> Registered | None:
        same = [x for x in self.by_number.values() if x.tags.get("model_hash") == model_hash]
        first = min(same, key=lambda x: int(x.version), default=None)
        return Registered(first.run_id, first.version) if first is not None else None

    def log_and_register(self, model_name: str, candidate: Candidate) -> Registered:
        version = str(max((int(x) for x in self.by_number), default=0) + 1)
        self.by_number[version] = VersionInfo(version, f"run{version}", candidate.version_tags())
        return Registered(f"run{version}", version)

    def delete_version(self, model_name: str, version: str) -> None:
        del self.by_number[version]
        self.aliases = {a: x for a, x in self.aliases.items() if x != version}
        self.deleted.append(version)

    def get_version(self, model_name: str, version: str) -> VersionInfo | None:
        return self.by_number.get(version)

    def versions(self, model_name: str) -> list[VersionInfo]:
        return list(self.by_number.values())

    def alias_holder(self, model_name: str, alias: str) -> VersionInfo | None:
        return self.by_number[self.aliases[alias]] if alias in self.aliases else None

    def set_alias_if(self, model_name: str, alias: str, version: str, expected: str | None) -> bool:
        if self.aliases.get(alias) != expected:
            return False
        self.aliases[alias] = version
        return True

    def set_version_tag(self, model_name: str, version: str, key: str, value: str) -> None:
        self.by_number[version].tags[key] = value

    def missing_artifacts(self, model_name: str, version: str) -> str | None:
        return self.missing.get(version)


def test_staging_gate_refuses_worse_and_other_data_and_records_each_move() -> None:
    reg = FakeRegistry([v("1", 0.70), v("2", 0.7005), v("3", 0.80, data="d2"), v("4", 0.75)])
    first = promote(CFG, "staging", "1", registry=reg)
    assert (first.moved, first.previous, first.history_tag) == (True, None, "alias_history.1")

    with pytest.raises(
        PromotionRefused, match=r"version 2 may not take 'staging': valid_auc 0\.70050 does not"
    ):
        promote(CFG, "staging", "2", registry=reg)
    with pytest.raises(PromotionRefused, match="on different data"):
        promote(CFG, "staging", "3", registry=reg)
    assert reg.aliases == {"staging": "1"}
    assert alias_history(reg.by_number["2"]) == alias_history(reg.by_number["3"]) == []

    best = promote(CFG, "staging", registry=reg)  # the newest: version 4
    assert (best.version, best.moved, best.previous) == ("4", True, "1")
    assert reg.aliases == {"staging": "4"}
    (entry,) = alias_history(reg.by_number["4"])
    assert entry["alias"] == "staging" and entry["from_version"] == "1" and entry["version"] == "4"
    assert entry["metrics"] == {"valid_auc": 0.75, "from_valid_auc": 0.70}
    assert entry["data_hash"] == "d1" and entry["by"] == "qin promote" and not entry["forced"]
    assert entry["when"].endswith("+00:00")


def test_gate_in_the_register_stage_moves_staging_never_champion(tmp_path: Path) -> None:
    from qin.settings.params import Params

    reg = FakeRegistry([v("1", 0.70), v("2", 0.75)])
    out = tmp_path / "register.json"
    for version, auc, previous in (("1", 0.70, None), ("2", 0.75, "1")):
        registered = Registration("qin-ctr", f"run{version}", version, True, auc, f"hash{version}")
        write_registration(out, registered)
        result = gate(out, Params(register=CFG), reg)
        # The registration as it was, with the decision; and the file says the same.
        assert result == dataclasses.replace(registered, gate=result.gate) == read_registration(out)
        assert result.gate is not None and result.gate.alias == "staging"
        assert (result.gate.has_alias, result.gate.previous, result.gate.history_tag) == (
            True,
            previous,
            "alias_history.1",
        )
        assert json.loads(out.read_text())["has_alias"] is True
    assert reg.aliases == {"staging": "2"}
    assert [e["by"] for e in alias_history(reg.by_number["2"])] == ["register"]

    promote(CFG, "production", registry=reg)
    assert reg.aliases == {"staging": "2", "champion": "2"}
    assert [e["alias"] for e in alias_history(reg.by_number["2"])] == ["staging", "champion"]
    assert list(reg.by_number["2"].tags).count("alias_history.2") == 1


def test_refusals_without_raising_and_missing_artifacts_are_never_forced() -> None:
    reg = FakeRegistry([v("1", 0.70), v("2", 0.60), v("3", 0.90)], missing={"3": "its run run3 is deleted"})
    promote(CFG, "staging", "1", registry=reg)
    soft = promote(CFG, "staging", "2", strict=False, registry=reg)
    assert (soft.refused, soft.has_alias, soft.moved) == (True, False, False)
    with pytest.raises(PromotionRefused, match="its artifacts are missing: its run run3 is deleted"):
        promote(CFG, "staging", "3", force=True, registry=reg)
    forced = promote(CFG, "staging", "2", force=True, registry=reg)
    assert forced.moved and forced.reason.startswith("forced (valid_auc 0.60000 does not beat")
    assert alias_history(reg.by_number["2"])[0]["forced"] is True
    with pytest.raises(PromotionRefused, match="has no version 9"):
        promote(CFG, "staging", "9", registry=reg)
    with pytest.raises(PromotionRefused, match="no registered version"):
        promote(CFG, "production", registry=FakeRegistry([]))


class RacedRegistry(FakeRegistry):
    """Another run moves the alias to `interloper` between this run's read of the holder and its first
    compare-and-set (`races` times in all)."""

    def __init__(self, versions: list[VersionInfo], interloper: str, races: int = 1) -> None:
        super().__init__(versions)
        self.interloper, self.races, self.attempts = interloper, races, 0

    def set_alias_if(self, model_name: str, alias: str, version: str, expected: str | None) -> bool:
        self.attempts += 1
        if self.races > 0:
            self.races -= 1
            self.aliases[alias] = self.interloper
        return super().set_alias_if(model_name, alias, version, expected)


def test_a_move_is_decided_again_when_a_better_version_took_the_alias_meanwhile() -> None:
    reg = RacedRegistry([v("1", 0.70), v("2", 0.75), v("3", 0.80)], interloper="3")
    reg.aliases["staging"] = "1"
    with pytest.raises(PromotionRefused, match=r"0\.75000 does not beat version 3's 0\.80000"):
        promote(CFG, "staging", "2", registry=reg)
    assert reg.aliases == {"staging": "3"} and reg.attempts == 1
    assert alias_history(reg.by_number["2"]) == []


def test_a_move_is_decided_again_and_goes_ahead_when_the_new_holder_is_worse() -> None:
    reg = RacedRegistry([v("1", 0.70), v("2", 0.75), v("3", 0.65)], interloper="3")
    reg.aliases["staging"] = "1"
    result = promote(CFG, "staging", "2", registry=reg)
    assert (result.moved, result.previous, reg.attempts) == (True, "3", 2)
    assert "beats version 3's 0.65000" in result.reason
    assert reg.aliases == {"staging": "2"}
    (entry,) = alias_history(reg.by_number["2"])
    assert (entry["from_version"], entry["metrics"]["from_valid_auc"]) == ("3", 0.65)


def test_an_alias_that_keeps_moving_is_reported_not_decided() -> None:
    class Bouncing(FakeRegistry):
        """Every compare-and-set finds that another run moved the alias (back and forth)."""

        def set_alias_if(self, model_name: str, alias: str, version: str, expected: str | None) -> bool:
            self.aliases[alias] = "1" if expected != "1" else "3"
            return False

    reg = Bouncing([v("1", 0.60), v("2", 0.75), v("3", 0.61)])
    with pytest.raises(AliasContended, match=f"alias 'staging' of model 'qin-ctr' moved {ALIAS_TRIES} times"):
        promote(CFG, "staging", "2", registry=reg)
    assert alias_history(reg.by_number["2"]) == []


# ---------------------------------------------------------------- against MLflow, through `qin promote`


@pytest.mark.slow
def test_qin_promote_against_mlflow(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    from flows.tracking import MlflowRegistry
    from qin.cli import main
    from qin.evaluate import evaluate
    from qin.featurize import featurize
    from qin.register import register
    from qin.runs import layout
    from qin.settings.params import load_params
    from qin.train import train
    from qin.validate import validate

    params = load_params("params.yaml")
    validate(layout.DATA, ws.VALIDATION, params.validate)
    featurize(layout.DATA, ws.VALIDATION, ws.FEATURES, params.featurize)
    train(ws.FEATURES, ws.MODEL, ws.TRAIN_METRICS, params.train)
    evaluate(ws.FEATURES, ws.MODEL, ws.EVAL_METRICS, params.evaluate)

    def reg(name: str, auc: float, validation: Path = ws.VALIDATION) -> GateDecision:
        model, metrics = model_variant(project, name, auc)
        decision = register(model, ws.TRAIN_METRICS, metrics, validation, ws.REGISTRATION, params).gate
        assert decision is not None
        return decision

    assert reg("a", 0.70).has_alias  # version 1: staging
    within_delta = reg("b", 0.7005)  # version 2: not better by min_delta
    assert not within_delta.has_alias and "does not beat version 1's" in within_delta.reason
    # Version 3: better, but evaluated on another data version (a validation of different files).
    other = project / "artifacts" / "validate-other"
    shutil.copytree(ws.VALIDATION, other)
    summary = json.loads((other / "summary.json").read_text())
    next(iter(summary["files"].values()))["md5"] = "0" * 32
    (other / "summary.json").write_text(json.dumps(summary))
    assert "on different data" in reg("c", 0.90, other).reason

    def promote_cli(*args: str) -> tuple[int, str]:
        code = main(["promote", *args])
        out = capsys.readouterr()
        return code, out.out + out.err

    code, said = promote_cli("--to", "staging", "--version", "2")
    assert code == 1 and "may not take 'staging': valid_auc 0.70050 does not beat version 1's 0.70000" in said
    code, said = promote_cli("--to", "staging")  # the newest, version 3
    assert code == 1 and "version 3 may not take 'staging'" in said and "different data" in said

    code, said = promote_cli("--to", "production", "--version", "1")
    assert code == 0 and "version 1 now holds 'champion'" in said
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("qin-ctr", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("qin-ctr", "staging").version) == "1"

    # The history, read back from the MLflow version tags.
    mlflow_registry = MlflowRegistry(params.register)
    version1 = mlflow_registry.get_version("qin-ctr", "1")
    assert version1 is not None
    history = alias_history(version1)
    assert [(e["alias"], e["from_version"], e["by"]) for e in history] == [
        ("staging", None, "register"),
        ("champion", None, "qin promote"),
    ]
    assert history[0]["metrics"]["valid_auc"] == pytest.approx(0.70)
    assert json.loads(client.get_model_version("qin-ctr", "1").tags["alias_history.2"])["alias"] == "champion"
    assert alias_history(mlflow_registry.get_version("qin-ctr", "2")) == []  # type: ignore[arg-type]

    # Forcing overrides the data-version rule, and is recorded as forced.
    code, said = promote_cli("--to", "staging", "--version", "3", "--force")
    assert code == 0 and "version 3 now holds 'staging' from version 1: forced (" in said
    (forced,) = alias_history(mlflow_registry.get_version("qin-ctr", "3"))  # type: ignore[arg-type]
    assert forced["forced"] is True and forced["from_version"] == "1"

    # A version whose run was deleted, or whose model files are gone, is refused even when forced.
    client.delete_run(client.get_model_version("qin-ctr", "2").run_id)
    code, said = promote_cli("--to", "production", "--version", "2", "--force")
    assert code == 1 and "its artifacts are missing: its run" in said and "is deleted" in said
    shutil.rmtree(Path(client.get_model_version_download_uri("qin-ctr", "3").removeprefix("file://")))
    code, said = promote_cli("--to", "production", "--version", "3", "--force")
    assert code == 1 and "have no MLmodel file" in said
    assert str(client.get_model_version_by_alias("qin-ctr", "champion").version) == "1"


def test_a_judge_whose_packages_cannot_be_had_says_why_and_the_offer_is_refused(
    tiny_data: Path, tmp_path: Path
) -> None:
    from qin.registry.judge import data_hash_of, judge_on
    from qin.settings.params import load_params
    from tests.conftest import TINY_PARAMS

    (tmp_path / "params.yaml").write_text(TINY_PARAMS)
    params = load_params(tmp_path / "params.yaml")
    here = data_hash_of(tiny_data)

    class Gone(FakeRegistry):
        def download_package(self, model_name: str, version: str, dest: Path) -> None:
            raise FileNotFoundError(f"version {version}'s run was deleted")

    versions = [v("1", 0.9, data="d0"), v("2", 0.5, data=here)]
    for x in versions:
        x.tags["model_hash"] = f"{x.version}" * 64
    reg = Gone(versions)
    judge = judge_on(tiny_data, params, reg)
    why = judge(reg.by_number["2"], reg.by_number["1"])
    assert why == "a package could not be had to score: FileNotFoundError: version 2's run was deleted"
    no_data = judge_on(tmp_path, params, reg)(reg.by_number["2"], reg.by_number["1"])
    assert "data is needed to compare them on it" in str(no_data) and "missing train.parquet" in str(no_data)
    promote(CFG, "staging", "1", registry=reg)
    with pytest.raises(PromotionRefused, match="not compared on the candidate's data: a package could not"):
        promote(CFG, "staging", "2", registry=reg, judge=judge)


def test_a_registry_error_reading_the_alias_fails_the_promotion_and_moves_nothing(tmp_path: Path) -> None:
    """Only "not found" means the alias has no holder: any other store error fails the offer, naming it."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

    from flows.tracking import MlflowRegistry
    from qin.registry.protocol import RegistryError

    cfg = CFG.model_copy(update={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    reg = MlflowRegistry(cfg)
    assert reg.alias_holder(cfg.model_name, "staging") is None  # no such model: no holder
    reg.client.create_registered_model(cfg.model_name)
    for _ in range(2):
        reg.client.create_model_version(cfg.model_name, source=(tmp_path / "model").as_uri())
    assert reg.alias_holder(cfg.model_name, "staging") is None  # no such alias: no holder
    reg.client.set_registered_model_alias(cfg.model_name, "staging", "1")
    reg.missing_artifacts = lambda name, version: None  # type: ignore[method-assign]

    def store_down(name: str, alias: str) -> None:
        raise MlflowException("database is locked", error_code=INTERNAL_ERROR)

    real = reg.client.get_model_version_by_alias
    reg.client.get_model_version_by_alias = store_down  # type: ignore[method-assign]
    with pytest.raises(RegistryError, match=r"alias 'staging' of model 'qin-ctr'.*database is locked"):
        promote(cfg, "staging", "2", force=True, registry=reg)
    assert str(real(cfg.model_name, "staging").version) == "1"
