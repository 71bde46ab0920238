"""Kill the training engine mid-run, as a Ctrl-C or a killed job would, to test resuming."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fewlabels.engine import trainer


class KillSwitch:
    """Patches the engine's step so that it raises KeyboardInterrupt the first time `when(ctx, step)` is true
    (before that step runs), and counts the steps that did run through it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, when: Callable[[Any, int], bool]) -> None:
        self.when = when
        self.killed = False
        self.steps = 0
        """Steps run through the patch since it was made or `steps` was last reset."""
        self._real = trainer._train_step
        self._monkeypatch = monkeypatch
        monkeypatch.setattr(trainer, "_train_step", self._step)

    def _step(self, ctx: Any, step: int, total: int) -> Any:
        if not self.killed and self.when(ctx, step):
            self.killed = True
            raise KeyboardInterrupt
        self.steps += 1
        return self._real(ctx, step, total)

    def remove(self) -> None:
        """Put the engine's own step back."""
        self._monkeypatch.setattr(trainer, "_train_step", self._real)


def kill_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> KillSwitch:
    """A KillSwitch that kills the first run to reach `step`."""
    return KillSwitch(monkeypatch, lambda ctx, s: s == step)
