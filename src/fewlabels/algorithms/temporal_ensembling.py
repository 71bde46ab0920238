"""Temporal Ensembling (Laine & Aila 2017): targets are each input's running average of past predictions."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views, forward
from fewlabels.algorithms.common import sigmoid_ramp, softmax_mse
from fewlabels.errors import ConfigError


@ALGORITHMS.register("temporal_ensembling")
class TemporalEnsembling(Algorithm):
    """loss = CE(labeled) + w(t) * mean_b m_b ||softmax(f(u_b)) - z~_b||^2 / C.

    Per pool sample i: Z_i <- alpha Z_i + (1 - alpha) softmax(f(u_i)) each time i is drawn (once per pass over the
    pool, the paper's per-epoch update), and the target is the bias-corrected z~_i = Z_i / (1 - alpha^n_i) after
    n_i visits. m_b = 0 for a sample not seen before (no target yet). The ensemble uses the training pass's own
    predictions (augmentation and dropout on), and is part of the checkpoint.
    """

    views = Views(labeled=("weak",), unlabeled=("weak",))

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        lambda_u: float = 10.0,
        warmup: float = 0.4,
        alpha: float = 0.6,
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        if not 0.0 <= alpha < 1.0:
            raise ConfigError(f"alpha (the ensemble momentum) must be in [0, 1), got {alpha}")
        self.lambda_u = lambda_u
        self.warmup = warmup
        self.alpha = alpha
        self.ensemble = torch.zeros(num_unlabeled, num_classes)
        self.visits = torch.zeros(num_unlabeled, dtype=torch.long)

    def targets(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Bias-corrected ensemble targets of pool positions `index`, and whether each has one yet."""
        idx = index.cpu()
        n = self.visits[idx]
        correction = 1.0 - self.alpha ** n.double().clamp_min(1)
        return (self.ensemble[idx].double() / correction[:, None]).float(), n > 0

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None and batch.unlabeled.index is not None
        index = batch.unlabeled.index
        if int(index.max()) >= len(self.visits):
            raise ConfigError("the unlabeled pool is larger than the ensemble; start a new --out folder")
        logits_l, logits_u = forward(model, batch.labeled["weak"], batch.unlabeled["weak"])
        target, seen = self.targets(index)
        target, mask = target.to(logits_u.device), seen.float().to(logits_u.device)
        loss_l = F.cross_entropy(logits_l.float(), batch.labeled.y)
        loss_u = (softmax_mse(logits_u, target) * mask).sum() / max(1, len(mask))
        weight = self.lambda_u * sigmoid_ramp(ctx.progress, self.warmup)
        self.update(ctx.all_gather(index), ctx.all_gather(logits_u.detach().float().softmax(-1)))
        pseudo = target.argmax(-1)
        return StepOutput(
            loss=loss_l + weight * loss_u,
            logs={"loss_l": loss_l.detach(), "loss_u": loss_u.detach(), "lambda_u": weight, "mask": mask.mean()},
            pseudo=(pseudo, mask),
        )

    @torch.no_grad()
    def update(self, index: Tensor, probs: Tensor) -> None:
        """Fold this step's predictions into the ensemble (after the loss used the previous targets)."""
        idx = index.cpu()
        self.ensemble[idx] = self.alpha * self.ensemble[idx] + (1 - self.alpha) * probs.cpu()
        self.visits[idx] += 1

    def state_dict(self) -> dict[str, Any]:
        return {"ensemble": self.ensemble.clone(), "visits": self.visits.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ensemble = torch.as_tensor(state["ensemble"]).float()
        if ensemble.shape != self.ensemble.shape:
            raise ConfigError(
                f"the saved ensemble has shape {tuple(ensemble.shape)} but this run's pool needs "
                f"{tuple(self.ensemble.shape)}; start a new --out folder"
            )
        self.ensemble = ensemble.clone()
        self.visits = torch.as_tensor(state["visits"]).long().clone()
