"""Classic baselines: scikit-learn's label spreading, label propagation and self-training, on features.

They run through the same `fewlabels.train` entry point as the deep methods: the same data loading, the same seeded
split (the labeled rows are exactly those a deep run of the same seed and label budget gets) and a normal run folder,
so every benchmark shows whether deep semi-supervised learning beats the classic tools on the data at hand.

Each method is a scikit-learn Pipeline: features (images flattened and scaled to [0, 1]; vectors standardized, the
scaler fitted on every training row, labeled or not: transductive) then the estimator, fitted once on the labeled
rows plus the unlabeled pool (label -1). A fit takes no steps and keeps no model file (nothing is ever pickled).

Label spreading: Zhou et al., "Learning with Local and Global Consistency", NeurIPS 2004. Label propagation: Zhu and
Ghahramani, "Learning from Labeled and Unlabeled Data with Label Propagation", CMU-CALD-02-107, 2002. Self-training:
Yarowsky, ACL 1995.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fewlabels.algorithms.base import ALGORITHMS
from fewlabels.config import Config, resolve_config
from fewlabels.data import DataBundle, Split, check_unlabeled, load_data, make_split
from fewlabels.engine.distributed import DistInfo
from fewlabels.engine.evaluate import accuracy, binary_roc_auc, confusion_matrix, per_class_accuracy
from fewlabels.engine.run import Run
from fewlabels.engine.setup import config_diff, default_out, prepare_folder
from fewlabels.errors import ConfigError
from fewlabels.io import atomic_write_text
from fewlabels.registry import Registry

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator
    from sklearn.pipeline import Pipeline

CLASSIC: Registry[Callable[..., BaseEstimator]] = Registry("classic algorithm")
"""Classic method name -> factory `(seed, **options) -> scikit-learn estimator`."""

DENSE_KERNEL_MAX_BYTES = 2 * 1024**3
"""The largest dense kernel matrix (float64) kernel='rbf' may build; scikit-learn holds a few copies of it."""
EVAL_KEYS = ("val_accuracy", "val_auc", "test_accuracy", "test_auc")
"""The figures of an evaluation row of metrics.jsonl, as the deep loop writes them."""


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
    close = difflib.get_close_matches(key, [*ALGORITHMS.names(), *CLASSIC.names()], n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
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

    valid = classic_options(name)
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=2, cutoff=0.5)
            hint = f" did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"algorithm {name!r} has no option {key!r}:{hint} its options are: {', '.join(valid)}")
    if modality not in ("image", "vector"):
        raise ConfigError(f"classic baselines take 'image' or 'vector' data, got modality {modality!r}")
    classifier = CLASSIC.get(name)(seed, **options)
    try:
        classifier._validate_params()  # the check fit() runs: bad values fail here, before any data is read
    except (TypeError, ValueError) as exc:  # scikit-learn's InvalidParameterError is both
        raise ConfigError(f"algorithm {name!r}: {exc}") from None
    features = FunctionTransformer(flatten_images) if modality == "image" else StandardScaler()
    return Pipeline([("features", features), ("classifier", classifier)])


# ----------------------------------------------------------------------------------------------------------------
# A classic run: the engine's split and run folder, one fit, one evaluation


def fit_classic(cfg: Config, bundle: DataBundle | None = None, *, resume: bool = False) -> Run:
    """Fit the classic baseline `cfg.algorithm.name` on the run's split and write a normal run folder.

    The data come from `load_data(cfg.data)` unless `bundle` is given, the split from `make_split` with the run seed,
    exactly as for a deep run. The folder gets config.yaml, split.json, metrics.jsonl (one evaluation row) and
    summary.json (the keys a deep run writes; steps 0), but no model. A finished run is returned as it is when
    `resume` is set (a different config is refused) and refused otherwise, as a deep run's folder is. The returned
    Run holds the fitted Pipeline in memory as `classic_model`.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("classic baselines run in one process: start them without torchrun")
    name = resolve_algorithm_name(cfg.algorithm.name)
    make_classic(name, "vector", seed=cfg.train.seed, **cfg.algorithm.options)  # options checked before any work
    folder = Path(cfg.out or default_out(cfg))
    if _finished(cfg, folder, resume):
        return Run(folder)
    prepare_folder(cfg, folder, resume=False, info=DistInfo())
    d = cfg.data
    bundle = bundle if bundle is not None else load_data(d)
    split = make_split(bundle, d.labels_per_class, d.num_labels, d.val_per_class, seed=cfg.train.seed)
    check_unlabeled(split, True)
    split.save(folder / "split.json")

    start = time.perf_counter()  # as for a deep run: the fit and its evaluation, not the data loading
    pipeline = make_classic(name, bundle.modality, seed=cfg.train.seed, **cfg.algorithm.options)
    pipeline.fit(*fit_rows(bundle, split))
    final = _evaluate(pipeline, bundle, split)
    wall = time.perf_counter() - start
    row = {"step": 0, **{k: final[k] for k in EVAL_KEYS if k in final}, "kind": "eval"}
    atomic_write_text(folder / "metrics.jsonl", json.dumps(row) + "\n")
    summary = {
        "algorithm": cfg.algorithm.name,
        "dataset": d.dataset,
        "model": f"scikit-learn {_describe(pipeline)}",
        "seed": cfg.train.seed,
        "steps": 0,
        "wall_seconds": round(wall, 2),
        "num_labels": len(split.labeled),
        "num_unlabeled": len(split.unlabeled),
        "num_val": len(split.val) if bundle.x_val is None else len(bundle.x_val),
        "val_accuracy": final.get("val_accuracy"),
        "test_accuracy": final.get("test_accuracy"),
        **{k: final[k] for k in ("val_auc", "test_auc") if k in final},
        "test_accuracy_median_last": final.get("test_accuracy"),  # one evaluation: its median is itself
        "device": "cpu",
        "world_size": 1,
        "skipped_files": len(bundle.skipped_files),
        **{k: final[k] for k in ("per_class_test_accuracy", "confusion_matrix") if k in final},
    }
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2))
    run = Run(folder)
    run.classic_model = pipeline
    return run


def fit_rows(bundle: DataBundle, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The inputs a classic fit sees: the labeled rows plus the unlabeled pool, in row order, with label -1 on
    every row outside `split.labeled`."""
    rows = np.union1d(split.labeled, split.unlabeled)
    y = np.full(len(rows), -1, dtype=np.int64)
    y[np.searchsorted(rows, split.labeled)] = bundle.y_train.numpy()[split.labeled]
    return bundle.x_train.numpy()[rows], y


def _finished(cfg: Config, folder: Path, resume: bool) -> bool:
    """True when `folder` holds this finished run and `resume` is set; a different config is refused."""
    if not resume or not (folder / "config.yaml").is_file():
        return False  # prepare_folder refuses to overwrite a run without --resume
    saved = resolve_config(folder / "config.yaml")
    if saved.run_hash() != cfg.run_hash():
        diff = config_diff(saved.to_dict(), cfg.to_dict())
        raise ConfigError(
            f"--resume: {folder} was made with a different config ({diff}); "
            "resume with the same settings or choose another --out"
        )
    # Same config but unfinished: a fit has no checkpoint to continue from, so it starts afresh.
    return (folder / "summary.json").is_file()


def _evaluate(pipeline: Pipeline, bundle: DataBundle, split: Split) -> dict[str, Any]:
    """Validation and test figures computed as the deep loop computes them, from predicted classes (and
    probabilities for the two-class ROC AUC)."""
    sets = {"val": (bundle.x_val, bundle.y_val), "test": (bundle.x_test, bundle.y_test)}
    if bundle.x_val is None and len(split.val):
        idx = torch.from_numpy(np.array(split.val))
        sets["val"] = (bundle.x_train[idx], bundle.y_train[idx])
    out: dict[str, Any] = {}
    for part, (x, y) in sets.items():
        if x is None or y is None or not len(x):
            continue
        scores = _scores(pipeline, x.numpy(), bundle.num_classes)
        out[f"{part}_accuracy"] = accuracy(scores, y)
        if bundle.num_classes == 2:
            out[f"{part}_auc"] = binary_roc_auc(_log_proba(pipeline, x.numpy(), 2), y)
        if part == "test":
            out["per_class_test_accuracy"] = per_class_accuracy(scores, y, bundle.num_classes)
            out["confusion_matrix"] = confusion_matrix(scores, y, bundle.num_classes)
    return out


def _scores(pipeline: Pipeline, x: np.ndarray, num_classes: int) -> torch.Tensor:
    """One-hot rows of `pipeline.predict` (an SVC's predict and its Platt probabilities may disagree)."""
    pred = torch.from_numpy(np.asarray(pipeline.predict(x), dtype=np.int64))
    return torch.nn.functional.one_hot(pred, num_classes).float()


def _log_proba(pipeline: Pipeline, x: np.ndarray, num_classes: int) -> torch.Tensor:
    """Log class probabilities as (N, num_classes) logits; a class the fit never saw gets probability 0."""
    proba = np.zeros((len(x), num_classes))
    proba[:, pipeline.classes_] = pipeline.predict_proba(x)
    return torch.from_numpy(np.log(np.clip(proba, 1e-12, None)))


def _describe(pipeline: Pipeline) -> str:
    classifier = pipeline.named_steps["classifier"]
    inner = getattr(classifier, "estimator", None)
    return type(classifier).__name__ + (f"({type(inner).__name__})" if inner is not None else "")
