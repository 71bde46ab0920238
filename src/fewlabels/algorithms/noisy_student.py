"""Noisy Student (Xie et al. 2020): a noised student learns from labels plus a teacher's filtered soft labels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views, forward
from fewlabels.algorithms.common import soft_cross_entropy
from fewlabels.errors import ConfigError

NOISE_VIEWS = ("strong", "weak", "none")


@ALGORITHMS.register("noisy_student")
class NoisyStudent(Algorithm):
    """loss = CE_ls(labeled) + lambda_u * mean_b H(y~_b, student(A(u_b))) on the teacher's pseudo-labeled rows.

    `pseudo_labels` is a selection file written by `fewlabels.pipelines.pseudo_label.select` (the teacher's soft
    labels, filtered by confidence and balanced per class, duplicates included): the unlabeled batches are drawn from
    exactly those rows. lambda_u defaults to B_u / B_l (the unlabeled ratio), the official loss
    [B_l CE + B_u H] / B_l. The student's input noise is the `augment` view ('strong' = RandAugment + Cutout on
    both batches; 'none' for the no-noise ablation); model noise (dropout, stochastic depth) is set on the model.
    """

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        pseudo_labels: str = "",
        label_smoothing: float = 0.1,
        lambda_u: float | None = None,
        augment: str = "strong",
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        if not pseudo_labels:
            raise ConfigError(
                "noisy_student needs --set algorithm.pseudo_labels=FILE, a selection saved by "
                "`fewlabels.pipelines.pseudo_label.select(...).save(FILE)` (or run the whole pipeline with "
                "`fewlabels noisy-student`)"
            )
        if augment not in NOISE_VIEWS:
            raise ConfigError(f"augment must be one of {', '.join(NOISE_VIEWS)}, got {augment!r}")
        from fewlabels.pipelines.pseudo_label import Selection

        selection = Selection.load(pseudo_labels)
        if selection.targets.shape[1] != num_classes:
            raise ConfigError(
                f"{pseudo_labels} holds soft labels over {selection.targets.shape[1]} classes but the dataset has "
                f"{num_classes}: pseudo-label the same dataset with a teacher trained on it"
            )
        self.rows = [int(i) for i in selection.index]
        self.targets = selection.targets.float()
        self.pseudo_labels = pseudo_labels
        self.label_smoothing = label_smoothing
        self.lambda_u = lambda_u
        self._targets_on: Tensor | None = None
        self.views = Views(labeled=(augment,), unlabeled=(augment,))

    def unlabeled_pool(self, default: list[int]) -> list[int]:
        """The selection's rows, which must lie in this run's unlabeled pool (never validation rows)."""
        outside = np.setdiff1d(np.asarray(self.rows, dtype=np.int64), np.asarray(default, dtype=np.int64))
        if outside.size:
            raise ConfigError(
                f"{outside.size} selected pseudo-labeled rows (e.g. row {int(outside[0])}) are not in this run's "
                "unlabeled pool: they may be validation rows. Select with subset=<the run's unlabeled rows> "
                "(`select(labels, subset=split.unlabeled)`), as the noisy-student pipeline does"
            )
        return self.rows

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None and batch.unlabeled.index is not None
        view = self.views.labeled[0]
        logits_l, logits_u = forward(model, batch.labeled[view], batch.unlabeled[view])
        if self._targets_on is None or self._targets_on.device != logits_u.device:  # moved to the device once
            self._targets_on = self.targets.to(logits_u.device)
        targets = self._targets_on[batch.unlabeled.index]
        loss_l = F.cross_entropy(logits_l.float(), batch.labeled.y, label_smoothing=self.label_smoothing)
        loss_u = soft_cross_entropy(logits_u, targets).mean()
        weight = self.lambda_u if self.lambda_u is not None else logits_u.shape[0] / max(1, logits_l.shape[0])
        pseudo = targets.argmax(-1)
        return StepOutput(
            loss=loss_l + weight * loss_u,
            logs={"loss_l": loss_l.detach(), "loss_u": loss_u.detach(), "lambda_u": weight},
            pseudo=(pseudo, torch.ones_like(pseudo, dtype=torch.float32)),
        )
