"""FixMatch (Sohn et al. 2020): confident weak-view pseudo-labels supervise the strong view."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views, forward
from fewlabels.algorithms.common import masked_cross_entropy
from fewlabels.algorithms.thresholds import FixedThreshold
from fewlabels.errors import ConfigError


@ALGORITHMS.register("fixmatch")
class FixMatch(Algorithm):
    """loss = CE(labeled) + lambda_u * (1/(mu B)) sum 1[max q >= threshold] CE(strong, argmax q).

    q are the weak-view probabilities, computed without gradient. FlexMatch, FreeMatch and SoftMatch keep this loss
    and change only `weights` (the per-sample mask or weight).

    By default the weak view gets its own no-grad pass (cheaper: no activations kept for it), so BatchNorm
    normalises it with its own batch statistics. `concat_forward=True` instead runs one train-mode pass over
    [labeled, weak, strong], as the official code does, so all three share BatchNorm statistics.
    """

    views = Views(labeled=("weak",), unlabeled=("weak", "strong"))

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        threshold: float = 0.95,
        lambda_u: float = 1.0,
        concat_forward: bool = False,
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        self.concat_forward = concat_forward
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold is a probability in [0, 1], got {threshold}")
        self.threshold = threshold
        self.lambda_u = lambda_u
        self.mask_fn: Any = FixedThreshold(threshold)

    def weights(self, probs: Tensor, index: Tensor | None, ctx: StepContext) -> Tensor:
        """Per-sample weight in [0, 1] of each pseudo-label."""
        return self.mask_fn(probs, index, ctx.all_gather)

    def extra_loss(self, logits_strong: Tensor, weight: Tensor, ctx: StepContext) -> dict[str, tuple[Tensor, float]]:
        """Additional weighted loss terms (none for FixMatch)."""
        return {}

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None
        x_l, u_w, u_s = batch.labeled["weak"], batch.unlabeled["weak"], batch.unlabeled["strong"]
        if self.concat_forward:
            logits_l, logits_w, logits_s = forward(model, x_l, u_w, u_s)
            probs = logits_w.detach().float().softmax(-1)
        else:
            with torch.no_grad():
                probs = model(u_w).float().softmax(-1)
            logits_l, logits_s = forward(model, x_l, u_s)
        pseudo = probs.argmax(-1)
        weight = self.weights(probs, batch.unlabeled.index, ctx)
        loss_l = F.cross_entropy(logits_l.float(), batch.labeled.y)
        loss_u = masked_cross_entropy(logits_s, pseudo, weight)
        loss = loss_l + self.lambda_u * loss_u
        logs = {"loss_l": loss_l.detach(), "loss_u": loss_u.detach(), "mask": weight.mean()}
        for name, (term, coef) in self.extra_loss(logits_s, weight, ctx).items():
            loss = loss + coef * term
            logs[name] = term.detach()
        return StepOutput(loss=loss, logs=logs, pseudo=(pseudo, weight))

    def state_dict(self) -> dict[str, Any]:
        return self.mask_fn.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mask_fn.load_state_dict(state)
