"""Knowledge distillation as function matching (Beyer et al. 2022): a student matches a fixed teacher's outputs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views
from fewlabels.algorithms.common import kl_divergence
from fewlabels.errors import ConfigError

MODES = ("function_matching", "consistent", "independent", "fixed")


def weights_digest(path: Path) -> str:
    """sha256 of a weights file: which teacher a run was distilled from."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@ALGORITHMS.register("distill")
class Distill(Algorithm):
    """loss = t^2 * mean_b KL(p_T(x~_b; t) || p_S(x~_b; t)) on unlabeled images (+ lambda_l * CE on the labels).

    The t^2 factor (Hinton et al. 2015) keeps the soft targets' gradients at the scale of t = 1, so a temperature
    does not shrink distillation against the labeled term.

    The teacher (`teacher`: a run folder; its final EMA model, or `which=best`) is fixed, in eval mode, without
    gradients; the student is this run's model and may be smaller. `mode` is the paper's ablation ladder:
    'function_matching' (default): teacher and student see the very same augmented image, mixed with MixUp
    lam ~ Beta(mixup_alpha, mixup_alpha) = Uniform(0, 1); 'consistent': the same augmented image, no MixUp;
    'independent': different augmentations for teacher and student; 'fixed': the teacher's prediction on the
    un-augmented image, computed once per sample (the "precomputed teacher labels" baseline).
    """

    labels_unused = True  # the unlabeled pool may be the whole (labeled) training set

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        teacher: str = "",
        which: str = "model",
        mode: str = "function_matching",
        temperature: float = 1.0,
        mixup_alpha: float = 1.0,
        augment: str = "weak",
        lambda_l: float = 0.0,
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        if not teacher:
            raise ConfigError("distill needs --set algorithm.teacher=RUN_FOLDER, a finished run to learn from")
        if mode not in MODES:
            raise ConfigError(f"unknown distillation mode {mode!r}; valid modes are {', '.join(MODES)}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        from fewlabels.engine.run import Run

        run = Run(teacher)
        info = run.model_info(which)
        if info["num_classes"] != num_classes:
            raise ConfigError(
                f"the teacher in {teacher} predicts {info['num_classes']} classes but the data has {num_classes}"
            )
        self.teacher_model = run.load_model(which).requires_grad_(False)
        self.teacher_digest = weights_digest(Path(teacher) / f"{which}.safetensors")
        self.teacher_shape = tuple(info["input_shape"])
        self.mode, self.temperature, self.mixup_alpha, self.lambda_l = mode, temperature, mixup_alpha, lambda_l
        unlabeled = {"independent": (augment, f"{augment}2"), "fixed": ("none", augment)}.get(mode, (augment,))
        self.views = Views(labeled=(augment,), unlabeled=unlabeled)
        self.cache = torch.zeros(num_unlabeled, num_classes) if mode == "fixed" else None
        self.cached = torch.zeros(num_unlabeled, dtype=torch.bool) if mode == "fixed" else None

    @torch.no_grad()
    def teach(self, x: Tensor) -> Tensor:
        """The teacher's tempered probabilities on `x` (eval mode, no gradient)."""
        if tuple(x.shape[1:]) != self.teacher_shape:
            raise ConfigError(
                f"the teacher takes inputs of shape {self.teacher_shape} but the data has {tuple(x.shape[1:])}"
            )
        self.teacher_model.to(x.device).eval()
        return (self.teacher_model(x).float() / self.temperature).softmax(-1)

    def _fixed_targets(self, u: Tensor, index: Tensor) -> Tensor:
        assert self.cache is not None and self.cached is not None
        idx = index.cpu()
        new = ~self.cached[idx]
        if new.any():
            self.cache[idx[new]] = self.teach(u[new.to(u.device)]).cpu()
            self.cached[idx[new]] = True
        return self.cache[idx].to(u.device)

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None
        views = batch.unlabeled.views
        if self.mode == "fixed":
            assert batch.unlabeled.index is not None
            x_student = views[self.views.unlabeled[1]]
            target = self._fixed_targets(views["none"], batch.unlabeled.index)
        elif self.mode == "independent":
            x_student = views[self.views.unlabeled[0]]
            target = self.teach(views[self.views.unlabeled[1]])
        else:
            x_student = views[self.views.unlabeled[0]]
            if self.mode == "function_matching" and self.mixup_alpha > 0:
                lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
                perm = torch.randperm(x_student.shape[0], device=x_student.device)
                x_student = lam * x_student + (1 - lam) * x_student[perm]
            target = self.teach(x_student)  # the very same (mixed) tensor the student sees
        logits = model(x_student)
        loss_u = self.temperature**2 * kl_divergence(target, logits.float() / self.temperature).mean()
        loss = loss_u
        logs: dict[str, Any] = {"loss_u": loss_u.detach()}
        agreement = (logits.detach().argmax(-1) == target.argmax(-1)).float().mean()
        logs["agreement"] = agreement
        if self.lambda_l > 0:
            loss_l = F.cross_entropy(model(batch.labeled[self.views.labeled[0]]).float(), batch.labeled.y)
            loss = loss + self.lambda_l * loss_l
            logs["loss_l"] = loss_l.detach()
        return StepOutput(loss=loss, logs=logs)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher_sha256": self.teacher_digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("teacher_sha256") != self.teacher_digest:
            raise ConfigError(
                "the teacher's weights changed since this run started: resume with the original teacher or start a "
                "new --out"
            )
