"""Image ops on float batches (n, C, H, W) in [0, 1], with one magnitude per sample.

Each op mirrors the PIL operation that FixMatch's RandAugment uses, but works on a whole batch at once so that
augmentation can run on the training device. Magnitudes are (n,) tensors in the op's own units (an enhance
factor, degrees, pixels, bits, a threshold on the 0..255 scale); ops without a magnitude accept and ignore one
so that every op has the same signature.
"""

from __future__ import annotations

import torch
from torch import Tensor

FILL = 0.5
"""Value given to pixels that a geometric op moves in from outside the image (FixMatch fills gray 128)."""

# ITU-R 601-2 luma weights, the ones PIL's convert("L") uses.
_LUMA = (0.299, 0.587, 0.114)


def _per_sample(m: Tensor, x: Tensor) -> Tensor:
    """Per-sample magnitudes as (n, 1, 1, 1) in x's dtype and device, to broadcast over C, H, W."""
    return torch.as_tensor(m).to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL ImageEnhance: interpolate (factor < 1) or extrapolate (factor > 1) away from `degenerate`."""
    return (degenerate + _per_sample(factor, x) * (x - degenerate)).clamp_(0.0, 1.0)


def _quantize(x: Tensor) -> Tensor:
    """Float values 0..255 (integers), the scale PIL's integer ops work on."""
    return (x * 255.0).round_().clamp_(0.0, 255.0)


def grayscale(x: Tensor) -> Tensor:
    """Luma (n, 1, H, W) of an RGB batch; the channel mean for other channel counts."""
    if x.shape[1] == 3:
        weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    return x.mean(dim=1, keepdim=True)


def identity(x: Tensor, magnitude: Tensor | None = None) -> Tensor:
    """Return the batch unchanged."""
    return x


def auto_contrast(x: Tensor, magnitude: Tensor | None = None) -> Tensor:
    """Stretch each sample's channels so their min maps to 0 and max to 1 (PIL ImageOps.autocontrast)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    # A flat channel has nothing to stretch; PIL leaves it as it is.
    stretched = (x - lo) / span.clamp_min(1e-12)
    return torch.where(span > 0, stretched, x).clamp_(0.0, 1.0)


def brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Scale intensities by `factor` (PIL ImageEnhance.Brightness: blend with black)."""
    return (x * _per_sample(factor, x)).clamp_(0.0, 1.0)


def color(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each RGB sample with its own grayscale (PIL ImageEnhance.Color); single-channel input is kept."""
    if x.shape[1] != 3:
        return x
    return _blend(grayscale(x), x, factor)


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each sample with the mean of its grayscale (PIL ImageEnhance.Contrast)."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(mean, x, factor)


def sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each sample with its smoothed self, border pixels kept (PIL ImageEnhance.Sharpness).

    The smoothing is PIL's ImageFilter.SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13.
    """
    h, w = x.shape[2:]
    if h < 3 or w < 3:
        return x
    # SMOOTH is a 3x3 box plus 4x the centre, over 13; shifted adds beat a 1-channel conv2d on CPU.
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = (box + 4.0 * x[:, :, 1:-1, 1:-1]).div_(13.0)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, factor)


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top `bits` bits (1..8) of each 8-bit value (PIL ImageOps.posterize)."""
    step = torch.exp2(8.0 - _per_sample(bits, x))
    return (torch.div(_quantize(x), step, rounding_mode="floor") * step).div_(255.0)


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert values at or above `threshold` (0..256 on the 0..255 scale; 256 changes nothing)."""
    return torch.where(x * 255.0 >= _per_sample(threshold, x), 1.0 - x, x)


def equalize(x: Tensor, magnitude: Tensor | None = None) -> Tensor:
    """Equalize each sample's channels through their 256-bin histograms (PIL ImageOps.equalize)."""
    n, c, h, w = x.shape
    q = _quantize(x).long().reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, q, torch.ones_like(q))
    # PIL's step leaves out the count of the highest occupied bin, so that bin always maps to 255 or above.
    last_bin = 255 - (hist.flip(1) > 0).long().argmax(dim=1, keepdim=True)
    step = (hist.sum(dim=1, keepdim=True) - hist.gather(1, last_bin)) // 255
    below = hist.cumsum(dim=1) - hist
    lut = ((below + step // 2) // step.clamp_min(1)).clamp_(max=255)
    # A channel with (almost) a single value has no histogram to spread; PIL keeps it.
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device))
    return lut.gather(1, q).view(n, c, h, w).to(x.dtype).div_(255.0)


def affine_warp(x: Tensor, matrix: Tensor) -> Tensor:
    """Resample each sample at input point `matrix @ (x, y, 1)` for output point (x, y), nearest neighbour.

    Coordinates are PIL's: pixels, origin at the top-left image corner, pixel centres at i + 0.5; `matrix`
    is (n, 2, 3). Pixels that come from outside the image are filled with FILL.
    """
    n, c, h, w = x.shape
    m = matrix.to(device=x.device, dtype=torch.float32).view(n, 6, 1, 1).unbind(1)
    xs = torch.arange(w, device=x.device, dtype=torch.float32).add_(0.5).view(1, 1, w)
    ys = torch.arange(h, device=x.device, dtype=torch.float32).add_(0.5).view(1, h, 1)
    # Nearest neighbour the way PIL picks it: the pixel whose cell contains the point (floor), not
    # grid_sample's round-half-even, so results match PIL's transform pixel for pixel.
    col = (m[0] * xs + m[1] * ys + m[2]).floor_()
    row = (m[3] * xs + m[4] * ys + m[5]).floor_()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    source = (row.clamp_(0, h - 1) * w + col.clamp_(0, w - 1)).long()
    out = x.reshape(n, c, h * w).gather(2, source.view(n, 1, h * w).expand(n, c, h * w))
    return torch.where(inside.view(n, 1, h, w), out.view(n, c, h, w), FILL)


def _matrix(a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor) -> Tensor:
    """(n, 2, 3) affine matrices from per-sample coefficients."""
    return torch.stack([a, b, c, d, e, f], dim=1).view(-1, 2, 3)


def rotate_matrix(degrees: Tensor, height: int, width: int) -> Tensor:
    """Matrices of a counter-clockwise rotation by `degrees` about the image centre (PIL Image.rotate)."""
    # The matrix maps output to input points, so it holds the opposite rotation.
    angle = torch.deg2rad(-degrees.float())
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    return _matrix(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def shear_x_matrix(shear: Tensor) -> Tensor:
    """Matrices of PIL's horizontal shear: input x = x + shear * y (about the top-left corner)."""
    one, zero = torch.ones_like(shear), torch.zeros_like(shear)
    return _matrix(one, shear, zero, zero, one, zero).float()


def shear_y_matrix(shear: Tensor) -> Tensor:
    """Matrices of PIL's vertical shear: input y = y + shear * x (about the top-left corner)."""
    one, zero = torch.ones_like(shear), torch.zeros_like(shear)
    return _matrix(one, zero, zero, shear, one, zero).float()


def translate_x_matrix(pixels: Tensor) -> Tensor:
    """Matrices of PIL's horizontal translation: input x = x + pixels (content moves left for pixels > 0)."""
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return _matrix(one, zero, pixels, zero, one, zero).float()


def translate_y_matrix(pixels: Tensor) -> Tensor:
    """Matrices of PIL's vertical translation: input y = y + pixels (content moves up for pixels > 0)."""
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return _matrix(one, zero, zero, zero, one, pixels).float()


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each sample counter-clockwise by its angle in degrees about the centre, filling with FILL."""
    return affine_warp(x, rotate_matrix(torch.as_tensor(degrees, device=x.device), x.shape[2], x.shape[3]))


def shear_x(x: Tensor, shear: Tensor) -> Tensor:
    """Shear each sample horizontally by its factor, as PIL's AFFINE transform (1, s, 0, 0, 1, 0)."""
    return affine_warp(x, shear_x_matrix(torch.as_tensor(shear, device=x.device)))


def shear_y(x: Tensor, shear: Tensor) -> Tensor:
    """Shear each sample vertically by its factor, as PIL's AFFINE transform (1, 0, 0, s, 1, 0)."""
    return affine_warp(x, shear_y_matrix(torch.as_tensor(shear, device=x.device)))


def translate_x(x: Tensor, pixels: Tensor) -> Tensor:
    """Shift each sample's content left by its number of pixels (right if negative), filling with FILL."""
    return affine_warp(x, translate_x_matrix(torch.as_tensor(pixels, device=x.device)))


def translate_y(x: Tensor, pixels: Tensor) -> Tensor:
    """Shift each sample's content up by its number of pixels (down if negative), filling with FILL."""
    return affine_warp(x, translate_y_matrix(torch.as_tensor(pixels, device=x.device)))


__all__ = [
    "FILL",
    "affine_warp",
    "auto_contrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "grayscale",
    "identity",
    "posterize",
    "rotate",
    "rotate_matrix",
    "sharpness",
    "shear_x",
    "shear_x_matrix",
    "shear_y",
    "shear_y_matrix",
    "solarize",
    "translate_x",
    "translate_x_matrix",
    "translate_y",
    "translate_y_matrix",
]
