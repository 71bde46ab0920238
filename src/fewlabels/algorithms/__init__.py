"""Semi-supervised algorithms, one file each, registered by name in ALGORITHMS."""

from fewlabels.algorithms import (  # noqa: F401  (importing registers each algorithm)
    distill,
    fixmatch,
    flexmatch,
    freematch,
    mean_teacher,
    mixmatch,
    noisy_student,
    pi_model,
    pseudo_label,
    remixmatch,
    simclr,
    softmatch,
    supervised,
    temporal_ensembling,
    uda,
    vat,
)
from fewlabels.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Batch,
    BatchPart,
    StepContext,
    StepOutput,
    Views,
    algorithm_options,
    create_algorithm,
)


def list_algorithms() -> list[str]:
    """Names of all registered algorithms."""
    return ALGORITHMS.names()


def describe_algorithms() -> list[tuple[str, str]]:
    """(name, first docstring line of its module) for each algorithm."""
    import sys

    out = []
    for name in ALGORITHMS.names():
        cls = ALGORITHMS.get(name)
        doc = (sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip().splitlines()[0]
        out.append((name, doc))
    return out


__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Batch",
    "BatchPart",
    "StepContext",
    "StepOutput",
    "Views",
    "algorithm_options",
    "create_algorithm",
    "describe_algorithms",
    "list_algorithms",
]
