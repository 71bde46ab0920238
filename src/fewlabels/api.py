"""The Python API: the same calls the CLI makes."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewlabels.engine.evaluate import accuracy, binary_roc_auc, per_class_accuracy, predict_logits
from fewlabels.engine.run import Run
from fewlabels.errors import DataError


def evaluate(run: str | Path | Run, which: str = "model") -> dict[str, Any]:
    """Accuracy of a finished run's model on its dataset's test set (and validation split)."""
    from fewlabels.data import Split, load_data

    run = run if isinstance(run, Run) else Run(run)
    cfg = run.config
    d = cfg.data
    bundle = load_data(d)
    model = run.load_model(which)
    result: dict[str, Any] = {"run": str(run.path), "model": which}
    if bundle.x_test is not None and bundle.y_test is not None:
        logits = predict_logits(model, bundle.x_test, cfg.train.eval_batch_size)
        result["test_accuracy"] = accuracy(logits, bundle.y_test)
        if bundle.num_classes == 2:
            result["test_auc"] = binary_roc_auc(logits, bundle.y_test)
        per_class = per_class_accuracy(logits, bundle.y_test, bundle.num_classes)
        result["per_class_test_accuracy"] = dict(zip(bundle.classes, per_class, strict=True))
    split = Split.load(run.path / "split.json")
    if bundle.x_val is not None and bundle.y_val is not None:
        result["val_accuracy"] = accuracy(predict_logits(model, bundle.x_val), bundle.y_val)
    elif len(split.val):
        idx = torch.from_numpy(np.array(split.val))
        result["val_accuracy"] = accuracy(predict_logits(model, bundle.x_train[idx]), bundle.y_train[idx])
    return result


def load_inputs(inputs: list[str], input_shape: tuple[int, ...]) -> tuple[list[str], torch.Tensor]:
    """Read prediction inputs: image files or folders, a .csv with a `path` column, or a .npz with `x`."""
    from fewlabels.data.formats import IMAGE_EXTENSIONS, ImageReader

    names: list[str] = []
    arrays: list[np.ndarray] = []
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                x = z["x"]
            names += [f"{p.name}[{i}]" for i in range(len(x))]
            arrays.append(x)
        elif p.suffix == ".csv":
            with p.open(newline="") as f:
                paths += [(p.parent / row["path"]) for row in csv.DictReader(f)]
        elif p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"input {item!r} does not exist: give image files, folders, a .csv or a .npz")
    if paths:
        if len(input_shape) != 3:
            raise DataError("this model takes vectors: give a .npz with an array x of shape (N, D)")
        reader = ImageReader(strict=True, image_size=None)
        images = []
        for path in paths:
            arr = reader.read(path)
            images.append(_fit_image(arr, input_shape))
            names.append(str(path))
        arrays.append(np.stack(images))
    if not arrays:
        raise DataError("no inputs found: give image files, folders, a .csv with a path column or a .npz")
    x = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    return names, torch.from_numpy(np.ascontiguousarray(x))


def _fit_image(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """HxW or HxWx3 uint8 -> the model's CxHxW (channel count and size)."""
    from PIL import Image

    c, h, w = shape
    im = Image.fromarray(arr).convert("L" if c == 1 else "RGB")
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BICUBIC)
    out = np.asarray(im, dtype=np.uint8)
    return out[None] if c == 1 else out.transpose(2, 0, 1)


def predict(run: str | Path | Run, inputs: list[str], which: str = "model") -> list[tuple[str, str, float]]:
    """(input, predicted class name, confidence) for each input."""
    run = run if isinstance(run, Run) else Run(run)
    info = run.model_info(which)
    names, x = load_inputs(list(inputs), tuple(info["input_shape"]))
    if tuple(x.shape[1:]) != tuple(info["input_shape"]):
        raise DataError(f"inputs have shape {tuple(x.shape[1:])}, the model takes {tuple(info['input_shape'])}")
    probs = predict_logits(run.load_model(which), x).softmax(-1)
    conf, cls = probs.max(-1)
    classes = info["classes"]
    return [(n, classes[int(c)], float(p)) for n, c, p in zip(names, cls, conf, strict=True)]
