"""The scikit-learn facade: `SemiSupervisedClassifier` and a cross-validation splitter for semi-supervised data.

`fit(X, y)` follows scikit-learn's `semi_supervised` convention (y == -1 marks an unlabeled sample) and trains with
the same engine as `fewlabels train` (`fewlabels.train(config, data=bundle)`): there is no second training loop.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedKFold
from sklearn.utils import _safe_indexing
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from fewlabels.algorithms.classic import is_classic, resolve_algorithm_name
from fewlabels.data import DataBundle
from fewlabels.data.formats import _npz_inputs
from fewlabels.errors import ConfigError

UNLABELED = -1
"""The label that marks an unlabeled sample (scikit-learn's convention); the string "-1" too in string labels."""


IN_MEMORY = "<in-memory arrays>"
"""The `data.dataset` of a run trained by the estimator: its data lived in memory, not in a file or a dataset."""

PARAMETER_OF = {
    "data.dataset": "X",
    "data.val_per_class": "val_per_class",
    "model.name": "model",
    "optim.lr": "lr",
    "train.steps": "steps",
    "train.budget": "steps",
    "train.batch_size": "batch_size",
    "train.unlabeled_ratio": "unlabeled_ratio",
    "train.seed": "random_state",
    "train.device": "device",
    "train.progress": "verbose",
}
"""Config keys that an estimator parameter decides (a `config` mapping may not set them)."""

MARKER_LIKE = {"unlabeled", "unlabelled", "unknown", "", "nan", "none", "?", "na", "n/a"}


def _dotted_keys(config: Mapping[str, Any]) -> list[str]:
    """The keys a config mapping sets, nested sections spelt out: {"train": {"seed": 5}} -> ["train.seed"]."""
    keys = []
    for key, value in config.items():
        if isinstance(value, Mapping) and "." not in str(key) and key != "out":
            keys += [f"{key}.{inner}" for inner in value] if value else [str(key)]
        else:
            keys.append(str(key))
    return keys


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def unlabeled_mask(y: np.ndarray) -> np.ndarray:
    """True where `y` marks an unlabeled sample: -1 in numeric labels (NaN too in float labels); -1, "-1", None
    or NaN in string/object labels (NaN: the empty cell of a CSV read by pandas)."""
    y = np.asarray(y)
    if y.dtype.kind == "f":
        return (y == UNLABELED) | np.isnan(y)
    if y.dtype.kind in "iu":
        return y == UNLABELED
    values = y.tolist()
    return np.fromiter((_is_missing(v) or v == UNLABELED or v == "-1" for v in values), dtype=bool, count=len(values))


def auto_model(input_shape: tuple[int, ...]) -> str:
    """The backbone `model="auto"` picks: `mlp` for vectors, `cnn` for images up to 36 px, `resnet18` beyond."""
    if len(input_shape) == 1:
        return "mlp"
    return "cnn" if min(input_shape[1:]) <= 36 else "resnet18"


class SemiSupervisedClassifier(ClassifierMixin, BaseEstimator):
    """A semi-supervised classifier with scikit-learn's interface, trained by fewlabels' engine.

    `fit(X, y)`: rows with `y == -1` are unlabeled (for string labels, -1, "-1" or None). X holds feature vectors
    (N, D), grayscale images (N, H, W) or images (N, H, W, C) / (N, C, H, W) with C in {1, 3}, as uint8 pixels or
    floats in [0, 1]. Labels may be integers or strings; `classes_` are the sorted labeled values.

    Parameters
    ----------
    algorithm: a registered algorithm (`fewlabels.list_algorithms()`), e.g. "fixmatch", "flexmatch", "mean_teacher",
        "supervised", or a classic scikit-learn baseline ("label_spreading", "label_propagation", "self_training").
    model: a registered model (`fewlabels.list_models()`) or "auto" (mlp for vectors, cnn for images up to 36 px,
        resnet18 for larger images).
    steps: optimizer steps.
    batch_size: labeled batch size B; the unlabeled batch is `unlabeled_ratio` * B.
    unlabeled_ratio: mu, unlabeled samples per labeled sample in a step.
    lr: peak learning rate (SGD with Nesterov momentum and cosine decay unless `config` says otherwise).
    algorithm_options: the algorithm's own options, e.g. {"threshold": 0.9}.
    model_options: the model factory's options, e.g. {"hidden": [256, 128]} for mlp.
    hflip: whether a horizontal flip keeps the class of an image (True for most photos, False for digits or text).
    val_per_class: labeled examples held out per class for validation (0: every label trains the model).
    config: further engine settings as dotted keys, e.g. {"optim.optimizer": "adamw", "train.ema": 0.99,
        "algorithm.threshold": 0.9} (a key that a parameter above decides is refused, naming the parameter), or the
        path of a YAML config whose values the parameters above override.
    device: "auto" (CUDA when available), "cpu" or "cuda:N".
    random_state: seed of the label split, the data order and the initialisation (an int; None draws one).
    out: a folder to keep the runs in: each `fit` writes a new subfolder `fit-*` (config, split, metrics,
        checkpoints, model); None trains in a temporary folder that is deleted after `fit`.
    verbose: show the engine's progress bar.

    Attributes after fit: `classes_`, `n_features_in_` (for vectors), `input_shape_`, `model_` (the final EMA
    model, a torch module in eval mode on the CPU; None for classic baselines), `classic_` (the fitted
    scikit-learn pipeline of a classic baseline, else None), `summary_` (the run's summary.json), `run_path_`
    (the run folder, a new `fit-*` subfolder of `out` per fit; None unless `out` is given).
    """

    def __init__(
        self,
        algorithm: str = "fixmatch",
        model: str = "auto",
        *,
        steps: int = 1000,
        batch_size: int = 64,
        unlabeled_ratio: int = 7,
        lr: float = 0.03,
        algorithm_options: Mapping[str, Any] | None = None,
        model_options: Mapping[str, Any] | None = None,
        hflip: bool = False,
        val_per_class: int = 0,
        config: Mapping[str, Any] | str | None = None,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = 0,
        out: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.algorithm = algorithm
        self.model = model
        self.steps = steps
        self.batch_size = batch_size
        self.unlabeled_ratio = unlabeled_ratio
        self.lr = lr
        self.algorithm_options = algorithm_options
        self.model_options = model_options
        self.hflip = hflip
        self.val_per_class = val_per_class
        self.config = config
        self.device = device
        self.random_state = random_state
        self.out = out
        self.verbose = verbose

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags

    # ------------------------------------------------------------------ fit

    def fit(self, X: Any, y: Any) -> SemiSupervisedClassifier:
        """Train on X with labels y, where y == -1 marks the unlabeled rows; returns self."""
        algorithm = resolve_algorithm_name(self.algorithm)  # a misspelt name fails before any work
        X, y = self._check_fit_input(X, y)
        unlabeled = unlabeled_mask(y)
        labeled_y = y[~unlabeled]
        if labeled_y.size == 0:
            raise ValueError("y has no labeled sample (every label is -1): label at least one sample of each class")
        if labeled_y.dtype.kind == "O":  # e.g. [0, 1, None]: the labeled values decide the label type
            kinds = {"str" if isinstance(v, str) else "number" for v in labeled_y.tolist()}
            if len(kinds) > 1:
                raise ValueError("y mixes string and numeric labels; use one type (and -1 or None for unlabeled rows)")
            labeled_y = np.asarray(labeled_y.tolist())
        check_classification_targets(labeled_y)
        # Everything is computed first and the fitted attributes are set together at the end: a fit that fails
        # leaves the estimator as it was (unfitted, or fitted by the previous call).
        classes = np.unique(labeled_y)
        if len(classes) < 2:
            raise ValueError(
                f"the labeled samples hold only 1 class ({classes[0]!r}); a classifier needs labeled samples of "
                "at least 2 classes"
            )
        odd = [c for c in classes.tolist() if isinstance(c, str) and c.strip().lower() in MARKER_LIKE]
        if odd:
            warnings.warn(
                f"the label {odd[0]!r} is treated as a class; mark unlabeled rows with -1 or None instead",
                UserWarning,
                stacklevel=2,
            )
        y_index = np.full(len(y), UNLABELED, dtype=np.int64)
        y_index[~unlabeled] = np.searchsorted(classes, labeled_y)

        x = self._to_tensor(X)
        input_shape = tuple(x.shape[1:])
        modality = "vector" if x.ndim == 2 else "image"
        if not unlabeled.any() and is_classic(algorithm):
            warnings.warn(
                f"y holds no unlabeled sample (-1): {algorithm!r} fits the labeled samples alone",
                UserWarning,
                stacklevel=2,
            )
        elif not unlabeled.any() and algorithm != "supervised":
            warnings.warn(
                f"y holds no unlabeled sample (-1), so there is nothing for {algorithm!r} to learn from: "
                "training 'supervised' on the labels alone",
                UserWarning,
                stacklevel=2,
            )
            algorithm = "supervised"
        bundle = DataBundle(
            name=IN_MEMORY,
            x_train=x,
            y_train=torch.from_numpy(y_index),
            classes=[str(c) for c in classes],
            modality=modality,
            hflip=bool(self.hflip),
            default_model=auto_model(input_shape),
            labels_are_given=True,
        )
        fitted = self._fit_bundle(bundle, algorithm)
        self.classes_, self.input_shape_ = classes, input_shape
        for name, value in fitted.items():
            setattr(self, name, value)
        return self

    def _fit_bundle(self, bundle: DataBundle, algorithm: str) -> dict[str, Any]:
        """Train on `bundle`; returns the fitted attributes (set by `fit` once everything succeeded)."""
        from fewlabels.engine.trainer import train

        cfg = self._config(algorithm)
        # Each fit trains afresh: in its own new subfolder of `out` (clones in a grid search share `out`), or in a
        # temporary folder. The engine seeds torch; the caller's global torch RNG is left as it was.
        # (CUDA's generators too, where the caller has set CUDA up: the engine's torch.manual_seed reseeds them.)
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with tempfile.TemporaryDirectory(prefix="fewlabels-fit-") as tmp, torch.random.fork_rng(devices=cuda):
            if self.out is not None:
                Path(self.out).mkdir(parents=True, exist_ok=True)
                folder = Path(tempfile.mkdtemp(prefix="fit-", dir=self.out))
            else:
                folder = Path(tmp) / "run"
            run = train(cfg.override(out=str(folder)), data=bundle)
            return {
                "summary_": run.summary,
                "model_": None if is_classic(algorithm) else run.load_model("model"),
                "classic_": run.classic_model,
                "run_path_": str(folder) if self.out is not None else None,
            }

    def _config(self, algorithm: str) -> Any:
        """The engine config: `config` (dotted keys or a YAML path) under the estimator's own parameters."""
        from fewlabels.config import resolve_config

        own = {
            "data.dataset": IN_MEMORY,
            "data.val_per_class": int(self.val_per_class),
            "model.name": None if self.model == "auto" else self.model,
            "optim.lr": float(self.lr),
            "train.steps": int(self.steps),
            "train.budget": None,
            "train.batch_size": int(self.batch_size),
            "train.unlabeled_ratio": int(self.unlabeled_ratio),
            "train.seed": self._seed(),
            "train.device": self.device,
            "train.progress": bool(self.verbose),
        }
        if isinstance(self.config, Mapping):
            params = {**PARAMETER_OF, "algorithm.name": "algorithm", "out": "out"}
            for key in _dotted_keys(self.config):
                if key == "data.dataset":
                    raise ConfigError("config sets 'data.dataset', but the estimator trains on fit(X, y): drop it")
                if key == "data.classes":
                    raise ConfigError(
                        "config sets 'data.classes', which the estimator does not apply: keep the rows of the "
                        "classes you want in X and y before fit"
                    )
                if key in params:
                    where = params[key]
                    raise ConfigError(
                        f"config sets {key!r}, which the estimator's parameter {where!r} decides: pass {where}=... "
                        "instead"
                    )
            # Dotted algorithm options of the mapping ("algorithm.threshold") belong to the estimator's algorithm.
            base = resolve_config(None, **{"algorithm.name": self.algorithm, **self.config})
        else:
            base = resolve_config(self.config)  # a YAML path (its values yield to the parameters) or None
        overrides: dict[str, Any] = dict(own)
        if algorithm != resolve_algorithm_name(self.algorithm):  # the supervised fallback: the configured
            # algorithm's options do not apply
            overrides["algorithm"] = {"name": algorithm, "options": {}}
            base = base.override(**{"algorithm.name": algorithm})
        else:  # merged with the config's options for the same algorithm
            overrides["algorithm"] = {"name": algorithm, **dict(self.algorithm_options or {})}
        if self.model_options is not None:
            overrides["model.options"] = {**dict(base.model.options), **dict(self.model_options)}
        return resolve_config(base, **overrides)

    def _seed(self) -> int:
        rs = self.random_state
        if rs is None:
            return int(np.random.default_rng().integers(2**31 - 1))
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(2**31 - 1))
        if isinstance(rs, (int, np.integer)) and not isinstance(rs, bool):
            if not 0 <= int(rs) < 2**32:
                raise ConfigError(f"random_state must be an integer in [0, 2**32), got {rs}")
            return int(rs)
        raise ConfigError(f"random_state must be an int, None or a numpy RandomState, got {rs!r}")

    # ------------------------------------------------------------------ predict

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (N, len(classes_)), columns in the order of `classes_`."""
        check_is_fitted(self, "classes_")
        x = self._predict_input(X)
        if self.classic_ is not None:  # scikit-learn's own probabilities (LabelSpreading's may hold NaN rows)
            return np.asarray(self.classic_.predict_proba(x.numpy()), dtype=np.float64)
        from fewlabels.engine.evaluate import predict_logits
        from fewlabels.engine.setup import resolve_device

        device = resolve_device(self.device)
        model = self.model_ if device.type == "cpu" else self.model_.to(device)
        try:
            with torch.no_grad():
                probs = predict_logits(model, x, device=device).double().softmax(-1).numpy()
        finally:
            self.model_.cpu()  # kept on the CPU between calls, so the estimator pickles anywhere
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, as a value of `classes_`."""
        check_is_fitted(self, "classes_")
        if self.classic_ is not None:  # the classic method's own decision (an SVC's can differ from its argmax)
            return self.classes_[self.classic_.predict(self._predict_input(X).numpy())]
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def _predict_input(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "classes_")
        x = self._to_tensor(self._check_predict_input(X))
        if tuple(x.shape[1:]) != self.input_shape_:
            raise ValueError(
                f"X has samples of shape {tuple(x.shape[1:])}, but {type(self).__name__} was fitted on "
                f"{self.input_shape_}"
            )
        return x

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Accuracy on the labeled rows of (X, y); rows with y == -1 are left out."""
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        keep = ~unlabeled_mask(y)
        if not keep.any():
            raise ValueError("score needs labeled samples: every label in y is -1")
        if not keep.all():
            X, y = _safe_indexing(X, np.flatnonzero(keep)), y[keep]
            sample_weight = None if sample_weight is None else np.asarray(sample_weight)[keep]
        return super().score(X, y, sample_weight=sample_weight)

    # ------------------------------------------------------------------ input checks

    def _check_fit_input(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        y = _missing_to_none(y)
        X, y = validate_data(self, X, y, allow_nd=True, dtype=None, ensure_min_samples=1, y_numeric=False)
        X = _numeric(X)
        if X.ndim > 4:
            raise ValueError(f"X has {X.ndim} dimensions; give (N, D) vectors or (N, H, W) / (N, H, W, C) images")
        if X.ndim > 2 and hasattr(self, "n_features_in_"):
            del self.n_features_in_  # images: n_features_in_ would be the image height
        return X, np.asarray(y)

    def _check_predict_input(self, X: Any) -> np.ndarray:
        return _numeric(validate_data(self, X, allow_nd=True, dtype=None, reset=False))

    @staticmethod
    def _to_tensor(X: np.ndarray) -> torch.Tensor:
        x = np.array(X, copy=True)  # own, writable memory (X may be a read-only memmap)
        return _npz_inputs(x, "X", "the array")


def _numeric(X: np.ndarray) -> np.ndarray:
    """Vectors as float32; images keep their dtype (uint8, integer pixels 0..255 or floats in [0, 1]: the image
    conversion checks the range); object arrays of numbers become float."""
    if X.dtype.kind == "O" or X.dtype.kind == "b":
        X = X.astype(np.float64)
    return X.astype(np.float32) if X.ndim == 2 else X


def _missing_to_none(y: Any) -> Any:
    """NaN labels (an empty cell read by pandas) as unlabeled markers, so validation passes them: None in object
    labels, -1 in float labels."""
    arr = np.asarray(y) if not hasattr(y, "dtype") or getattr(y, "ndim", 1) == 1 else y
    if getattr(arr, "dtype", None) is not None and arr.dtype.kind == "O" and arr.ndim == 1:
        return np.array([None if _is_missing(v) else v for v in arr.tolist()], dtype=object)
    if getattr(arr, "dtype", None) is not None and arr.dtype.kind == "f" and arr.ndim == 1:
        return np.where(np.isnan(arr), float(UNLABELED), arr)
    return y


class SemiSupervisedKFold:
    """K-fold cross-validation for semi-supervised data: every training fold keeps all unlabeled rows (y == -1),
    and the labeled rows are split into stratified folds, so each test fold holds labeled rows only.

    Use it as `cv=` of `cross_val_score` or `GridSearchCV`; scores are then computed on labeled rows only.
    """

    def __init__(self, n_splits: int = 5, *, shuffle: bool = False, random_state: int | None = None) -> None:
        if n_splits < 2:
            raise ValueError(f"n_splits must be at least 2, got {n_splits}")
        self.n_splits = n_splits
        self.shuffle = shuffle
        self.random_state = random_state

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """The number of folds."""
        return self.n_splits

    def split(self, X: Any, y: Any, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (train, test) index arrays: train = unlabeled rows + the other labeled folds, test = one fold."""
        if y is None:
            raise ValueError("SemiSupervisedKFold needs y (with -1 for unlabeled rows) to split")
        y = np.asarray(y).ravel()
        unlabeled = np.flatnonzero(unlabeled_mask(y))
        labeled = np.flatnonzero(~unlabeled_mask(y))
        if labeled.size < self.n_splits:
            raise ValueError(f"{labeled.size} labeled rows cannot fill {self.n_splits} test folds; use fewer splits")
        inner = StratifiedKFold(
            self.n_splits, shuffle=self.shuffle, random_state=self.random_state if self.shuffle else None
        )
        for train_l, test_l in inner.split(np.zeros(labeled.size), y[labeled]):
            yield np.sort(np.concatenate([unlabeled, labeled[train_l]])), labeled[test_l]

    def __repr__(self) -> str:
        return (
            f"SemiSupervisedKFold(n_splits={self.n_splits}, shuffle={self.shuffle}, random_state={self.random_state})"
        )
