"""The in-memory form every data source produces: tensors plus what the engine needs to know about them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DataBundle:
    """A dataset loaded into memory.

    Images are uint8 tensors of shape (N, C, H, W); vectors are float32 tensors of shape (N, D).
    Labels are int64 class indices; -1 marks a training sample whose label is unknown (unlabeled).
    """

    name: str
    """Dataset name, for reports."""
    x_train: torch.Tensor
    """Training inputs: labeled candidates and unlabeled samples together."""
    y_train: torch.Tensor
    """Training labels; -1 where the label is unknown."""
    classes: list[str]
    """Class names; label k means classes[k]."""
    modality: str = "image"
    """'image' (uint8 NCHW) or 'vector' (float32 ND)."""
    x_test: torch.Tensor | None = None
    """Held-out test inputs, or None."""
    y_test: torch.Tensor | None = None
    """Held-out test labels, or None."""
    x_val: torch.Tensor | None = None
    """An explicit labeled validation set, or None (then validation is carved from the training labels)."""
    y_val: torch.Tensor | None = None
    """Labels of the explicit validation set."""
    hflip: bool = True
    """Whether a horizontal flip keeps the class (False for digits and text-like images)."""
    default_model: str = "cnn"
    """The model used when the user names none."""
    labels_are_given: bool = False
    """True for user data whose labeled/unlabeled partition is the user's (y == -1); False for built-in sets
    whose full labels are known and a labeled subset is drawn by the split."""
    skipped_files: list[str] = field(default_factory=list)
    """Files that could not be read (corrupt or unreadable) and were skipped."""

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: (C, H, W) or (D,)."""
        return tuple(self.x_train.shape[1:])

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training inputs, on the [0, 1] scale for images."""
        x = self.x_train.float()
        if self.modality == "image":
            x = x / 255.0
            dims = (0, 2, 3)
            mean, std = x.mean(dim=dims), x.std(dim=dims)
        else:
            mean, std = x.mean(dim=0), x.std(dim=0)
        return mean.tolist(), std.clamp_min(1e-6).tolist()
