"""A classic baseline's run (`fewlabels.train` with algorithm label_spreading, label_propagation or self_training):
the engine's data loading, seeded split and run folder around one scikit-learn fit and one evaluation. The methods
themselves are in `fewlabels.algorithms.classic`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fewlabels.algorithms.classic import make_classic, resolve_algorithm_name
from fewlabels.config import Config, resolve_config
from fewlabels.data import DataBundle, Split, check_unlabeled, load_data, make_split
from fewlabels.engine.distributed import DistInfo
from fewlabels.engine.evaluate import accuracy, binary_roc_auc, confusion_matrix, per_class_accuracy
from fewlabels.engine.run import Run
from fewlabels.engine.setup import config_diff, default_out, prepare_folder
from fewlabels.errors import ConfigError
from fewlabels.hardware import hardware_line
from fewlabels.io import atomic_write_text

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

EVAL_KEYS = ("val_accuracy", "val_auc", "test_accuracy", "test_auc")
"""The evaluation figures of a classic run's metrics row and summary."""


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
    in_memory = bundle is not None
    bundle = bundle if bundle is not None else load_data(d)
    split = make_split(bundle, d.labels_per_class, d.num_labels, d.val_per_class, seed=cfg.train.seed)
    # The estimator's arrays may hold no unlabeled row: scikit-learn's methods then fit the labels alone, as
    # scikit-learn's own do (the estimator warns). From a dataset an empty pool is a mistake in the settings.
    check_unlabeled(split, not in_memory)
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
        "hardware": hardware_line(),
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
