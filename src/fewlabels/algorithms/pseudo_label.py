"""Pseudo-Label (Lee 2013): confident predictions on unlabeled data become hard targets for the same view."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views, forward
from fewlabels.algorithms.common import linear_ramp, masked_cross_entropy
from fewlabels.algorithms.thresholds import FixedThreshold


@ALGORITHMS.register("pseudo_label")
class PseudoLabel(Algorithm):
    """Hard pseudo-labels above a confidence threshold, taken from and applied to the same weak view.

    The unlabeled weight ramps up linearly over the first `warmup` fraction of training (USB's `unsup_warmup`),
    because early pseudo-labels are mostly wrong.
    """

    views = Views(labeled=("weak",), unlabeled=("weak",))

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        threshold: float = 0.95,
        lambda_u: float = 1.0,
        warmup: float = 0.4,
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        self.mask_fn = FixedThreshold(threshold)
        self.lambda_u = lambda_u
        self.warmup = warmup

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None
        logits_l, logits_u = forward(model, batch.labeled["weak"], batch.unlabeled["weak"])
        probs = logits_u.detach().float().softmax(-1)
        pseudo = probs.argmax(-1)
        mask = self.mask_fn(probs)
        loss_l = F.cross_entropy(logits_l.float(), batch.labeled.y)
        loss_u = masked_cross_entropy(logits_u, pseudo, mask)
        weight = self.lambda_u * linear_ramp(ctx.progress, self.warmup)
        return StepOutput(
            loss=loss_l + weight * loss_u,
            logs={
                "loss_l": loss_l.detach(),
                "loss_u": loss_u.detach(),
                "mask": mask.mean(),
                "lambda_u": weight,
            },
            pseudo=(pseudo, mask),
        )
