"""torchvision's ResNet-18, with a CIFAR-style stem for small images and optional ImageNet weights."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from fewlabels.errors import ConfigError
from fewlabels.models.base import MODELS, image_shape

# Below this size the ImageNet stem (7x7 stride 2 + max-pool) would shrink e.g. 32x32 to 8x8 before layer1.
_SMALL_IMAGE = 64


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn an RGB conv kernel (O, 3, k, k) into one for `in_channels` inputs with similar activations."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        # A grey image fed as R=G=B would produce exactly this response.
        return weight.sum(dim=1, keepdim=True)
    # Cycle the RGB filters over the new channels and rescale to keep the output magnitude.
    repeats = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


@MODELS.register("resnet18")
def resnet18(
    *, num_classes: int, input_shape: tuple[int, ...], pretrained: bool = False, stem: str = "auto"
) -> tuple[nn.Module, nn.Linear]:
    """ResNet-18 (11.2M params), CIFAR-style stem for images <= 64px; can load ImageNet weights.

    stem: 'cifar' (3x3 stride 1, no max-pool), 'imagenet' (7x7 stride 2 and max-pool) or 'auto' (cifar for
    images of 64 px or less unless pretrained).
    """
    c, h, w = image_shape("resnet18", input_shape)
    if stem not in ("auto", "cifar", "imagenet"):
        raise ConfigError(f"resnet18 stem must be 'auto', 'cifar' or 'imagenet', got {stem!r}")
    small_stem = stem == "cifar" or (stem == "auto" and min(h, w) <= _SMALL_IMAGE and not pretrained)
    if pretrained:
        # Downloads (or reads torch.hub's cache); only reached on explicit request.
        net = torchvision.models.resnet18(weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
        fc = nn.Linear(net.fc.in_features, num_classes)
    else:
        net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        fc = net.fc
    if small_stem:
        # The pretrained kernels only make sense with the stem they were trained with, so it is kept then.
        net.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    elif c != net.conv1.in_channels:
        old = net.conv1
        net.conv1 = nn.Conv2d(c, 64, 7, 2, 3, bias=False)
        if pretrained:
            with torch.no_grad():
                net.conv1.weight.copy_(adapt_input_conv(old.weight, c))
        else:
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    net.num_features = fc.in_features
    return net, fc
