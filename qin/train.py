"""The `train` stage: fit a model on featurized arrays, keep the best epoch by valid AUC, write a package.

Data path: the featurized arrays stay memory-mapped (nothing is copied into RAM: the full-size history,
3.6M x 64 int32, lives in the page cache only) and each batch is gathered from them by index
(`index_select`): no per-batch pandas and no Python loop over rows. On CUDA the arrays are copied to the GPU
once when they fit in a quarter of its free memory (`data_placement: auto`); otherwise each batch is gathered
on the CPU into pinned memory, one batch ahead on a worker thread, and copied asynchronously. No operation
of a step waits for the GPU (tests/models/test_host_sync.py), so the host runs ahead of it. The item table
lives inside the model as buffers, so each distinct item of a batch (target or history) is encoded once and
gathered in one indexing operation (qin/models/blocks.py).

Speed settings (TrainConfig; qin/training/runtime.py): bf16 autocast (`precision`), a foreach (CPU) or fused
(CUDA)
Adam, optional `torch.compile` (`compile`), CPU `threads`, and on CPU keeping the memory a step frees for the
next (`reuse_memory`). None changes the recipe.

Several processes: `torchrun --nproc_per_node=N -m qin train ...` (gloo on CPU, nccl on CUDA, one GPU per
process). Every process draws the same shuffling and takes rows r, r+N, r+2N, ... of each global batch of
`batch_size` rows, so the global batch, the steps and the learning-rate schedule are those of one process;
DistributedDataParallel averages the gradients, each process's loss weighted by its share of the rows, so the
update is the one of the whole batch. With `scaling: weak` each process instead reads only its own contiguous
shard of the rows (the memory-mapped pages of the others are never touched) and takes `batch_size` rows of it
a step: the global batch and the learning rate are N times theirs. BatchNorm normalises over each process's
rows (no SyncBatchNorm on CPU) and the running statistics of process 0 are kept. Process 0 writes the
checkpoints, the package and the metrics; valid is scored in shards and gathered, so every process takes the
same early-stopping decisions.

Recipe (the authors'): Adam; L2 on the embedding tables, separate from the network's; gradient-norm
clipping; the learning rate halves when valid AUC stalls (lr_patience epochs) and training stops after
`patience` epochs without a gain; the best epoch's weights are kept.

Resumable: at each epoch end, and within an epoch every `checkpoint_seconds` (looked at every
`checkpoint_every` steps), the full state (`TrainState`: weights, optimizer, scheduler, RNG states of every
process, the epoch's shuffling and position, history, best weights) is saved beside the output, under the
stage key (qin/runs/pipeline.py) of the run that wrote it. A rerun with the same key (the same settings but
the
speed-only ones, the same features) continues from there, mid-epoch included, and reaches the same result
as an uninterrupted run. The checkpoint is removed once the package is written.

A run reads as its phases: `_setup` → `_resume` → per epoch `_train_epoch`, `_score`, `_decide` (and a
checkpoint) → `_finish`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from qin.data.features import FeatureSpec
from qin.featurize import Features
from qin.models import build_model
from qin.models.blocks import Batch, embedding_tables, network_weights
from qin.runs.io import record_json, write_json
from qin.serving.inference import Scorer, resolve_device, save_package
from qin.settings.params import TrainConfig
from qin.training import runtime
from qin.training.losses import Loss, model_loss
from qin.training.metrics import log_loss, roc_auc

log = logging.getLogger(__name__)
T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class TrainSummary:
    """The stage's result, as the metrics file (train.json) holds it."""

    model: str  # the model's name
    parameters: int
    device: str
    precision: str
    processes: int
    best_epoch: int
    best_valid_auc: float
    history: Sequence[Mapping[str, Any]]  # one row of metrics per epoch (`_score`)
    checkpoints: Mapping[str, Any]  # this run's checkpoints: their "count" and "seconds" to save
    # The package's content hash; None in a process other than 0, which writes neither package nor file.
    model_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The train.json object."""
        return record_json(self, optional=("model_hash",))


def checkpoint_path(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.checkpoint.pt"


def load_columns(
    feats: Features, split: str, device: torch.device, placement: str = "auto", shard: slice | None = None
) -> dict[str, Tensor]:
    """A split's columns (its rows `shard` only, when given) as tensors over the memory-mapped arrays
    (nothing is read yet: a process reads only the pages of its own rows).

    On CUDA they are copied to the GPU when they fit in a quarter of its free memory (placement "auto");
    otherwise (or with placement "host") they stay memory-mapped and each batch goes through pinned memory
    (`host_rows`, one batch ahead: `prefetch`).
    """
    arrays = feats.split(split, copy_on_write=True)
    cols = {k: torch.from_numpy(v if shard is None else v[shard]) for k, v in arrays.items()}
    if device.type == "cuda" and placement == "auto":
        need = sum(t.numel() * t.element_size() for t in cols.values())
        if need < torch.cuda.mem_get_info(device)[0] / 4:
            return {k: v.to(device).contiguous() for k, v in cols.items()}
        log.info("%s: %.1f GB do not fit on %s; batches go through pinned memory", split, need / 1e9, device)
    return cols


def host_rows(cols: dict[str, Tensor], idx: Tensor, pin: bool) -> dict[str, Tensor]:
    """The rows `idx` of every column where the columns are (one index_select each); in pinned memory with
    `pin`, so that the copy to the GPU is asynchronous."""
    rows = {k: v.index_select(0, idx.to(v.device)) for k, v in cols.items()}
    return {k: v.pin_memory() for k, v in rows.items()} if pin else rows


def on_device(rows: dict[str, Tensor], device: torch.device) -> Batch:
    """The rows as a Batch on `device` (a no-op where they are; asynchronous from pinned memory)."""
    return Batch(**{k: v.to(device, non_blocking=True) for k, v in rows.items()})


def through_pinned_memory(held: torch.device, device: torch.device) -> bool:
    """Whether rows held on `held` reach `device` through pinned memory: host rows for a GPU. By type, not
    by device: rows copied to torch.device("cuda") are held on "cuda:0", which is not equal to it."""
    return held.type == "cpu" and device.type == "cuda"


def gather(cols: dict[str, Tensor], idx: Tensor, device: torch.device) -> Batch:
    """The rows `idx` of every column, on `device`."""
    return on_device(host_rows(cols, idx, pin=through_pinned_memory(_held(cols), device)), device)


def _held(cols: dict[str, Tensor]) -> torch.device:
    """Where the columns are (all in one place)."""
    return next(iter(cols.values())).device


def prefetch(plan: Iterable[T], load: Callable[[T], U], ahead: bool) -> Iterator[U]:
    """`load` of each item of `plan`, in order. With `ahead`, each is loaded on a worker thread while the
    caller works on the one before (torch's operators release the GIL): a GPU step overlaps the gathering
    of the next batch from memory-mapped arrays into pinned memory. A caller that stops early waits for the
    one load in flight."""
    if not ahead:
        yield from map(load, plan)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="qin-prefetch") as pool:
        pending: Future[U] | None = None
        for item in plan:
            upcoming = pool.submit(load, item)
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()


def l2_penalty(params: list[Tensor], weight: float) -> Tensor | float:
    if weight <= 0:
        return 0.0
    return weight / 2 * sum(p.pow(2).sum() for p in params)


class TrainingLoss(nn.Module):
    """One batch's objective as a module (what DDP and torch.compile wrap): (data loss, L2 penalties). The
    data loss is the one the model registers (qin/models `MODELS`: BCE, or SDCNv3's Tri-BCE)."""

    def __init__(self, model: nn.Module, loss: Loss, embedding_l2: float, net_l2: float) -> None:
        super().__init__()
        self.model, self.data_loss = model, loss
        self.embedding_l2, self.net_l2 = embedding_l2, net_l2
        self.tables, self.weights = embedding_tables(model), network_weights(model)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor | float]:
        penalty = l2_penalty(self.tables, self.embedding_l2) + l2_penalty(self.weights, self.net_l2)
        return self.data_loss(self.model, batch), penalty


class Trainer:
    """One optimisation step at a time, in the configured precision, over one or several processes."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        device: torch.device,
        procs: runtime.Processes | None = None,
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.procs = procs or runtime.Processes()
        self.dtype = runtime.resolve_precision(cfg.precision, device)
        self.params = list(model.parameters())
        # Weak scaling: the global batch is `world` times batch_size, and so is the learning rate.
        scale = self.procs.world if cfg.scaling == "weak" else 1
        self.optimizer = runtime.adam(self.params, cfg.learning_rate * scale, device)
        loss: nn.Module = TrainingLoss(model, model_loss(cfg.model.name), cfg.embedding_l2, cfg.net_l2)
        if self.procs.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            # BatchNorm statistics are synchronised before scoring (sync_buffers), not on every step.
            loss = DistributedDataParallel(loss, device_ids=ids, broadcast_buffers=False)
        self.loss = runtime.compiled(loss) if cfg.compile else loss

    def step(self, batch: Batch, share: float = 1.0) -> Tensor:
        """One update on `batch`; `share`: this process's rows times the processes over the global batch's
        rows (1 for one process), so that averaging the processes' gradients gives the global batch's.
        Returns the loss (data loss plus penalties) as a tensor, without waiting for it."""
        with runtime.compile_errors(self.cfg.compile), runtime.autocast(self.device, self.dtype):
            data, penalty = self.loss(batch)
        loss = data * share + penalty if share != 1.0 else data + penalty
        self.optimizer.zero_grad(set_to_none=True)
        with runtime.compile_errors(self.cfg.compile):
            loss.backward()
        nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip_norm, foreach=True)
        self.optimizer.step()
        return loss.detach()

    def all_mean(self, value: Tensor) -> float:
        """The mean over processes of a per-process value."""
        if self.procs.world > 1:
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value)
            value /= self.procs.world
        return float(value)

    def sync_buffers(self) -> None:
        """Give every process the persistent buffers (BatchNorm running statistics) of process 0."""
        if self.procs.world > 1:
            import torch.distributed as dist

            persistent = set(self.model.state_dict())
            for name, buf in self.model.named_buffers():
                if name in persistent:
                    dist.broadcast(buf, 0)

    def predict(self, scorer: Scorer, cols: dict[str, np.ndarray]) -> np.ndarray:
        """Scores of every row, each process scoring one contiguous shard; every process gets them all."""
        if self.procs.world == 1:
            return scorer.predict(cols)
        import torch.distributed as dist

        n = len(next(iter(cols.values())))
        per = -(-n // self.procs.world)
        mine = slice(min(n, self.procs.rank * per), min(n, (self.procs.rank + 1) * per))
        local = torch.from_numpy(scorer.predict({k: v[mine] for k, v in cols.items()}))
        on = self.device if self.device.type == "cuda" else torch.device("cpu")
        padded = torch.zeros(per, device=on)
        padded[: len(local)] = local.to(on)
        parts = [torch.empty(per, device=on) for _ in range(self.procs.world)]
        dist.all_gather(parts, padded)
        return torch.cat(parts).cpu().numpy()[:n]


def _rng_states(procs: runtime.Processes, device: torch.device) -> list[tuple[Tensor, Tensor | None]]:
    """The RNG states (CPU, CUDA) of every process, in rank order; every process takes part."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    state = (torch.get_rng_state(), cuda)
    if procs.world == 1:
        return [state]
    import torch.distributed as dist

    states: list[Any] = [None] * procs.world
    dist.all_gather_object(states, state)
    return states


def _set_rng_states(
    states: list[tuple[Tensor, Tensor | None]], procs: runtime.Processes, device: torch.device
) -> None:
    """This process's RNG states from `states` (process 0's where fewer processes wrote them)."""
    cpu, cuda = states[procs.rank] if procs.rank < len(states) else states[0]
    torch.set_rng_state(cpu)
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def _epoch_totals() -> dict[str, float]:
    return {"loss": 0.0, "steps": 0, "seconds": 0.0}


@dataclass
class TrainState:
    """Where a run is: all that a resumed run needs to continue as if it had never stopped.

    The weights, optimizer and scheduler are the run's own objects (held, not copied); the RNG states are
    every process's (torch's global generators, which draw the dropout masks) and `shuffle`, which draws
    each epoch's order of the train rows. `state_dict()` is the checkpoint, `load_state_dict()` resumes it.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    shuffle: torch.Generator
    procs: runtime.Processes
    device: torch.device
    epoch_shuffle: Tensor  # `shuffle`'s state when the epoch's order was drawn: a mid-epoch resume redraws it
    best: dict[str, Any]  # the best epoch so far: its valid "auc", "epoch" and weights ("state")
    epoch: int = 1  # the epoch under way, or the next one
    step: int = 0  # the epoch's first step not yet taken
    partial: dict[str, float] = field(default_factory=_epoch_totals)  # the epoch's loss, steps, seconds
    history: list[dict] = field(default_factory=list)  # one row of metrics per finished epoch
    stale: int = 0  # epochs since the best one

    @classmethod
    def start(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
        seed: int,
        procs: runtime.Processes,
        device: torch.device,
    ) -> TrainState:
        """Epoch 1, step 0: the initial weights count as the best so far (at AUC -1)."""
        shuffle = torch.Generator().manual_seed(seed)
        best = {"auc": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
        return cls(model, optimizer, scheduler, shuffle, procs, device, shuffle.get_state(), best)

    def epoch_order(self, n: int) -> Tensor:
        """The epoch's order of the `n` rows: drawn at its step 0, the same order again on a resume."""
        if self.step == 0:
            self.epoch_shuffle = self.shuffle.get_state()
            self.partial = _epoch_totals()
        self.shuffle.set_state(self.epoch_shuffle)
        return torch.randperm(n, generator=self.shuffle)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint. Every process must call it: it gathers their RNG states."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_states(self.procs, self.device),
            "shuffle": self.shuffle.get_state(),
            "epoch_shuffle": self.epoch_shuffle,
            "epoch": self.epoch,
            "step": self.step,
            "partial": self.partial,
            "history": self.history,
            "best": self.best,
            "stale": self.stale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_states(state["rng"], self.procs, self.device)
        self.shuffle.set_state(state["shuffle"])
        self.epoch_shuffle = state["epoch_shuffle"]
        self.epoch, self.step = state["epoch"], state["step"]
        self.partial, self.history = dict(state["partial"]), list(state["history"])
        self.best, self.stale = dict(state["best"]), state["stale"]


@dataclass
class _Run:
    """One training run: its settings, data, model and trainer (fixed once set up) and its TrainState."""

    cfg: TrainConfig
    procs: runtime.Processes
    device: torch.device
    feats: Features
    spec: FeatureSpec
    items: dict[str, np.ndarray]  # the item table (Features.items)
    max_len: int
    train_cols: dict[str, Tensor]
    valid: dict[str, np.ndarray]
    trainer: Trainer
    scorer: Scorer
    state: TrainState
    checkpoint: Path  # where the state is saved, under stage key `key`
    key: str | None
    saved_at: float = field(default_factory=time.monotonic)  # when the state was last saved (or the start)
    save_seconds: list[float] = field(default_factory=list)  # each checkpoint's time to save, this run

    @property
    def rows(self) -> int:
        return len(next(iter(self.train_cols.values())))

    @property
    def epoch_rows(self) -> int:
        """The rows an epoch trains on, all processes together (weak scaling: each its own shard)."""
        return self.rows * (self.procs.world if self.cfg.scaling == "weak" else 1)

    @property
    def steps_per_epoch(self) -> int:
        return (self.rows + self.cfg.batch_size - 1) // self.cfg.batch_size

    def info(self, msg: str, *args: Any) -> None:
        """Log on process 0 only."""
        if self.procs.main:
            log.info(msg, *args)


def train(
    features_dir: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path,
    cfg: TrainConfig,
    key: str | None = None,
) -> TrainSummary:
    """Train into `out_dir`. The checkpoint beside it is resumed only if it was written under stage key
    `key` (qin/runs/pipeline.py: `qin train` and flow runs pass theirs); without a key training starts
    afresh."""
    procs, device_name = runtime.start_processes(cfg.device)
    device = resolve_device(device_name)
    try:
        reuse = cfg.reuse_memory and device.type == "cpu"
        with runtime.reuse_freed_memory() if reuse else contextlib.nullcontext():
            result = _train(features_dir, out_dir, metrics_path, cfg, key, procs, device)
    except BaseException:  # an error, Ctrl-C or SIGTERM: leave without waiting for the others
        runtime.stop_processes(procs, failed=True)
        raise
    runtime.stop_processes(procs)
    return result


def _train(
    features_dir: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path,
    cfg: TrainConfig,
    key: str | None,
    procs: runtime.Processes,
    device: torch.device,
) -> TrainSummary:
    run = _setup(features_dir, cfg, procs, device, checkpoint_path(out_dir), key)
    _resume(run)
    _announce(run)
    while run.state.epoch <= cfg.epochs and run.state.stale < cfg.patience:
        meter = _train_epoch(run)
        row = _score(run, meter)
        _decide(run, row)
        _checkpoint(run)
    return _finish(run, out_dir, metrics_path)


def _setup(
    features_dir: str | Path,
    cfg: TrainConfig,
    procs: runtime.Processes,
    device: torch.device,
    checkpoint: Path,
    key: str | None,
) -> _Run:
    """The data, the model (the same initial weights in every process), its trainer, and the state at the
    start: epoch 1, step 0."""
    runtime.set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    feats = Features(features_dir)
    spec = feats.spec
    items = feats.items()
    model = build_model(cfg.model, spec, {k: torch.from_numpy(v) for k, v in items.items()}).to(device)
    if procs.rank:  # the same initial weights everywhere; each process its own dropout masks
        torch.manual_seed(cfg.seed + procs.rank)
    max_len = feats.history_len  # featurize.max_len's cut: the one history length
    train_cols = load_columns(feats, "train", device, cfg.data_placement, _shard(feats, cfg, procs))
    valid = {k: np.asarray(v) for k, v in feats.split("valid").items()}
    trainer = Trainer(model, cfg, device, procs)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        trainer.optimizer, mode="max", factor=0.5, patience=cfg.lr_patience - 1
    )
    scorer = Scorer(model, max_len, spec, device)
    state = TrainState.start(model, trainer.optimizer, scheduler, cfg.seed, procs, device)
    return _Run(cfg, procs, device, feats, spec, items, max_len, train_cols, valid, trainer,
                scorer, state, checkpoint, key)  # fmt: skip


def _shard(feats: Features, cfg: TrainConfig, procs: runtime.Processes) -> slice | None:
    """This process's training rows under weak scaling: a contiguous 1/world of them, the same count in
    every process (so every process takes the same steps; the last rows, fewer than world, are left out);
    None (all rows) otherwise."""
    if cfg.scaling != "weak" or procs.world == 1:
        return None
    per = feats.array(f"train_{feats.spec.history}").shape[0] // procs.world
    return slice(procs.rank * per, (procs.rank + 1) * per)


def _resume(run: _Run) -> None:
    """Continue from the checkpoint if it was written under the run's key; otherwise start afresh."""
    saved = _saved(run)
    if saved is None:
        return
    if run.key is not None and saved.get("key") == run.key:
        run.state.load_state_dict(saved["state"])
        run.info("resuming from %s: epoch %d, step %d of %d", run.checkpoint, run.state.epoch, run.state.step,
                 run.steps_per_epoch)  # fmt: skip
    else:
        run.info("ignoring %s: it belongs to other settings or data (key %s, not %s)", run.checkpoint,
                 saved.get("key"), run.key)  # fmt: skip


def _saved(run: _Run) -> dict[str, Any] | None:
    """The checkpoint as process 0 finds it (None: none), sent to every other process: all of them resume
    from the same state, or none does, even where the others see no file or another one."""
    saved = None
    if run.procs.main and run.checkpoint.exists():
        saved = torch.load(run.checkpoint, map_location="cpu", weights_only=False)
    if run.procs.world > 1:
        import torch.distributed as dist

        box = [saved]
        dist.broadcast_object_list(box, src=0)
        saved = box[0]
    return saved


def _announce(run: _Run) -> None:
    cfg, n_params = run.cfg, sum(p.numel() for p in run.trainer.params)
    precision = runtime.precision_name(run.trainer.dtype)
    weak = cfg.scaling == "weak" and run.procs.world > 1
    scaling = f", weak scaling: {run.rows} rows and {cfg.batch_size} a step per process" if weak else ""
    run.info("training %s (%d parameters) on %d rows, device %s, %s, %d process(es) of %d thread(s)%s%s",
             cfg.model.name, n_params, run.epoch_rows, run.device, precision, run.procs.world,
             torch.get_num_threads(), ", compiled" if cfg.compile else "", scaling)  # fmt: skip


def _train_epoch(run: _Run) -> runtime.ResourceMeter:
    """The epoch's steps from `state.step` on, with a checkpoint when one is due (`_checkpoint_due`); its
    loss, steps and seconds add up in `state.partial`. Returns the meter of the epoch's resource use
    (running). Host-held rows are gathered one batch ahead (`prefetch`); with `sync_debug` the steps run
    under torch.cuda.set_sync_debug_mode, lifted while a checkpoint is written."""
    cfg, state, procs, last = run.cfg, run.state, run.procs, run.steps_per_epoch
    held = _held(run.train_cols)
    perm = state.epoch_order(run.rows).to(held)  # where the rows are
    meter = runtime.ResourceMeter(run.device)
    run.trainer.model.train()
    # A progress bar in a terminal (the per-epoch log lines are what a flow run or a log file shows).
    in_terminal = procs.main and sys.stderr.isatty()
    bar = tqdm(total=last, initial=state.step, desc=f"epoch {state.epoch}/{cfg.epochs}", unit="step",
               leave=False, disable=not in_terminal, file=sys.stderr)  # fmt: skip
    loss_sum = torch.zeros((), device=run.device)  # the steps' losses since the last flush, on the device
    pin = through_pinned_memory(held, run.device)

    def load(step: int) -> tuple[int, dict[str, Tensor] | None, float]:
        rows = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        # BatchNorm needs 2 rows per process: a last batch smaller than that is left out (by every process).
        if len(rows) < (2 if cfg.scaling == "weak" else 2 * procs.world):
            return step, None, 0.0
        if cfg.scaling == "weak":  # a batch of this process's own shard, as large as every other's
            return step, host_rows(run.train_cols, rows, pin), 1.0
        mine = rows[procs.rank :: procs.world]  # this process's part of the global batch
        return step, host_rows(run.train_cols, mine, pin), len(mine) * procs.world / len(rows)

    t0 = time.perf_counter()
    sync_check = runtime.SyncDebug(cfg.sync_debug, run.device)
    with sync_check:
        for step, rows, share in prefetch(range(state.step, last), load, ahead=pin):
            bar.update(1)
            if rows is not None:
                loss_sum += run.trainer.step(on_device(rows, run.device), share)
                state.partial["steps"] += 1
            state.step = step + 1
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < last:
                with sync_check.lifted():
                    if _checkpoint_due(run):
                        t0 = _flush(run, loss_sum, t0)
                        _checkpoint(run)
    _flush(run, loss_sum, t0)
    bar.close()
    return meter


def _checkpoint_due(run: _Run) -> bool:
    """Whether `checkpoint_seconds` have passed since the last checkpoint: process 0 looks at its clock and
    tells the others (one broadcast each `checkpoint_every` steps), so that every process saves together."""
    due = time.monotonic() - run.saved_at >= run.cfg.checkpoint_seconds
    if run.procs.world > 1:
        import torch.distributed as dist

        flag = torch.tensor(int(due), device=run.device)
        dist.broadcast(flag, 0)
        due = bool(flag)
    return due


def _flush(run: _Run, loss_sum: Tensor, t0: float) -> float:
    """Add the losses summed on the device (their mean over processes) and the seconds since `t0` to the
    epoch's; returns the new t0."""
    run.state.partial["loss"] += run.trainer.all_mean(loss_sum)
    loss_sum.zero_()
    run.state.partial["seconds"] += time.perf_counter() - t0
    return time.perf_counter()


def _score(run: _Run, meter: runtime.ResourceMeter) -> dict[str, Any]:
    """Score valid with the epoch's weights (every process, the same BatchNorm statistics); the epoch's
    row of the history."""
    state, n, epochs = run.state, run.epoch_rows, run.cfg.epochs
    run.trainer.sync_buffers()
    probs = run.trainer.predict(run.scorer, run.valid)  # puts the model in eval mode
    auc, ll = roc_auc(run.valid["label"], probs), log_loss(run.valid["label"], probs)
    lr = run.trainer.optimizer.param_groups[0]["lr"]
    train_loss = state.partial["loss"] / max(state.partial["steps"], 1)
    seconds = state.partial["seconds"]
    run.info("epoch %d/%d  loss %.4f  valid_auc %.4f  valid_logloss %.4f  lr %.2g  %.1fs (%.0f samples/s)",
             state.epoch, epochs, train_loss, auc, ll, lr, seconds, n / max(seconds, 1e-9))  # fmt: skip
    return {
        "epoch": state.epoch,
        "train_loss": train_loss,
        "valid_auc": auc,
        "valid_logloss": ll,
        "learning_rate": lr,
        "train_steps": int(state.partial["steps"]),
        "train_seconds": seconds,
        "train_samples_per_second": n / seconds if seconds > 0 else 0.0,
        **meter.read(),  # this process, over the epoch's training and validation
    }


def _decide(run: _Run, row: dict[str, Any]) -> None:
    """Record the epoch; halve the learning rate when valid AUC stalls, keep the best weights, count the
    epochs without a gain (training stops at `patience`), and move on to the next epoch."""
    state, auc = run.state, row["valid_auc"]
    state.history.append(row)
    state.scheduler.step(auc)
    if auc > state.best["auc"]:
        state.best = {"auc": auc, "epoch": state.epoch, "state": copy.deepcopy(state.model.state_dict())}
        state.stale = 0
    else:
        state.stale += 1
    if state.stale >= run.cfg.patience:
        run.info("early stop: no valid AUC gain for %d epochs", state.stale)
    state.epoch, state.step = state.epoch + 1, 0


def _checkpoint(run: _Run) -> None:
    """Save the state under the run's key; process 0 writes it, atomically (a temporary file, renamed)."""
    t = time.perf_counter()
    state = run.state.state_dict()  # every process takes part
    if run.procs.main:
        tmp = run.checkpoint.with_name(run.checkpoint.name + ".tmp")
        torch.save({"key": run.key, "state": state}, tmp)
        os.replace(tmp, run.checkpoint)
    run.saved_at = time.monotonic()
    run.save_seconds.append(time.perf_counter() - t)


def _finish(run: _Run, out_dir: str | Path, metrics_path: str | Path) -> TrainSummary:
    """Back to the best epoch's weights; process 0 writes the package and metrics, drops the checkpoint."""
    cfg, state, model = run.cfg, run.state, run.trainer.model
    model.load_state_dict(state.best["state"])
    model_hash = None
    if run.procs.main:
        meta = {"best_epoch": state.best["epoch"], "valid_auc": state.best["auc"],
                "sources": run.feats.manifest["sources"]}  # fmt: skip
        model_hash = save_package(out_dir, model, cfg.model, run.spec, run.max_len, run.items, meta)
    summary = TrainSummary(
        model=cfg.model.name,
        parameters=sum(p.numel() for p in model.parameters()),
        device=str(run.device),
        precision=runtime.precision_name(run.trainer.dtype),
        processes=run.procs.world,
        best_epoch=state.best["epoch"],
        best_valid_auc=state.best["auc"],
        history=state.history,
        checkpoints={"count": len(run.save_seconds), "seconds": round(sum(run.save_seconds), 3)},
        model_hash=model_hash,
    )
    if run.procs.main:
        write_json(metrics_path, summary.to_json())
        run.checkpoint.unlink(missing_ok=True)
    return summary
