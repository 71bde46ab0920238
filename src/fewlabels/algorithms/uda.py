"""UDA (Xie et al. 2020): sharpened, masked KL consistency to a strong view, with training-signal annealing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views, forward
from fewlabels.algorithms.common import kl_divergence, tsa_threshold
from fewlabels.errors import ConfigError

TSA_SCHEDULES = ("none", "linear", "log", "exp")


@ALGORITHMS.register("uda")
class UDA(Algorithm):
    """loss = CE_TSA(labeled) + lambda_u * (1/(mu B)) sum_b 1[max p(u_b) > threshold] KL(sg(p(u_b; T)) || p(A(u_b))).

    The target is softmax(logits / temperature) of the un-augmented input (the official image code's `ori_image`)
    from a no-grad pass; the mask uses the unsharpened probabilities with a strict '>'. Training-signal annealing
    (`tsa` = linear, log or exp) drops labeled examples whose true-class probability exceeds
    eta_t = alpha_t (1 - 1/K) + 1/K and averages the cross-entropy over the remaining ones; 'none' (the official
    image default) keeps all. The paper recommends 'exp' when labels are very scarce. `tsa_kept` logs the fraction
    of labeled examples still trained on.
    """

    views = Views(labeled=("weak",), unlabeled=("none", "strong"))

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        lambda_u: float = 1.0,
        threshold: float = 0.8,
        temperature: float = 0.4,
        tsa: str = "none",
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        if tsa not in TSA_SCHEDULES:
            raise ConfigError(f"unknown TSA schedule {tsa!r}; valid schedules are {', '.join(TSA_SCHEDULES)}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.lambda_u = lambda_u
        self.threshold = threshold
        self.temperature = temperature
        self.tsa = tsa

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None
        with torch.no_grad():
            logits_o = model(batch.unlabeled["none"]).float()
            mask = (logits_o.softmax(-1).max(-1).values > self.threshold).float()
            target = (logits_o / self.temperature).softmax(-1)
        logits_l, logits_s = forward(model, batch.labeled["weak"], batch.unlabeled["strong"])
        y = batch.labeled.y
        ce = F.cross_entropy(logits_l.float(), y, reduction="none")
        eta = tsa_threshold(self.tsa, ctx.progress, ctx.num_classes)
        p_true = logits_l.detach().float().softmax(-1).gather(1, y[:, None]).squeeze(1)
        keep = (p_true <= eta).float()
        # Normalised by the kept count of the global batch: under DDP (whose gradient averaging divides by the
        # world size) two ranks then optimise what one process does, even when they keep different counts.
        kept_all = ctx.all_gather(keep)
        loss_l = (ce * keep).sum() * (kept_all.numel() / keep.numel()) / kept_all.sum().clamp_min(1.0)
        loss_u = (kl_divergence(target, logits_s) * mask).mean()
        return StepOutput(
            loss=loss_l + self.lambda_u * loss_u,
            logs={
                "loss_l": loss_l.detach(),
                "loss_u": loss_u.detach(),
                "mask": mask.mean(),
                "tsa_threshold": eta,
                "tsa_kept": keep.mean(),
            },
            pseudo=(logits_o.argmax(-1), mask),
        )
