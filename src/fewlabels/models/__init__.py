"""Registered networks behind one interface: `model(x) -> logits`, `model.features(x)`, `model.classifier`."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Sequence

from fewlabels.errors import ConfigError
from fewlabels.models import cnn, mlp, resnet, wideresnet  # noqa: F401  (importing registers the models)
from fewlabels.models.base import IMAGENET_MEAN, IMAGENET_STD, MODELS, Classifier, Normalize, check_drop_path

__all__ = ["MODELS", "Classifier", "Normalize", "create_model", "describe_models", "list_models"]


def create_model(
    name: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dropout: float = 0.0,
    pretrained: bool = False,
    neck: int = 0,
    **options: object,
) -> Classifier:
    """Build model `name` for inputs (N, *input_shape) on the [0, 1] scale, returning a `Classifier`.

    `input_shape` is (C, H, W) for images or (D,) for vectors; `mean`/`std` (one value or one per
    channel/feature) become a fixed normalisation inside the model, identity when None. `dropout` applies
    before the final linear layer. `pretrained=True` downloads ImageNet weights (resnet18 only) and, when no
    mean/std are given, normalises with ImageNet's statistics, which those weights expect. `neck` adds that many
    Linear-BatchNorm-ReLU layers between the backbone and the classifier. `options` go to the
    model's factory (e.g. mlp's `norm`, resnet18's `stem`); the model records them in `model.options` so that
    it can be rebuilt from a checkpoint without downloading anything.

    `drop_path` (residual models only: wrn28_2, wrn28_8, resnet18) is stochastic depth (Huang et al. 2016), the
    model noise of Noisy Student: in training each residual block drops its branch per sample, the last block with
    probability `drop_path` and block l of L with (l / L) * drop_path (linear decay); it must be in [0, 1), 0 is
    off (the default), and Noisy Student's "survival probability 0.8 for the last block" is drop_path=0.2. It adds
    no parameters, so weights load with or without it; eval mode is unaffected. cnn and mlp have no residual
    blocks and refuse it.
    """
    factory = MODELS.get(name)
    key = next(k for k in MODELS.names() if MODELS.get(k) is factory)
    input_shape = _check_shape(input_shape)
    try:
        classes = operator.index(num_classes)
    except TypeError:
        classes = 0
    if classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    params = inspect.signature(factory).parameters
    valid = [k for k in params if k not in ("num_classes", "input_shape", "pretrained")]
    for option in options:
        if option not in valid:
            hint = ""
            if option == "drop_path":
                residual = [n for n in MODELS.names() if "drop_path" in inspect.signature(MODELS.get(n)).parameters]
                hint = f"; stochastic depth needs a residual model ({', '.join(residual)})"
            raise ConfigError(
                f"{option!r} is not an option of model {key!r}: its options are {', '.join(valid) or 'none'}{hint}"
            )
    if "drop_path" in options:
        # Checked before anything is built or downloaded, and stored as a plain float for model.json.
        options = {**options, "drop_path": check_drop_path(options["drop_path"])}
    if pretrained and "stem" in params and options.get("stem", "auto") == "auto":
        options = {**options, "stem": "imagenet"}  # pretrained kernels need the stem they were trained with
    kwargs: dict[str, object] = {"num_classes": classes, "input_shape": input_shape, **options}
    if pretrained:
        if "pretrained" not in inspect.signature(factory).parameters:
            have = [n for n in MODELS.names() if "pretrained" in inspect.signature(MODELS.get(n)).parameters]
            raise ConfigError(f"model {key!r} has no pretrained weights; set pretrained=False or use {', '.join(have)}")
        kwargs["pretrained"] = True
        if mean is None and std is None and input_shape[0] in (1, 3):
            # Grey inputs go through kernels summed over RGB, so the channel-averaged statistics fit best.
            mean = IMAGENET_MEAN if input_shape[0] == 3 else (sum(IMAGENET_MEAN) / 3,)
            std = IMAGENET_STD if input_shape[0] == 3 else (sum(IMAGENET_STD) / 3,)
    backbone, classifier = factory(**kwargs)
    if not isinstance(neck, int) or neck < 0:
        raise ConfigError(f"neck (MLP layers before the classifier) must be a whole number >= 0, got {neck!r}")
    model = Classifier(key, backbone, classifier, input_shape, mean=mean, std=std, dropout=dropout, neck=neck)
    model.options = dict(options)
    return model


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        # operator.index accepts numpy integers (shapes often come from arrays) but not floats.
        shape = tuple(operator.index(s) for s in input_shape)
    except TypeError:
        shape = ()
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ConfigError(
            f"input_shape must be (C, H, W) for images or (D,) for vectors, with positive integer sizes; "
            f"got {input_shape!r}"
        )
    return shape


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


def describe_models() -> list[tuple[str, str]]:
    """(name, one-line description) for each registered model, for `fewlabels models`."""
    out = []
    for name in MODELS.names():
        doc = inspect.getdoc(MODELS.get(name)) or ""
        out.append((name, doc.splitlines()[0] if doc else ""))
    return out
