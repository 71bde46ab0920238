"""The training engine: one loop, EMA, schedules, checkpoints, evaluation, distributed set-up, logging."""
