"""A two-hidden-layer MLP for vector data (images are flattened)."""

from __future__ import annotations

import math

from torch import nn

from fewlabels.errors import ConfigError
from fewlabels.models.base import MODELS

NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm, "none": None}


class MLP(nn.Sequential):
    """Flatten -> [Linear -> norm -> ReLU] x len(hidden); outputs the last hidden layer."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (256, 256), norm: str = "batch"):
        if norm not in NORMS:
            raise ConfigError(f"mlp norm must be one of {', '.join(NORMS)}, got {norm!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            norm_layer = NORMS[norm]
            # No bias before BatchNorm: its shift replaces it, and such a bias gets a zero gradient.
            layers.append(nn.Linear(width, h, bias=norm != "batch"))
            if norm_layer is not None:
                layers.append(norm_layer(h))
            layers.append(nn.ReLU(inplace=True))
            width = h
        super().__init__(*layers)
        self.num_features = width


@MODELS.register("mlp")
def mlp(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    hidden: tuple[int, ...] = (256, 256),
    norm: str = "batch",
) -> tuple[nn.Module, nn.Linear]:
    """MLP, 2 hidden layers of 256 with BatchNorm: vectors (D,), or small images flattened.

    Options: hidden (layer widths), norm ('batch', 'layer' or 'none'; 'layer' or 'none' make each sample's
    output independent of the batch, e.g. for exact DDP equivalence or tiny batches).
    """
    backbone = MLP(math.prod(input_shape), tuple(hidden), norm)
    return backbone, nn.Linear(backbone.num_features, num_classes)
