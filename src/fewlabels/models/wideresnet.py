"""FixMatch's WideResNet-28 (WRN-28-2 for CIFAR-10/SVHN, WRN-28-8 for CIFAR-100), with optional stochastic depth."""

from __future__ import annotations

import torch
from torch import nn

from fewlabels.models.base import MODELS, drop_path_rates, image_shape, residual_drop

# FixMatch ports TensorFlow's BatchNorm decay 0.999, which is momentum 0.001 in PyTorch's convention.
_BN_MOMENTUM = 0.001


class BasicBlock(nn.Module):
    """Pre-activation residual block: BN -> LeakyReLU -> conv3x3, twice, plus a shortcut.

    `drop_prob` > 0 adds stochastic depth: in training the residual branch of each sample is dropped with that
    probability (the shortcut is always kept).
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        stride: int,
        activate_before_residual: bool = False,
        drop_prob: float = 0.0,
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=_BN_MOMENTUM)
        self.relu1 = nn.LeakyReLU(0.1, inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=_BN_MOMENTUM)
        self.relu2 = nn.LeakyReLU(0.1, inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if in_planes != out_planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
        self.activate_before_residual = activate_before_residual
        self.drop_path = residual_drop(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output of the block."""
        # As in FixMatch's TensorFlow `residual()`: conv1 always sees the activated input. (The common
        # PyTorch port feeds the raw input to conv1 in the first block of groups 2-3, which leaves that
        # block's bn1 without any gradient.) The shortcut takes the raw input, except in the very first
        # block, where the stem output has not been normalised yet.
        out = self.relu1(self.bn1(x))
        if self.activate_before_residual:
            x = out
        residual = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return (x if self.shortcut is None else self.shortcut(x)) + self.drop_path(residual)


class WideResNet(nn.Module):
    """WRN-`depth`-`widen_factor` of FixMatch; outputs globally pooled features of width 64 * widen_factor.

    `drop_path` in [0, 1) turns on stochastic depth: the last of the 3n residual blocks drops its branch with
    probability `drop_path` and earlier blocks with linearly smaller ones (see `drop_path_rates`).
    """

    def __init__(self, in_channels: int = 3, depth: int = 28, widen_factor: int = 2, drop_path: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        rates = drop_path_rates(3 * n, drop_path)
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        self.block1 = self._group(channels[0], channels[1], 1, rates[:n], activate_before_residual=True)
        self.block2 = self._group(channels[1], channels[2], 2, rates[n : 2 * n])
        self.block3 = self._group(channels[2], channels[3], 2, rates[2 * n :])
        self.bn1 = nn.BatchNorm2d(channels[3], momentum=_BN_MOMENTUM)
        self.relu = nn.LeakyReLU(0.1, inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)

    @staticmethod
    def _group(
        cin: int, cout: int, stride: int, drop_probs: list[float], activate_before_residual: bool = False
    ) -> nn.Sequential:
        """One group of len(drop_probs) blocks; the first changes width/resolution, block i drops drop_probs[i]."""
        blocks = [BasicBlock(cin, cout, stride, activate_before_residual, drop_probs[0])]
        blocks += [BasicBlock(cout, cout, 1, drop_prob=p) for p in drop_probs[1:]]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, 64 * widen_factor)."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return torch.flatten(self.pool(self.relu(self.bn1(out))), 1)


def _wrn(
    name: str, widen_factor: int, num_classes: int, input_shape: tuple[int, ...], drop_path: float
) -> tuple[nn.Module, nn.Linear]:
    c, _, _ = image_shape(name, input_shape)
    backbone = WideResNet(c, depth=28, widen_factor=widen_factor, drop_path=drop_path)
    fc = nn.Linear(backbone.num_features, num_classes)
    nn.init.xavier_normal_(fc.weight)
    nn.init.constant_(fc.bias, 0.0)
    return backbone, fc


@MODELS.register("wrn28_2")
def wrn28_2(*, num_classes: int, input_shape: tuple[int, ...], drop_path: float = 0.0) -> tuple[nn.Module, nn.Linear]:
    """WideResNet-28-2 (1.47M params), FixMatch's net for CIFAR-10/SVHN-sized images; slow on CPU.

    drop_path: stochastic depth, the drop probability of the last of the 12 residual blocks (earlier blocks
    decay linearly towards 0); 0 (default) turns it off. Noisy Student uses 0.2 (survival 0.8).
    """
    return _wrn("wrn28_2", 2, num_classes, input_shape, drop_path)


@MODELS.register("wrn28_8")
def wrn28_8(*, num_classes: int, input_shape: tuple[int, ...], drop_path: float = 0.0) -> tuple[nn.Module, nn.Linear]:
    """WideResNet-28-8 (23.4M params), FixMatch's net for CIFAR-100; needs a GPU.

    drop_path: stochastic depth as for wrn28_2 (last block's drop probability; 0 = off).
    """
    return _wrn("wrn28_8", 8, num_classes, input_shape, drop_path)
