"""Labels only: the baseline every report shows."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views


@ALGORITHMS.register("supervised")
class Supervised(Algorithm):
    """Cross-entropy on the weakly augmented labeled batch; the unlabeled data is not used."""

    views = Views(labeled=("weak",), unlabeled=())
    needs_unlabeled = False

    def __init__(self, num_classes: int, num_unlabeled: int = 0, *, label_smoothing: float = 0.0) -> None:
        super().__init__(num_classes, num_unlabeled)
        self.label_smoothing = label_smoothing

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        logits = model(batch.labeled["weak"])
        loss = F.cross_entropy(logits.float(), batch.labeled.y, label_smoothing=self.label_smoothing)
        return StepOutput(loss=loss, logs={"loss_l": loss.detach()})
