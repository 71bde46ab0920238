"""Augmentation policies on whole batches, where every sample draws its own ops and magnitudes.

Peers run PIL RandAugment per image in DataLoader workers; here each policy is a handful of batched tensor
ops on whatever device the batch lives on. Random draws come only from the `generator` argument (the global
RNG of x's device when None), and how many draws a call makes depends only on the batch shape and the
arguments, never on the pixel values, so a seeded stream is reproducible and resumable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from fewlabels.augment import ops
from fewlabels.errors import ConfigError


def _check_dtype(x: Tensor) -> None:
    """Refuse dtypes whose value scale is ambiguous (int64 could be 0..255 or anything)."""
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ConfigError(
            f"expected uint8 images (0..255) or float images in [0, 1], got dtype {x.dtype}; "
            "convert with x.to(torch.uint8) or x.float() / 255"
        )


def to_float(x: Tensor) -> Tensor:
    """uint8 images to float32 in [0, 1] (x / 255); floating tensors pass through as float32."""
    _check_dtype(x)
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


def _images(x: Tensor) -> Tensor:
    """Check for an (N, C, H, W) batch and return it as float32."""
    _check_images(x)
    return to_float(x)


def _check_images(x: Tensor) -> None:
    """Refuse anything but an (N, C, H, W) batch of a usable dtype."""
    if x.ndim != 4:
        raise ConfigError(
            f"image augmentation expects a batch of shape (N, C, H, W), got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0) or use the 'vector' modality for (N, D) features"
        )
    _check_dtype(x)


def _vectors(x: Tensor) -> Tensor:
    """Check for an (N, D) batch and return it as float32."""
    if x.ndim != 2 or not x.is_floating_point():
        raise ConfigError(
            f"vector augmentation expects float features of shape (N, D), got {x.dtype} of shape {tuple(x.shape)}"
        )
    return x.to(torch.float32)


def _check_fraction(name: str, value: float, upper_open: bool = False) -> None:
    """Refuse a fraction outside [0, 1] (or [0, 1) when upper_open)."""
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise ConfigError(f"{name} must be in {bound}, got {value}")


def _reflect(index: Tensor, size: int) -> Tensor:
    """Fold indices in [-(size-1), 2*(size-1)] back into [0, size) by mirroring at the edge pixels."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def weak(x: Tensor, generator: torch.Generator | None = None, hflip: bool = True, translate: float = 0.125) -> Tensor:
    """FixMatch's weak view: per-sample random horizontal flip, then a random whole-pixel reflected shift."""
    _check_fraction("translate", translate, upper_open=True)
    _check_images(x)
    n, c, h, w = x.shape
    device = x.device
    flip = torch.rand(n, generator=generator, device=device) < 0.5 if hflip else None
    # torchvision RandomCrop(size, padding=int(translate * size), padding_mode="reflect"): pad p pixels,
    # then crop at an offset in 0..2p, i.e. a shift in -p..p.
    pad_h, pad_w = int(translate * h), int(translate * w)
    dy = torch.randint(-pad_h, pad_h + 1, (n, 1), generator=generator, device=device)
    dx = torch.randint(-pad_w, pad_w + 1, (n, 1), generator=generator, device=device)
    rows = _reflect(torch.arange(h, device=device) + dy, h)
    cols = _reflect(torch.arange(w, device=device) + dx, w)
    if flip is not None:
        # Flip first, then crop: the crop's column j reads flipped column cols[j], i.e. source w-1-cols[j].
        cols = torch.where(flip[:, None], w - 1 - cols, cols)
    # One gather over flattened pixels, done before the float conversion so uint8 input moves 4x fewer bytes.
    source = (rows.view(n, h, 1) * w + cols.view(n, 1, w)).view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, source).view(n, c, h, w)
    return to_float(out).clamp_(0.0, 1.0)


# --- RandAugment -----------------------------------------------------------------------------------------


# FixMatch's pool maps level v to v * max_v / 10 (+ bias). With `bins` levels we use v * max_v / bins: the same
# for the default 10 bins, and the pool's maximum stays at the top level otherwise. We draw v in 1..bins, so the
# top of each range in the FixMatch paper's table is reachable (e.g. Solarize at threshold 0 inverts the image);
# kekmodel/FixMatch-pytorch draws `randint(1, 10)`, i.e. 1..9, and never reaches it.


def _float_param(level: Tensor, bins: int, max_v: float, bias: float = 0.0) -> Tensor:
    """FixMatch's _float_parameter(v, max_v) + bias."""
    return level.float() * (max_v / bins) + bias


def _int_param(level: Tensor, bins: int, max_v: int, bias: int = 0) -> Tensor:
    """FixMatch's _int_parameter(v, max_v) + bias, in integer arithmetic so that 7 * 30 / 10 is exactly 21."""
    return (level * max_v // bins + bias).float()


def _translate_pixels(level: Tensor, sign: Tensor, bins: int, size: int) -> Tensor:
    """FixMatch's signed shift int(v * size), v up to 0.3, in integers so exact products are not cut short."""
    return sign * (level * (3 * size) // (10 * bins)).float()


# Each entry maps (x, level, sign, bins) to the augmented subset; level is an int tensor in 1..bins and sign
# is +-1. Ranges follow kekmodel/FixMatch-pytorch `fixmatch_augment_pool` (the FixMatch paper's table).
_Apply = Callable[[Tensor, Tensor, Tensor, int], Tensor]
_POOL: tuple[tuple[str, _Apply], ...] = (
    ("AutoContrast", lambda x, v, s, b: ops.auto_contrast(x)),
    ("Brightness", lambda x, v, s, b: ops.brightness(x, _float_param(v, b, 0.9, 0.05))),
    ("Color", lambda x, v, s, b: ops.color(x, _float_param(v, b, 0.9, 0.05))),
    ("Contrast", lambda x, v, s, b: ops.contrast(x, _float_param(v, b, 0.9, 0.05))),
    ("Equalize", lambda x, v, s, b: ops.equalize(x)),
    ("Identity", lambda x, v, s, b: ops.identity(x)),
    ("Posterize", lambda x, v, s, b: ops.posterize(x, _int_param(v, b, 4, 4))),
    ("Rotate", lambda x, v, s, b: ops.rotate(x, s * _int_param(v, b, 30))),
    ("Sharpness", lambda x, v, s, b: ops.sharpness(x, _float_param(v, b, 0.9, 0.05))),
    ("ShearX", lambda x, v, s, b: ops.shear_x(x, s * _float_param(v, b, 0.3))),
    ("ShearY", lambda x, v, s, b: ops.shear_y(x, s * _float_param(v, b, 0.3))),
    ("Solarize", lambda x, v, s, b: ops.solarize(x, 256.0 - _int_param(v, b, 256))),
    ("TranslateX", lambda x, v, s, b: ops.translate_x(x, _translate_pixels(v, s, b, x.shape[3]))),
    ("TranslateY", lambda x, v, s, b: ops.translate_y(x, _translate_pixels(v, s, b, x.shape[2]))),
)

RANDAUGMENT_OPS: tuple[str, ...] = tuple(name for name, _ in _POOL)
"""The 14 op names of FixMatch's RandAugment pool; a plan's op indices index this tuple."""


class RandAugmentPlan(NamedTuple):
    """Every random choice of one randaugment call, each of shape (num_ops, N)."""

    ops: Tensor
    """Op index into RANDAUGMENT_OPS drawn by each sample in each round (int64)."""
    levels: Tensor
    """Magnitude level in 1..magnitude_bins (int64)."""
    signs: Tensor
    """+1 or -1, used by the ops with a direction (rotate, shear, translate)."""
    applied: Tensor
    """Whether the op passed its apply_prob coin (bool)."""
    magnitude_bins: int
    """Number of magnitude levels; level magnitude_bins gives the pool's maximum."""


def sample_randaugment(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    num_ops: int = 2,
    magnitude_bins: int = 10,
    apply_prob: float = 0.5,
) -> RandAugmentPlan:
    """Draw the ops, levels, signs and coins of `n` samples for `num_ops` rounds of RandAugment."""
    if num_ops < 0:
        raise ConfigError(f"num_ops must be >= 0, got {num_ops}")
    if magnitude_bins < 1:
        raise ConfigError(f"magnitude_bins must be >= 1, got {magnitude_bins}")
    _check_fraction("apply_prob", apply_prob)
    shape = (num_ops, n)
    return RandAugmentPlan(
        ops=torch.randint(len(_POOL), shape, generator=generator, device=device),
        levels=torch.randint(1, magnitude_bins + 1, shape, generator=generator, device=device),
        signs=torch.randint(0, 2, shape, generator=generator, device=device).float().mul_(2).sub_(1),
        applied=torch.rand(shape, generator=generator, device=device) < apply_prob,
        magnitude_bins=magnitude_bins,
    )


def apply_randaugment(x: Tensor, plan: RandAugmentPlan) -> Tensor:
    """Apply a drawn plan: per round, each op runs once, on the subset of samples that drew it."""
    x = _images(x)
    num_skip = len(_POOL)  # index given to samples whose coin said no, so they sort last
    for r in range(plan.ops.shape[0]):
        op = torch.where(plan.applied[r], plan.ops[r], num_skip)
        order = torch.argsort(op, stable=True)
        # One host sync per round (for the group sizes) instead of one per op.
        counts = torch.bincount(op, minlength=num_skip + 1).tolist()
        groups = order.split(counts)
        pieces = []
        for (_, apply), idx in zip(_POOL, groups[:num_skip], strict=True):
            if idx.numel() > 0:
                subset = x.index_select(0, idx)
                pieces.append(apply(subset, plan.levels[r, idx], plan.signs[r, idx], plan.magnitude_bins))
        if len(pieces) == 0:
            continue
        pieces.append(x.index_select(0, groups[num_skip]))
        # The pieces come in `order`; scatter them back to their samples' rows.
        x = torch.empty_like(x).index_copy_(0, order, torch.cat(pieces))
    return x.clamp(0.0, 1.0)


def randaugment(
    x: Tensor,
    generator: torch.Generator | None = None,
    num_ops: int = 2,
    magnitude_bins: int = 10,
    apply_prob: float = 0.5,
) -> Tensor:
    """FixMatch's RandAugment (RandAugmentMC): each sample draws num_ops ops, levels and apply_prob coins."""
    x = _images(x)
    plan = sample_randaugment(x.shape[0], generator, x.device, num_ops, magnitude_bins, apply_prob)
    return apply_randaugment(x, plan)


def cutout(x: Tensor, generator: torch.Generator | None = None, size: float = 0.5) -> Tensor:
    """Per sample, fill a square of side round(size * min(H, W)) centred on a random pixel with gray 0.5."""
    _check_fraction("cutout size", size)
    x = _images(x)
    n, _, h, w = x.shape
    device = x.device
    cy = torch.randint(0, h, (n, 1), generator=generator, device=device)
    cx = torch.randint(0, w, (n, 1), generator=generator, device=device)
    side = int(size * min(h, w) + 0.5)
    y0, x0 = cy - side // 2, cx - side // 2
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    # The square is clipped where it crosses the border, not shifted back inside.
    in_rows = (rows >= y0) & (rows < y0 + side)
    in_cols = (cols >= x0) & (cols < x0 + side)
    mask = in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)
    return torch.where(mask, ops.FILL, x).clamp_(0.0, 1.0)


def strong(
    x: Tensor,
    generator: torch.Generator | None = None,
    hflip: bool = True,
    translate: float = 0.125,
    num_ops: int = 2,
    cutout_size: float = 0.5,
    magnitude_bins: int = 10,
    apply_prob: float = 0.5,
) -> Tensor:
    """FixMatch's strong view: weak flip-and-shift, then RandAugment, then cutout."""
    out = weak(x, generator, hflip=hflip, translate=translate)
    out = randaugment(out, generator, num_ops=num_ops, magnitude_bins=magnitude_bins, apply_prob=apply_prob)
    return cutout(out, generator, size=cutout_size)


# --- vectors ----------------------------------------------------------------------------------------------


def vector_weak(
    x: Tensor, generator: torch.Generator | None = None, noise: float = 0.1, scale: Tensor | None = None
) -> Tensor:
    """Add Gaussian noise of `noise` standard deviations of each feature.

    `scale` holds the features' standard deviations (shape (D,)); None means the features are already
    standardised (scale 1). Raw features keep their units, so the noise is `noise * scale` per feature.
    """
    x = _vectors(x)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + noise * (eps if scale is None else eps * scale.to(x.device, x.dtype))


def vector_strong(
    x: Tensor,
    generator: torch.Generator | None = None,
    noise: float = 0.3,
    drop: float = 0.2,
    scale: Tensor | None = None,
    center: Tensor | None = None,
) -> Tensor:
    """Add Gaussian noise of `noise` standard deviations, then reset round(drop * D) random features of each
    sample to their mean (`center`, shape (D,); None: standardised features, mean 0), where they carry no
    information. `scale` as in `vector_weak`."""
    _check_fraction("drop", drop)
    out = vector_weak(x, generator, noise, scale)
    n, d = out.shape
    scores = torch.rand((n, d), generator=generator, device=out.device)
    k = int(drop * d + 0.5)
    if k == 0:
        return out
    dropped = scores.argsort(dim=1)[:, :k]
    if center is None:
        return out.scatter_(1, dropped, 0.0)
    means = center.to(out.device, out.dtype).expand(n, d)
    return out.scatter_(1, dropped, means.gather(1, dropped))
