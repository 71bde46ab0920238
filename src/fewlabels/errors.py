"""Errors that name the problem and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """ "did you mean 'a', 'b'? " naming the choices closest to `word`, or "" when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.5)
    return f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""


def check_options(algorithm: str, options: Iterable[str], valid: Iterable[str]) -> None:
    """Raise a ConfigError for the first option name of `algorithm` that is not in `valid`, with close matches."""
    valid = list(valid)
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"algorithm {algorithm!r} has no option {key!r}: {did_you_mean(key, valid, n=2)}"
                f"its options are: {', '.join(valid) or 'none'}"
            )
