"""An exponential moving average of a model's weights, for evaluation."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """EMA of parameters (foreach lerp) with BatchNorm buffers copied from the live model.

    The decay is warmed up as min(decay, 1 - 1/(updates + 1)) (Tarvainen & Valpola 2017), so a short run's EMA is
    the running mean of its weights rather than mostly the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, 1.0 - 1.0 / (self.updates + 1))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights."""
        decay = self.current_decay()
        ema_params = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        params = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buf, buf in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)
        self.updates += 1
