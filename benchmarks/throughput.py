"""Images per second of a whole FixMatch training step, augmentation included, fewlabels vs the conventional pipeline.

fewlabels: uint8 batches indexed on the device, batched per-sample augmentation there, the weak view under no_grad,
channels_last; the real engine step (`fewlabels.engine.trainer._train_step`).
Conventional (USB/TorchSSL style): a DataLoader whose workers apply per-image torchvision transforms (flip, reflect
pad-and-crop, RandAugment(2 ops) + Cutout as RandomErasing) to PIL images (the labeled images get the weak view
only, as in USB), then one train-mode forward over the concatenated labeled, weak and strong views with gradients
for all of them.
Same model, batch and optimizer; both measured in one process run, after warm-up steps. Writes
benchmarks/results/throughput.{csv,md}.

    python benchmarks/throughput.py --model cnn --dataset fashion-mnist --steps 30
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from fewlabels.config import Config
from fewlabels.engine import trainer
from fewlabels.engine.distributed import DistInfo
from fewlabels.engine.setup import build_context, resolve_device
from fewlabels.io import atomic_open, atomic_write_text

RESULTS = Path(__file__).parent / "results"


class ConventionalSSLDataset(Dataset):
    """Per-image PIL transforms, as in USB's BasicDataset: the (weak, strong) views of one image, or with
    `strong=False` (the labeled batch) only the weak view."""

    def __init__(self, x: np.ndarray, hflip: bool, strong: bool = True) -> None:
        self.x = x
        self.with_strong = strong
        size = x.shape[-1]
        mode = "L" if x.shape[1] == 1 else "RGB"
        self.mode = mode
        weak = [transforms.RandomHorizontalFlip()] if hflip else []
        weak += [transforms.RandomCrop(size, padding=int(size * 0.125), padding_mode="reflect")]
        self.weak = transforms.Compose([*weak, transforms.ToTensor()])
        self.strong = transforms.Compose(
            [
                *weak,
                transforms.RandAugment(num_ops=2, magnitude=10),
                transforms.ToTensor(),
                transforms.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0.5),
            ]
        )

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        arr = self.x[i]
        img = Image.fromarray(arr[0] if self.mode == "L" else arr.transpose(1, 2, 0), self.mode)
        return (self.weak(img), self.strong(img)) if self.with_strong else self.weak(img)


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}; {torch.get_num_threads()} torch threads; {gpu}"


def measure_fewlabels(cfg: Config, steps: int, warmup: int) -> tuple[float, int]:
    ctx = build_context(cfg, DistInfo(), resume=False)
    times = []
    for step in range(warmup + steps):
        logs, _, _ = trainer._train_step(ctx, step, 10**6)
        if step >= warmup:
            times.append(logs["step_time"])
    images = cfg.train.batch_size * (1 + cfg.train.unlabeled_ratio)
    return statistics.median(times), images


def measure_conventional(cfg: Config, steps: int, warmup: int, workers: int) -> float:
    ctx = build_context(cfg, DistInfo(), resume=False)  # same data, model and optimizer set-up
    model, optimizer, device = ctx.raw_model, ctx.optimizer, ctx.device
    x = ctx.bundle.x_train.numpy()
    mu, b = cfg.train.unlabeled_ratio, cfg.train.batch_size
    gen = torch.Generator().manual_seed(0)
    loader_u = DataLoader(
        ConventionalSSLDataset(x, ctx.bundle.hflip),
        batch_size=mu * b,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=gen,
        persistent_workers=workers > 0,
    )
    loader_l = DataLoader(
        ConventionalSSLDataset(x, ctx.bundle.hflip, strong=False),  # labeled images: the weak view only
        batch_size=b,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=gen,
        persistent_workers=workers > 0,
    )
    y = ctx.bundle.y_train
    it_u, it_l = iter(loader_u), iter(loader_l)
    times = []
    model.train()
    for step in range(warmup + steps):
        tick = time.perf_counter()
        x_l, (u_w, u_s) = next(it_l), next(it_u)
        y_l = y[:b].to(device)
        inputs = torch.cat([x_l, u_w, u_s]).to(device)
        logits = model(inputs)
        logits_l, logits_w, logits_s = logits.split([b, mu * b, mu * b])
        probs = logits_w.detach().softmax(-1)
        conf, pseudo = probs.max(-1)
        loss = (
            F.cross_entropy(logits_l, y_l)
            + (F.cross_entropy(logits_s, pseudo, reduction="none") * (conf >= 0.95).float()).mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ctx.ema.update(model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # as the fewlabels step does before it stops its clock
        if step >= warmup:
            times.append(time.perf_counter() - tick)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="cnn")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--unlabeled-ratio", type=int, default=7)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None, help="folder holding the dataset's files (default: the usual places)")
    p.add_argument("--tag", default="", help="suffix of the results files")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config().override(
            **{
                "data.dataset": args.dataset,
                "data.data_root": args.data_root,
                "data.labels_per_class": 25,
                "model.name": args.model,
                "algorithm.name": "fixmatch",
                "train.batch_size": args.batch_size,
                "train.unlabeled_ratio": args.unlabeled_ratio,
                "train.device": args.device,
                "train.progress": False,
                "out": str(Path(tmp) / "a"),
            }
        )
        started = time.perf_counter()
        ours, images = measure_fewlabels(cfg, args.steps, args.warmup)
        theirs = measure_conventional(cfg.override(out=str(Path(tmp) / "b")), args.steps, args.warmup, args.workers)
        wall = time.perf_counter() - started

    device = resolve_device(args.device)
    row = {
        "dataset": args.dataset,
        "model": args.model,
        "device": str(device),
        "hardware": hardware(),
        "batch": f"{args.batch_size}+{args.unlabeled_ratio}x{args.batch_size}x2",
        "steps_timed": args.steps,
        "fewlabels_step_s": round(ours, 4),
        "conventional_step_s": round(theirs, 4),
        "fewlabels_img_per_s": round(images / ours, 1),
        "conventional_img_per_s": round(images / theirs, 1),
        "speedup": round(theirs / ours, 2),
        "workers": args.workers,
        "torch": torch.__version__,
        "seed": 0,
        "wall_seconds": round(wall, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"throughput{args.tag}"
    with atomic_open(f"{stem}.csv") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    md = [
        "# FixMatch step throughput",
        "",
        f"Hardware: {row['hardware']}; device {row['device']}; torch {row['torch']}.",
        f"Dataset {args.dataset}, model {args.model}, batch {row['batch']} images, median of {args.steps} timed "
        f"steps after {args.warmup} warm-up steps; wall time {row['wall_seconds']} s.",
        "",
        "| pipeline | step (s) | images/s (labeled + unlabeled images per step / step time) |",
        "|---|---|---|",
        f"| fewlabels (batched on-device augmentation, no-grad weak pass) | {row['fewlabels_step_s']} | "
        f"{row['fewlabels_img_per_s']} |",
        f"| conventional (per-image torchvision in {args.workers} DataLoader workers: weak view of the labeled "
        "images, weak and strong of the unlabeled; one forward) | "
        f"{row['conventional_step_s']} | {row['conventional_img_per_s']} |",
        "",
        f"Speed-up: **{row['speedup']}x**.",
        "",
    ]
    atomic_write_text(f"{stem}.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
