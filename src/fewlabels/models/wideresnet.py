"""FixMatch's WideResNet-28 (WRN-28-2 for CIFAR-10/SVHN, WRN-28-8 for CIFAR-100)."""

from __future__ import annotations

import torch
from torch import nn

from fewlabels.models.base import MODELS, image_shape

# FixMatch ports TensorFlow's BatchNorm decay 0.999, which is momentum 0.001 in PyTorch's convention.
_BN_MOMENTUM = 0.001


class BasicBlock(nn.Module):
    """Pre-activation residual block: BN -> LeakyReLU -> conv3x3, twice, plus a shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activate_before_residual: bool = False):
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
        return (x if self.shortcut is None else self.shortcut(x)) + residual


class WideResNet(nn.Module):
    """WRN-`depth`-`widen_factor` of FixMatch; outputs globally pooled features of width 64 * widen_factor."""

    def __init__(self, in_channels: int = 3, depth: int = 28, widen_factor: int = 2):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        self.block1 = self._group(n, channels[0], channels[1], 1, activate_before_residual=True)
        self.block2 = self._group(n, channels[1], channels[2], 2)
        self.block3 = self._group(n, channels[2], channels[3], 2)
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
    def _group(n: int, cin: int, cout: int, stride: int, activate_before_residual: bool = False) -> nn.Sequential:
        blocks = [BasicBlock(cin, cout, stride, activate_before_residual)]
        blocks += [BasicBlock(cout, cout, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, 64 * widen_factor)."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return torch.flatten(self.pool(self.relu(self.bn1(out))), 1)


def _wrn(name: str, widen_factor: int, num_classes: int, input_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Linear]:
    c, _, _ = image_shape(name, input_shape)
    backbone = WideResNet(c, depth=28, widen_factor=widen_factor)
    fc = nn.Linear(backbone.num_features, num_classes)
    nn.init.xavier_normal_(fc.weight)
    nn.init.constant_(fc.bias, 0.0)
    return backbone, fc


@MODELS.register("wrn28_2")
def wrn28_2(*, num_classes: int, input_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Linear]:
    """WideResNet-28-2 (1.47M params), FixMatch's net for CIFAR-10/SVHN-sized images; slow on CPU."""
    return _wrn("wrn28_2", 2, num_classes, input_shape)


@MODELS.register("wrn28_8")
def wrn28_8(*, num_classes: int, input_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Linear]:
    """WideResNet-28-8 (23.4M params), FixMatch's net for CIFAR-100; needs a GPU."""
    return _wrn("wrn28_8", 8, num_classes, input_shape)
