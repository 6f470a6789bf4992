"""Losses (kept out of the models, which return logits), by the name a model registers (qin/models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from qin.models import model

if TYPE_CHECKING:
    from qin.models.blocks import Batch


def bce(logits: Tensor, labels: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, labels)


def tri_bce(fused: Tensor, deep: Tensor, shallow: Tensor, labels: Tensor) -> Tensor:
    """SDCNv3's Tri-BCE: BCE(fused) + w_d BCE(deep) + w_s BCE(shallow), w = max(0, BCE(side) - BCE(fused)).

    The weights are treated as constants: a side network is pushed only while it trails the fused one.
    """
    loss = bce(fused, labels)
    total = loss
    for side in (deep, shallow):
        side_loss = bce(side, labels)
        total = total + (side_loss - loss).clamp(min=0).detach() * side_loss
    return total


def bce_loss(model: nn.Module, batch: Batch) -> Tensor:
    """BCE on the model's logits."""
    assert batch.label is not None
    return bce(model(batch), batch.label)


def tri_bce_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Tri-BCE on the model's (fused, deep, shallow) logits: a model that registers it has `side_logits`."""
    assert batch.label is not None
    fused, deep, shallow = model.side_logits(batch)  # type: ignore[operator]
    return tri_bce(fused, deep, shallow, batch.label)


Loss = Callable[[nn.Module, "Batch"], Tensor]
LOSSES: dict[str, Loss] = {"bce": bce_loss, "tri_bce": tri_bce_loss}


def model_loss(name: str) -> Loss:
    """The loss model `name` trains with: the one its registry entry declares."""
    return LOSSES[model(name).loss]
