"""Endless seeded shuffles of an index pool, a global batch at a time."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class InfiniteSampler:
    """Endless shuffled passes over a pool, a global batch at a time, from its own seeded generator."""

    def __init__(self, pool: Tensor, batch_size: int, seed: int) -> None:
        self.pool = pool
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(pool), generator=self.generator)
        self.position = 0

    def next(self) -> Tensor:
        """Positions (into the pool) of the next global batch."""
        parts, need = [], self.batch_size
        while need > 0:
            if self.position >= len(self.order):
                self.order = torch.randperm(len(self.pool), generator=self.generator)
                self.position = 0
            take = self.order[self.position : self.position + need]
            self.position += len(take)
            need -= len(take)
            parts.append(take)
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].long()
        self.position = int(state["position"])
