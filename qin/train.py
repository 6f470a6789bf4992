"""The `train` stage: fit a model on featurized arrays, keep the best epoch by valid AUC, write a package.

Batches are gathered by index from tensors held in memory (on the GPU when training there): no per-batch
pandas and no Python loop over rows. The item table lives inside the model as a buffer, so the target's
and the whole history's item features are gathered in one indexing operation.

Recipe (the authors'): Adam; L2 on the embedding tables, separate from the network's; gradient-norm
clipping; the learning rate halves when valid AUC stalls (lr_patience epochs) and training stops after
`patience` epochs without a gain; the best epoch's weights are kept.

Resumable: every `checkpoint_every` steps and at each epoch end the full state (weights, optimizer,
scheduler, RNG states, the epoch's shuffling, history, best weights) is saved beside the output. A rerun
with the same settings and data continues from there, mid-epoch included, and reaches the same result as an
uninterrupted run. The checkpoint is removed once the package is written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qin.config import TrainConfig
from qin.featurize import Features
from qin.inference import Scorer, resolve_device, save_package
from qin.io import write_json
from qin.losses import bce, tri_bce
from qin.metrics import log_loss, roc_auc
from qin.models import Batch, FeatureSpec, build_model
from qin.models.blocks import embedding_tables, network_weights

log = logging.getLogger(__name__)


def checkpoint_path(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.checkpoint.pt"


def _to_tensors(cols: dict[str, np.ndarray], device: torch.device, max_len: int) -> dict[str, Tensor]:
    # np.array copies the memory-mapped file into RAM (and makes it writable, as torch wants).
    out = {k: torch.from_numpy(np.array(v)) for k, v in cols.items()}
    out["item_seq"] = out["item_seq"][:, -max_len:].contiguous()
    return {k: v.to(device) for k, v in out.items()}


def _batch(cols: dict[str, Tensor], idx: Tensor) -> Batch:
    return Batch(
        item_seq=cols["item_seq"][idx],
        likes_level=cols["likes_level"][idx],
        views_level=cols["views_level"][idx],
        item_id=cols["item_id"][idx],
        label=cols["label"][idx],
    )


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


def _run_key(cfg: TrainConfig, feats: Features) -> str:
    """What a checkpoint must match to be resumed: the settings (but the device) and the data."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "device"}
    blob = json.dumps([settings, feats.manifest["sources"], feats.manifest["max_len"]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(features_dir: str | Path, out_dir: str | Path, metrics_path: str | Path, cfg: TrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    feats = Features(features_dir)
    spec = FeatureSpec(n_items=feats.manifest["n_items"], n_tags=feats.manifest["n_tags"])
    item_tags = np.array(feats.array("item_tags"))
    item_emb = np.array(feats.array("item_emb"))
    model = build_model(cfg.model, spec, torch.from_numpy(item_tags), torch.from_numpy(item_emb)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    stored_len = int(feats.array("train_item_seq").shape[1])
    max_len = min(cfg.max_len or stored_len, stored_len)
    train_cols = _to_tensors(feats.split("train"), device, max_len)
    valid = {k: np.asarray(v) for k, v in feats.split("valid").items()}
    valid["item_seq"] = valid["item_seq"][:, -max_len:]
    n = len(train_cols["item_id"])
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.5, patience=cfg.lr_patience - 1
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    scorer = Scorer(model, max_len, spec.n_items, device)
    emb_params, net_params = embedding_tables(model), network_weights(model)

    ckpt_path = checkpoint_path(out_dir)
    key = _run_key(cfg, feats)
    history: list[dict] = []
    best: dict[str, Any] = {"auc": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    stale, start_epoch, start_step = 0, 1, 0
    epoch_gen_state = gen.get_state()
    partial = {"loss": 0.0, "steps": 0, "seconds": 0.0}
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("key") == key:
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            torch.set_rng_state(ck["torch_rng"])
            gen.set_state(ck["gen_state"])
            history, best, stale, partial = ck["history"], ck["best"], ck["stale"], ck["partial"]
            start_epoch, start_step, epoch_gen_state = ck["epoch"], ck["step"], ck["epoch_gen_state"]
            log.info(
                "resuming from %s: epoch %d, step %d of %d",
                ckpt_path,
                start_epoch,
                start_step,
                steps_per_epoch,
            )
        else:
            log.info("ignoring %s: it belongs to other settings or data", ckpt_path)

    def checkpoint(epoch: int, step: int) -> None:
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
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "best": best,
                "stale": stale,
                "partial": partial,
            },
        )

    log.info("training %s (%d parameters) on %d rows, device %s", cfg.model.name, n_params, n, device)
    stopped = stale >= cfg.patience
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stopped:
            break
        if epoch != start_epoch or start_step == 0:
            epoch_gen_state = gen.get_state()
            partial = {"loss": 0.0, "steps": 0, "seconds": 0.0}
        gen.set_state(epoch_gen_state)
        perm = torch.randperm(n, generator=gen).to(device)
        first = start_step if epoch == start_epoch else 0
        model.train()
        t0 = time.perf_counter()
        for step in range(first, steps_per_epoch):
            batch = _batch(train_cols, perm[step * cfg.batch_size : (step + 1) * cfg.batch_size])
            loss = batch_loss(model, batch)
            loss = loss + l2_penalty(emb_params, cfg.embedding_l2) + l2_penalty(net_params, cfg.net_l2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            optimizer.step()
            partial["loss"] += float(loss.detach())
            partial["steps"] += 1
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                partial["seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                checkpoint(epoch, step + 1)
        seconds = partial["seconds"] + time.perf_counter() - t0
        probs = scorer.predict(valid)  # puts the model in eval mode
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
            }
        )
        log.info(
            "epoch %d/%d  loss %.4f  valid_auc %.4f  valid_logloss %.4f  lr %.2g  %.1fs (%.0f samples/s)",
            epoch, cfg.epochs, train_loss, auc, ll, lr, seconds, n / max(seconds, 1e-9),
        )  # fmt: skip
        scheduler.step(auc)
        if auc > best["auc"]:
            best, stale = {"auc": auc, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}, 0
        else:
            stale += 1
        stopped = stale >= cfg.patience
        if stopped:
            log.info("early stop: no valid AUC gain for %d epochs", stale)
        checkpoint(epoch + 1, 0)

    model.load_state_dict(best["state"])
    meta = {"best_epoch": best["epoch"], "valid_auc": best["auc"], "sources": feats.manifest["sources"]}
    model_hash = save_package(out_dir, model, cfg.model, spec, max_len, item_tags, item_emb, meta)
    summary = {
        "model": cfg.model.name,
        "parameters": n_params,
        "device": str(device),
        "best_epoch": best["epoch"],
        "best_valid_auc": best["auc"],
        "model_hash": model_hash,
        "history": history,
    }
    write_json(metrics_path, summary)
    ckpt_path.unlink(missing_ok=True)
    return summary
