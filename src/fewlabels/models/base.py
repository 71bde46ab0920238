"""The model registry and the wrapper that gives every network the same interface."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from fewlabels.errors import ConfigError, DataError
from fewlabels.registry import Registry

# A factory builds the bare network for one input shape: a backbone returning (N, F) features and the final
# linear layer. Normalisation and dropout are added by `create_model`, so every family gets them the same way.
ModelFactory = Callable[..., tuple[nn.Module, nn.Linear]]

MODELS: Registry[ModelFactory] = Registry("model")

# torchvision's ImageNet statistics, used with pretrained weights when the caller gives no mean/std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def drop_path_rates(num_blocks: int, drop_path: float) -> list[float]:
    """Per-block drop probabilities of stochastic depth with the linear-decay rule (Huang et al. 2016).

    Block l of L (1-based, input to output) is dropped with probability (l / L) * drop_path, i.e. it survives
    with probability 1 - (l / L) * (1 - p_L) where p_L = 1 - drop_path is the last block's survival: the first
    block is almost always kept and the last one is dropped with probability `drop_path`. `drop_path` must be in
    [0, 1); 0 gives all zeros (stochastic depth off).
    """
    drop_path = check_drop_path(drop_path)
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be positive, got {num_blocks}")
    # l / L is exactly 1.0 for the last block, so it gets exactly `drop_path`.
    return [drop_path * (layer / num_blocks) for layer in range(1, num_blocks + 1)]


def survival_probabilities(num_blocks: int, drop_path: float) -> list[float]:
    """Per-block survival probabilities, `1 - drop_path_rates(num_blocks, drop_path)`; the last is 1 - drop_path."""
    return [1.0 - rate for rate in drop_path_rates(num_blocks, drop_path)]


def check_drop_path(drop_path: object) -> float:
    """Return `drop_path` as a float, or raise a ConfigError unless it is a real number in [0, 1)."""
    if isinstance(drop_path, bool) or not isinstance(drop_path, numbers.Real) or not 0.0 <= float(drop_path) < 1.0:
        raise ConfigError(
            f"drop_path (stochastic depth: drop probability of the last residual block) must be a number "
            f"in [0, 1), got {drop_path!r}"
        )
    return float(drop_path)


def residual_drop(p: float) -> StochasticDepth:
    """Stochastic depth for one residual branch, dropped with probability `p` per sample.

    In training each sample's branch output is zeroed with probability `p` and otherwise scaled by 1 / (1 - p);
    in eval mode, or when p = 0, it is the identity. It has no parameters or buffers, so a model's state_dict
    keys are the same with and without it.
    """
    return StochasticDepth(p, mode="row")


def image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return (C, H, W) from `input_shape`, or raise a ConfigError pointing vector data at `mlp`."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"model {model!r} takes images (C, H, W) but the input shape is {tuple(input_shape)}; "
            "use model 'mlp' for vector (D,) inputs"
        )
    c, h, w = input_shape
    return c, h, w


class Normalize(nn.Module):
    """Fixed `(x - mean) / std` per channel (images) or per feature (vectors); buffers, never trained."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, input_shape: tuple[int, ...], mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.input_shape = tuple(input_shape)
        n = self.input_shape[0]
        # Identity stats are still stored so every state_dict has the same keys and a checkpoint always
        # carries the normalisation that its weights were trained with.
        self.register_buffer("mean", _stats("mean", mean, n, 0.0), persistent=True)
        self.register_buffer("std", _stats("std", std, n, 1.0), persistent=True)
        if not bool((self.std > 0).all()):
            raise ConfigError(f"std must be positive, got {self.std.tolist()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise `x` of shape (N, *input_shape)."""
        if x.dim() != len(self.input_shape) + 1 or x.shape[1] != self.input_shape[0]:
            kind = "images (N, C, H, W)" if len(self.input_shape) == 3 else "vectors (N, D)"
            raise DataError(
                f"the model expects {kind} with input shape {self.input_shape}, got a tensor of shape {tuple(x.shape)}"
            )
        view = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(view)) / self.std.view(view)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}"


def _stats(what: str, values: Sequence[float] | None, n: int, default: float) -> torch.Tensor:
    """Expand per-channel/feature statistics to length `n` (one value broadcasts)."""
    if values is None:
        return torch.full((n,), default)
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise ConfigError(f"{what} has {t.numel()} values but the input has {n} channels/features")
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{what} must be finite, got {t.tolist()}")
    return t


class Classifier(nn.Module):
    """Normalise -> backbone -> dropout -> `classifier`; `features(x)` gives the penultimate (N, F) output.

    Algorithms may add auxiliary heads on the same features (`add_head`, e.g. ReMixMatch's rotation head); they are
    trained and checkpointed with the model but left out of the saved model that evaluation and prediction load.
    """

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        classifier: nn.Linear,
        input_shape: tuple[int, ...],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dropout: float = 0.0,
        neck: int = 0,
    ):
        super().__init__()
        self.name = name
        self.input_shape = tuple(input_shape)
        self.num_features = classifier.in_features
        self.num_classes = classifier.out_features
        self.normalize = Normalize(self.input_shape, mean, std)
        self.backbone = backbone
        # Optional MLP layers between the backbone and the classifier: SimCLRv2 fine-tunes from the first layer of
        # its projection head, so the pretrained model carries them and the fine-tuned one keeps the first.
        f = self.num_features
        self.neck = nn.Sequential(
            *[nn.Sequential(nn.Linear(f, f, bias=False), nn.BatchNorm1d(f), nn.ReLU(inplace=True)) for _ in range(neck)]
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier
        self.heads = nn.ModuleDict()

    def add_head(self, name: str, out_features: int) -> nn.Linear:
        """Add a linear head on the penultimate features; `forward(x, with_heads=True)` returns its outputs."""
        if name in self.heads:
            raise ValueError(f"the model already has a head named {name!r}")
        head = nn.Linear(self.num_features, out_features)
        self.heads[name] = head
        return head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, F) of inputs on the [0, 1] scale (before dropout)."""
        return self.backbone(self.normalize(x))

    def forward(
        self, x: torch.Tensor, with_heads: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (N, num_classes); with `with_heads`, also each auxiliary head's outputs by name."""
        feats = self.dropout(self.neck(self.features(x)))
        logits = self.classifier(feats)
        if not with_heads:
            return logits
        return logits, {name: head(feats) for name, head in self.heads.items()}
