"""FreeMatch (Wang et al. 2023): self-adaptive thresholds plus a self-adaptive fairness term."""

from __future__ import annotations

import torch
from torch import Tensor

from fewlabels.algorithms.base import ALGORITHMS, StepContext
from fewlabels.algorithms.fixmatch import FixMatch
from fewlabels.algorithms.thresholds import SelfAdaptiveThreshold


def fairness_loss(logits_strong: Tensor, mask: Tensor, class_probs: Tensor, label_hist: Tensor) -> Tensor:
    """-H(SumNorm(p/h), SumNorm(p_s/h_s)) over the kept strong-view predictions (USB's `entropy_loss`).

    p, h: the EMA class-probability estimate and label histogram; p_s, h_s: the mean strong-view probability and
    hard-label histogram of the kept samples. Minimising it (a negative cross-entropy) keeps predictions diverse.
    """
    keep = mask.bool()
    if not keep.any():
        return logits_strong.sum() * 0.0
    probs_s = logits_strong[keep].float().softmax(-1)
    hist_s = torch.bincount(probs_s.argmax(-1), minlength=probs_s.shape[-1]).float()
    hist_s = hist_s / hist_s.sum()
    target = class_probs.to(probs_s) * torch.nan_to_num(1 / label_hist.to(probs_s), posinf=0.0)
    target = target / target.sum()
    mean_s = probs_s.mean(0) * torch.nan_to_num(1 / hist_s, posinf=0.0)
    mean_s = mean_s / mean_s.sum()
    return (target * torch.log(mean_s + 1e-12)).sum()


@ALGORITHMS.register("freematch")
class FreeMatch(FixMatch):
    """Thresholds follow EMAs of the model's own confidence, globally and per class; a fairness term keeps the
    pseudo-label class distribution from collapsing."""

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        lambda_u: float = 1.0,
        lambda_fair: float = 0.01,
        momentum: float = 0.999,
        concat_forward: bool = False,
    ) -> None:
        super().__init__(num_classes, num_unlabeled, lambda_u=lambda_u, concat_forward=concat_forward)
        self.lambda_fair = lambda_fair
        self.mask_fn = SelfAdaptiveThreshold(num_classes, momentum)

    def extra_loss(self, logits_strong: Tensor, weight: Tensor, ctx: StepContext) -> dict[str, tuple[Tensor, float]]:
        # The term is a function of batch means, so under DDP it is computed over the global batch (gathered with
        # gradients, as SimCLR's negatives are): 2 ranks then take the step one process takes on both halves.
        logits_all, weight_all = ctx.all_gather_grad(logits_strong), ctx.all_gather(weight)
        term = fairness_loss(logits_all, weight_all, self.mask_fn.class_probs, self.mask_fn.label_hist)
        return {"loss_fair": (term, self.lambda_fair)}
