"""The paper's model table: QIN, its five ablations and the baselines, trained with one budget and compared.

`variants` names the models. The `qin-ablation` Prefect flow writes each variant's settings as a params
file (`write_variant_params`) and runs the ordinary train and evaluate stages on it, so a variant is cached
by its stage keys like any `qin-train` run (and shares them: `qin-train` with model din reuses the
ablation's DIN). bench/accuracy.py trains them without Prefect (`run_variant`). Both build a table row with
`row`; `compare` writes the comparison table (Markdown and CSV) and a bar plot of valid AUC against the
oracle and the no-history bound.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from qin.evaluate import EvaluateMetrics, evaluate
from qin.models.dcnv3 import DCNv3Config
from qin.models.din import DINConfig
from qin.models.qin import QINConfig
from qin.models.settings import ModelConfig
from qin.runs.io import atomic_dir, atomic_file, read_json, read_record, write_json
from qin.runs.pipeline import content_key, stage
from qin.runs.store import MANIFEST
from qin.settings.params import Params, TrainConfig, load_params, preset, to_yaml
from qin.settings.sections import EvaluateConfig, flatten, replace
from qin.train import TrainSummary, train

COLUMNS = ("model", "valid_auc", "valid_logloss", "valid_gauc", "valid_oracle_auc", "parameters", "seconds")


def variants(qin: ModelConfig, din_challenge: bool = False) -> dict[str, ModelConfig]:
    """The paper's ablation set (its Table 2) around `qin`, then DIN, DCNv3 and SDCNv3 at QIN's width."""
    if not isinstance(qin, QINConfig):
        raise ValueError(f"train.model: the ablation set is built around QIN; found model '{qin.name}'")
    e = qin.embedding_dim
    # The challenge DIN costs ~30x QIN's FLOPs per sample: unless din_challenge, the cpu preset's DIN
    # (params/presets/cpu.yaml) at QIN's width.
    din = DINConfig() if din_challenge else replace(_cpu_din(), embedding_dim=e)
    return {
        "QIN": qin,
        "w/o QNN": replace(qin, use_qnn=False),
        "w/o ASTA": replace(qin, history_pooling="mean"),
        "ASTA w/ SoftMax": replace(qin, attention_activation="softmax"),
        "QNN w/o PReLU": replace(qin, qnn_activation="relu"),
        "ASTA w/ Dropout": replace(qin, attention_dropout=0.1),
        "DIN": din,
        "DCNv3": DCNv3Config(embedding_dim=e),
        "SDCNv3": DCNv3Config(name="sdcnv3", embedding_dim=e),
    }


def _cpu_din() -> DINConfig:
    din = preset("cpu", "din").model
    assert isinstance(din, DINConfig)
    return din


def select(todo: dict[str, ModelConfig], only: list[str] | None) -> dict[str, ModelConfig]:
    """The variants named in `only` (case-insensitive), all of them when it is empty."""
    if not only:
        return todo
    known = {k.lower(): k for k in todo}
    unknown = [name for name in only if name.lower() not in known]
    if unknown:
        raise ValueError(f"ablation variants {unknown} are not known; expected some of {list(todo)}")
    return {known[name.lower()]: todo[known[name.lower()]] for name in only}


def slug(name: str) -> str:
    """A directory name for a variant: "ASTA w/ SoftMax" -> "asta_w_softmax"."""
    return "".join(c if c.isalnum() else "_" for c in name.lower().replace("/", "")).replace("__", "_")


def write_variant_params(
    src: str | Path, out: str | Path, name: str, epochs: int | None = None, din_challenge: bool = False
) -> Path:
    """The settings of `src` with variant `name` as the model (and `epochs`, when given), written to `out`
    in full (presets resolved), so that the train and evaluate stages read them like any params file."""
    params = load_params(src)
    model = variants(params.train.model, din_challenge)[name]
    train = replace(params.train, model=model)
    if epochs is not None:
        train = replace(train, epochs=epochs)
    resolved = replace(params, train=train)
    with atomic_file(out) as tmp:
        tmp.write_text(f"# {src} with the ablation variant {name!r} (epochs {epochs})\n{to_yaml(resolved)}")
    if load_params(out) != resolved:
        raise RuntimeError(f"{out}: the variant's settings did not read back as written")
    return Path(out)


def row(name: str, train_summary: TrainSummary, metrics: EvaluateMetrics, seconds: float) -> dict[str, Any]:
    """A variant's row of the comparison table, from its train and evaluate results and the training time."""
    figures = {k: getattr(metrics, k) for k in COLUMNS[1:5]}
    return {
        "model": name,
        **{k: float("nan") if v is None else v for k, v in figures.items()},
        "parameters": train_summary.parameters,
        "seconds": round(seconds, 1),
        "best_epoch": train_summary.best_epoch,
        "epochs_run": len(train_summary.history),
    }


def run_variant(
    name: str,
    features_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    model: ModelConfig,
    eval_cfg: EvaluateConfig,
) -> dict[str, Any]:
    """Train and evaluate one variant into out_dir (model/, train.json, evaluate.json, config.json, row.json).

    Returns its row of the comparison table. Training resumes from its checkpoint like any `qin train`.
    """
    out = Path(out_dir)
    cfg = replace(cfg, model=model)
    write_json(out / "config.json", flatten(cfg, "train."))
    t0 = time.perf_counter()
    key = content_key(stage("train"), Params(train=cfg), {"features_dir": features_dir})
    summary = train(features_dir, out / "model", out / "train.json", cfg, key)
    seconds = time.perf_counter() - t0
    metrics = evaluate(features_dir, out / "model", out / "evaluate.json", eval_cfg)
    result = row(name, summary, metrics, seconds)
    write_json(out / "row.json", result)
    return result


def stage_row(name: str, train_dir: str | Path, evaluate_dir: str | Path) -> dict[str, Any]:
    """A variant's row from its train and evaluate stages' key folders (qin/runs/store.py)."""
    train_dir = Path(train_dir)
    seconds = read_json(train_dir / MANIFEST)["seconds"]
    summary = read_record(train_dir / "train.json", TrainSummary)
    return row(name, summary, read_record(Path(evaluate_dir) / "evaluate.json", EvaluateMetrics), seconds)


def table_markdown(rows: list[dict[str, Any]], no_history_auc: float | None = None) -> str:
    lines = [
        "| model | AUC | logloss | gAUC | oracle AUC | parameters | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        oracle = r["valid_oracle_auc"]  # NaN for data without the true click probability (real data)
        lines.append(
            f"| {r['model']} | {r['valid_auc']:.4f} | {r['valid_logloss']:.4f} | {r['valid_gauc']:.4f} "
            f"| {f'{oracle:.4f}' if oracle == oracle else 'n/a'} | {r['parameters']:,} | {r['seconds']:.0f} |"
        )
    if no_history_auc is not None:
        lines += ["", f"No-history bound (best AUC without the history): {no_history_auc:.4f}"]
    return "\n".join(lines) + "\n"


def compare(
    rows: list[dict[str, Any]],
    out_dir: str | Path,
    no_history_auc: float | None = None,
    title: str = "QIN ablations and baselines",
) -> Path:
    """Write comparison.md, comparison.csv and comparison.png (valid AUC per row, titled `title`) into
    out_dir."""
    if not rows:
        raise ValueError("ablation: no variant results to compare")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_dir(out_dir) as tmp:
        (tmp / "comparison.md").write_text(table_markdown(rows, no_history_auc))
        with open(tmp / "comparison.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 4))
        aucs = [r["valid_auc"] for r in rows]
        ax.bar(range(len(rows)), aucs, color=["C0" if r["model"].startswith("QIN") else "C7" for r in rows])
        oracle = rows[0]["valid_oracle_auc"]
        refs = [(oracle, "oracle", "k--"), (no_history_auc, "no-history bound", "r:")]
        for value, label, style in refs:
            if value is not None and value == value:  # skip missing and NaN
                ax.axhline(value, linestyle=style[1:], color=style[0], lw=1, label=f"{label} {value:.4f}")
        low = min([*aucs, *(v for v, _, _ in refs if v is not None and v == v)])
        ax.set_ylim(low - 0.01, max([*aucs, oracle if oracle == oracle else 0]) + 0.01)
        ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=30, ha="right")
        ax.set(ylabel="valid AUC", title=title)
        ax.legend(loc="lower right", fontsize=8)
        fig.savefig(tmp / "comparison.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
    return Path(out_dir)


def no_history_bound(data_dir: str | Path) -> float | None:
    """The generator's no-history bound, when the data is synthetic (data/synth.json)."""
    synth = Path(data_dir) / "synth.json"
    return float(read_json(synth)["valid_no_history_auc"]) if synth.exists() else None
