"""Pi-model (Laine & Aila 2017): two stochastic views of an unlabeled input should get the same prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views, forward
from fewlabels.algorithms.common import sigmoid_ramp, softmax_mse


@ALGORITHMS.register("pi_model")
class PiModel(Algorithm):
    """loss = CE(labeled) + w(t) * mean_b ||softmax(f(u_b, eta)) - softmax(f(u_b, eta'))||^2 / C.

    eta, eta' are two independent weak augmentations. w(t) = lambda_u * exp(-5 (1 - t/T_r)^2) ramps up over the
    first `warmup` fraction of training. With `detach_target` (default, as USB and Mean Teacher do) the second view
    is the fixed target of a cheaper no-grad pass; the original Theano code lets gradient flow through both views
    (`detach_target=False`).
    """

    views = Views(labeled=("weak",), unlabeled=("weak", "weak2"))

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        lambda_u: float = 10.0,
        warmup: float = 0.4,
        detach_target: bool = True,
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        self.lambda_u = lambda_u
        self.warmup = warmup
        self.detach_target = detach_target

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None
        x_l, u1, u2 = batch.labeled["weak"], batch.unlabeled["weak"], batch.unlabeled["weak2"]
        if self.detach_target:
            with torch.no_grad():
                target = model(u2).float().softmax(-1)
            logits_l, logits_u = forward(model, x_l, u1)
        else:
            logits_l, logits_u, logits_u2 = forward(model, x_l, u1, u2)
            target = logits_u2.float().softmax(-1)
        loss_l = F.cross_entropy(logits_l.float(), batch.labeled.y)
        loss_u = softmax_mse(logits_u, target).mean()
        weight = self.lambda_u * sigmoid_ramp(ctx.progress, self.warmup)
        pseudo = target.detach().argmax(-1)
        return StepOutput(
            loss=loss_l + weight * loss_u,
            logs={"loss_l": loss_l.detach(), "loss_u": loss_u.detach(), "lambda_u": weight},
            pseudo=(pseudo, torch.ones_like(pseudo, dtype=torch.float32)),
        )
