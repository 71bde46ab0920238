"""ReMixMatch (Berthelot et al. 2020): distribution alignment, strong-view anchoring, MixUp, rotation loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.algorithms.alignment import DistributionAlignment
from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views
from fewlabels.algorithms.common import linear_ramp, mixup, sharpen, soft_cross_entropy
from fewlabels.errors import ConfigError


def rotate(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate each square image by its own random multiple of 90 degrees; returns (images, k in 0..3)."""
    k = torch.randint(0, 4, (x.shape[0],), device=x.device)
    turned = torch.stack([torch.rot90(x, r, dims=(2, 3)) for r in range(4)])  # (4, N, C, H, W)
    return turned[k, torch.arange(x.shape[0], device=x.device)], k


@ALGORITHMS.register("remixmatch")
class ReMixMatch(Algorithm):
    """loss = H(mixed l) + w(t) [lambda_u H(mixed u) + lambda_u1 H(q, p(s_1))] + lambda_rot CE(rot(s_1), k).

    The guess q = Sharpen(DA(p(weak u)), T), with distribution alignment p * p(y) / p_model (see
    `DistributionAlignment`), anchors `num_strong` strong views s_1..s_K of the same inputs (K = 2 by default for
    CPU cost; the paper uses 8); labeled inputs and all strong views are mixed as in MixMatch and trained with
    cross-entropy, while the weak view only makes the guess. The un-mixed first strong view gets its own
    loss (lambda_u1), and, for square images, a 4-way rotation head on the features predicts its rotation
    (lambda_rot; a no-op for vectors). One training forward covers the mixed batch, s_1 and rotated s_1. w(t) ramps
    up linearly over `warmup` (official: 1/64 of training). CTAugment is not implemented: the strong views use
    FixMatch's RandAugment + Cutout.
    """

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        lambda_u: float = 1.5,
        lambda_u1: float = 0.5,
        lambda_rot: float = 0.5,
        temperature: float = 0.5,
        alpha: float = 0.75,
        num_strong: int = 2,
        alignment_buffer: int = 128,
        warmup: float = 1 / 64,
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        if num_strong < 1:
            raise ConfigError(f"num_strong must be >= 1, got {num_strong}")
        self.lambda_u, self.lambda_u1, self.lambda_rot = lambda_u, lambda_u1, lambda_rot
        self.temperature = temperature
        self.alpha = alpha
        self.warmup = warmup
        self.align = DistributionAlignment(num_classes, alignment_buffer)
        strong = ("strong",) + tuple(f"strong{k}" for k in range(2, num_strong + 1))
        self.views = Views(labeled=("weak",), unlabeled=("weak", *strong))
        self.rotation = False

    def extend_model(self, model: nn.Module) -> None:
        shape = tuple(getattr(model, "input_shape", ()))
        self.rotation = self.lambda_rot > 0 and len(shape) == 3 and shape[1] == shape[2]
        if self.rotation:
            model.add_head("rotation", 4)

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None
        x_l, u_w = batch.labeled["weak"], batch.unlabeled["weak"]
        strong = [batch.unlabeled[v] for v in self.views.unlabeled[1:]]
        with torch.no_grad():
            probs = model(u_w).float().softmax(-1)
            guess = sharpen(self.align(probs, batch.labeled.y, ctx.all_gather), self.temperature)
        y_l = F.one_hot(batch.labeled.y, ctx.num_classes).float()
        y_u = guess.repeat(len(strong), 1)
        mixed_x, mixed_y, lam = mixup(torch.cat([x_l, *strong]), torch.cat([y_l, y_u]), self.alpha)
        inputs = [mixed_x, strong[0]]
        if self.rotation:
            rotated, k = rotate(strong[0])
            inputs.append(rotated)
        logits, heads = model(torch.cat(inputs), with_heads=True)
        b, n_mix, n_u = x_l.shape[0], mixed_x.shape[0], u_w.shape[0]
        loss_l = soft_cross_entropy(logits[:b], mixed_y[:b]).mean()
        loss_u = soft_cross_entropy(logits[b:n_mix], mixed_y[b:]).mean()
        loss_u1 = soft_cross_entropy(logits[n_mix : n_mix + n_u], guess).mean()
        ramp = linear_ramp(ctx.progress, self.warmup)
        loss = loss_l + ramp * (self.lambda_u * loss_u + self.lambda_u1 * loss_u1)
        logs: dict[str, Any] = {
            "loss_l": loss_l.detach(),
            "loss_u": loss_u.detach(),
            "loss_u1": loss_u1.detach(),
            "ramp": ramp,
            "mixup_lambda": lam,
        }
        if self.rotation:
            loss_rot = F.cross_entropy(heads["rotation"][n_mix + n_u :].float(), k)
            loss = loss + self.lambda_rot * loss_rot
            logs["loss_rot"] = loss_rot.detach()
        pseudo = guess.argmax(-1)
        return StepOutput(loss=loss, logs=logs, pseudo=(pseudo, torch.ones_like(pseudo, dtype=torch.float32)))

    def state_dict(self) -> dict[str, Any]:
        return self.align.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.align.load_state_dict(state)
