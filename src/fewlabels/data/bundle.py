"""The in-memory form every data source produces: tensors plus what the engine needs to know about them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
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
    _stats: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: (C, H, W) or (D,)."""
        return tuple(self.x_train.shape[1:])

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training inputs, on the [0, 1] scale for images.

        Computed in chunks of rows in float64 (two passes, so no float copy of the whole set: STL-10's 105k images
        would need 11.6 GB per copy) and cached, since every saved model records them.
        """
        key = (id(self.x_train), tuple(self.x_train.shape))
        if self._stats is not None and self._stats[0] == key:
            return self._stats[1]
        x, image = self.x_train, self.modality == "image"
        dims = (0, 2, 3) if image else (0,)
        shape = (1, -1, 1, 1) if image else (1, -1)
        n = x.numel() // x.shape[1]  # values per channel (or per feature)

        def chunks() -> Iterator[torch.Tensor]:  # one float64 chunk at a time
            for i in range(0, len(x), 4096):
                yield x[i : i + 4096].double() / (255.0 if image else 1.0)

        mean = torch.zeros(x.shape[1], dtype=torch.float64)
        for c in chunks():
            mean += c.sum(dim=dims)
        mean /= n
        squares = torch.zeros_like(mean)
        for c in chunks():
            squares += ((c - mean.view(shape)) ** 2).sum(dim=dims)
        std = (squares / max(n - 1, 1)).sqrt()
        # A constant feature (or blank channel) keeps scale 1, like scikit-learn's StandardScaler: a tiny std would
        # blow up any test value that differs from the training constant.
        stats = mean.float().tolist(), torch.where(std < 1e-6, torch.ones_like(std), std).float().tolist()
        self._stats = (key, stats)
        return stats

    def keep_classes(self, classes: list[str | int]) -> DataBundle:
        """A bundle restricted to `classes` (names or indices), relabeled 0..k-1 in the given order.

        Training rows of other classes are dropped, unlabeled rows (-1) are kept (their class is unknown), and the
        test and validation sets keep only the chosen classes. Used for binary tasks cut from a built-in dataset.
        """
        from fewlabels.errors import ConfigError, did_you_mean

        chosen: list[int] = []
        for c in classes:
            # A name first, whether YAML read it as a number or not (classes '1', '2', '10' from folders); an index
            # only when no class has that name.
            if str(c) in self.classes:
                index = self.classes.index(str(c))
            elif isinstance(c, int) or (isinstance(c, str) and c.isdigit()):
                index = int(c)
                if not 0 <= index < self.num_classes:
                    raise ConfigError(f"class index {index} is outside 0..{self.num_classes - 1} of {self.name}")
            else:
                hint = did_you_mean(str(c), self.classes, n=2)
                raise ConfigError(f"{self.name} has no class {c!r}: {hint}its classes are {', '.join(self.classes)}")
            if index in chosen:
                raise ConfigError(f"class {c!r} is listed twice in data.classes")
            chosen.append(index)
        if len(chosen) < 2:
            raise ConfigError(f"data.classes must name at least 2 classes, got {classes!r}")
        mapping = torch.full((self.num_classes,), -2, dtype=torch.long)
        mapping[torch.tensor(chosen)] = torch.arange(len(chosen))

        def cut(x: torch.Tensor | None, y: torch.Tensor | None, keep_unlabeled: bool) -> tuple:
            if x is None or y is None:
                return x, y
            new = torch.where(y >= 0, mapping[y.clamp_min(0)], torch.full_like(y, -1))
            keep = new >= (-1 if keep_unlabeled else 0)
            return x[keep], new[keep]

        x_train, y_train = cut(self.x_train, self.y_train, keep_unlabeled=True)
        x_test, y_test = cut(self.x_test, self.y_test, keep_unlabeled=False)
        x_val, y_val = cut(self.x_val, self.y_val, keep_unlabeled=False)
        return dataclasses.replace(
            self,
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            x_val=x_val,
            y_val=y_val,
            classes=[self.classes[i] for i in chosen],
        )
