"""The trainer: deterministic on CPU, resumes a killed run from its checkpoint, evaluation metrics."""

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from qin.evaluate import EvaluateMetrics, evaluate
from qin.featurize import Features, featurize
from qin.models.blocks import ItemEncoder
from qin.runs.io import read_record, write_json
from qin.settings.params import load_params
from qin.settings.sections import EvaluateConfig, FeaturizeConfig, ValidateConfig, replace
from qin.train import TrainState, checkpoint_path, prefetch, through_pinned_memory, train
from qin.training import runtime
from qin.training.metrics import expected_calibration_error, grouped_auc
from qin.validate import validate

RESUME_PARAMS = """
featurize: {max_len: 16}
train:
  model: {name: qin, embedding_dim: 8}
  batch_size: 32
  epochs: 3
  patience: 5
  seed: 3
  device: cpu
  checkpoint_every: 4
  checkpoint_seconds: 0
"""


@pytest.fixture(scope="module")
def features(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("features")
    validate(tiny_data, root / "v", ValidateConfig())
    featurize(tiny_data, root / "v", root / "f", FeaturizeConfig(max_len=16))
    return root / "f"


def _cli_train(root: Path, features: Path, name: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qin", "--params", str(root / "params.yaml"), "train", "--features",
           str(features), "--out", str(root / name), "--metrics", str(root / f"{name}.json")]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_ends(
    features: Path, tmp_path: Path
) -> None:
    (tmp_path / "params.yaml").write_text(RESUME_PARAMS)
    whole = _cli_train(tmp_path, features, "whole")
    assert whole.wait(timeout=300) == 0, whole.stdout.read() if whole.stdout else ""

    run = _cli_train(tmp_path, features, "killed")
    ckpt = checkpoint_path(tmp_path / "killed")
    deadline = time.time() + 120
    while not ckpt.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert run.poll() is None, "training ended before it could be killed"
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert ckpt.exists() and not (tmp_path / "killed").exists()

    again = _cli_train(tmp_path, features, "killed")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert "resuming from" in out
    assert not ckpt.exists()  # removed once the package is written
    a = json.loads((tmp_path / "whole.json").read_text())
    b = json.loads((tmp_path / "killed.json").read_text())
    assert abs(a["best_valid_auc"] - b["best_valid_auc"]) <= 0.002
    assert [h["epoch"] for h in b["history"]] == [1, 2, 3]


def _train_state(seed: int) -> TrainState:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=0)
    return TrainState.start(model, optimizer, scheduler, seed, runtime.Processes(), torch.device("cpu"))


def test_a_train_state_continues_from_its_state_dict_as_if_never_stopped() -> None:
    a = _train_state(seed=5)
    order = a.epoch_order(10)
    a.model(torch.ones(2, 3)).sum().backward()
    a.optimizer.step()
    a.scheduler.step(0.7)
    a.scheduler.step(0.6)  # no gain: the learning rate halves
    a.epoch, a.step, a.stale = 2, 3, 1
    a.partial.update(loss=1.5, steps=3, seconds=0.2)
    a.history.append({"epoch": 1, "valid_auc": 0.7})
    saved = io.BytesIO()
    torch.save(a.state_dict(), saved)
    dropout_draws = torch.rand(4)

    b = _train_state(seed=6)  # other weights, another shuffling and a different RNG position
    b.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=False))
    assert torch.equal(torch.rand(4), dropout_draws)
    weights = b.model.state_dict()
    assert all(torch.equal(weights[name], w) for name, w in a.model.state_dict().items())
    moments = [t.optimizer.state_dict()["state"][0]["exp_avg"] for t in (a, b)]
    assert torch.equal(*moments)
    assert b.optimizer.param_groups[0]["lr"] == a.optimizer.param_groups[0]["lr"] == 0.05
    assert (b.epoch, b.step, b.stale, b.partial, b.history) == (2, 3, 1, a.partial, a.history)
    assert torch.equal(b.epoch_order(10), order)  # mid-epoch: the epoch's order again
    a.step = b.step = 0
    assert torch.equal(b.epoch_order(10), a.epoch_order(10))  # the next epoch's order
    assert b.partial == {"loss": 0.0, "steps": 0, "seconds": 0.0}


def test_a_checkpoint_written_under_another_key_is_ignored(
    features: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "params.yaml").write_text(EXACT_PARAMS.replace("epochs: 2", "epochs: 1"))
    cfg = load_params(tmp_path / "params.yaml").train
    ckpt = checkpoint_path(tmp_path / "m")
    torch.save({"key": "another", "state": {}}, ckpt)
    caplog.set_level(logging.INFO, logger="qin.train")
    s = train(features, tmp_path / "m", tmp_path / "m.json", cfg, key="mine")
    assert "ignoring" in caplog.text and "resuming" not in caplog.text
    assert [h["epoch"] for h in s.history] == [1]
    assert not ckpt.exists() and not ckpt.with_name(ckpt.name + ".tmp").exists()


def test_training_on_cpu_is_deterministic(features: Path, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(RESUME_PARAMS)
    cfg = load_params(tmp_path / "params.yaml").train
    a = train(features, tmp_path / "a", tmp_path / "a.json", cfg)
    b = train(features, tmp_path / "b", tmp_path / "b.json", cfg)
    assert [h["valid_auc"] for h in a.history] == [h["valid_auc"] for h in b.history]
    assert a.model_hash == b.model_hash


def test_evaluate_writes_metrics_and_plots(features: Path, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(RESUME_PARAMS)
    cfg = load_params(tmp_path / "params.yaml").train
    train(features, tmp_path / "m", tmp_path / "t.json", cfg)
    m = evaluate(
        features,
        tmp_path / "m",
        tmp_path / "e.json",
        EvaluateConfig(),
        tmp_path / "plots",
        tmp_path / "t.json",
    )
    assert set(m.to_json()) >= {"valid_auc", "valid_logloss", "valid_gauc", "valid_ece", "valid_oracle_auc"}
    assert json.loads((tmp_path / "e.json").read_text()) == m.to_json()
    for png in ("roc.png", "calibration.png", "learning_curve.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_a_metrics_file_reads_back_into_its_result_and_a_wrong_one_is_refused_by_key(tmp_path: Path) -> None:
    m = EvaluateMetrics(0.7, 0.5, 0.6, 0.01, 10, 0.3)  # no true click probability: no oracle figures
    write_json(tmp_path / "e.json", m.to_json())
    assert "valid_oracle_auc" not in json.loads((tmp_path / "e.json").read_text())
    assert read_record(tmp_path / "e.json", EvaluateMetrics) == m
    wrong = {k: v for k, v in m.to_json().items() if k != "valid_auc"} | {"valid_aucc": 0.7}
    write_json(tmp_path / "wrong.json", wrong)
    with pytest.raises(ValueError, match=r"wrong\.json: .*missing \['valid_auc'\], unknown \['valid_aucc'\]"):
        read_record(tmp_path / "wrong.json", EvaluateMetrics)


def test_grouped_auc_is_the_row_weighted_mean_of_per_user_auc() -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 600)
    y = rng.random(600) < 0.3
    s = rng.random(600) + 0.4 * y
    total = weight = 0.0
    for u in np.unique(users):
        sel = users == u
        if 0 < y[sel].sum() < sel.sum():
            total += roc_auc_score(y[sel], s[sel]) * sel.sum()
            weight += sel.sum()
    assert grouped_auc(y, s, users) == pytest.approx(total / weight)


def test_expected_calibration_error() -> None:
    y = np.array([1, 0, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1])
    # bin 0.9: 3/4 clicks vs 0.9 -> 0.15; bin 0.1: 0/4 vs 0.1 -> 0.1; weighted by 4/8 each
    assert expected_calibration_error(y, p) == pytest.approx(0.125)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0


def test_a_model_keeps_the_history_featurize_kept_and_scores_only_that_history(
    features: Path, tmp_path: Path
) -> None:
    from qin.serving.inference import load_package

    (tmp_path / "params.yaml").write_text(RESUME_PARAMS)
    cfg = load_params(tmp_path / "params.yaml").train
    train(features, tmp_path / "m", tmp_path / "t.json", cfg)
    valid = {k: np.asarray(v) for k, v in Features(features).split("valid").items()}
    scorer = load_package(tmp_path / "m")
    assert scorer.max_len == Features(features).history_len == valid["item_seq"].shape[1] == 16
    longer = {**valid, "item_seq": np.pad(valid["item_seq"], ((0, 0), (10, 0)), constant_values=1)}
    np.testing.assert_array_equal(scorer.predict(longer), scorer.predict(valid))
    # The one history length is featurize's: train has none of its own.
    (tmp_path / "params.yaml").write_text(RESUME_PARAMS.replace("device: cpu", "device: cpu\n  max_len: 6"))
    with pytest.raises(ValueError, match=r"'train.max_len' is not a setting \(use 'featurize.max_len'\)"):
        load_params(tmp_path / "params.yaml")


EXACT_PARAMS = """
featurize: {max_len: 16}
train:
  model: {name: qin, embedding_dim: 8, batch_norm: false, net_dropout: 0.0}
  batch_size: 64
  epochs: 2
  seed: 3
  device: cpu
  precision: fp32
  checkpoint_every: 0
"""


def _qin_train(root: Path, features: Path, name: str, processes: int = 0) -> subprocess.CompletedProcess:
    """`qin train` in one plain process (processes=0) or under torchrun with that many processes."""
    launcher = [sys.executable]
    if processes:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = [*launcher, "-m", "qin", "--params", str(root / "params.yaml"), "train", "--features",
           str(features), "--out", str(root / name), "--metrics", str(root / f"{name}.json")]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.processes
def test_two_processes_under_torchrun_train_the_model_one_process_trains(
    features: Path, tmp_path: Path
) -> None:
    # Without BatchNorm and dropout, the only difference is the order of float sums: two processes
    # averaging the gradients of their halves of each global batch make the same updates as one process.
    # A checkpoint every 2 steps: process 0 decides each time and the other saves with it.
    checkpoints = "checkpoint_every: 2\n  checkpoint_seconds: 0"
    (tmp_path / "params.yaml").write_text(EXACT_PARAMS.replace("checkpoint_every: 0", checkpoints))
    one = _qin_train(tmp_path, features, "one")
    assert one.returncode == 0, one.stderr
    two = _qin_train(tmp_path, features, "two", processes=2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("model package in") == 1  # process 0 alone writes and reports
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert (a["processes"], b["processes"]) == (1, 2)
    assert not checkpoint_path(tmp_path / "two").exists()
    # How far the rounding differences carry depends on the CPU's kernels: an AMD EPYC matched to 1e-5, an
    # Intel Xeon differed by 1.4e-5 (relative) in valid logloss and by 9e-5 in valid AUC, where one flipped
    # near-tied pair of the tiny valid split moves the AUC by ~1.4e-5.
    for x, y in zip(a["history"], b["history"], strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)
        assert y["valid_auc"] == pytest.approx(x["valid_auc"], abs=5e-4)
        assert y["valid_logloss"] == pytest.approx(x["valid_logloss"], rel=1e-4)


FAULT = Path(__file__).with_name("torchrun_fault.py")


def _torchrun(root: Path, features: Path, name: str, **faults: str) -> str:
    """`qin train` under torchrun with 2 processes and `faults` (tests/models/torchrun_fault.py); its
    output. A job still running after 60 s fails the test (and is killed with its workers)."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), **{f"QIN_TEST_{k.upper()}": v for k, v in faults.items()}}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(FAULT),
           "--params", str(root / "params.yaml"), "train", "--features", str(features),
           "--out", str(root / name), "--metrics", str(root / f"{name}.json")]  # fmt: skip
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           start_new_session=True)  # fmt: skip
    try:
        output, _ = job.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)  # the launcher and its workers
        job.communicate()
        pytest.fail(f"torchrun {name} {faults} still ran after 60 s")
    return f"exit {job.returncode}\n{output}"


@pytest.mark.processes
def test_a_failing_process_ends_the_whole_job_and_the_rerun_resumes_every_process_alike(
    features: Path, tmp_path: Path
) -> None:
    # Process 1 raises at its 5th step while process 0 waits in that step's all-reduce: the failed process
    # leaves without the closing barrier, so torchrun stops process 0 and fails the job at once (before,
    # it hung until the process group's 30-minute timeout).
    checkpoints = "checkpoint_every: 2\n  checkpoint_seconds: 0"
    (tmp_path / "params.yaml").write_text(EXACT_PARAMS.replace("checkpoint_every: 0", checkpoints))
    failed = _torchrun(tmp_path, features, "model", fail_rank="1", fail_step="5")
    assert failed.startswith("exit ") and not failed.startswith("exit 0"), failed
    assert "injected failure in process 1" in failed
    assert not (tmp_path / "model").exists() and checkpoint_path(tmp_path / "model").exists()
    # The rerun resumes from the checkpoint of step 4. Process 0 alone reads it and sends it to the other
    # (which here cannot read it): both go on from the same state and end where an unbroken run ends.
    again = _torchrun(tmp_path, features, "model", blind_rank="1")
    assert again.startswith("exit 0") and "resuming from" in again, again
    whole = _torchrun(tmp_path, features, "whole")
    assert whole.startswith("exit 0"), whole
    a = json.loads((tmp_path / "whole.json").read_text())
    b = json.loads((tmp_path / "model.json").read_text())
    assert [h["epoch"] for h in b["history"]] == [1, 2]
    assert b["best_valid_auc"] == pytest.approx(a["best_valid_auc"], abs=0.002)


@pytest.mark.processes
def test_sigterm_to_torchrun_stops_every_process_and_leaves_a_checkpoint_to_resume(
    features: Path, tmp_path: Path
) -> None:
    (tmp_path / "params.yaml").write_text(RESUME_PARAMS)  # a checkpoint every 4 steps
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "qin",
           "--params", str(tmp_path / "params.yaml"), "train", "--features", str(features),
           "--out", str(tmp_path / "model"), "--metrics", str(tmp_path / "model.json")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo)}
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                           start_new_session=True)  # fmt: skip
    ckpt = checkpoint_path(tmp_path / "model")
    try:
        deadline = time.time() + 120
        while not ckpt.exists() and job.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert job.poll() is None and ckpt.exists(), "no checkpoint while the job ran"
        job.send_signal(signal.SIGTERM)  # to the launcher alone, as a scheduler stops a job
        assert job.wait(timeout=60) != 0
        deadline = time.time() + 30
        while time.time() < deadline:  # torchrun stopped its workers: nothing is left in the job's group
            try:
                os.killpg(job.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("a training process outlived its launcher")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
    assert ckpt.exists() and not (tmp_path / "model").exists()
    again = _torchrun(tmp_path, features, "model")
    assert again.startswith("exit 0") and "resuming from" in again, again
    assert [h["epoch"] for h in json.loads((tmp_path / "model.json").read_text())["history"]] == [1, 2, 3]


@pytest.mark.processes
def test_weak_scaling_gives_each_process_its_shard_and_scales_the_batch_and_learning_rate(
    features: Path, tmp_path: Path
) -> None:
    # Two processes, each its own half of the rows, batch_size (64) rows of it a step: an epoch is half the
    # steps of the fixed global batch, over the same rows, at twice the learning rate.
    (tmp_path / "params.yaml").write_text(EXACT_PARAMS.replace("  epochs: 2", "  epochs: 2\n  scaling: weak"))
    weak = _torchrun(tmp_path, features, "weak")
    assert weak.startswith("exit 0"), weak
    assert "weak scaling: 1500 rows and 64 a step per process" in weak
    (tmp_path / "params.yaml").write_text(EXACT_PARAMS)
    fixed = _torchrun(tmp_path, features, "fixed")
    assert fixed.startswith("exit 0"), fixed
    w, f = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("weak", "fixed"))
    rows = len(Features(features).array("train_label"))  # 3,000: 1,500 a process
    assert [h["train_steps"] for h in w["history"]] == [-(-(rows // 2) // 64)] * 2  # 24 a process
    assert [h["train_steps"] for h in f["history"]] == [-(-rows // 64)] * 2  # 47
    assert w["history"][0]["learning_rate"] == 2 * f["history"][0]["learning_rate"]
    assert w["best_valid_auc"] > 0.55  # it learns


@pytest.mark.processes
def test_train_processes_runs_the_train_stage_under_torchrun(features: Path, tmp_path: Path) -> None:
    # `train.processes: 2`: `qin train` (as a flow's store or dvc repro, through pipeline.call) starts
    # torchrun itself; the stage's metrics come back, and the key it resumes under is the caller's.
    (tmp_path / "params.yaml").write_text(EXACT_PARAMS + "  processes: 2\n")
    out = _qin_train(tmp_path, features, "model")
    assert out.returncode == 0, out.stdout + out.stderr
    metrics = json.loads((tmp_path / "model.json").read_text())
    assert metrics["processes"] == 2 and len(metrics["history"]) == 2
    assert "model package in" in out.stdout
    assert not list(tmp_path.glob(".*params.yaml"))  # the settings it handed torchrun are gone


def test_fast_and_reference_paths_train_to_the_same_metrics(
    features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bench/fastpaths.py makes the same comparison at the small preset's scale (AUC within 0.002).
    (tmp_path / "params.yaml").write_text(EXACT_PARAMS)
    cfg = load_params(tmp_path / "params.yaml").train

    def history(name: str, distinct: bool, order: str, precision: str) -> list[dict]:
        monkeypatch.setattr(ItemEncoder, "distinct", distinct)
        model = replace(cfg.model, attention_order=order)
        run = replace(cfg, model=model, precision=precision)
        return train(features, tmp_path / name, tmp_path / f"{name}.json", run).history

    reference = history("reference", False, "reference", "fp32")
    fast = history("fast", True, "fused", "fp32")
    for r, f in zip(reference, fast, strict=True):  # the same function: only float rounding differs
        assert f["valid_auc"] == pytest.approx(r["valid_auc"], abs=1e-4)
        assert f["valid_logloss"] == pytest.approx(r["valid_logloss"], rel=1e-4)
    mixed = history("bf16", True, "fused", "bf16")  # rounds the matmuls' inputs: a nearby trajectory
    assert mixed[-1]["valid_auc"] == pytest.approx(reference[-1]["valid_auc"], abs=0.01)


def test_precision_auto_means_bf16_where_the_device_has_native_bf16_matmuls() -> None:
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("fp32", cpu) is None
    assert runtime.resolve_precision("bf16", cpu) is torch.bfloat16
    native = runtime.cpu_has_native_bf16()
    assert runtime.resolve_precision("auto", cpu) is (torch.bfloat16 if native else None)


def test_precision_auto_on_cuda_never_picks_emulated_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")

    def emulated_only(including_emulation: bool = True) -> bool:  # a V100 or T4: bf16 by emulation only
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulated_only)
    assert runtime.resolve_precision("auto", cuda) is None
    assert runtime.resolve_precision("bf16", cuda) is torch.bfloat16  # asked for by name
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert runtime.resolve_precision("auto", cuda) is torch.bfloat16


def test_only_host_rows_for_a_gpu_go_through_pinned_memory() -> None:
    cpu, cuda, first_gpu = torch.device("cpu"), torch.device("cuda"), torch.device("cuda:0")
    assert through_pinned_memory(cpu, cuda) and through_pinned_memory(cpu, first_gpu)
    assert not through_pinned_memory(first_gpu, cuda)  # resident rows, on the GPU "cuda" means
    assert not through_pinned_memory(cpu, cpu)


def test_prefetch_loads_each_item_in_order_one_ahead_on_a_worker_thread() -> None:
    started = [threading.Event() for _ in range(6)]
    threads: list[str] = []

    def load(i: int) -> int:
        threads.append(threading.current_thread().name)
        started[i].set()
        return i * i

    got = []
    for k, value in enumerate(prefetch(range(6), load, ahead=True)):
        got.append(value)
        if k < 5:  # while the caller works on item k, item k + 1 is being loaded
            assert started[k + 1].wait(timeout=10)
        assert not any(e.is_set() for e in started[k + 2 :])  # and no further
    assert got == [i * i for i in range(6)]
    assert all(name.startswith("qin-prefetch") for name in threads)

    threads.clear()
    assert list(prefetch(range(3), load, ahead=False)) == [0, 1, 4]
    assert threads == [threading.current_thread().name] * 3


def _checkpoints(features: Path, root: Path, every: int, seconds: float, monkeypatch) -> list[tuple]:
    """(epoch, step) at each checkpoint of a 2-epoch run (step 0: an epoch end)."""
    from qin import train as train_module

    saved: list[tuple] = []
    real = train_module._checkpoint

    def spy(run) -> None:
        saved.append((run.state.epoch, run.state.step))
        real(run)

    monkeypatch.setattr(train_module, "_checkpoint", spy)
    text = RESUME_PARAMS.replace("epochs: 3", "epochs: 2").replace(
        "checkpoint_every: 4", f"checkpoint_every: {every}"
    )
    (root / "params.yaml").write_text(text.replace("checkpoint_seconds: 0", f"checkpoint_seconds: {seconds}"))
    train(features, root / "m", root / "m.json", load_params(root / "params.yaml").train, key="k")
    return saved


def test_checkpoints_come_at_epoch_ends_and_when_their_interval_has_passed(
    features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = -(-len(np.load(features / "train_item_id.npy")) // 32)  # batch_size 32
    ends = [(2, 0), (3, 0)]  # after epoch 1 and epoch 2
    every_4 = [(e, s) for e in (1, 2) for s in range(4, steps, 4)]
    assert sorted(_checkpoints(features, tmp_path, 4, 0, monkeypatch)) == sorted(every_4 + ends)
    assert _checkpoints(features, tmp_path, 4, 3600, monkeypatch) == ends  # the interval never passes
    assert _checkpoints(features, tmp_path, 0, 0, monkeypatch) == ends  # never looked at within an epoch


def test_a_checkpoint_is_due_once_its_interval_has_passed_since_the_last() -> None:
    from qin.train import _checkpoint_due

    now = time.monotonic()
    run = SimpleNamespace(cfg=SimpleNamespace(checkpoint_seconds=10.0), procs=runtime.Processes(),
                          device=torch.device("cpu"), saved_at=now - 11)  # fmt: skip
    assert _checkpoint_due(run)
    run.saved_at = now - 5
    assert not _checkpoint_due(run)


def _compile_params(root: Path) -> None:
    # Batches of 250 divide tiny's 3,000 training rows: no smaller last batch, which would compile the step
    # again for its shape (22 s of this test's 67 s on 2 cores).
    text = EXACT_PARAMS.replace("epochs: 2", "epochs: 1").replace("batch_size: 64", "batch_size: 250")
    (root / "params.yaml").write_text(
        text.replace("checkpoint_every: 0", "checkpoint_every: 0\n  compile: true")
    )


def test_compile_without_a_cpp_compiler_fails_with_a_clear_message(features: Path, tmp_path: Path) -> None:
    _compile_params(tmp_path)
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-c++"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
    }
    cmd = [sys.executable, "-m", "qin", "--params", str(tmp_path / "params.yaml"), "train", "--features",
           str(features), "--out", str(tmp_path / "m"), "--metrics", str(tmp_path / "m.json")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 1
    assert "train.compile: torch.compile failed" in out.stderr and "set compile: false" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_compiled_training_step_trains_the_same_model(
    features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    _compile_params(tmp_path)
    cfg = load_params(tmp_path / "params.yaml").train
    compiled = train(features, tmp_path / "c", tmp_path / "c.json", cfg)
    eager = train(features, tmp_path / "e", tmp_path / "e.json", replace(cfg, compile=False))
    assert compiled.best_valid_auc == pytest.approx(eager.best_valid_auc, abs=1e-4)
