"""The algorithm contract: which views an algorithm needs, and losses computed from model outputs."""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fewlabels.errors import check_options
from fewlabels.registry import Registry

ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")


@dataclass(frozen=True)
class Views:
    """The augmented views an algorithm asks the engine for, per batch part."""

    labeled: tuple[str, ...] = ("weak",)
    """Views of the labeled batch, e.g. ('weak',)."""
    unlabeled: tuple[str, ...] = ()
    """Views of the unlabeled batch, e.g. ('weak', 'strong'); empty when the algorithm uses no unlabeled data."""


@dataclass
class BatchPart:
    """One part of a batch: a tensor per view name, plus labels or pool indices."""

    views: dict[str, Tensor]
    """Augmented inputs by view name."""
    y: Tensor | None = None
    """Labels (labeled part only)."""
    index: Tensor | None = None
    """Stable indices into the unlabeled pool (unlabeled part only; FlexMatch keys its memory by them)."""

    def __getitem__(self, view: str) -> Tensor:
        return self.views[view]


@dataclass
class Batch:
    """What the engine hands an algorithm each step."""

    labeled: BatchPart
    """The labeled batch."""
    unlabeled: BatchPart | None = None
    """The unlabeled batch, or None for algorithms that need none."""


@dataclass
class StepContext:
    """Step information and the engine services an algorithm may use."""

    step: int
    """Current optimizer step (0-based)."""
    total_steps: int
    """Planned number of steps (for ramps and schedules)."""
    num_classes: int
    """Number of classes."""
    all_gather: Callable[[Tensor], Tensor] = field(default=lambda t: t)
    """Concatenate a tensor across DDP ranks along dim 0 (identity in one process); use before updating
    dataset-level statistics so every rank keeps identical state."""
    all_gather_grad: Callable[[Tensor], Tensor] = field(default=lambda t: t)
    """Like `all_gather`, but differentiable: gradients flow back to every rank's rows (SimCLR's negatives)."""
    rank_offset: Callable[[int], int] = field(default=lambda rows: 0)
    """Index of this rank's first row in an `all_gather` result whose ranks hold `rows` rows each."""
    ema: nn.Module | None = None
    """The engine's EMA of the model (the model that is evaluated and saved), in eval mode, without gradients.
    Mean Teacher uses it as its teacher."""

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))


@dataclass
class StepOutput:
    """An algorithm's result for one step."""

    loss: Tensor
    """The scalar loss to minimise."""
    logs: dict[str, Tensor | float] = field(default_factory=dict)
    """Scalars to log (loss parts, mask rate, ...)."""
    pseudo: tuple[Tensor, Tensor] | None = None
    """(pseudo-labels, per-sample weight in [0, 1]) for the unlabeled batch, for monitoring only."""


def forward(model: nn.Module, *inputs: Tensor) -> tuple[Tensor, ...]:
    """One forward pass over the concatenated inputs (BatchNorm statistics over all of them), split back."""
    if len(inputs) == 1:
        return (model(inputs[0]),)
    logits = model(torch.cat(inputs))
    return tuple(logits.split([x.shape[0] for x in inputs]))


class Algorithm(abc.ABC):
    """Base class: subclasses set `views`, take their options as keyword arguments and implement `step`.

    `views` is a class attribute; an instance may replace it when an option changes the number of views
    (MixMatch's K weak views, ReMixMatch's strong views).
    """

    views: Views = Views()
    needs_unlabeled: ClassVar[bool] = True
    labels_unused: ClassVar[bool] = False
    """True for algorithms that learn from images alone (distillation): a pool holding only labeled images is fine."""
    ema_keeps_own_buffers: ClassVar[bool] = False
    """True when the EMA model runs its own train-mode passes (Mean Teacher's teacher): its BatchNorm statistics are
    then its own, not copied from the student at each update."""

    def __init__(self, num_classes: int, num_unlabeled: int = 0) -> None:
        self.num_classes = num_classes
        self.num_unlabeled = num_unlabeled

    @abc.abstractmethod
    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        """Compute the loss of one training step from model outputs."""

    def extend_model(self, model: nn.Module) -> None:
        """Add what the algorithm trains besides the classifier (e.g. an auxiliary head) to `model`.

        Called once, before the model is moved to its device and the optimizer, EMA and DDP wrapper are made.
        """
        return None  # most algorithms train the classifier alone

    def unlabeled_pool(self, default: list[int]) -> list[int]:
        """Training-set rows the unlabeled sampler draws from; `batch.unlabeled.index` holds positions in this list.

        Default: the split's unlabeled pool. Noisy Student draws from its filtered, class-balanced pseudo-labeled
        rows instead (with repeats).
        """
        return default

    def state_dict(self) -> dict[str, Any]:
        """State kept across steps (tensors and plain values), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


def algorithm_options(name: str) -> dict[str, Any]:
    """The options an algorithm accepts, with their defaults."""
    cls = ALGORITHMS.get(name)
    params = inspect.signature(cls.__init__).parameters
    skip = {"self", "num_classes", "num_unlabeled"}
    return {k: p.default for k, p in params.items() if k not in skip and p.kind is p.KEYWORD_ONLY}


def create_algorithm(name: str, num_classes: int, num_unlabeled: int = 0, **options: Any) -> Algorithm:
    """Build a registered algorithm, rejecting unknown options with the valid ones in the message."""
    cls = ALGORITHMS.get(name)
    check_options(name, options, algorithm_options(name))
    return cls(num_classes=num_classes, num_unlabeled=num_unlabeled, **options)
