"""Tests of fewlabels.augment: op semantics (against PIL where it has the op), per-sample randomness,
weak-view exactness, determinism and resumable streams, and the vector policies."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as image_mod

from fewlabels.augment import (
    RANDAUGMENT_OPS,
    VIEWS,
    Augmenter,
    RandAugmentPlan,
    apply_randaugment,
    cutout,
    ops,
    randaugment,
    sample_randaugment,
    strong,
    to_float,
    vector_strong,
    vector_weak,
    weak,
)
from fewlabels.errors import ConfigError

SHAPES = [(1, 8, 8), (3, 8, 8), (1, 28, 28), (3, 32, 32), (1, 17, 23), (3, 17, 23)]


def image_u8(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth pattern plus noise: structured enough for geometry, varied enough that views are told apart."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    base = (torch.sin(xx / 3.0) + torch.cos(yy / 4.0)) * 50 + 128
    noise = torch.randint(-30, 31, (n, c, h, w), generator=g).float()
    return (base + noise).clamp(0, 255).to(torch.uint8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def forced_plan(n: int, op: str, levels: torch.Tensor, signs: torch.Tensor | None = None) -> RandAugmentPlan:
    """A one-round plan in which every sample applies `op` at its given level."""
    k = RANDAUGMENT_OPS.index(op)
    signs = torch.ones(n) if signs is None else signs.float()
    return RandAugmentPlan(
        ops=torch.full((1, n), k),
        levels=levels.view(1, n).long(),
        signs=signs.view(1, n),
        applied=torch.ones(1, n, dtype=torch.bool),
        magnitude_bins=10,
    )


# --- to_float and input checks ----------------------------------------------------------------------------


def test_to_float_scales_uint8_and_passes_floats_as_float32():
    x = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)
    out = to_float(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[[[0.0, 128 / 255, 1.0]]]]))
    f64 = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    assert to_float(f64).dtype == torch.float32
    assert torch.allclose(to_float(f64), f64.float())


def test_integer_non_uint8_and_wrong_rank_are_refused():
    with pytest.raises(ConfigError, match="uint8"):
        to_float(torch.zeros(1, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        strong(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ConfigError, match=r"\(N, D\)"):
        vector_weak(torch.zeros(2, 3, 4))


# --- every op: contract -----------------------------------------------------------------------------------


@pytest.mark.parametrize("op", RANDAUGMENT_OPS)
def test_every_pool_op_keeps_shape_dtype_and_range(op):
    levels = torch.arange(1, 11).repeat(2)
    signs = torch.tensor([1.0] * 10 + [-1.0] * 10)
    for c, h, w in SHAPES:
        x = to_float(image_u8(20, c, h, w))
        out = apply_randaugment(x, forced_plan(20, op, levels, signs))
        assert out.shape == x.shape
        assert out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("c", [1, 3])
def test_ops_take_channels_last_input(c):
    """The public ops work on channels_last batches (a model's memory format) and give the NCHW results."""
    x = to_float(image_u8(4, c, 9, 7))
    xl = x.contiguous(memory_format=torch.channels_last)
    m = torch.tensor([0.3, 0.7, 1.2, 1.9])
    calls = {
        "equalize": lambda t: ops.equalize(t),
        "auto_contrast": lambda t: ops.auto_contrast(t),
        "posterize": lambda t: ops.posterize(t, torch.tensor([1, 3, 5, 8])),
        "solarize": lambda t: ops.solarize(t, torch.tensor([0, 64, 128, 256])),
        "sharpness": lambda t: ops.sharpness(t, m),
        "contrast": lambda t: ops.contrast(t, m),
        "color": lambda t: ops.color(t, m),
        "rotate": lambda t: ops.rotate(t, torch.tensor([-30.0, -5.0, 10.0, 30.0])),
        "shear_x": lambda t: ops.shear_x(t, torch.tensor([-0.3, 0.0, 0.1, 0.3])),
    }
    for name, call in calls.items():
        torch.testing.assert_close(call(xl), call(x), msg=name)


# --- op semantics against PIL, which FixMatch's RandAugment calls -----------------------------------------


def _pil_cases():
    from PIL import Image, ImageEnhance, ImageOps

    def fill(im):
        return 128 if im.mode == "L" else (128, 128, 128)

    def affine(coeffs):
        return lambda im, m: im.transform(im.size, Image.AFFINE, coeffs(m), fillcolor=fill(im))

    return {
        "auto_contrast": (ops.auto_contrast, lambda im, m: ImageOps.autocontrast(im), 0.0),
        "equalize": (ops.equalize, lambda im, m: ImageOps.equalize(im), 0.0),
        "brightness": (ops.brightness, lambda im, m: ImageEnhance.Brightness(im).enhance(m), 0.41),
        "color": (ops.color, lambda im, m: ImageEnhance.Color(im).enhance(m), 0.41),
        "contrast": (ops.contrast, lambda im, m: ImageEnhance.Contrast(im).enhance(m), 0.41),
        "sharpness": (ops.sharpness, lambda im, m: ImageEnhance.Sharpness(im).enhance(m), 0.41),
        "posterize": (ops.posterize, lambda im, m: ImageOps.posterize(im, int(m)), 5),
        "solarize": (ops.solarize, lambda im, m: ImageOps.solarize(im, int(m)), 180),
        "rotate_30": (ops.rotate, lambda im, m: im.rotate(m, fillcolor=fill(im)), 30.0),
        "rotate_-17": (ops.rotate, lambda im, m: im.rotate(m, fillcolor=fill(im)), -17.0),
        "shear_x": (ops.shear_x, affine(lambda m: (1, m, 0, 0, 1, 0)), 0.27),
        "shear_x_neg": (ops.shear_x, affine(lambda m: (1, m, 0, 0, 1, 0)), -0.12),
        "shear_y": (ops.shear_y, affine(lambda m: (1, 0, 0, m, 1, 0)), -0.3),
        "translate_x": (ops.translate_x, affine(lambda m: (1, 0, m, 0, 1, 0)), 5.0),
        "translate_y": (ops.translate_y, affine(lambda m: (1, 0, 0, 0, 1, m)), -3.0),
    }


PIL_CASES = ("auto_contrast", "equalize", "brightness", "color", "contrast", "sharpness", "posterize")
PIL_CASES += ("solarize", "rotate_30", "rotate_-17", "shear_x", "shear_x_neg", "shear_y", "translate_x")
PIL_CASES += ("translate_y",)
# Geometric and bit-level ops match PIL exactly; the others differ only by PIL's integer rounding.
INEXACT_CASES = {"auto_contrast", "brightness", "color", "contrast", "sharpness"}


@pytest.mark.parametrize("case", PIL_CASES)
@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 17, 23), (3, 8, 8)])
def test_op_matches_pil(case, shape):
    torch_op, pil_op, magnitude = _pil_cases()[case]
    c, h, w = shape
    x = image_u8(1, c, h, w, seed=3)
    arr = x[0].numpy()
    pil = image_mod.fromarray(arr[0]) if c == 1 else image_mod.fromarray(arr.transpose(1, 2, 0))
    ref = np.asarray(pil_op(pil, magnitude)).astype(np.int64)
    ref = ref[None] if c == 1 else ref.transpose(2, 0, 1)
    out = torch_op(to_float(x), torch.tensor([magnitude]))[0]
    diff = np.abs((out * 255).round().numpy().astype(np.int64) - ref)
    assert diff.max() <= (1 if case in INEXACT_CASES else 0)


# --- op semantics by hand ---------------------------------------------------------------------------------


def test_identity_returns_input():
    x = to_float(image_u8(6, 3, 17, 23))
    out = apply_randaugment(x, forced_plan(6, "Identity", torch.arange(1, 7)))
    assert torch.equal(out, x)


@pytest.mark.parametrize("op", [ops.brightness, ops.color, ops.contrast, ops.sharpness])
def test_enhance_factor_one_is_identity(op):
    x = to_float(image_u8(4, 3, 16, 16))
    assert torch.allclose(op(x, torch.ones(4)), x, atol=1e-6)
    # and a factor below one changes the image, so the check above is not vacuous
    assert not torch.allclose(op(x, torch.full((4,), 0.3)), x, atol=1e-3)


def test_color_keeps_grayscale_input_and_factor_zero_gives_gray():
    gray = to_float(image_u8(2, 1, 8, 8))
    assert torch.equal(ops.color(gray, torch.zeros(2)), gray)
    rgb = to_float(image_u8(2, 3, 8, 8))
    out = ops.color(rgb, torch.zeros(2))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


def test_solarize_threshold_semantics():
    x = torch.arange(256, dtype=torch.float32).div(255).view(1, 1, 16, 16)
    assert torch.equal(ops.solarize(x, torch.tensor([256.0])), x)
    out = ops.solarize(x, torch.tensor([128.0]))
    low, high = x < 128 / 255 - 1e-6, x >= 128 / 255 - 1e-6
    assert torch.equal(out[low], x[low])
    assert torch.allclose(out[high], 1 - x[high])
    assert torch.allclose(ops.solarize(x, torch.tensor([0.0])), 1 - x)


@pytest.mark.parametrize("bits", [1, 2, 4, 6, 8])
def test_posterize_keeps_at_most_2_to_the_bits_levels(bits):
    x = torch.arange(256, dtype=torch.float32).div(255).view(1, 1, 16, 16)
    out = ops.posterize(x, torch.tensor([bits]))
    values = (out * 255).round()
    assert values.unique().numel() == 2**bits
    assert torch.all(values % 2 ** (8 - bits) == 0)
    assert torch.all(out <= x + 1e-6)


def test_equalize_spreads_a_low_contrast_image():
    g = gen(1)
    x = torch.randint(100, 121, (3, 3, 20, 20), generator=g, dtype=torch.uint8)
    out = ops.equalize(to_float(x))
    assert (out.amin(dim=(2, 3)) <= 0.06).all()
    assert (out.amax(dim=(2, 3)) >= 0.99).all()
    # a monotone map: the order of pixel values is kept within a channel
    flat_in, flat_out = x[0, 0].flatten().float(), out[0, 0].flatten()
    order = flat_in.argsort()
    assert torch.all(flat_out[order].diff() >= 0)


def test_equalize_leaves_a_flat_image():
    x = torch.full((2, 3, 8, 8), 0.4)
    assert torch.allclose(ops.equalize(x), (x * 255).round() / 255)


def test_auto_contrast_maps_min_to_zero_and_max_to_one_per_channel():
    x = 0.3 + 0.2 * torch.rand(5, 3, 9, 11, generator=gen(2))
    out = ops.auto_contrast(x)
    assert torch.allclose(out.amin(dim=(2, 3)), torch.zeros(5, 3))
    assert torch.allclose(out.amax(dim=(2, 3)), torch.ones(5, 3))
    flat = torch.full((1, 1, 4, 4), 0.7)
    assert torch.equal(ops.auto_contrast(flat), flat)


def test_rotate_zero_is_identity_and_90_is_rot90():
    x = to_float(image_u8(3, 3, 16, 16))
    assert torch.equal(ops.rotate(x, torch.zeros(3)), x)
    # PIL rotates counter-clockwise, as torch.rot90 with k=1 over (H, W)
    assert torch.equal(ops.rotate(x, torch.full((3,), 90.0)), torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(ops.rotate(x, torch.full((3,), -90.0)), torch.rot90(x, -1, dims=(2, 3)))
    assert torch.equal(ops.rotate(x, torch.full((3,), 180.0)), torch.flip(x, dims=(2, 3)))


def test_rotate_fills_corners_gray():
    x = torch.zeros(1, 1, 21, 21)
    out = ops.rotate(x, torch.tensor([45.0]))
    assert out[0, 0, 0, 0] == ops.FILL and out[0, 0, 10, 10] == 0.0


def test_translate_shifts_content_by_whole_pixels():
    x = to_float(image_u8(2, 3, 17, 23))
    out = ops.translate_x(x, torch.tensor([4.0, -3.0]))
    assert torch.equal(out[0, :, :, :-4], x[0, :, :, 4:])
    assert (out[0, :, :, -4:] == ops.FILL).all()
    assert torch.equal(out[1, :, :, 3:], x[1, :, :, :-3])
    assert (out[1, :, :, :3] == ops.FILL).all()
    out = ops.translate_y(x, torch.tensor([2.0, -5.0]))
    assert torch.equal(out[0, :, :-2], x[0, :, 2:])
    assert torch.equal(out[1, :, 5:], x[1, :, :-5])
    assert (out[1, :, :5] == ops.FILL).all()


def test_shear_x_is_about_the_top_left_corner():
    x = to_float(image_u8(1, 1, 16, 16))
    out = ops.shear_x(x, torch.tensor([0.3]))
    # PIL samples output pixel centre (x + 0.5, y + 0.5) at input x + 0.5 + 0.3 * (y + 0.5), then floors.
    assert torch.equal(out[0, 0, 0], x[0, 0, 0])  # top row: x + 0.65 -> x
    assert torch.equal(out[0, 0, -1, :-5], x[0, 0, -1, 5:])  # bottom row: x + 5.15 -> x + 5
    assert (out[0, 0, -1, -5:] == ops.FILL).all()


# --- RandAugment: pool magnitudes (kekmodel/FixMatch-pytorch fixmatch_augment_pool) -----------------------


def test_pool_magnitudes_follow_fixmatch_pool():
    x = to_float(image_u8(4, 3, 32, 32))
    lv = torch.tensor([1, 4, 7, 10])

    def run(op, signs=None):
        return apply_randaugment(x, forced_plan(4, op, lv, signs))

    enhance = torch.tensor([0.14, 0.41, 0.68, 0.95])  # v * 0.9 / 10 + 0.05
    assert torch.allclose(run("Brightness"), ops.brightness(x, enhance), atol=1e-6)
    assert torch.allclose(run("Contrast"), ops.contrast(x, enhance), atol=1e-6)
    assert torch.allclose(run("Color"), ops.color(x, enhance), atol=1e-6)
    assert torch.allclose(run("Sharpness"), ops.sharpness(x, enhance), atol=1e-6)
    assert torch.equal(run("Posterize"), ops.posterize(x, torch.tensor([4, 5, 6, 8])))  # int(v*4/10)+4
    assert torch.equal(run("Solarize"), ops.solarize(x, torch.tensor([231.0, 154.0, 77.0, 0.0])))
    signs = torch.tensor([1, -1, 1, -1])
    assert torch.equal(run("Rotate", signs), ops.rotate(x, torch.tensor([3.0, -12.0, 21.0, -30.0])))
    shear = torch.tensor([0.03, -0.12, 0.21, -0.3])
    assert torch.equal(run("ShearX", signs), ops.shear_x(x, shear))
    assert torch.equal(run("ShearY", signs), ops.shear_y(x, shear))
    pixels = torch.tensor([0.0, -3.0, 6.0, -9.0])  # int(v * 0.3 / 10 * 32)
    assert torch.equal(run("TranslateX", signs), ops.translate_x(x, pixels))
    assert torch.equal(run("TranslateY", signs), ops.translate_y(x, pixels))
    assert torch.equal(run("Equalize"), ops.equalize(x))
    assert torch.equal(run("AutoContrast"), ops.auto_contrast(x))


def test_plan_draws_differ_per_sample():
    plan = sample_randaugment(256, gen(0), num_ops=2)
    assert plan.ops.shape == plan.levels.shape == plan.applied.shape == (2, 256)
    assert plan.ops[0].unique().numel() == len(RANDAUGMENT_OPS)
    assert plan.levels.min() == 1 and plan.levels.max() == 10
    assert 0.35 < plan.applied.float().mean() < 0.65
    assert set(plan.signs.unique().tolist()) == {-1.0, 1.0}
    # rounds are drawn independently, not one op per batch
    assert (plan.ops[0] != plan.ops[1]).float().mean() > 0.8


def test_batched_plan_equals_per_sample_application():
    n = 48
    x = to_float(image_u8(n, 3, 17, 23, seed=5))
    plan = sample_randaugment(n, gen(7), num_ops=3, apply_prob=0.7)
    batched = apply_randaugment(x, plan)
    for i in range(n):
        one = RandAugmentPlan(
            plan.ops[:, i : i + 1],
            plan.levels[:, i : i + 1],
            plan.signs[:, i : i + 1],
            plan.applied[:, i : i + 1],
            plan.magnitude_bins,
        )
        assert torch.equal(batched[i : i + 1], apply_randaugment(x[i : i + 1], one)), f"sample {i}"
    # samples whose ops were all skipped or Identity come back untouched; rotated ones do not
    identity = RANDAUGMENT_OPS.index("Identity")
    untouched = (~plan.applied | (plan.ops == identity)).all(dim=0)
    assert untouched.any() and (~untouched).any()
    assert torch.equal(batched[untouched], x[untouched])
    rotated = (plan.applied & (plan.ops == RANDAUGMENT_OPS.index("Rotate"))).any(dim=0)
    assert rotated.any()
    assert all(not torch.equal(batched[i], x[i]) for i in rotated.nonzero().flatten().tolist())


def test_randaugment_apply_prob_zero_is_identity_and_num_ops_zero_too():
    x = to_float(image_u8(8, 3, 16, 16))
    assert torch.equal(randaugment(x, gen(0), apply_prob=0.0), x)
    assert torch.equal(randaugment(x, gen(0), num_ops=0), x)


# --- per-sample independence ------------------------------------------------------------------------------


def _distinct(batch: torch.Tensor) -> int:
    return len({tuple(row.tolist()) for row in (batch * 255).round().to(torch.uint8).flatten(1)})


def test_copies_of_one_image_get_different_views():
    x = image_u8(1, 3, 32, 32).expand(64, 3, 32, 32).contiguous()
    assert _distinct(strong(x, gen(0))) >= 60
    assert _distinct(weak(x, gen(0))) >= 20
    assert _distinct(randaugment(x, gen(0))) >= 30
    assert _distinct(cutout(x, gen(0))) >= 50


# --- weak view --------------------------------------------------------------------------------------------


def _reflect_crops(x: torch.Tensor, pad_h: int, pad_w: int | None = None) -> torch.Tensor:
    """All crops of a reflect-padded image (1, C, H, W): the outputs torchvision's RandomCrop can give."""
    pad_w = pad_h if pad_w is None else pad_w
    h, w = x.shape[2:]
    padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    crops = [padded[0, :, i : i + h, j : j + w] for i in range(2 * pad_h + 1) for j in range(2 * pad_w + 1)]
    return torch.stack(crops)


def _match(views: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Index of the candidate each view equals exactly, or -1."""
    eq = (views[:, None] == candidates[None]).flatten(2).all(dim=2)
    return torch.where(eq.any(dim=1), eq.float().argmax(dim=1), -1)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8), (1, 17, 23)])
def test_weak_is_an_exact_reflect_pad_and_crop(shape):
    c, h, w = shape
    x = to_float(image_u8(1, c, h, w))
    n = 200
    views = weak(x.expand(n, c, h, w), gen(3), hflip=False)
    pad_h, pad_w = int(0.125 * h), int(0.125 * w)
    cands = _reflect_crops(x, pad_h, pad_w)
    idx = _match(views, cands)
    assert (idx >= 0).all(), "every weak view is a reflect-pad-and-crop of the input"
    assert idx.unique().numel() >= min(len(cands), 40)


def test_weak_flips_only_when_asked():
    x = to_float(image_u8(1, 3, 32, 32))
    n = 200
    plain, flipped = _reflect_crops(x, 4), _reflect_crops(x.flip(3), 4)
    views = weak(x.expand(n, 3, 32, 32), gen(4), hflip=True)
    as_plain, as_flipped = _match(views, plain) >= 0, _match(views, flipped) >= 0
    assert (as_plain ^ as_flipped).all()
    assert 0.35 < as_flipped.float().mean() < 0.65
    views = weak(x.expand(n, 3, 32, 32), gen(4), hflip=False)
    assert (_match(views, plain) >= 0).all()


def test_weak_without_flip_or_shift_is_identity():
    x = image_u8(4, 1, 8, 8)
    assert torch.equal(weak(x, gen(0), hflip=False, translate=0.0), to_float(x))


# --- cutout -----------------------------------------------------------------------------------------------


def test_cutout_fills_the_square_around_the_drawn_centre():
    n, c, h, w = 300, 3, 32, 32
    x = torch.zeros(n, c, h, w)
    out = cutout(x, gen(9), size=0.5)
    # replay the draws: cutout draws the centre row, then the centre column
    g = gen(9)
    cy = torch.randint(0, h, (n,), generator=g)
    cx = torch.randint(0, w, (n,), generator=g)
    side = 16
    filled = out == ops.FILL
    assert torch.equal(filled, filled[:, :1].expand_as(filled))  # all channels alike
    counts = filled[:, 0].flatten(1).sum(dim=1)
    interior = (cy >= side // 2) & (cy + side // 2 <= h) & (cx >= side // 2) & (cx + side // 2 <= w)
    assert interior.sum() > 50
    assert (counts[interior] == side * side).all()
    assert (counts[~interior] < side * side).all() and (counts[~interior] >= 8 * 8).all()
    for i in range(n):
        rows = filled[i, 0].any(dim=1).nonzero().flatten()
        cols = filled[i, 0].any(dim=0).nonzero().flatten()
        assert rows.min() == max(0, cy[i] - side // 2) and rows.max() == min(h, cy[i] + side // 2) - 1
        assert cols.min() == max(0, cx[i] - side // 2) and cols.max() == min(w, cx[i] + side // 2) - 1
        assert filled[i, 0].sum() == rows.numel() * cols.numel()  # a filled rectangle


def test_cutout_odd_side_and_zero_size():
    x = torch.zeros(50, 1, 28, 28)
    counts = (cutout(x, gen(1), size=0.25) == ops.FILL).flatten(1).sum(dim=1)
    assert counts.max() == 7 * 7  # round(0.25 * 28) = 7
    assert torch.equal(cutout(x, gen(1), size=0.0), x)


# --- determinism, dtypes, resumable streams ---------------------------------------------------------------


@pytest.mark.parametrize("policy", [weak, randaugment, cutout, strong])
def test_same_seed_same_views_different_seed_different_views(policy):
    x = image_u8(32, 3, 16, 16)
    a, b, c = policy(x, gen(11)), policy(x, gen(11)), policy(x, gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_uint8_and_float_inputs_give_the_same_views():
    x = image_u8(32, 3, 17, 23)
    assert torch.equal(strong(x, gen(5)), strong(x.float() / 255, gen(5)))
    assert torch.equal(weak(x, gen(5)), weak(x.float() / 255, gen(5)))


def test_float_input_is_not_modified_and_output_is_float32_in_range():
    x = to_float(image_u8(16, 3, 16, 16)).clone()
    before = x.clone()
    out = strong(x, gen(0))
    assert torch.equal(x, before)
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1


def test_no_generator_uses_the_global_rng():
    x = image_u8(16, 3, 16, 16)
    torch.manual_seed(123)
    a = strong(x)
    torch.manual_seed(123)
    assert torch.equal(a, strong(x))


def test_augmenter_views_and_state_round_trip():
    x = image_u8(16, 3, 16, 16)
    aug = Augmenter(seed=3)
    assert torch.equal(aug(x, "none"), to_float(x))
    aug(x, "strong")
    state = copy.deepcopy(aug.state_dict())
    expected = [aug(x, "strong"), aug(x, "weak"), aug(x, "strong")]
    resumed = Augmenter(seed=99)
    resumed.load_state_dict(state)
    got = [resumed(x, "strong"), resumed(x, "weak"), resumed(x, "strong")]
    assert all(torch.equal(e, g) for e, g in zip(expected, got, strict=True))
    # the stream moves on: consecutive strong views differ
    assert not torch.equal(expected[0], expected[2])


def test_augmenter_state_from_another_kind_of_device_restarts_the_stream_with_a_warning():
    x = image_u8(16, 3, 16, 16)
    aug = Augmenter(seed=3)
    aug(x, "strong")
    state = aug.state_dict()
    state["generators"] = {"cuda:0": state["generators"]["cpu"]}  # as a GPU run's checkpoint holds it
    resumed = Augmenter(seed=3)
    resumed.load_state_dict(state)
    with pytest.warns(UserWarning, match="saved on cuda:0.*restarts from seed 3"):
        view = resumed(x, "strong")
    assert torch.equal(view, Augmenter(seed=3)(x, "strong"))


def test_augmenter_is_seeded_and_leaves_the_global_rng_alone():
    x = image_u8(16, 3, 16, 16)
    before = torch.get_rng_state()
    a, b, c = Augmenter(seed=1), Augmenter(seed=1), Augmenter(seed=2)
    assert torch.equal(a(x, "strong"), b(x, "strong"))
    assert not torch.equal(a(x, "strong"), c(x, "strong"))
    assert torch.equal(torch.get_rng_state(), before)
    # a state saved before any batch restores to the seeded start
    fresh = Augmenter(seed=1)
    state = fresh.state_dict()
    other = Augmenter(seed=5)
    other.load_state_dict(state)
    assert torch.equal(other(x, "weak"), Augmenter(seed=1)(x, "weak"))


def test_augmenter_hflip_false_never_flips():
    x = to_float(image_u8(1, 3, 32, 32))
    views = Augmenter(hflip=False, seed=0)(x.expand(100, 3, 32, 32), "weak")
    assert (_match(views, _reflect_crops(x, 4)) >= 0).all()


def test_augmenter_rejects_unknown_view_and_modality():
    aug = Augmenter()
    with pytest.raises(ConfigError) as err:
        aug(torch.zeros(1, 1, 8, 8), "strongest")
    for name in VIEWS:
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="vector"):
        Augmenter(modality="audio")


# --- vectors ----------------------------------------------------------------------------------------------


def test_vector_weak_adds_noise_of_the_requested_scale():
    x = torch.randn(400, 50, generator=gen(0))
    out = vector_weak(x, gen(1), noise=0.1)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert abs((out - x).std().item() - 0.1) < 0.005
    assert abs((out - x).mean().item()) < 0.005


def test_vector_strong_drops_the_requested_fraction_per_sample():
    x = torch.randn(400, 23, generator=gen(0)) + 3.0  # no feature is near zero before dropping
    out = vector_strong(x, gen(2), noise=0.3, drop=0.2)
    assert out.shape == x.shape and out.dtype == torch.float32
    dropped = out == 0
    assert (dropped.sum(dim=1) == 5).all()  # round(0.2 * 23)
    assert len({tuple(row.nonzero().flatten().tolist()) for row in dropped}) > 390
    # each feature is dropped about drop of the time
    per_feature = dropped.float().mean(dim=0)
    assert per_feature.min() > 0.12 and per_feature.max() < 0.32  # 5 / 23 = 0.22
    assert abs((out - x)[~dropped].std().item() - 0.3) < 0.01


def test_vector_views_work_in_each_features_own_units():
    """Raw features: the noise is `noise` standard deviations of each feature and a dropped feature is reset to
    its mean, so a constant column (scale 1 after channel_stats) or a large-unit column gets sensible noise."""
    scale = torch.tensor([0.01, 1.0, 100.0])
    center = torch.tensor([5.0, -2.0, 1000.0])
    x = center + scale * torch.randn(4000, 3, generator=gen(0))
    out = vector_weak(x, gen(1), noise=0.1, scale=scale)
    np.testing.assert_allclose(((out - x).std(dim=0) / scale).numpy(), [0.1, 0.1, 0.1], rtol=0.05)
    strong_out = vector_strong(x, gen(2), noise=0.0, drop=0.34, scale=scale, center=center)
    reset = strong_out != x
    assert (reset.sum(dim=1) == 1).all()  # round(0.34 * 3)
    assert torch.equal(strong_out[reset], center.expand(4000, 3)[reset])
    aug = Augmenter("vector", seed=0, feature_stats=(center, scale))
    weak_view = aug(x, "weak")
    np.testing.assert_allclose(((weak_view - x).std(dim=0) / scale).numpy(), [0.1, 0.1, 0.1], rtol=0.05)


def test_augmenter_vector_modality():
    x = torch.randn(64, 20, generator=gen(0))
    aug = Augmenter(modality="vector", seed=0)
    assert torch.equal(aug(x, "none"), x)
    weak_view, strong_view = aug(x, "weak"), aug(x, "strong")
    assert (strong_view == 0).sum(dim=1).eq(4).all()
    assert (weak_view - x).std() < (strong_view - x)[strong_view != 0].std()
