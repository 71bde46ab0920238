"""Loss pieces several algorithms share."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """p^(1/T), renormalised (MixMatch, ReMixMatch); T = 1 leaves p unchanged, T -> 0 approaches one-hot."""
    powered = probs.float() ** (1.0 / temperature)
    return powered / powered.sum(-1, keepdim=True)


def softmax_mse(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Per-sample squared distance between softmax(logits) and the target probabilities, averaged over classes
    (Mean Teacher's `softmax_mse_loss` / C, the Pi-model's and MixMatch's consistency)."""
    return ((logits.float().softmax(-1) - target_probs.float()) ** 2).mean(-1)


def kl_divergence(target_probs: Tensor, logits: Tensor) -> Tensor:
    """Per-sample KL(target || softmax(logits)), summed over classes; zero-probability targets contribute 0.

    The target is the fixed (stop-gradient) side; gradients reach only `logits`.
    """
    return F.kl_div(F.log_softmax(logits.float(), -1), target_probs.float(), reduction="none").sum(-1)


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Per-sample cross-entropy H(target, softmax(logits)) for probability targets."""
    return -(target_probs.float() * F.log_softmax(logits.float(), -1)).sum(-1)


def entropy(logits: Tensor) -> Tensor:
    """Per-sample entropy of softmax(logits) (entropy minimisation, Grandvalet & Bengio 2005)."""
    log_p = F.log_softmax(logits.float(), -1)
    return -(log_p.exp() * log_p).sum(-1)


def mixup(x: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor, float]:
    """MixMatch's MixUp: lam ~ Beta(alpha, alpha), lam' = max(lam, 1 - lam), mixed with a random permutation of
    the same batch, so each mixed row stays closer to its own input. Returns (mixed x, mixed y, lam')."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(x.shape[0], device=x.device)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm], lam


def tsa_threshold(schedule: str, progress: float, num_classes: int) -> float:
    """UDA's training-signal annealing threshold eta_t = alpha_t (1 - 1/K) + 1/K; labeled examples whose
    true-class probability exceeds it are left out of the supervised loss. 'none' gives 1 (keep all)."""
    t = min(1.0, max(0.0, progress))
    if schedule == "none":
        return 1.0
    if schedule == "linear":
        alpha = t
    elif schedule == "log":
        alpha = 1.0 - math.exp(-5.0 * t)
    elif schedule == "exp":
        alpha = math.exp(5.0 * (t - 1.0))
    else:
        raise ValueError(f"unknown TSA schedule {schedule!r}")
    return alpha * (1.0 - 1.0 / num_classes) + 1.0 / num_classes


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel or torch.compile wrapper."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@contextmanager
def no_dropout(model: nn.Module) -> Iterator[None]:
    """Dropout and stochastic depth off inside (BatchNorm stays in train mode): passes that must see one and the
    same function, such as VAT's target and power iteration, whose KL would otherwise follow the random masks."""
    from torchvision.ops import StochasticDepth

    noisy = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.dropout._DropoutNd | StochasticDepth) and m.training and m.p > 0
    ]
    for m in noisy:
        m.eval()
    try:
        yield
    finally:
        for m in noisy:
            m.train()


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Extra forward passes inside leave BatchNorm running statistics untouched (VAT's adversarial passes).

    The passes still normalise with their batch statistics (train mode); only the running averages are kept.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
