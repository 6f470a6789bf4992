"""The `train` stage: fit a model on featurized arrays, keep the best epoch by valid AUC, write a package.

Batches are gathered by index from tensors held in memory (on the GPU when training there): no per-batch
pandas and no Python loop over rows. The item table lives inside the model as a buffer, so the target's
and the whole history's item features are gathered in one indexing operation.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from qin.config import TrainConfig
from qin.featurize import Features
from qin.inference import Scorer, resolve_device, save_package
from qin.io import write_json
from qin.metrics import log_loss, roc_auc
from qin.models import Batch, FeatureSpec, build_model

log = logging.getLogger(__name__)


def _to_tensors(cols: dict[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    # np.array copies the memory-mapped file into RAM (and makes it writable, as torch wants).
    return {k: torch.from_numpy(np.array(v)).to(device) for k, v in cols.items()}


def _batch(cols: dict[str, Tensor], idx: Tensor) -> Batch:
    return Batch(
        item_seq=cols["item_seq"][idx],
        likes_level=cols["likes_level"][idx],
        views_level=cols["views_level"][idx],
        item_id=cols["item_id"][idx],
        label=cols["label"][idx],
    )


def embedding_penalty(model: nn.Module, weight: float) -> Tensor | float:
    if weight <= 0:
        return 0.0
    tables = model.embedding_tables()  # type: ignore[operator]
    return weight / 2 * sum(t.pow(2).sum() for t in tables)


def train(features_dir: str | Path, out_dir: str | Path, metrics_path: str | Path, cfg: TrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    feats = Features(features_dir)
    spec = FeatureSpec(n_items=feats.manifest["n_items"], n_tags=feats.manifest["n_tags"])
    item_tags = np.array(feats.array("item_tags"))
    item_emb = np.array(feats.array("item_emb"))
    model = build_model(cfg.model, spec, torch.from_numpy(item_tags), torch.from_numpy(item_emb)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    train_cols = _to_tensors(feats.split("train"), device)
    valid = feats.split("valid")
    n = len(train_cols["item_id"])
    max_len = int(train_cols["item_seq"].shape[1])
    log.info("training %s (%d parameters) on %d rows, device %s", cfg.model.name, n_params, n, device)

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=0)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    scorer = Scorer(model, max_len, spec.n_items, device)

    history: list[dict] = []
    best_auc, best_epoch, best_state, stale = -1.0, 0, copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        total, steps = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            batch = _batch(train_cols, perm[start : start + cfg.batch_size])
            logits = model(batch)
            loss = loss_fn(logits, batch.label) + embedding_penalty(model, cfg.embedding_l2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            optimizer.step()
            total += float(loss.detach())
            steps += 1
        train_seconds = time.perf_counter() - t0
        probs = scorer.predict(valid)  # puts the model in eval mode
        auc, ll = roc_auc(valid["label"], probs), log_loss(valid["label"], probs)
        lr = optimizer.param_groups[0]["lr"]
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / max(steps, 1),
                "valid_auc": auc,
                "valid_logloss": ll,
                "learning_rate": lr,
                "train_seconds": train_seconds,
                "train_samples_per_second": n / train_seconds,
            }
        )
        log.info(
            "epoch %d/%d  loss %.4f  valid_auc %.4f  valid_logloss %.4f  lr %.2g  %.1fs (%.0f samples/s)",
            epoch,
            cfg.epochs,
            total / max(steps, 1),
            auc,
            ll,
            lr,
            train_seconds,
            n / train_seconds,
        )
        scheduler.step(auc)
        if auc > best_auc:
            best_auc, best_epoch, stale = auc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                log.info("early stop: no valid AUC gain for %d epochs", stale)
                break

    model.load_state_dict(best_state)
    meta = {"best_epoch": best_epoch, "valid_auc": best_auc, "sources": feats.manifest["sources"]}
    model_hash = save_package(out_dir, model, cfg.model, spec, max_len, item_tags, item_emb, meta)
    summary = {
        "model": cfg.model.name,
        "parameters": n_params,
        "device": str(device),
        "best_epoch": best_epoch,
        "best_valid_auc": best_auc,
        "model_hash": model_hash,
        "history": history,
    }
    write_json(metrics_path, summary)
    return summary
