"""Losses (kept out of the models, which return logits)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


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
