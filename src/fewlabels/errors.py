"""Errors that name the problem and the fix."""

from __future__ import annotations


class FewLabelsError(Exception):
    """A user-facing error: its message says what is wrong and how to fix it."""


class ConfigError(FewLabelsError, ValueError):
    """A configuration or input that cannot be used as given."""


class DataError(FewLabelsError, ValueError):
    """Data that cannot be used as given (missing classes, corrupt files, too few labels)."""


class TrainingDiverged(FewLabelsError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(FewLabelsError, RuntimeError):
    """A run folder's checkpoint cannot be read (truncated, edited or from another program)."""
