"""torchvision's ResNet-18, with a CIFAR-style stem for small images, optional ImageNet weights and stochastic depth."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from fewlabels.errors import ConfigError
from fewlabels.models.base import MODELS, check_drop_path, drop_path_rates, image_shape, residual_drop

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


class StochasticBasicBlock(nn.Module):
    """torchvision's ResNet `BasicBlock` with stochastic depth on its residual branch.

    It takes over the block's own modules under the same names, so its state_dict keys are exactly the block's
    (ImageNet weights and checkpoints of the plain model load into it, and the other way round). In training the
    branch conv-bn-relu-conv-bn of each sample is dropped with probability `drop_prob` (and otherwise scaled by
    1 / (1 - drop_prob)) before it joins the shortcut; in eval mode it computes exactly what the plain block does.
    """

    def __init__(self, block: torchvision.models.resnet.BasicBlock, drop_prob: float):
        super().__init__()
        # Same registration order as torchvision's block, so even the state_dict order is unchanged.
        self.conv1 = block.conv1
        self.bn1 = block.bn1
        self.relu = block.relu
        self.conv2 = block.conv2
        self.bn2 = block.bn2
        self.downsample = block.downsample
        self.stride = block.stride
        self.drop_path = residual_drop(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(shortcut(x) + drop_path(branch(x)))."""
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(identity + self.drop_path(out))


def add_stochastic_depth(net: torchvision.models.ResNet, drop_path: float) -> None:
    """Replace every BasicBlock of `net` by a `StochasticBasicBlock`, drop probabilities decaying linearly.

    The last block drops its branch with probability `drop_path`, block l of L with (l / L) * drop_path. The
    weights are kept (the new blocks reuse the old modules); drop_path = 0 leaves `net` unchanged.
    """
    layers = [getattr(net, f"layer{i}") for i in range(1, 5)]
    blocks = [(layer, i) for layer in layers for i in range(len(layer))]
    rates = drop_path_rates(len(blocks), drop_path)
    if not any(rates):
        return
    for (layer, i), rate in zip(blocks, rates, strict=True):
        block = layer[i]
        if not isinstance(block, torchvision.models.resnet.BasicBlock):
            raise TypeError(f"stochastic depth expects torchvision BasicBlocks, got {type(block).__name__}")
        layer[i] = StochasticBasicBlock(block, rate)


@MODELS.register("resnet18")
def resnet18(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    pretrained: bool = False,
    stem: str = "auto",
    drop_path: float = 0.0,
) -> tuple[nn.Module, nn.Linear]:
    """ResNet-18 (11.2M params), CIFAR-style stem for images <= 64px; can load ImageNet weights.

    stem: 'cifar' (3x3 stride 1, no max-pool), 'imagenet' (7x7 stride 2 and max-pool) or 'auto' (cifar for
    images of 64 px or less unless pretrained). drop_path: stochastic depth, the drop probability of the last of
    the 8 residual blocks (earlier blocks decay linearly towards 0); 0 (default) turns it off.
    """
    c, h, w = image_shape("resnet18", input_shape)
    if stem not in ("auto", "cifar", "imagenet"):
        raise ConfigError(f"resnet18 stem must be 'auto', 'cifar' or 'imagenet', got {stem!r}")
    drop_path = check_drop_path(drop_path)  # before any download
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
    add_stochastic_depth(net, drop_path)
    net.fc = nn.Identity()
    net.num_features = fc.in_features
    return net, fc
