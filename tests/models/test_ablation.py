"""The ablation set and the qin-ablation flow: nested MLflow runs under one parent, a comparison table
(Markdown and CSV) and a bar plot; a rerun takes every variant from the cache."""

import csv
from pathlib import Path

import pytest

from qin.models.dcnv3 import DCNv3Config
from qin.models.din import DINConfig
from qin.models.qin import QINConfig
from qin.training.ablation import select, slug, table_markdown, variants


def test_variants_are_the_papers_table_around_the_configured_qin() -> None:
    qin = QINConfig(embedding_dim=16, num_layers=3)
    todo = variants(qin)
    ablations = ["w/o QNN", "w/o ASTA", "ASTA w/ SoftMax", "QNN w/o PReLU", "ASTA w/ Dropout"]
    assert list(todo) == ["QIN", *ablations, "DIN", "DCNv3", "SDCNv3"]
    changed = {
        name: {f for f in type(qin).model_fields if getattr(m, f) != getattr(qin, f)}
        for name, m in todo.items()
        if isinstance(m, QINConfig)
    }
    assert changed == {
        "QIN": set(),
        "w/o QNN": {"use_qnn"},
        "w/o ASTA": {"history_pooling"},
        "ASTA w/ SoftMax": {"attention_activation"},
        "QNN w/o PReLU": {"qnn_activation"},
        "ASTA w/ Dropout": {"attention_dropout"},
    }
    assert isinstance(todo["DIN"], DINConfig) and todo["DIN"].embedding_dim == 16
    assert variants(qin, din_challenge=True)["DIN"] == DINConfig()
    assert isinstance(todo["SDCNv3"], DCNv3Config) and todo["SDCNv3"].name == "sdcnv3"
    with pytest.raises(ValueError, match="built around QIN; found model 'din'"):
        variants(DINConfig())


def test_select_by_name_and_refuse_unknown_names() -> None:
    todo = variants(QINConfig())
    assert list(select(todo, ["din", "qin"])) == ["DIN", "QIN"]
    assert select(todo, None) == todo
    with pytest.raises(ValueError, match=r"\['dien'\] are not known"):
        select(todo, ["din", "dien"])
    assert len({slug(n) for n in todo}) == len(todo)


def test_table_markdown_has_a_row_per_model() -> None:
    row = {"model": "QIN", "valid_auc": 0.81234, "valid_logloss": 0.4, "valid_gauc": 0.7,
           "valid_oracle_auc": 0.85, "parameters": 1234567, "seconds": 12.0}  # fmt: skip
    text = table_markdown([row, {**row, "model": "DIN"}], no_history_auc=0.75)
    assert "| QIN | 0.8123 | 0.4000 | 0.7000 | 0.8500 | 1,234,567 | 12 |" in text
    assert "| DIN |" in text and "No-history bound" in text and "0.7500" in text
    real = table_markdown([{**row, "valid_oracle_auc": float("nan")}])  # no true click probability
    assert "| QIN | 0.8123 | 0.4000 | 0.7000 | n/a | 1,234,567 | 12 |" in real


@pytest.mark.slow
def test_ablation_flow_logs_nested_runs_and_a_comparison(project: Path, prefect_harness) -> None:
    import mlflow

    from flows.qin_ablation import qin_ablation

    only = ["QIN", "w/o ASTA", "DIN"]
    first = qin_ablation(epochs=1, only=only)
    assert [r["model"] for r in first["rows"]] == only
    comparison = Path(first["comparison"])
    assert {p.name for p in comparison.iterdir()} == {"comparison.md", "comparison.csv", "comparison.png"}
    with open(comparison / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == only
    assert all(0.0 < float(r["valid_auc"]) < 1.0 for r in table)

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    parent = client.get_run(first["run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{first['run_id']}'"
    )
    assert sorted(c.info.run_name for c in children) == sorted(only)
    din = next(c for c in children if c.info.run_name == "DIN")
    assert din.data.params["train.model.name"] == "din"
    assert din.data.metrics["valid_auc"] == pytest.approx(first["rows"][2]["valid_auc"])
    assert len(client.get_metric_history(din.info.run_id, "epoch_valid_auc")) == 1
    logged = {a.path for a in client.list_artifacts(first["run_id"], "comparison")}
    assert logged == {f"comparison/comparison.{ext}" for ext in ("md", "csv", "png")}

    # Nothing changed: every variant comes from its train and evaluate keys, with the same metrics.
    model_file = next((Path(first["variants"][2]["train"]) / "model").iterdir())
    mtime = model_file.stat().st_mtime_ns
    second = qin_ablation(epochs=1, only=only)
    assert [r["valid_auc"] for r in second["rows"]] == [r["valid_auc"] for r in first["rows"]]
    assert [v["train"] for v in second["variants"]] == [v["train"] for v in first["variants"]]
    assert model_file.stat().st_mtime_ns == mtime
    assert Path(second["comparison"]).parent == Path(second["record"]) != Path(first["record"])

    # A variant is an ordinary train stage: qin-train with the same model and budget reuses its model.
    from flows.qin_train import qin_train

    din = qin_train(model="din", overrides={"train.epochs": 1})
    assert din["stages"]["train"] == "cached"
    assert f"artifacts/stages/train/{din['stage_keys']['train']}" == first["variants"][2]["train"]


@pytest.mark.slow
def test_embed_eval_judges_each_method_by_the_models_trained_on_it(project: Path, prefect_harness) -> None:
    import mlflow

    from flows.qin_embed_eval import qin_embed_eval

    first = qin_embed_eval(methods=["given", "pca"], models=["din", "qin"], epochs=1)
    names = ["DIN / given", "QIN / given", "DIN / pca", "QIN / pca"]
    assert [r["model"] for r in first["rows"]] == names
    assert all(0.0 < r["valid_auc"] < 1.0 for r in first["rows"])
    with open(Path(first["comparison"]) / "comparison.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == names
    trains = [v["train"] for v in first["variants"]]
    assert len(set(trains)) == 4  # one model per method and judge
    given_qin = next(v for v in first["variants"] if v["model"] == "QIN / given")
    assert "embed.method: given" in Path(given_qin["params"]).read_text().replace("'", "")

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    parent = client.get_run(first["run_id"])
    assert client.get_experiment(parent.info.experiment_id).name.endswith("-embed-eval")
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{first['run_id']}'"
    )
    methods = {c.info.run_name: c.data.params["embed.method"] for c in children}
    assert methods == {name: name.split(" / ")[1] for name in names}

    # The same methods and budget again: every model comes from its keys.
    second = qin_embed_eval(methods=["given", "pca"], models=["din", "qin"], epochs=1)
    assert [v["train"] for v in second["variants"]] == trains
    assert [r["valid_auc"] for r in second["rows"]] == [r["valid_auc"] for r in first["rows"]]
