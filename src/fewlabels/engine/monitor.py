"""Training statistics: averaged log rows in metrics.jsonl, a progress bar, optional TensorBoard, and
pseudo-label monitoring against the unlabeled pool's hidden labels (never used for training)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class PseudoMonitor:
    """Accumulates pseudo-label accuracy and the per-class pseudo-label histogram between log rows."""

    def __init__(self, hidden_labels: Tensor, num_classes: int) -> None:
        self.hidden = hidden_labels.cpu()
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self.correct = 0.0
        self.known = 0.0
        self.weight = 0.0
        self.count = 0
        self.hist = torch.zeros(self.num_classes, dtype=torch.float64)

    @torch.no_grad()
    def add(self, pool_index: Tensor, pseudo: Tensor, weight: Tensor) -> None:
        """Record one batch of pseudo-labels with their weights (mask)."""
        pseudo, weight = pseudo.cpu(), weight.detach().float().cpu()
        truth = self.hidden[pool_index.cpu()]
        known = (truth >= 0).float() * weight
        self.correct += (known * (pseudo == truth)).sum().item()
        self.known += known.sum().item()
        self.weight += weight.sum().item()
        self.count += weight.numel()
        self.hist += torch.bincount(pseudo, weights=weight.double(), minlength=self.num_classes)

    def summary(self) -> dict[str, Any]:
        """Pseudo-label accuracy of the kept (weighted) samples and the class histogram of this window."""
        out: dict[str, Any] = {}
        if self.known > 0:
            out["pseudo_accuracy"] = self.correct / self.known
        if self.count:
            total = self.hist.sum().item()
            out["pseudo_histogram"] = [round(v / total, 4) if total else 0.0 for v in self.hist.tolist()]
        return out


class MetricsLogger:
    """Averages per-step scalars over `log_every` steps and appends rows to metrics.jsonl."""

    def __init__(self, folder: Path | None, tensorboard: bool = False) -> None:
        self.path = folder / "metrics.jsonl" if folder else None
        self.sums: dict[str, float] = defaultdict(float)
        self.n = 0
        self.writer = None
        if tensorboard and folder is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
            self.writer = SummaryWriter(str(folder / "tensorboard"))

    def add(self, logs: dict[str, float]) -> None:
        """Add one step's scalars."""
        for k, v in logs.items():
            self.sums[k] += float(v)
        self.n += 1

    def means(self) -> dict[str, float]:
        """Window means so far."""
        return {k: v / max(1, self.n) for k, v in self.sums.items()}

    def flush(self, step: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write a row with the window means plus `extra` and start a new window."""
        row = {"step": step, **self.means(), **(extra or {})}
        self.sums.clear()
        self.n = 0
        self.write(row)
        return row

    def write(self, row: dict[str, Any]) -> None:
        """Append a row as is."""
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and k != "step":
                    self.writer.add_scalar(k, v, row["step"])

    def close(self) -> None:
        """Close TensorBoard."""
        if self.writer is not None:
            self.writer.close()
