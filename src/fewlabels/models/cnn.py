"""A small, fast CNN for 8x8 to 32x32 images, sized for CPU training."""

from __future__ import annotations

from torch import nn

from fewlabels.models.base import MODELS, image_shape


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    # No conv bias: BatchNorm's shift makes it redundant and its gradient would be zero.
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Sequential):
    """conv(C->32) -> conv(32->32) -> pool -> conv(32->64) -> pool -> conv(64->128) -> global average pool."""

    def __init__(self, in_channels: int, stem_stride: int = 1):
        super().__init__(
            *_conv_bn_relu(in_channels, 32, stem_stride),
            *_conv_bn_relu(32, 32),
            # ceil_mode keeps odd borders (7 -> 4) and never pools a 1x1 map down to nothing.
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(32, 64),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.num_features = 128
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@MODELS.register("cnn")
def cnn(*, num_classes: int, input_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Linear]:
    """Small fast CNN (~0.1M params) for 8x8 to 32x32 images; the default on CPU."""
    c, h, w = image_shape("cnn", input_shape)
    # With a stride-1 stem the 32-channel convs run at full resolution and a 28x28 FixMatch step is ~6x
    # slower on CPU, so images of 16px and up start with a stride-2 stem; 8x8 digits keep every pixel.
    backbone = SmallCNN(c, stem_stride=2 if min(h, w) >= 16 else 1)
    return backbone, nn.Linear(backbone.num_features, num_classes)
