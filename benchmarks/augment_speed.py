"""Time the batched augmentation views: median milliseconds per batch of 448 images.

Usage: python benchmarks/augment_speed.py [--device cpu|cuda] [--repeats 30] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fewlabels.augment import randaugment, strong, weak

SHAPES = [(448, 1, 28, 28), (448, 3, 32, 32), (448, 3, 96, 96)]
POLICIES = {"weak": weak, "randaugment": randaugment, "strong": strong}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_policy(
    policy: Callable[..., torch.Tensor], x: torch.Tensor, generator: torch.Generator, repeats: int
) -> float:
    """Median wall time in ms of policy(x) over `repeats` runs after two warm-up runs."""
    for _ in range(2):
        policy(x, generator)
    _sync(x.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy(x, generator)
        _sync(x.device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    rows = []
    for shape in SHAPES:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        x = x.to(device)
        for name, policy in POLICIES.items():
            ms = time_policy(policy, x, generator, args.repeats)
            rows.append({"policy": name, "shape": list(shape), "median_ms": round(ms, 2)})
            print(f"{name:12s} {str(shape):20s} {ms:8.2f} ms")
    if args.out is not None:
        meta = {
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
