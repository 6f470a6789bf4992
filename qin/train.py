"""The `train` stage: fit a model on featurized arrays, keep the best epoch by valid AUC, write a package.

Data path: the featurized arrays stay memory-mapped (nothing is copied into RAM: the full-size history,
3.6M x 64 int32, lives in the page cache only) and each batch is gathered from them by index
(`index_select`): no per-batch pandas and no Python loop over rows. On CUDA the arrays are copied to the GPU
once when they fit in a quarter of its free memory; otherwise each batch is gathered on the CPU into pinned
memory and copied asynchronously. The item table lives inside the model as buffers, so each distinct item of
a batch (target or history) is encoded once and gathered in one indexing operation (qin/models/blocks.py).

Speed settings (TrainConfig; qin/runtime.py): bf16 autocast (`precision`), a foreach (CPU) or fused (CUDA)
Adam, optional `torch.compile` (`compile`), CPU `threads`, and on CPU keeping the memory a step frees for the
next (`reuse_memory`). None changes the recipe.

Several processes: `torchrun --nproc_per_node=N -m qin train ...` (gloo on CPU, nccl on CUDA, one GPU per
process). Every process draws the same shuffling and takes rows r, r+N, r+2N, ... of each global batch of
`batch_size` rows, so the global batch, the steps and the learning-rate schedule are those of one process;
DistributedDataParallel averages the gradients, each process's loss weighted by its share of the rows, so
the update is the one of the whole batch. BatchNorm normalises over each process's rows (no SyncBatchNorm on
CPU) and the running statistics of process 0 are kept. Process 0 writes the checkpoints, the package and the
metrics; valid is scored in shards and gathered, so every process takes the same early-stopping decisions.

Recipe (the authors'): Adam; L2 on the embedding tables, separate from the network's; gradient-norm
clipping; the learning rate halves when valid AUC stalls (lr_patience epochs) and training stops after
`patience` epochs without a gain; the best epoch's weights are kept.

Resumable: every `checkpoint_every` steps and at each epoch end the full state (weights, optimizer,
scheduler, RNG states of every process, the epoch's shuffling, history, best weights) is saved beside the
output, under the stage key (qin/pipeline.py) of the run that wrote it. A rerun with the same key (the same
settings but the speed-only ones, the same features) continues from there, mid-epoch included, and reaches
the same result as an uninterrupted run. The checkpoint is removed once the package is written.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from qin import runtime
from qin.config import TrainConfig
from qin.featurize import Features
from qin.inference import Scorer, resolve_device, save_package
from qin.io import write_json
from qin.losses import bce, tri_bce
from qin.metrics import log_loss, roc_auc
from qin.models import build_model
from qin.models.blocks import Batch, FeatureSpec, embedding_tables, network_weights

log = logging.getLogger(__name__)


def checkpoint_path(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.checkpoint.pt"


def load_columns(feats: Features, split: str, max_len: int, device: torch.device) -> dict[str, Tensor]:
    """A split's columns as tensors over the memory-mapped arrays, the history cut to its last max_len items.

    On CUDA they are copied to the GPU when they fit in a quarter of its free memory; otherwise they stay
    memory-mapped and `gather` stages each batch through pinned memory.
    """
    cols = {k: torch.from_numpy(v) for k, v in feats.split(split, copy_on_write=True).items()}
    cols["item_seq"] = cols["item_seq"][:, -max_len:]  # a view: nothing is read yet
    if device.type == "cuda":
        need = sum(t.numel() * t.element_size() for t in cols.values())
        if need < torch.cuda.mem_get_info(device)[0] / 4:
            return {k: v.to(device).contiguous() for k, v in cols.items()}
        log.info("%s: %.1f GB do not fit on %s; batches go through pinned memory", split, need / 1e9, device)
    return cols


def gather(cols: dict[str, Tensor], idx: Tensor, device: torch.device) -> Batch:
    """The rows `idx` of every column (one index_select each), on `device`."""
    held = cols["item_id"].device
    rows = {k: v.index_select(0, idx.to(held)) for k, v in cols.items()}
    if held != device:
        rows = {k: v.pin_memory().to(device, non_blocking=True) for k, v in rows.items()}
    return Batch(**rows)


def l2_penalty(params: list[Tensor], weight: float) -> Tensor | float:
    if weight <= 0:
        return 0.0
    return weight / 2 * sum(p.pow(2).sum() for p in params)


def batch_loss(model: nn.Module, batch: Batch) -> Tensor:
    """The model's training loss: Tri-BCE for models with side logits (SDCNv3), else BCE."""
    assert batch.label is not None
    side_logits = getattr(model, "side_logits", None)
    if side_logits is not None and getattr(model, "shallow", None) is not None:
        fused, deep, shallow = side_logits(batch)
        return tri_bce(fused, deep, shallow, batch.label)
    return bce(model(batch), batch.label)


class TrainingLoss(nn.Module):
    """One batch's objective as a module (what DDP and torch.compile wrap): (data loss, L2 penalties)."""

    def __init__(self, model: nn.Module, embedding_l2: float, net_l2: float) -> None:
        super().__init__()
        self.model = model
        self.embedding_l2, self.net_l2 = embedding_l2, net_l2
        self.tables, self.weights = embedding_tables(model), network_weights(model)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor | float]:
        penalty = l2_penalty(self.tables, self.embedding_l2) + l2_penalty(self.weights, self.net_l2)
        return batch_loss(self.model, batch), penalty


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
        self.optimizer = runtime.adam(self.params, cfg.learning_rate, device)
        loss: nn.Module = TrainingLoss(model, cfg.embedding_l2, cfg.net_l2)
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

        n = len(cols["item_id"])
        per = -(-n // self.procs.world)
        mine = slice(min(n, self.procs.rank * per), min(n, (self.procs.rank + 1) * per))
        local = torch.from_numpy(scorer.predict({k: v[mine] for k, v in cols.items()}))
        on = self.device if self.device.type == "cuda" else torch.device("cpu")
        padded = torch.zeros(per, device=on)
        padded[: len(local)] = local.to(on)
        parts = [torch.empty(per, device=on) for _ in range(self.procs.world)]
        dist.all_gather(parts, padded)
        return torch.cat(parts).cpu().numpy()[:n]

    def rng_states(self) -> list[tuple[Tensor, Tensor | None]]:
        """The RNG states (CPU, CUDA) of every process, in rank order."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        state = (torch.get_rng_state(), cuda)
        if self.procs.world == 1:
            return [state]
        import torch.distributed as dist

        states: list[Any] = [None] * self.procs.world
        dist.all_gather_object(states, state)
        return states

    def set_rng_state(self, states: list[tuple[Tensor, Tensor | None]]) -> None:
        cpu, cuda = states[self.procs.rank] if self.procs.rank < len(states) else states[0]
        torch.set_rng_state(cpu)
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.device)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(
    features_dir: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path,
    cfg: TrainConfig,
    key: str | None = None,
) -> dict:
    """Train into `out_dir`. The checkpoint beside it is resumed only if it was written under stage key
    `key` (qin/pipeline.py: `qin train` and flow runs pass theirs); without a key training starts afresh."""
    procs, device_name = runtime.start_processes(cfg.device)
    device = resolve_device(device_name)
    try:
        reuse = cfg.reuse_memory and device.type == "cpu"
        with runtime.reuse_freed_memory() if reuse else contextlib.nullcontext():
            return _train(features_dir, out_dir, metrics_path, cfg, key, procs, device)
    finally:
        runtime.stop_processes(procs)


def _train(
    features_dir: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path,
    cfg: TrainConfig,
    key: str | None,
    procs: runtime.Processes,
    device: torch.device,
) -> dict:
    info: Callable[..., None] = log.info if procs.main else (lambda *args, **kwargs: None)
    runtime.set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    feats = Features(features_dir)
    spec = FeatureSpec(n_items=feats.manifest["n_items"], n_tags=feats.manifest["n_tags"])
    item_tags = np.array(feats.array("item_tags"))
    item_emb = np.array(feats.array("item_emb"))
    model = build_model(cfg.model, spec, torch.from_numpy(item_tags), torch.from_numpy(item_emb)).to(device)
    if procs.rank:  # the same initial weights everywhere; each process its own dropout masks
        torch.manual_seed(cfg.seed + procs.rank)
    n_params = sum(p.numel() for p in model.parameters())
    stored_len = int(feats.array("train_item_seq").shape[1])
    max_len = min(cfg.max_len or stored_len, stored_len)
    train_cols = load_columns(feats, "train", max_len, device)
    valid = {k: np.asarray(v) for k, v in feats.split("valid").items()}
    valid["item_seq"] = valid["item_seq"][:, -max_len:]
    n = len(train_cols["item_id"])
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size

    trainer = Trainer(model, cfg, device, procs)
    precision = runtime.precision_name(trainer.dtype)
    optimizer = trainer.optimizer
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.5, patience=cfg.lr_patience - 1
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    scorer = Scorer(model, max_len, spec.n_items, device)

    ckpt_path = checkpoint_path(out_dir)
    history: list[dict] = []
    best: dict[str, Any] = {"auc": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    stale, start_epoch, start_step = 0, 1, 0
    epoch_gen_state = gen.get_state()
    partial = {"loss": 0.0, "steps": 0, "seconds": 0.0}
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if key is not None and ck.get("key") == key:
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            trainer.set_rng_state(ck["rng"])
            gen.set_state(ck["gen_state"])
            history, best, stale, partial = ck["history"], ck["best"], ck["stale"], ck["partial"]
            start_epoch, start_step, epoch_gen_state = ck["epoch"], ck["step"], ck["epoch_gen_state"]
            info("resuming from %s: epoch %d, step %d of %d", ckpt_path, start_epoch, start_step,
                 steps_per_epoch)  # fmt: skip
        else:
            info("ignoring %s: it belongs to other settings or data (key %s, not %s)", ckpt_path,
                 ck.get("key"), key)  # fmt: skip

    loss_sum = torch.zeros((), device=device)

    def flush_loss() -> None:
        """Add the steps' losses (summed on the device, mean over processes) to the epoch's."""
        partial["loss"] += trainer.all_mean(loss_sum)
        loss_sum.zero_()

    def checkpoint(epoch: int, step: int) -> None:
        rng = trainer.rng_states()  # every process takes part
        if not procs.main:
            return
        _save_checkpoint(
            ckpt_path,
            {
                "key": key,
                "epoch": epoch,
                "step": step,
                "epoch_gen_state": epoch_gen_state,
                "gen_state": gen.get_state(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng,
                "history": history,
                "best": best,
                "stale": stale,
                "partial": partial,
            },
        )

    info("training %s (%d parameters) on %d rows, device %s, %s, %d process(es) of %d thread(s)%s",
         cfg.model.name, n_params, n, device, precision, procs.world, torch.get_num_threads(),
         ", compiled" if cfg.compile else "")  # fmt: skip
    stopped = stale >= cfg.patience
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stopped:
            break
        if epoch != start_epoch or start_step == 0:
            epoch_gen_state = gen.get_state()
            partial = {"loss": 0.0, "steps": 0, "seconds": 0.0}
        gen.set_state(epoch_gen_state)
        perm = torch.randperm(n, generator=gen).to(train_cols["item_id"].device)  # where the rows are
        first = start_step if epoch == start_epoch else 0
        meter = runtime.ResourceMeter(device)
        model.train()
        # A progress bar in a terminal (the per-epoch log lines are what a flow run or a log file shows).
        in_terminal = procs.main and sys.stderr.isatty()
        bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch}/{cfg.epochs}", unit="step",
                   leave=False, disable=not in_terminal, file=sys.stderr)  # fmt: skip
        t0 = time.perf_counter()
        for step in range(first, steps_per_epoch):
            bar.update(1)
            rows = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            # BatchNorm needs 2 rows per process: a last global batch smaller than that is left out.
            if len(rows) >= 2 * procs.world:
                mine = rows[procs.rank :: procs.world]
                share = len(mine) * procs.world / len(rows)
                loss_sum += trainer.step(gather(train_cols, mine, device), share)
                partial["steps"] += 1
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                flush_loss()
                partial["seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                checkpoint(epoch, step + 1)
        flush_loss()
        bar.close()
        seconds = partial["seconds"] + time.perf_counter() - t0
        trainer.sync_buffers()
        probs = trainer.predict(scorer, valid)  # puts the model in eval mode
        auc, ll = roc_auc(valid["label"], probs), log_loss(valid["label"], probs)
        lr = optimizer.param_groups[0]["lr"]
        train_loss = partial["loss"] / max(partial["steps"], 1)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "valid_auc": auc,
                "valid_logloss": ll,
                "learning_rate": lr,
                "train_seconds": seconds,
                "train_samples_per_second": n / seconds if seconds > 0 else 0.0,
                **meter.read(),  # this process, over the epoch's training and validation
            }
        )
        info("epoch %d/%d  loss %.4f  valid_auc %.4f  valid_logloss %.4f  lr %.2g  %.1fs (%.0f samples/s)",
             epoch, cfg.epochs, train_loss, auc, ll, lr, seconds, n / max(seconds, 1e-9))  # fmt: skip
        scheduler.step(auc)
        if auc > best["auc"]:
            best, stale = {"auc": auc, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}, 0
        else:
            stale += 1
        stopped = stale >= cfg.patience
        if stopped:
            info("early stop: no valid AUC gain for %d epochs", stale)
        checkpoint(epoch + 1, 0)

    model.load_state_dict(best["state"])
    summary = {
        "model": cfg.model.name,
        "parameters": n_params,
        "device": str(device),
        "precision": precision,
        "processes": procs.world,
        "best_epoch": best["epoch"],
        "best_valid_auc": best["auc"],
        "history": history,
    }
    if procs.main:
        meta = {"best_epoch": best["epoch"], "valid_auc": best["auc"], "sources": feats.manifest["sources"]}
        summary["model_hash"] = save_package(
            out_dir, model, cfg.model, spec, max_len, item_tags, item_emb, meta
        )
        write_json(metrics_path, summary)
        ckpt_path.unlink(missing_ok=True)
    return summary
