"""Mean Teacher (Tarvainen & Valpola 2017): the student matches an EMA-of-weights teacher on another view."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views, forward
from fewlabels.algorithms.common import sigmoid_ramp, softmax_mse
from fewlabels.errors import ConfigError


@ALGORITHMS.register("mean_teacher")
class MeanTeacher(Algorithm):
    """loss = CE(labeled) + w(t) * mean_b ||softmax(student(u_b, eta)) - sg(softmax(teacher(u_b, eta')))||^2 / C.

    The teacher is the engine's EMA of the student (decay `train.ema`, 0.999, warmed up as (1+t)/(10+t)); it is
    also the model that is evaluated and saved, as in the paper. It runs in train mode (BatchNorm uses the
    teacher's own batch statistics, the paper's setting) under no_grad, on an independent weak view eta'; only
    parameters are averaged, so its BatchNorm running statistics are its own (what evaluation uses).
    The student's logits come from the student: USB takes them from the teacher, so its consistency loss has no
    gradient and it scores like supervised training. w(t) is the sigmoid ramp-up over the first `warmup` fraction.
    The reference also applies the consistency term to the labeled batch; here the unlabeled pool holds the labeled
    images too (FixMatch's convention), so they receive it through the unlabeled batch.
    """

    views = Views(labeled=("weak",), unlabeled=("weak", "weak2"))
    ema_keeps_own_buffers = True  # the teacher's BatchNorm statistics come from its own passes, as in the paper

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        lambda_u: float = 50.0,
        warmup: float = 0.4,
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        self.lambda_u = lambda_u
        self.warmup = warmup

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None
        if ctx.ema is None:
            raise ConfigError("mean_teacher needs the engine's EMA model as its teacher; none was given")
        teacher = ctx.ema
        with torch.no_grad():
            was_training = teacher.training
            teacher.train()
            target = teacher(batch.unlabeled["weak2"]).float().softmax(-1)
            teacher.train(was_training)
        logits_l, logits_u = forward(model, batch.labeled["weak"], batch.unlabeled["weak"])
        loss_l = F.cross_entropy(logits_l.float(), batch.labeled.y)
        loss_u = softmax_mse(logits_u, target).mean()
        weight = self.lambda_u * sigmoid_ramp(ctx.progress, self.warmup)
        pseudo = target.argmax(-1)
        agreement = (logits_u.detach().argmax(-1) == pseudo).float().mean()
        return StepOutput(
            loss=loss_l + weight * loss_u,
            logs={"loss_l": loss_l.detach(), "loss_u": loss_u.detach(), "lambda_u": weight, "agreement": agreement},
            pseudo=(pseudo, torch.ones_like(pseudo, dtype=torch.float32)),
        )
