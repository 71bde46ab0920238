"""MixMatch (Berthelot et al. 2019): sharpened guesses over K weak views, MixUp of labeled and unlabeled."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views
from fewlabels.algorithms.common import linear_ramp, mixup, sharpen, soft_cross_entropy, softmax_mse
from fewlabels.errors import ConfigError


@ALGORITHMS.register("mixmatch")
class MixMatch(Algorithm):
    """loss = H(mixed labels, p(mixed x)) + w(t) * mean ||p(mixed u) - mixed guesses||^2 / C.

    The guess q = Sharpen(mean_k p(u_k), T) over K weak views comes from a no-grad pass. All B + K*mu*B inputs
    (labeled with one-hot labels, each unlabeled view with q) are mixed with one shuffled copy of themselves using
    lam' = max(lam, 1 - lam), lam ~ Beta(alpha, alpha), and go through one training forward (BatchNorm statistics
    over the whole mixed batch: the single-device equivalent of the official interleaving). w(t) = lambda_u ramps
    up linearly over the first `warmup` fraction: 0.4 as in USB, because the official 16 of 1024 epochs (1/64)
    lets lambda_u = 100 reach full weight within a few steps of a short run, where the guesses are still near
    uniform and training collapsed to one class on digits.
    """

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        lambda_u: float = 100.0,
        temperature: float = 0.5,
        alpha: float = 0.75,
        num_views: int = 2,
        warmup: float = 0.4,
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        if num_views < 1:
            raise ConfigError(f"num_views (K) must be >= 1, got {num_views}")
        if not 0 < temperature <= 1:
            raise ConfigError(f"temperature must be in (0, 1], got {temperature}")
        self.lambda_u = lambda_u
        self.temperature = temperature
        self.alpha = alpha
        self.warmup = warmup
        self.views = Views(labeled=("weak",), unlabeled=("weak",) + tuple(f"weak{k}" for k in range(2, num_views + 1)))

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None
        x_l = batch.labeled["weak"]
        u_views = [batch.unlabeled[v] for v in self.views.unlabeled]
        k, n_u = len(u_views), u_views[0].shape[0]
        with torch.no_grad():
            probs = model(torch.cat(u_views)).float().softmax(-1).view(k, n_u, -1).mean(0)
            guess = sharpen(probs, self.temperature)
        y_l = F.one_hot(batch.labeled.y, ctx.num_classes).float()
        x_all = torch.cat([x_l, *u_views])
        y_all = torch.cat([y_l, guess.repeat(k, 1)])
        mixed_x, mixed_y, lam = mixup(x_all, y_all, self.alpha)
        logits = model(mixed_x)
        b = x_l.shape[0]
        loss_l = soft_cross_entropy(logits[:b], mixed_y[:b]).mean()
        loss_u = softmax_mse(logits[b:], mixed_y[b:]).mean()
        weight = self.lambda_u * linear_ramp(ctx.progress, self.warmup)
        pseudo = guess.argmax(-1)
        return StepOutput(
            loss=loss_l + weight * loss_u,
            logs={"loss_l": loss_l.detach(), "loss_u": loss_u.detach(), "lambda_u": weight, "mixup_lambda": lam},
            pseudo=(pseudo, torch.ones_like(pseudo, dtype=torch.float32)),
        )
