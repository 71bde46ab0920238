"""A two-hidden-layer MLP for vector data (images are flattened)."""

from __future__ import annotations

import math

from torch import nn

from fewlabels.models.base import MODELS


class MLP(nn.Sequential):
    """Flatten -> [Linear -> BatchNorm1d -> ReLU] x len(hidden); outputs the last hidden layer."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (256, 256)):
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            # No bias: the BatchNorm shift replaces it, and a bias before BN gets a zero gradient.
            layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            width = h
        super().__init__(*layers)
        self.num_features = width


@MODELS.register("mlp")
def mlp(*, num_classes: int, input_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Linear]:
    """MLP, 2 hidden layers of 256 with BatchNorm: vectors (D,), or small images flattened."""
    backbone = MLP(math.prod(input_shape))
    return backbone, nn.Linear(backbone.num_features, num_classes)
