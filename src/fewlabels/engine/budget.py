"""Turn a wall-clock budget into a step count, so the learning-rate schedule ends when the time does."""

from __future__ import annotations

import statistics


class BudgetPlanner:
    """Plans the total step count from measured step and evaluation times, and re-plans as they drift.

    Re-planning matters on shared machines: a step that took 0.2 s during calibration may take 0.4 s later.
    Each re-plan moves the end of the cosine schedule a little (by more than 2% only), so a budgeted run is not
    bit-reproducible; `--steps N` with the final count from summary.json gives a reproducible run of the same
    length. Time spent loading data before the first step is not counted.
    """

    calibration_steps = 12  # of this process, the first `warmup_steps` untimed
    warmup_steps = 3  # allocator and cache warm-up (and torch.compile), also right after a resume
    margin = 0.97  # of the remaining time, for logging and checkpoint writes

    def __init__(self, seconds: float, eval_every: int) -> None:
        self.seconds = seconds
        self.eval_every = eval_every
        self.step_times: list[float] = []
        self.seen = 0

    def add_step_time(self, seconds: float) -> None:
        """Record one step's duration; the first `warmup_steps` this planner sees are ignored."""
        self.seen += 1
        if self.seen > self.warmup_steps:
            self.step_times.append(seconds)

    @property
    def calibrated(self) -> bool:
        """True once enough steps were timed for a first plan."""
        return len(self.step_times) >= self.calibration_steps - self.warmup_steps

    def plan(self, step: int, elapsed: float, eval_seconds: float) -> int:
        """Total steps such that training, periodic evaluations and the final one fit in the budget."""
        recent = self.step_times[-200:]
        step_time = statistics.median(recent)
        left = self.seconds - elapsed - eval_seconds
        per_step = step_time + eval_seconds / self.eval_every
        return step + max(0, int(self.margin * left / per_step))
