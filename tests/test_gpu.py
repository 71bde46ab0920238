"""Checks that need a CUDA GPU: augmentation on the device, autocast (bf16, and fp16 with a grad scaler),
channels_last, checkpoints written on the GPU and read on the CPU, resume, and a short run that must still beat
labels-only training under autocast.

Marked `gpu` and left out of the default run (`make test-gpu` runs them; benchmarks/gpu_check.sh runs them with the
GPU throughput benchmark in one go). `FEWLABELS_TEST_DEVICE=cpu` runs the same checks on the CPU, to try them out
on a machine without a GPU (the CUDA-only assertions are then skipped).
"""

from __future__ import annotations

import os

import pytest
import torch
from data_fixtures import write_fashion_mnist
from engine_killer import kill_at_step
from torch import nn

import fewlabels
from fewlabels.augment import RANDAUGMENT_OPS, Augmenter, RandAugmentPlan, apply_randaugment, weak
from fewlabels.config import Config
from fewlabels.engine import checkpoint as ckpt
from fewlabels.engine import trainer
from fewlabels.engine.distributed import DistInfo
from fewlabels.engine.setup import build_context

DEVICE = torch.device(os.environ.get("FEWLABELS_TEST_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TINY = {
    "data.dataset": "digits",
    "data.labels_per_class": 4,
    "train.batch_size": 32,
    "train.unlabeled_ratio": 4,
    "train.progress": False,
    "train.device": str(DEVICE),
}


@pytest.fixture
def fmnist(tmp_path):
    """Settings for a small Fashion-MNIST in the real IDX format (random pixels: for step-level checks)."""
    write_fashion_mnist(tmp_path / "fmnist", n_train=600, n_test=50)
    return {**TINY, "data.dataset": "fashion-mnist", "data.data_root": str(tmp_path / "fmnist")}


def images(n: int, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    base = (torch.sin(xx / 3.0) + torch.cos(yy / 4.0)) * 50 + 128
    return (base + torch.randint(-30, 31, (n, c, h, w), generator=g)).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("op", RANDAUGMENT_OPS)
def test_each_op_on_the_gpu_matches_the_cpu(op):
    n = 10
    x = images(n)
    plan = RandAugmentPlan(
        ops=torch.full((1, n), RANDAUGMENT_OPS.index(op)),
        levels=torch.arange(1, n + 1).view(1, n),
        signs=torch.tensor([1.0, -1.0] * (n // 2)).view(1, n),
        applied=torch.ones(1, n, dtype=torch.bool),
        magnitude_bins=10,
    )
    on_device = RandAugmentPlan(*(t.to(DEVICE) for t in plan[:4]), plan.magnitude_bins)
    cpu = apply_randaugment(x, plan)
    gpu = apply_randaugment(x.to(DEVICE), on_device)
    assert gpu.device.type == DEVICE.type and gpu.dtype == torch.float32
    assert gpu.min().item() >= 0.0 and gpu.max().item() <= 1.0
    diff = (gpu.cpu() - cpu).abs()
    # Interpolation and rounding may differ by a grey level at a few pixels; nothing more.
    assert diff.mean().item() < 1e-3, f"{op}: mean difference {diff.mean().item():.2e}"
    assert (diff > 1.5 / 255).float().mean().item() < 0.01, f"{op}: too many pixels differ"


def test_views_on_the_gpu_are_per_sample_seeded_and_resumable():
    x = images(1).expand(64, -1, -1, -1).contiguous().to(DEVICE)
    aug = Augmenter(seed=3)
    strong = aug(x, "strong")
    assert strong.device.type == DEVICE.type and strong.dtype == torch.float32
    assert len({tuple(v.flatten().tolist()) for v in strong.cpu()}) >= 60  # each copy drew its own ops
    state = aug.state_dict()
    assert any(key.startswith(DEVICE.type) for key in state["generators"])
    again = aug(x, "strong")
    fresh = Augmenter(seed=3)
    assert torch.equal(fresh(x, "strong"), strong)  # the seed fixes the stream on the device too
    resumed = Augmenter(seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed(x, "strong"), again)
    if ON_CUDA:  # a checkpoint of another GPU index continues on this one
        moved = {"seed": state["seed"], "generators": {"cuda:7": next(iter(state["generators"].values()))}}
        resumed = Augmenter(seed=0)
        resumed.load_state_dict(moved)
        assert torch.equal(resumed(x, "strong"), again)
    # The weak view is an exact flip plus reflect-pad-and-crop: its pixel values are the input's.
    w = weak(x, generator=torch.Generator(device=DEVICE).manual_seed(0))
    assert torch.isin(w.unique(), x.float().div(255).unique()).all()


def test_training_step_uses_bf16_autocast_channels_last_and_updates_the_ema(tmp_path, fmnist):
    cfg = Config().override(**fmnist, out=str(tmp_path / "r"))
    ctx = build_context(cfg, DistInfo(), resume=False)
    assert ctx.device.type == DEVICE.type
    if ON_CUDA:
        assert ctx.autocast_dtype == torch.bfloat16 and ctx.scaler is None  # an H100/H200-class GPU
    convs = [m for m in ctx.raw_model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    before = [p.detach().clone() for p in ctx.ema.module.parameters()]
    for step in range(5):
        logs, _, _ = trainer._train_step(ctx, step, 100)
        assert torch.isfinite(torch.tensor(logs["loss"]))
    assert all(p.device.type == DEVICE.type for p in ctx.raw_model.parameters())
    assert all(p.dtype == torch.float32 for p in ctx.raw_model.parameters())  # autocast leaves weights in fp32
    moved = [not torch.equal(a, b) for a, b in zip(before, ctx.ema.module.parameters(), strict=True)]
    assert all(moved)


def test_fp16_trains_with_a_grad_scaler(tmp_path):
    cfg = Config().override(**TINY, **{"train.amp_dtype": "fp16"}, out=str(tmp_path / "r"))
    ctx = build_context(cfg, DistInfo(), resume=False)
    if ON_CUDA:
        assert ctx.autocast_dtype == torch.float16 and ctx.scaler is not None
    first = [p.detach().clone() for p in ctx.raw_model.parameters()]
    losses = [trainer._train_step(ctx, step, 60)[0]["loss_l"] for step in range(60)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])  # it learns the labeled digits
    assert all(p.dtype == torch.float32 for p in ctx.raw_model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(first, ctx.raw_model.parameters(), strict=True))
    if ON_CUDA:  # each skipped step halves the scale from 2^16: at most 6 of the 60 steps were skipped
        assert ctx.scaler.get_scale() >= 2.0**10


def test_a_gpu_run_resumes_and_its_model_is_evaluated_on_the_cpu(tmp_path, monkeypatch):
    settings = {**TINY, "algorithm.name": "fixmatch", "train.steps": 40, "train.eval_every": 20}
    settings.update({"train.checkpoint_every": 20, "train.log_every": 10})
    whole = fewlabels.train(**settings, out=str(tmp_path / "whole"))

    switch = kill_at_step(monkeypatch, 30)
    with pytest.raises(KeyboardInterrupt):
        fewlabels.train(**settings, out=str(tmp_path / "cut"))
    assert ckpt.load_checkpoint(tmp_path / "cut", device="cpu")["step"] == 20
    switch.remove()
    resumed = fewlabels.train(**settings, out=str(tmp_path / "cut"), resume=True)
    assert resumed.summary["steps"] == 40
    # GPU kernels (atomics in convolution backward passes) need not be bit-exact run to run: the resumed run must
    # agree with the uninterrupted one closely, not exactly.
    a, b = whole.load_model(), resumed.load_model()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if p.is_floating_point():
            assert torch.allclose(p, q, atol=1e-2, rtol=1e-2), name
    # The saved model is on the CPU and scores there what the GPU run reported, up to autocast's rounding.
    assert all(p.device.type == "cpu" for p in a.parameters())
    scored = fewlabels.evaluate(whole.path)
    assert abs(scored["test_accuracy"] - whole.summary["test_accuracy"]) <= 0.01


def test_a_short_gpu_run_beats_labels_only_training(tmp_path):
    settings = {**TINY, "train.steps": 600, "train.eval_every": 200}
    sup = fewlabels.train(**settings, **{"algorithm.name": "supervised"}, out=str(tmp_path / "sup"))
    fix = fewlabels.train(**settings, **{"algorithm.name": "fixmatch"}, out=str(tmp_path / "fix"))
    assert fix.summary["test_accuracy"] >= sup.summary["test_accuracy"] + 0.05, (sup.summary, fix.summary)
