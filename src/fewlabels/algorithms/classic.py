"""Classic baselines: scikit-learn's label spreading, label propagation and self-training, on features.

They run through the same `fewlabels.train` entry point as the deep methods: the same data loading, the same seeded
split (the labeled rows are exactly those a deep run of the same seed and label budget gets) and a normal run folder,
so every benchmark shows whether deep semi-supervised learning beats the classic tools on the data at hand (the run
itself is `fewlabels.engine.classic.fit_classic`).

Each method is a scikit-learn Pipeline: features (images flattened and scaled to [0, 1]; vectors standardized, the
scaler fitted on every training row, labeled or not: transductive) then the estimator, fitted once on the labeled
rows plus the unlabeled pool (label -1). A fit takes no steps and keeps no model file (nothing is ever pickled).

Label spreading: Zhou et al., "Learning with Local and Global Consistency", NeurIPS 2004. Label propagation: Zhu and
Ghahramani, "Learning from Labeled and Unlabeled Data with Label Propagation", CMU-CALD-02-107, 2002. Self-training:
Yarowsky, ACL 1995.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from fewlabels.algorithms.base import ALGORITHMS
from fewlabels.errors import ConfigError, check_options, did_you_mean
from fewlabels.registry import Registry

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator
    from sklearn.pipeline import Pipeline

CLASSIC: Registry[Callable[..., BaseEstimator]] = Registry("classic algorithm")
"""Classic method name -> factory `(seed, **options) -> scikit-learn estimator`."""

DENSE_KERNEL_MAX_BYTES = 2 * 1024**3
"""The largest dense kernel matrix (float64) kernel='rbf' may build; scikit-learn holds a few copies of it."""


def check_dense_kernel(rows: int, cols: int) -> None:
    """Refuse an rbf kernel matrix of rows x cols float64 values larger than DENSE_KERNEL_MAX_BYTES."""
    size = 8 * rows * cols
    if size > DENSE_KERNEL_MAX_BYTES:
        raise ConfigError(
            f"kernel='rbf' builds a dense {rows:,} x {cols:,} matrix ({size / 1e9:.1f} GB, and scikit-learn makes "
            f"copies of it), over the {DENSE_KERNEL_MAX_BYTES / 1e9:.1f} GB limit: use kernel='knn' (the default, "
            "a sparse nearest-neighbour graph) or fewer training rows"
        )


class DenseRbfKernel:
    """exp(-gamma * |x - y|^2) as a dense matrix, refused (`check_dense_kernel`) before it would exhaust memory."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        from sklearn.metrics.pairwise import rbf_kernel

        check_dense_kernel(len(x), len(y))
        return rbf_kernel(x, y, gamma=self.gamma)

    def __repr__(self) -> str:
        return f"DenseRbfKernel(gamma={self.gamma!r})"


def _graph_kernel(kernel: str, gamma: float | None) -> str | DenseRbfKernel:
    if kernel == "knn":
        if gamma is not None:
            raise ConfigError("gamma applies to kernel='rbf' only; with kernel='knn' set n_neighbors instead")
        return "knn"
    if kernel == "rbf":
        if gamma is None:
            # No default: the width that works depends on the features' scale and dimension (scikit-learn's 20
            # suits 64 pixels in [0, 1] and makes every weight vanish on standardized tables).
            raise ConfigError(
                "kernel='rbf' needs gamma, the inverse squared width in exp(-gamma |x - y|^2), chosen for the "
                "features' squared distances (images are scaled to [0, 1], vectors standardized); or keep "
                "kernel='knn', the default, which needs none"
            )
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or gamma <= 0:
            raise ConfigError(f"gamma must be a positive number, got {gamma!r}")
        return DenseRbfKernel(float(gamma))
    raise ConfigError(f"kernel must be 'knn' or 'rbf', got {kernel!r}")


@CLASSIC.register("label_spreading")
def label_spreading(
    seed: int = 0,
    *,
    kernel: str = "knn",
    n_neighbors: int = 7,
    alpha: float = 0.2,
    gamma: float | None = None,
    max_iter: int = 30,
    tol: float = 1e-3,
) -> BaseEstimator:
    """Label spreading (Zhou et al. 2004) over a k-nearest-neighbour graph; kernel='rbf' is dense N x N."""
    from sklearn.semi_supervised import LabelSpreading

    return LabelSpreading(
        kernel=_graph_kernel(kernel, gamma), n_neighbors=n_neighbors, alpha=alpha, max_iter=max_iter, tol=tol
    )


@CLASSIC.register("label_propagation")
def label_propagation(
    seed: int = 0,
    *,
    kernel: str = "knn",
    n_neighbors: int = 7,
    gamma: float | None = None,
    max_iter: int = 1000,
    tol: float = 1e-3,
) -> BaseEstimator:
    """Label propagation (Zhu and Ghahramani 2002) over a k-nearest-neighbour graph; kernel='rbf' is dense N x N."""
    from sklearn.semi_supervised import LabelPropagation

    return LabelPropagation(kernel=_graph_kernel(kernel, gamma), n_neighbors=n_neighbors, max_iter=max_iter, tol=tol)


@CLASSIC.register("self_training")
def self_training(
    seed: int = 0,
    *,
    base: str = "logistic_regression",
    threshold: float = 0.75,
    criterion: str = "threshold",
    k_best: int = 10,
    max_iter: int | None = 10,
) -> BaseEstimator:
    """Self-training (Yarowsky 1995) around logistic regression (base='logistic_regression') or an SVC ('svc')."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import SelfTrainingClassifier
    from sklearn.svm import SVC

    bases = {
        "logistic_regression": lambda: LogisticRegression(max_iter=1000),
        "svc": lambda: SVC(probability=True, random_state=seed),
    }
    if base not in bases:
        raise ConfigError(f"base must be one of {', '.join(repr(b) for b in bases)}, got {base!r}")
    return SelfTrainingClassifier(
        estimator=bases[base](), threshold=threshold, criterion=criterion, k_best=k_best, max_iter=max_iter
    )


def list_classic() -> list[str]:
    """Names of the classic baselines."""
    return CLASSIC.names()


def is_classic(name: str) -> bool:
    """True if `name` (any spelling the registry accepts, e.g. 'label-spreading') is a classic baseline."""
    try:
        CLASSIC.get(str(name))
    except ConfigError:
        return False
    return True


def resolve_algorithm_name(name: str) -> str:
    """The registered name of a deep or classic algorithm ('pseudo-label' -> 'pseudo_label'); an unknown name
    raises a ConfigError suggesting close matches from both registries."""
    for registry in (CLASSIC, ALGORITHMS):
        try:
            found = registry.get(str(name))
        except ConfigError:
            continue
        return next(n for n in registry.names() if registry.get(n) is found)
    key = str(name).strip().lower().replace("-", "_")
    hint = did_you_mean(key, [*ALGORITHMS.names(), *CLASSIC.names()])
    raise ConfigError(
        f"unknown algorithm {name!r}: {hint}choose one of {', '.join(ALGORITHMS.names())}, "
        f"or a classic baseline: {', '.join(CLASSIC.names())}"
    )


def classic_options(name: str) -> dict[str, Any]:
    """The options a classic baseline accepts, with their defaults."""
    params = inspect.signature(CLASSIC.get(name)).parameters
    return {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}


def flatten_images(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) images -> (N, C*H*W) float32 features in [0, 1] (uint8 pixels are divided by 255)."""
    x = np.asarray(x)
    flat = x.reshape(len(x), -1).astype(np.float32)
    return flat / np.float32(255) if x.dtype == np.uint8 else flat


def make_classic(name: str, modality: str, *, seed: int = 0, **options: Any) -> Pipeline:
    """The unfitted scikit-learn Pipeline ('features' then 'classifier') of a classic baseline for `modality`
    ('image' or 'vector') data; unknown options raise a ConfigError naming the valid ones. Fit it with y == -1 on
    the unlabeled rows."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    check_options(name, options, classic_options(name))
    if modality not in ("image", "vector"):
        raise ConfigError(f"classic baselines take 'image' or 'vector' data, got modality {modality!r}")
    classifier = CLASSIC.get(name)(seed, **options)
    try:
        classifier._validate_params()  # the check fit() runs: bad values fail here, before any data is read
    except (TypeError, ValueError) as exc:  # scikit-learn's InvalidParameterError is both
        raise ConfigError(f"algorithm {name!r}: {exc}") from None
    features = FunctionTransformer(flatten_images) if modality == "image" else StandardScaler()
    return Pipeline([("features", features), ("classifier", classifier)])
