"""Distribution alignment (ReMixMatch, Berthelot et al. 2020): scale predictions by p(y) / p_model(y)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fewlabels.algorithms.thresholds import Gather, _identity


class DistributionAlignment:
    """p~ = normalize(p * p_target / p_model).

    p_model is the mean prediction over the last `buffer` unlabeled batches (ReMixMatch's `PMovingAverage`);
    p_target is the class marginal of the labeled batches seen so far (ReMixMatch's `p_data`), uniform until the
    first labeled batch arrives. Both are gathered across DDP ranks so every rank keeps the same state.
    """

    def __init__(self, num_classes: int, buffer: int = 128) -> None:
        if buffer < 1:
            raise ValueError(f"the alignment buffer holds at least one batch, got {buffer}")
        self.num_classes = num_classes
        self.history = torch.full((buffer, num_classes), 1.0 / num_classes)
        self.filled = torch.tensor(0)
        self.label_counts = torch.zeros(num_classes)

    def p_model(self) -> Tensor:
        """Mean prediction over the batches in the buffer (uniform before the first one)."""
        n = int(min(self.filled.item(), self.history.shape[0]))
        return self.history[:n].mean(0) if n else torch.full((self.num_classes,), 1.0 / self.num_classes)

    def p_target(self) -> Tensor:
        """The labeled class marginal seen so far (uniform before the first labeled batch)."""
        total = self.label_counts.sum()
        if total == 0:
            return torch.full((self.num_classes,), 1.0 / self.num_classes)
        return self.label_counts / total

    @torch.no_grad()
    def __call__(self, probs: Tensor, labels: Tensor | None = None, gather: Gather = _identity) -> Tensor:
        """Record this step's labeled labels and mean unlabeled prediction, then return the aligned `probs`."""
        if labels is not None:
            self.label_counts += torch.bincount(gather(labels).cpu(), minlength=self.num_classes).float()
        slot = int(self.filled.item()) % self.history.shape[0]
        self.history[slot] = gather(probs.float()).mean(0).cpu()
        self.filled += 1
        ratio = (self.p_target() / self.p_model().clamp_min(1e-6)).to(probs.device)
        aligned = probs.float() * ratio
        return aligned / aligned.sum(-1, keepdim=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history.clone(),
            "filled": self.filled.clone(),
            "label_counts": self.label_counts.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = torch.as_tensor(state["history"]).float().clone()
        self.filled = torch.as_tensor(state["filled"]).long().clone()
        self.label_counts = torch.as_tensor(state["label_counts"]).float().clone()
