"""Where things live, relative to the project root. dvc.yaml and the Prefect flow use the same paths."""

from pathlib import Path

PARAMS = Path("params.yaml")
DATA = Path("data")  # raw data: written only by `qin data synth` / `qin data import`
VALIDATION = Path("artifacts/validate")
FEATURES = Path("artifacts/features")
MODEL = Path("artifacts/model")
TRAIN_METRICS = Path("metrics/train.json")
EVAL_METRICS = Path("metrics/evaluate.json")
PLOTS = Path("artifacts/evaluate")  # ROC, calibration and learning-curve PNGs
PLOT_DATA = Path("metrics/plots")  # the same curves as CSV files, for `dvc plots`
REGISTRATION = Path("artifacts/register.json")
# Written by the Prefect flow only: the params file with the run's model/overrides applied, and the summary
# of the last failed run.
RESOLVED_PARAMS = Path("artifacts/params.resolved.yaml")
FAILURE = Path("artifacts/failure.md")
ABLATION = Path("artifacts/ablation")  # qin-ablation: one directory per variant, and comparison/
# flock files (qin.io.file_lock) for things concurrent runs share: a model hash being registered, an alias.
LOCKS = Path("artifacts/locks")
