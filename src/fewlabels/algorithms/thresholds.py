"""Per-sample masks and weights for pseudo-labels: fixed, class-wise curriculum, self-adaptive, truncated Gaussian.

Each takes the (detached) weak-view class probabilities of the unlabeled batch and returns a weight in [0, 1] per
sample. Stateful ones keep dataset-level statistics; `gather` concatenates a tensor across DDP ranks so that every
rank updates the same statistics from the same global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fewlabels.errors import ConfigError

Gather = Callable[[Tensor], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


class FixedThreshold:
    """1[max p >= threshold] (FixMatch; the comparison is inclusive)."""

    def __init__(self, threshold: float = 0.95) -> None:
        self.threshold = threshold

    def __call__(self, probs: Tensor, index: Tensor | None = None, gather: Gather = _identity) -> Tensor:
        return (probs.max(-1).values >= self.threshold).float()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:  # e.g. an adaptive method's thresholds: loading them here would drop them silently
            raise ValueError(f"a fixed threshold keeps no state, got keys {sorted(state)}")


class CurriculumThreshold:
    """FlexMatch's class-wise thresholds T(c) = M(beta(c)) * tau with M(x) = x / (2 - x) (Zhang et al. 2021).

    beta(c) is the count of unlabeled samples whose latest confident (>= tau) prediction is c, normalised by the
    largest class count, or by the count of never-confident samples while that is larger (threshold warm-up).
    At the start every sample is unused, so beta = 0 and every threshold is 0: all pseudo-labels count at first.
    """

    def __init__(self, num_unlabeled: int, num_classes: int, threshold: float = 0.95, warmup: bool = True) -> None:
        self.threshold = threshold
        self.warmup = warmup
        self.num_classes = num_classes
        self.selected = torch.full((num_unlabeled,), -1, dtype=torch.long)

    def class_beta(self) -> Tensor:
        """The learning effect beta(c) of each class from the current memory."""
        counts = torch.bincount(self.selected + 1, minlength=self.num_classes + 1).float()
        unused, per_class = counts[0], counts[1:]
        if unused == self.selected.numel():
            return torch.zeros(self.num_classes)
        denominator = torch.maximum(per_class.max(), unused) if self.warmup else per_class.max()
        return per_class / denominator

    def __call__(self, probs: Tensor, index: Tensor | None = None, gather: Gather = _identity) -> Tensor:
        if index is None:
            raise ValueError("CurriculumThreshold needs the unlabeled pool indices of the batch")
        confidence, pseudo = probs.max(-1)
        beta = self.class_beta().to(probs.device)[pseudo]
        mask = (confidence >= self.threshold * beta / (2.0 - beta)).float()
        # The memory is updated after masking (TorchSSL's order), from every rank's samples.
        all_conf, all_pseudo, all_index = gather(confidence), gather(pseudo), gather(index)
        keep = all_conf >= self.threshold
        self.selected[all_index[keep].cpu()] = all_pseudo[keep].cpu()
        return mask

    def state_dict(self) -> dict[str, Any]:
        return {"selected": self.selected.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        selected = torch.as_tensor(state["selected"], dtype=torch.long)
        if selected.shape != self.selected.shape:
            raise ConfigError(
                f"the FlexMatch memory in the checkpoint holds {selected.numel()} samples but this unlabeled pool has "
                f"{self.selected.numel()}: resume with the run's own data and split, or start a new --out"
            )
        self.selected = selected.clone()


class SelfAdaptiveThreshold:
    """FreeMatch's thresholds tau(c) = (p(c) / max p) * tau_global from EMAs of the confidence (Wang et al. 2023).

    The statistics are updated from the current (global) batch before masking, as in the reference.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999) -> None:
        self.momentum = momentum
        self.class_probs = torch.full((num_classes,), 1.0 / num_classes)
        self.label_hist = torch.full((num_classes,), 1.0 / num_classes)
        self.global_threshold = torch.tensor(1.0 / num_classes)

    @torch.no_grad()
    def update(self, probs: Tensor) -> None:
        """EMA-update the global threshold, the class-probability estimate and the label histogram."""
        m = self.momentum
        confidence, pseudo = probs.max(-1)
        self.global_threshold = m * self.global_threshold + (1 - m) * confidence.mean().cpu()
        self.class_probs = m * self.class_probs + (1 - m) * probs.mean(0).cpu()
        hist = torch.bincount(pseudo.cpu(), minlength=self.class_probs.numel()).float()
        self.label_hist = m * self.label_hist + (1 - m) * hist / hist.sum()

    def class_thresholds(self) -> Tensor:
        """tau(c) for each class."""
        return self.class_probs / self.class_probs.max() * self.global_threshold

    def __call__(self, probs: Tensor, index: Tensor | None = None, gather: Gather = _identity) -> Tensor:
        self.update(gather(probs))
        confidence, pseudo = probs.max(-1)
        return (confidence >= self.class_thresholds().to(probs.device)[pseudo]).float()

    def state_dict(self) -> dict[str, Any]:
        return {
            "class_probs": self.class_probs.clone(),
            "label_hist": self.label_hist.clone(),
            "global_threshold": self.global_threshold.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.class_probs = torch.as_tensor(state["class_probs"]).float().clone()
        self.label_hist = torch.as_tensor(state["label_hist"]).float().clone()
        self.global_threshold = torch.as_tensor(state["global_threshold"]).float().clone()


class TruncatedGaussianWeight:
    """SoftMatch's weight exp(-(min(max p - mu, 0))^2 / (2 sigma^2 / n_sigma^2)) (Chen et al. 2023).

    mu and sigma^2 are EMAs of the batch mean and unbiased variance of the confidence. With uniform alignment the
    probabilities are first rescaled by (1/C) / E[p] (an EMA of the mean unlabeled prediction); the alignment only
    shapes the weight, the pseudo-labels still come from the unaligned predictions.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, n_sigma: float = 2.0, align: bool = True) -> None:
        self.momentum = momentum
        self.n_sigma = n_sigma
        self.align = align
        self.mean = torch.tensor(1.0 / num_classes)
        self.var = torch.tensor(1.0)
        self.class_probs: Tensor | None = None

    def _align(self, probs: Tensor) -> Tensor:
        assert self.class_probs is not None
        scaled = probs / (self.class_probs.to(probs.device) + 1e-6)  # a class whose mean underflowed to 0 stays finite
        return scaled / scaled.sum(-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, probs: Tensor, index: Tensor | None = None, gather: Gather = _identity) -> Tensor:
        m = self.momentum
        all_probs = gather(probs)
        if self.align:
            batch_mean = all_probs.mean(0).cpu()
            self.class_probs = batch_mean if self.class_probs is None else m * self.class_probs + (1 - m) * batch_mean
            all_probs, probs = self._align(all_probs), self._align(probs)
        confidence_all = all_probs.max(-1).values
        self.mean = m * self.mean + (1 - m) * confidence_all.mean().cpu()
        if confidence_all.numel() > 1:
            self.var = m * self.var + (1 - m) * confidence_all.var(unbiased=True).cpu()
        confidence = probs.max(-1).values
        gap = torch.clamp(confidence - self.mean.to(confidence.device), max=0.0)
        return torch.exp(-(gap**2) / (2 * self.var.to(confidence.device) / self.n_sigma**2))

    def state_dict(self) -> dict[str, Any]:
        state = {"mean": self.mean.clone(), "var": self.var.clone()}
        if self.class_probs is not None:
            state["class_probs"] = self.class_probs.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = torch.as_tensor(state["mean"]).float().clone()
        self.var = torch.as_tensor(state["var"]).float().clone()
        cp = state.get("class_probs")
        self.class_probs = None if cp is None else torch.as_tensor(cp).float().clone()
