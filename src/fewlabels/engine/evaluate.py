"""Batched inference and accuracy."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from fewlabels.augment import to_float


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: Tensor,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Logits of `model` (in eval mode) for every row of `x` (uint8 images, float images or vectors), on the CPU."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    outputs = []
    amp = torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    try:
        for start in range(0, x.shape[0], batch_size):
            chunk = to_float(x[start : start + batch_size].to(device, non_blocking=True))
            if channels_last and chunk.ndim == 4:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            with amp:
                outputs.append(model(chunk).float().cpu())
    finally:
        model.train(was_training)
    if not outputs:
        return torch.empty(0)
    return torch.cat(outputs)


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of logits against labels."""
    if y.numel() == 0:
        return float("nan")
    return (logits.argmax(-1) == y.cpu()).float().mean().item()


def per_class_accuracy(logits: Tensor, y: Tensor, num_classes: int) -> list[float | None]:
    """Accuracy within each true class (None for a class absent from y)."""
    pred, y = logits.argmax(-1), y.cpu()
    out: list[float | None] = []
    for c in range(num_classes):
        sel = y == c
        out.append((pred[sel] == c).float().mean().item() if sel.any() else None)
    return out


def confusion_matrix(logits: Tensor, y: Tensor, num_classes: int) -> list[list[int]]:
    """counts[true][predicted]."""
    pred, y = logits.argmax(-1), y.cpu()
    flat = torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes).tolist()


def binary_roc_auc(logits: Tensor, y: Tensor) -> float | None:
    """ROC AUC of a two-class model (the score is p(class 1)); None when the labels hold only one class."""
    from sklearn.metrics import roc_auc_score

    labels = y.cpu().numpy()
    if len(set(labels.tolist())) < 2:
        return None
    return float(roc_auc_score(labels, logits.float().softmax(-1)[:, 1].cpu().numpy()))
