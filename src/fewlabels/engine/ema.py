"""An exponential moving average of a model's weights, for evaluation."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """EMA of parameters (foreach lerp) with BatchNorm buffers copied from the live model (unless `buffers=False`:
    an EMA that runs its own train-mode passes, Mean Teacher's teacher, keeps its own statistics).

    The decay is warmed up as min(decay, (1 + updates) / (10 + updates)), TensorFlow's `num_updates` rule: the
    average first follows the weights closely and lengthens its memory as training goes on. Without it, 40% of a
    0.999 EMA is still the random initialisation after 900 steps; with the running-mean warm-up 1 - 1/(t + 1) it
    would weigh the poor early weights as much as the latest ones.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module, buffers: bool = True) -> None:
        """Move the average towards `model`'s current weights; with `buffers`, copy its buffers (BatchNorm)."""
        decay = self.current_decay()
        ema_params = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        params = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        if buffers:
            for ema_buf, buf in zip(self.module.buffers(), model.buffers(), strict=True):
                ema_buf.copy_(buf)
        self.updates += 1
