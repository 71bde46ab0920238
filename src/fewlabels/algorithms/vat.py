"""VAT (Miyato et al. 2018): predictions should resist the small input perturbation that changes them most."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views, forward
from fewlabels.algorithms.common import entropy, frozen_bn_stats, kl_divergence, linear_ramp, no_dropout, unwrap


def _unit(d: Tensor) -> Tensor:
    """Each sample scaled to unit L2 norm; first by its largest entry, so tiny gradients do not underflow."""
    flat = d.flatten(1)
    flat = flat / flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(d)


def adversarial_perturbation(
    model: nn.Module, x: Tensor, target: Tensor, eps: float, xi: float = 1e-3, iterations: int = 1
) -> Tensor:
    """r_adv = eps * d, with d the dominant direction of KL(target || p(x + xi d)) by power iteration.

    Runs in float32 (xi is far below bf16 resolution) without dropout, and leaves BatchNorm running statistics
    and parameter gradients untouched: only d is differentiated. The official xi = 1e-6 changes float32 softmax
    outputs by less than their resolution for some samples (their gradient is exactly 0, measured); the default
    1e-3 is still small against the [0, 1] input scale and eps.
    """
    d = _unit(torch.randn_like(x))
    with torch.autocast(x.device.type, enabled=False), frozen_bn_stats(model), no_dropout(model):
        for _ in range(iterations):
            d.requires_grad_(True)
            divergence = kl_divergence(target, model(x.float() + xi * d)).sum()
            (grad,) = torch.autograd.grad(divergence, d)
            # A sample whose gradient underflowed to exactly 0 keeps its current direction instead of none.
            flat = grad.detach().flatten(1)
            zero = (flat.abs().amax(dim=1) == 0).view(-1, *([1] * (x.dim() - 1)))
            d = torch.where(zero, d.detach(), _unit(grad.detach()))
    return eps * d


@ALGORITHMS.register("vat")
class VAT(Algorithm):
    """loss = CE(labeled) + w(t) * mean_b KL(sg(p(u_b)) || p(u_b + r_adv)) [+ entmin_weight * mean H(p(u_b))].

    `eps` is the L2 norm of the perturbation on the model's input scale ([0, 1] pixels); by default
    2.0 * sqrt(D / 784) (VAT's MNIST setting, 2.0 for 28x28 inputs, scaled to the input size D). The clean target
    comes from a no-grad float32 pass, as do the power iteration's passes, which keep BatchNorm running statistics
    frozen; the perturbed input then goes through the one training forward with the labeled batch. w(t) ramps up
    linearly over the first `warmup` fraction. Entropy minimisation (VAT+EntMin) is on when `entmin_weight` > 0.
    """

    views = Views(labeled=("weak",), unlabeled=("weak",))

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        lambda_u: float = 0.3,
        eps: float | None = None,
        xi: float = 1e-3,
        iterations: int = 1,
        entmin_weight: float = 0.0,
        warmup: float = 0.4,
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        self.lambda_u = lambda_u
        self.eps = eps
        self.xi = xi
        self.iterations = iterations
        self.entmin_weight = entmin_weight
        self.warmup = warmup

    def radius(self, x: Tensor) -> float:
        """The perturbation norm for inputs like `x`."""
        return self.eps if self.eps is not None else 2.0 * math.sqrt(x[0].numel() / 784)

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None
        x_l, u = batch.labeled["weak"], batch.unlabeled["weak"]
        # The target is taken in float32 like the power iteration's passes; a bf16 target would differ from them and
        # give KL a gradient at r = 0 that has nothing to do with the model's sensitivity.
        # Dropout is off in the target and power-iteration passes: with different random masks, the KL's direction
        # would follow the masks instead of the input.
        with torch.no_grad(), torch.autocast(u.device.type, enabled=False), no_dropout(model):
            target = model(u.float()).float().softmax(-1)
        r_adv = adversarial_perturbation(unwrap(model), u, target, self.radius(u), self.xi, self.iterations)
        u_adv = u + r_adv
        use_entmin = self.entmin_weight > 0
        outputs = forward(model, x_l, u_adv, u) if use_entmin else forward(model, x_l, u_adv)
        logits_l, logits_adv = outputs[0], outputs[1]
        loss_l = F.cross_entropy(logits_l.float(), batch.labeled.y)
        loss_u = kl_divergence(target, logits_adv).mean()
        weight = self.lambda_u * linear_ramp(ctx.progress, self.warmup)
        loss = loss_l + weight * loss_u
        logs = {"loss_l": loss_l.detach(), "loss_u": loss_u.detach(), "lambda_u": weight}
        if use_entmin:
            loss_ent = entropy(outputs[2]).mean()
            loss = loss + self.entmin_weight * loss_ent
            logs["loss_entmin"] = loss_ent.detach()
        pseudo = target.argmax(-1)
        return StepOutput(loss=loss, logs=logs, pseudo=(pseudo, torch.ones_like(pseudo, dtype=torch.float32)))
