"""DDP through torchrun: process-group set-up and the collectives algorithms use for shared statistics.

Global-batch semantics: `train.batch_size` is the global labeled batch. Every rank draws the same global index
list from the shared data-order seed and keeps its own contiguous slice, so N ranks see exactly the samples one
process would. Augmentation randomness is per rank (seed + rank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fewlabels.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1


def init_distributed(device_hint: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_hint != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def per_rank(global_size: int, info: DistInfo, what: str) -> int:
    """Split a global batch size evenly across ranks."""
    if global_size % info.world_size:
        raise ConfigError(
            f"{what} {global_size} does not divide evenly over {info.world_size} processes: "
            f"use a multiple of {info.world_size}"
        )
    return global_size // info.world_size


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from every rank along dim 0 (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_gather_cat_grad(tensor: torch.Tensor) -> torch.Tensor:
    """`all_gather_cat` through which gradients flow back to every rank's input (contrastive negatives): the backward
    pass sums each slice's gradient over the ranks, so with DDP's gradient averaging the step is that of the mean of
    the ranks' losses over the global batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()))


def rank_offset(rows: int) -> int:
    """Index of this rank's first row in a tensor concatenated over ranks with `rows` rows each (0 in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank() * rows


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj` (CPU tensors and plain values), in rank order, on every rank; [obj] in one process."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_ranks_agree(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True only if `flag` is true on every rank, so all ranks take the same branch after it."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_int(value: int, info: DistInfo, device: torch.device) -> int:
    """Rank 0's value on every rank."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def cleanup(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
