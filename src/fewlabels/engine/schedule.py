"""Optimizer and learning-rate schedule (FixMatch's SGD + cosine by default)."""

from __future__ import annotations

import math

import torch
from torch import nn

from fewlabels.config import OptimConfig
from fewlabels.errors import ConfigError


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights decay; BatchNorm parameters and biases (every parameter of 1 dimension or fewer) do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over `parameter_groups`."""
    groups = parameter_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}: use 'sgd' or 'adamw'")


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak learning rate at `step`: linear warm-up, then cos(7 pi k / 16 K) or constant."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        k = step - cfg.warmup_steps
        span = max(1, total_steps - cfg.warmup_steps)
        return max(0.0, math.cos(7.0 * math.pi * k / (16.0 * span)))
    raise ConfigError(f"unknown schedule {cfg.schedule!r}: use 'cosine' or 'constant'")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
