"""Loss pieces several algorithms share."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def masked_cross_entropy(logits: Tensor, targets: Tensor, weight: Tensor) -> Tensor:
    """Per-sample weighted cross-entropy, normalised by the whole batch (FixMatch's 1/(mu*B)), not by the kept count.

    `targets` are class indices (hard labels) or probability rows (soft labels).
    """
    if targets.dtype.is_floating_point:
        per_sample = -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    else:
        per_sample = F.cross_entropy(logits.float(), targets, reduction="none")
    return (per_sample * weight).sum() / max(1, logits.shape[0])


def linear_ramp(progress: float, length: float) -> float:
    """0 -> 1 linearly over the first `length` fraction of training (1 at once when length is 0)."""
    if length <= 0:
        return 1.0
    return min(1.0, max(0.0, progress / length))


def sigmoid_ramp(progress: float, length: float) -> float:
    """exp(-5 (1 - t)^2) ramp-up over the first `length` fraction of training (Laine & Aila 2017)."""
    if length <= 0:
        return 1.0
    t = min(1.0, max(0.0, progress / length))
    return math.exp(-5.0 * (1.0 - t) ** 2)
